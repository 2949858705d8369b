//! Zero rules, subnormal probabilities, and every kind of bad input: the right
//! [`Error`] variant naming the argument, row and column, on every backend
//! (CPU, GPU, GPU with capped bindings), under every reduction.

mod common;

use common::*;
use kullback::{
    Arg, BadValue, Base, Batch, Error, Form, Measure, NllOptions, Normalization, Options,
    Reduction, Setting,
};

const LN2: f64 = std::f64::consts::LN_2;

fn all() -> Vec<Bk> {
    backends_with_cap(64 * 1024)
}

/// Checks one value of one call (reduction none) on every backend.
#[allow(clippy::too_many_arguments, reason = "one call's full description")]
fn value(
    failures: &mut Vec<String>,
    label: &str,
    measure: Measure,
    p: (&[f32], Form),
    q: Option<(&[f32], Form)>,
    cols: usize,
    opts: Options,
    expected: &[f64],
) {
    for bk in all() {
        let pi = Input::new(p.0, p.0.len() / cols, p.1);
        let qi = q.map(|(d, f)| Input::new(d, d.len() / cols, f));
        match eval(&bk.ctx, measure, pi, qi, cols, &opts) {
            Err(e) => failures.push(format!("{label} [{}]: error {e}", bk.name)),
            Ok(out) => {
                let got: Vec<f64> = out.values.iter().map(|&v| v as f64).collect();
                let ok = got.len() == expected.len()
                    && got.iter().zip(expected).all(|(g, e)| close(*g, *e));
                if !ok {
                    failures.push(format!(
                        "{label} [{}]: got {got:?}, expected {expected:?}",
                        bk.name
                    ));
                }
            }
        }
    }
}

#[test]
fn zero_rules() {
    let mut f = Vec::new();
    let o = Options::default();
    let ni = f64::INFINITY;
    // 0 · ln 0 = 0.
    value(
        &mut f,
        "H([.5,.5,0])",
        Measure::Entropy,
        (&[0.5, 0.5, 0.0], Form::Probs),
        None,
        3,
        o,
        &[LN2],
    );
    // p = 0 terms are 0 whatever q is (q = 0 included).
    let p = [0.0f32, 1.0, 0.0, 0.5, 0.5, 0.0];
    let q = [0.0f32, 1.0, 0.0, 0.5, 0.0, 0.5];
    value(
        &mut f,
        "CE p=0,q=0",
        Measure::CrossEntropy,
        (&p, Form::Probs),
        Some((&q, Form::Probs)),
        3,
        o,
        &[0.0, ni],
    );
    value(
        &mut f,
        "KL p=0,q=0",
        Measure::Kl,
        (&p, Form::Probs),
        Some((&q, Form::Probs)),
        3,
        o,
        &[0.0, ni],
    );
    // q as log-probabilities: log q = -inf under p = 0 is 0, under p > 0 is +inf.
    let lq = [
        f32::NEG_INFINITY,
        0.0,
        f32::NEG_INFINITY,
        (0.5f32).ln(),
        f32::NEG_INFINITY,
        (0.5f32).ln(),
    ];
    let l5 = (0.5f32).ln() as f64;
    value(
        &mut f,
        "CE log q=-inf",
        Measure::CrossEntropy,
        (&p, Form::Probs),
        Some((&lq, Form::LogProbs)),
        3,
        o,
        &[0.0, ni],
    );
    value(
        &mut f,
        "KL log q=-inf",
        Measure::Kl,
        (&p, Form::Probs),
        Some((&lq, Form::LogProbs)),
        3,
        o,
        &[0.0, ni],
    );
    // p as log-probabilities with -inf: p = 0.
    let lp = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
    value(
        &mut f,
        "H(log p = -inf)",
        Measure::Entropy,
        (&lp, Form::LogProbs),
        None,
        3,
        o,
        &[0.0],
    );
    value(
        &mut f,
        "KL(log p=-inf || q=0)",
        Measure::Kl,
        (&lp, Form::LogProbs),
        Some((&[0.0f32, 1.0, 0.0], Form::Probs)),
        3,
        o,
        &[0.0],
    );
    // Disjoint supports: KL +inf, JS ln 2 (1 bit), one-hot entropies 0.
    let a = [1.0f32, 0.0, 0.0, 0.0];
    let b = [0.0f32, 0.0, 0.0, 1.0];
    value(
        &mut f,
        "JS disjoint",
        Measure::Js,
        (&a, Form::Probs),
        Some((&b, Form::Probs)),
        4,
        o,
        &[LN2],
    );
    value(
        &mut f,
        "JS disjoint bits",
        Measure::Js,
        (&a, Form::Probs),
        Some((&b, Form::Probs)),
        4,
        o.base(Base::Two),
        &[1.0],
    );
    value(
        &mut f,
        "JS same",
        Measure::Js,
        (&a, Form::Probs),
        Some((&a, Form::Probs)),
        4,
        o,
        &[0.0],
    );
    value(
        &mut f,
        "KL disjoint",
        Measure::Kl,
        (&a, Form::Probs),
        Some((&b, Form::Probs)),
        4,
        o,
        &[ni],
    );
    value(
        &mut f,
        "H one-hot",
        Measure::Entropy,
        (&a, Form::Probs),
        None,
        4,
        o,
        &[0.0],
    );
    value(
        &mut f,
        "CE one-hot same",
        Measure::CrossEntropy,
        (&a, Form::Probs),
        Some((&a, Form::Probs)),
        4,
        o,
        &[0.0],
    );
    // JS with log forms where both sides are 0 in a column.
    let la = [0.0f32, f32::NEG_INFINITY, f32::NEG_INFINITY];
    let lb = [l5 as f32, l5 as f32, f32::NEG_INFINITY];
    let js = 0.5 * (1.0 * (0.0 - (0.75f64).ln()))
        + 0.5 * (0.5 * (l5 - 0.75f64.ln()) + 0.5 * (l5 - 0.25f64.ln()));
    value(
        &mut f,
        "JS log forms, shared -inf column",
        Measure::Js,
        (&la, Form::LogProbs),
        Some((&lb, Form::LogProbs)),
        3,
        o,
        &[js],
    );
    // Masked logits.
    let ninf = f32::NEG_INFINITY;
    value(
        &mut f,
        "H masked logits",
        Measure::Entropy,
        (&[3.0, ninf, 3.0], Form::Logits),
        None,
        3,
        o,
        &[LN2],
    );
    value(
        &mut f,
        "KL masked q logit under p > 0",
        Measure::Kl,
        (&[0.0, 0.0, ninf], Form::Logits),
        Some((&[0.0, ninf, 0.0], Form::Logits)),
        3,
        o,
        &[ni],
    );
    value(
        &mut f,
        "KL masked p logit",
        Measure::Kl,
        (&[ninf, 0.0, ninf], Form::Logits),
        Some((&[7.0, 7.0, ninf], Form::Logits)),
        3,
        o,
        &[LN2],
    );
    value(
        &mut f,
        "JS disjoint masked logits",
        Measure::Js,
        (&[5.0, ninf], Form::Logits),
        Some((&[ninf, -5.0], Form::Logits)),
        2,
        o,
        &[LN2],
    );
    // +inf rows make sum and mean +inf; finite rows alongside.
    let p2 = [1.0f32, 0.0, 0.5, 0.5];
    let q2 = [0.0f32, 1.0, 0.5, 0.5];
    value(
        &mut f,
        "KL sum with +inf row",
        Measure::Kl,
        (&p2, Form::Probs),
        Some((&q2, Form::Probs)),
        2,
        o.reduction(Reduction::Sum),
        &[ni],
    );
    value(
        &mut f,
        "KL mean with +inf row",
        Measure::Kl,
        (&p2, Form::Probs),
        Some((&q2, Form::Probs)),
        2,
        o.reduction(Reduction::Mean),
        &[ni],
    );
    // N = 1.
    value(
        &mut f,
        "KL 1 column",
        Measure::Kl,
        (&[1.0, 1.0], Form::Probs),
        Some((&[1.0, 1.0], Form::Probs)),
        1,
        o,
        &[0.0, 0.0],
    );
    report("zero rules", &f);
}

#[test]
fn subnormal_probabilities() {
    let mut f = Vec::new();
    let o = Options::default();
    let (s1, s2) = (1e-40f32, 3e-44f32);
    assert!(s1 != 0.0 && !s1.is_normal() && s2 != 0.0 && !s2.is_normal());
    let (l1, l2) = ((s1 as f64).ln(), (s2 as f64).ln());
    // In q: ln(1e-40) = -92.10 (WGSL's log gives -88.02 on lavapipe), ln(3e-44) = -100.93.
    let p = [0.5f32, 0.5, 0.0, 1.0, 0.0, 0.0];
    let q = [s1, 1.0, 0.0, s2, 1.0, 0.0];
    let ce = [-0.5 * l1, -l2];
    value(
        &mut f,
        "CE subnormal q",
        Measure::CrossEntropy,
        (&p, Form::Probs),
        Some((&q, Form::Probs)),
        3,
        o,
        &ce,
    );
    let kl = [0.5 * (0.5f64.ln() - l1) + 0.5 * 0.5f64.ln(), -l2];
    value(
        &mut f,
        "KL subnormal q",
        Measure::Kl,
        (&p, Form::Probs),
        Some((&q, Form::Probs)),
        3,
        o,
        &kl,
    );
    // In p: a subnormal p is not zero: over q = 0 it gives +inf.
    let p = [s1, 1.0, 0.0, s2, 0.0, 1.0];
    let q = [0.0f32, 1.0, 0.0, 0.0, 0.0, 1.0];
    value(
        &mut f,
        "KL subnormal p over q=0",
        Measure::Kl,
        (&p, Form::Probs),
        Some((&q, Form::Probs)),
        3,
        o,
        &[f64::INFINITY; 2],
    );
    value(
        &mut f,
        "CE subnormal p over q=0",
        Measure::CrossEntropy,
        (&p, Form::Probs),
        Some((&q, Form::Probs)),
        3,
        o,
        &[f64::INFINITY; 2],
    );
    let h = [-(s1 as f64) * l1, -(s2 as f64) * l2];
    value(
        &mut f,
        "H subnormal p",
        Measure::Entropy,
        (&p, Form::Probs),
        None,
        3,
        o,
        &h,
    );
    // Renormalised rows whose sum is normal but whose terms are subnormal.
    let p = [2e-38f32, 1e-40, 3e-44];
    let expect = ref_measure(
        Measure::Entropy,
        Input::new(&p, 1, Form::Probs),
        None,
        3,
        Normalization::Renormalize,
        Base::E,
    );
    assert!(expect[0] > 0.03, "reference {expect:?}");
    value(
        &mut f,
        "H renormalised tiny row",
        Measure::Entropy,
        (&p, Form::Probs),
        None,
        3,
        o.normalization(Normalization::Renormalize),
        &expect,
    );
    // Log forms whose probabilities are subnormal in f32: exp(-92) = 1.1e-40.
    let pp = [0.5f32, 0.5];
    let lq = [-92.0f32, 0.0];
    let want = ref_measure(
        Measure::Js,
        Input::new(&pp, 1, Form::Probs),
        Some(Input::new(&lq, 1, Form::LogProbs)),
        2,
        Normalization::Validate,
        Base::E,
    );
    value(
        &mut f,
        "JS with q log-prob -92 (subnormal probability)",
        Measure::Js,
        (&pp, Form::Probs),
        Some((&lq, Form::LogProbs)),
        2,
        o,
        &want,
    );
    let want = ref_measure(
        Measure::Kl,
        Input::new(&pp, 1, Form::Probs),
        Some(Input::new(&lq, 1, Form::LogProbs)),
        2,
        Normalization::Validate,
        Base::E,
    );
    value(
        &mut f,
        "KL with q log-prob -92",
        Measure::Kl,
        (&pp, Form::Probs),
        Some((&lq, Form::LogProbs)),
        2,
        o,
        &want,
    );
    // f64 input: 1e-40 is representable (subnormal) in f32 and accepted.
    for bk in all() {
        let p64 = [1e-40f64, 1.0];
        let q64 = [1e-40f64, 1.0];
        match bk
            .ctx
            .kl(&Batch::new(&p64, 1, 2), &Batch::new(&q64, 1, 2), &o)
        {
            Ok(out) if close(out.values[0] as f64, 0.0) => {}
            other => f.push(format!("f64 1e-40 [{}]: {other:?}", bk.name)),
        }
    }
    report("subnormals", &f);
}

// ------------------------------------------------------------------ errors

fn check_err(
    failures: &mut Vec<String>,
    label: &str,
    bk: &Bk,
    r: kullback::Result<kullback::Output>,
    want: &dyn Fn(&Error) -> bool,
) {
    match r {
        Ok(out) => failures.push(format!(
            "{label} [{}]: no error, got {:?}",
            bk.name, out.values
        )),
        Err(e) if want(&e) => {
            // The message is for people: it must say something (and name rows when there are).
            let msg = e.to_string();
            if msg.is_empty() {
                failures.push(format!("{label} [{}]: empty message", bk.name));
            }
        }
        Err(e) => failures.push(format!("{label} [{}]: wrong error {e:?} ({e})", bk.name)),
    }
}

fn bad(arg: Arg, row: usize, col: usize, what: BadValue) -> impl Fn(&Error) -> bool {
    move |e| {
        matches!(e, Error::BadValue { arg: a, row: r, col: c, what: w }
            if *a == arg && *r == row && *c == Some(col) && *w == what)
    }
}

/// `rows`x`cols` uniform probabilities with `v` placed at (row, col).
fn with_value(rows: usize, cols: usize, row: usize, col: usize, v: f32) -> Vec<f32> {
    let mut x = vec![1.0 / cols as f32; rows * cols];
    x[row * cols + col] = v;
    x
}

#[test]
fn bad_values_name_argument_row_and_column() {
    let mut f = Vec::new();
    let (rows, cols) = (4, 7);
    let good = vec![1.0 / cols as f32; rows * cols];
    let cases: Vec<(&str, f32, Form, BadValue)> = vec![
        ("NaN", f32::NAN, Form::Probs, BadValue::Nan),
        ("negative", -0.25, Form::Probs, BadValue::Negative),
        ("+inf", f32::INFINITY, Form::Probs, BadValue::Infinite),
        ("NaN log-prob", f32::NAN, Form::LogProbs, BadValue::Nan),
        (
            "+inf log-prob",
            f32::INFINITY,
            Form::LogProbs,
            BadValue::Infinite,
        ),
        (
            "positive log-prob",
            0.5,
            Form::LogProbs,
            BadValue::PositiveLog,
        ),
        (
            "+inf logit",
            f32::INFINITY,
            Form::Logits,
            BadValue::Infinite,
        ),
        ("NaN logit", f32::NAN, Form::Logits, BadValue::Nan),
    ];
    for bk in all() {
        for (name, v, form, what) in &cases {
            let base_row = |form: Form| -> Vec<f32> {
                match form {
                    Form::Probs => good.clone(),
                    _ => vec![-(cols as f32).ln(); rows * cols],
                }
            };
            for reduction in REDUCTIONS {
                let o = Options::default().reduction(reduction);
                // In p at (2, 5).
                let mut p = base_row(*form);
                p[2 * cols + 5] = *v;
                let q = base_row(*form);
                for m in [Measure::Entropy, Measure::Kl, Measure::Js] {
                    let r = eval(
                        &bk.ctx,
                        m,
                        Input::new(&p, rows, *form),
                        Some(Input::new(&q, rows, *form)),
                        cols,
                        &o,
                    );
                    check_err(
                        &mut f,
                        &format!("{name} in p, {m:?}, {reduction:?}"),
                        &bk,
                        r,
                        &bad(Arg::P, 2, 5, *what),
                    );
                }
                // In q at (3, 0).
                let p = base_row(*form);
                let mut q = base_row(*form);
                q[3 * cols] = *v;
                for m in [Measure::CrossEntropy, Measure::Kl, Measure::Js] {
                    let r = eval(
                        &bk.ctx,
                        m,
                        Input::new(&p, rows, *form),
                        Some(Input::new(&q, rows, *form)),
                        cols,
                        &o,
                    );
                    check_err(
                        &mut f,
                        &format!("{name} in q, {m:?}, {reduction:?}"),
                        &bk,
                        r,
                        &bad(Arg::Q, 3, 0, *what),
                    );
                }
            }
        }
        // -inf probability: negative (or infinite), row and column named.
        let p = with_value(rows, cols, 1, 3, f32::NEG_INFINITY);
        let r = eval(
            &bk.ctx,
            Measure::Entropy,
            Input::new(&p, rows, Form::Probs),
            None,
            cols,
            &Options::default(),
        );
        check_err(&mut f, "-inf probability", &bk, r, &|e| {
            matches!(
                e,
                Error::BadValue {
                    arg: Arg::P,
                    row: 1,
                    col: Some(3),
                    what: BadValue::Negative | BadValue::Infinite
                }
            )
        });
        // The first bad row is the one named.
        let mut p = good.clone();
        p[3 * cols + 1] = f32::NAN;
        p[cols + 6] = -1.0;
        let r = eval(
            &bk.ctx,
            Measure::Entropy,
            Input::new(&p, rows, Form::Probs),
            None,
            cols,
            &Options::default().reduction(Reduction::Mean),
        );
        check_err(
            &mut f,
            "first of two bad rows",
            &bk,
            r,
            &bad(Arg::P, 1, 6, BadValue::Negative),
        );
        // A bad broadcast row is row 0 of its argument.
        let one = with_value(1, cols, 0, 4, f32::NAN);
        let r = eval(
            &bk.ctx,
            Measure::Kl,
            Input::new(&good, rows, Form::Probs),
            Some(Input::new(&one, 1, Form::Probs)),
            cols,
            &Options::default(),
        );
        check_err(&mut f, "NaN in a one-row q", &bk, r, &|e| {
            matches!(
                e,
                Error::BadValue {
                    arg: Arg::Q,
                    col: Some(4),
                    what: BadValue::Nan,
                    ..
                }
            )
        });
        // All -inf logits: the row cannot be normalised.
        let mut l = vec![0.5f32; rows * cols];
        for v in &mut l[2 * cols..3 * cols] {
            *v = f32::NEG_INFINITY;
        }
        for (m, arg) in [(Measure::Entropy, Arg::P), (Measure::Kl, Arg::Q)] {
            let r = if arg == Arg::P {
                eval(
                    &bk.ctx,
                    m,
                    Input::new(&l, rows, Form::Logits),
                    None,
                    cols,
                    &Options::default(),
                )
            } else {
                let p = vec![0.1f32; rows * cols];
                eval(
                    &bk.ctx,
                    m,
                    Input::new(&p, rows, Form::Logits),
                    Some(Input::new(&l, rows, Form::Logits)),
                    cols,
                    &Options::default(),
                )
            };
            check_err(
                &mut f,
                &format!("all -inf logits in {arg}"),
                &bk,
                r,
                &|e| matches!(e, Error::CannotNormalize { arg: a, row: 2, .. } if *a == arg),
            );
        }
        let r = bk.ctx.nll(
            &Batch::new(&l, rows, cols).form(Form::Logits),
            &[0i64, 1, 2, 3][..],
            &NllOptions::default(),
        );
        check_err(&mut f, "NLL all -inf logits", &bk, r, &|e| {
            matches!(
                e,
                Error::CannotNormalize {
                    arg: Arg::Q,
                    row: 2,
                    ..
                }
            )
        });
    }
    report("bad values", &f);
}

#[test]
fn bad_values_in_chunks_name_their_row_and_column() {
    let mut f = Vec::new();
    for bk in all() {
        // Whole-row chunks: row 250 of 300 x 1000 (64 KiB: 16 rows per chunk).
        let (rows, cols) = (300, 1000);
        let p = with_value(rows, cols, 250, 999, f32::NAN);
        let q = vec![1.0 / cols as f32; rows * cols];
        for reduction in REDUCTIONS {
            let r = eval(
                &bk.ctx,
                Measure::Kl,
                Input::new(&q, rows, Form::Probs),
                Some(Input::new(&p, rows, Form::Probs)),
                cols,
                &Options::default().reduction(reduction),
            );
            check_err(
                &mut f,
                &format!("NaN at q(250, 999), {reduction:?}"),
                &bk,
                r,
                &bad(Arg::Q, 250, 999, BadValue::Nan),
            );
        }
        // Within-row chunks: column 39,999 of rows of 40,000.
        let (rows, cols) = (4, 40_000);
        let p = with_value(rows, cols, 3, 39_999, -1e-3);
        for reduction in REDUCTIONS {
            let r = eval(
                &bk.ctx,
                Measure::Entropy,
                Input::new(&p, rows, Form::Probs),
                None,
                cols,
                &Options::default().reduction(reduction),
            );
            check_err(
                &mut f,
                &format!("negative at p(3, 39999), {reduction:?}"),
                &bk,
                r,
                &bad(Arg::P, 3, 39_999, BadValue::Negative),
            );
        }
        // An unnormalised row in a later chunk.
        let mut p = vec![1.0 / cols as f32; rows * cols];
        p[2 * cols + 20_000] += 0.5;
        let r = eval(
            &bk.ctx,
            Measure::Entropy,
            Input::new(&p, rows, Form::Probs),
            None,
            cols,
            &Options::default(),
        );
        check_err(
            &mut f,
            "unnormalised long row 2",
            &bk,
            r,
            &|e| matches!(e, Error::NotNormalized { arg: Arg::P, row: 2, sum, .. } if (sum - 1.5).abs() < 1e-3),
        );
    }
    report("bad values in chunks", &f);
}

#[test]
fn shapes_and_lengths() {
    let mut f = Vec::new();
    let p6 = [1.0f32 / 3.0; 6];
    let p9 = [1.0f32 / 3.0; 9];
    let p8 = [0.25f32; 8];
    for bk in all() {
        let o = Options::default();
        let r = bk
            .ctx
            .kl(&Batch::new(&p6, 2, 3), &Batch::new(&p9, 3, 3), &o);
        check_err(&mut f, "2x3 vs 3x3", &bk, r, &|e| {
            matches!(
                e,
                Error::ShapeMismatch {
                    p_rows: 2,
                    p_cols: 3,
                    q_rows: 3,
                    q_cols: 3
                }
            )
        });
        let r = bk
            .ctx
            .js(&Batch::new(&p6, 2, 3), &Batch::new(&p8, 2, 4), &o);
        check_err(&mut f, "2x3 vs 2x4", &bk, r, &|e| {
            matches!(
                e,
                Error::ShapeMismatch {
                    p_rows: 2,
                    p_cols: 3,
                    q_rows: 2,
                    q_cols: 4
                }
            )
        });
        let r = bk
            .ctx
            .kl(&Batch::new(&p6[..3], 1, 3), &Batch::new(&p8, 2, 4), &o);
        check_err(&mut f, "1x3 vs 2x4", &bk, r, &|e| {
            matches!(e, Error::ShapeMismatch { .. })
        });
        let r = bk.ctx.entropy(&Batch::new(&p6[..5], 2, 3), &o);
        check_err(&mut f, "5 values for 2x3", &bk, r, &|e| {
            matches!(
                e,
                Error::Length {
                    arg: Arg::P,
                    len: 5,
                    rows: 2,
                    cols: 3,
                    expected: 6
                }
            )
        });
        let r = bk
            .ctx
            .cross_entropy(&Batch::new(&p6, 2, 3), &Batch::new(&p9, 2, 3), &o);
        check_err(&mut f, "9 values in q for 2x3", &bk, r, &|e| {
            matches!(
                e,
                Error::Length {
                    arg: Arg::Q,
                    len: 9,
                    rows: 2,
                    cols: 3,
                    expected: 6
                }
            )
        });
        let empty: [f32; 0] = [];
        let r = bk.ctx.entropy(&Batch::new(&empty, 0, 3), &o);
        check_err(&mut f, "0 rows", &bk, r, &|e| {
            matches!(
                e,
                Error::Empty {
                    arg: Arg::P,
                    rows: 0,
                    cols: 3
                }
            )
        });
        let r = bk
            .ctx
            .kl(&Batch::new(&p6, 2, 3), &Batch::new(&empty, 2, 0), &o);
        check_err(&mut f, "0 columns in q", &bk, r, &|e| {
            matches!(
                e,
                Error::Empty {
                    arg: Arg::Q,
                    rows: 2,
                    cols: 0
                }
            )
        });
        let r = bk
            .ctx
            .evaluate(Measure::Kl, &Batch::new(&p6, 2, 3), None, &o);
        check_err(&mut f, "KL without q", &bk, r, &|e| {
            matches!(e, Error::MissingArg { arg: Arg::Q, .. })
        });
    }
    report("shapes", &f);
}

#[test]
fn row_sums() {
    let mut f = Vec::new();
    let cols = 4;
    for bk in all() {
        // Validate: a row off by more than the tolerance is an error naming it.
        let mut p = vec![0.25f32; 3 * cols];
        p[2 * cols] = 0.15; // row 2 sums to 0.9
        for m in [Measure::Entropy, Measure::Kl] {
            let good = vec![0.25f32; 3 * cols];
            let r = eval(
                &bk.ctx,
                m,
                Input::new(&p, 3, Form::Probs),
                Some(Input::new(&good, 3, Form::Probs)),
                cols,
                &Options::default(),
            );
            check_err(
                &mut f,
                &format!("unnormalised p row 2, {m:?}"),
                &bk,
                r,
                &|e| matches!(e, Error::NotNormalized { arg: Arg::P, row: 2, sum, tolerance } if (sum - 0.9).abs() < 1e-5 && *tolerance == kullback::DEFAULT_TOLERANCE),
            );
        }
        let good = vec![0.25f32; 3 * cols];
        let r = eval(
            &bk.ctx,
            Measure::Kl,
            Input::new(&good, 3, Form::Probs),
            Some(Input::new(&p, 3, Form::Probs)),
            cols,
            &Options::default().reduction(Reduction::Sum),
        );
        check_err(&mut f, "unnormalised q row 2, sum", &bk, r, &|e| {
            matches!(
                e,
                Error::NotNormalized {
                    arg: Arg::Q,
                    row: 2,
                    ..
                }
            )
        });
        // Log-probabilities: Σ exp(lp) is checked.
        let lp: Vec<f32> = p.iter().map(|v| v.ln()).collect();
        let r = eval(
            &bk.ctx,
            Measure::Entropy,
            Input::new(&lp, 3, Form::LogProbs),
            None,
            cols,
            &Options::default(),
        );
        check_err(&mut f, "unnormalised log-probs row 2", &bk, r, &|e| {
            matches!(
                e,
                Error::NotNormalized {
                    arg: Arg::P,
                    row: 2,
                    ..
                }
            )
        });
        // A tighter tolerance catches a smaller drift; the default lets it pass.
        let mut d = vec![0.25f32; cols];
        d[0] += 1e-4;
        let r = eval(
            &bk.ctx,
            Measure::Entropy,
            Input::new(&d, 1, Form::Probs),
            None,
            cols,
            &Options::default().tolerance(1e-5),
        );
        check_err(&mut f, "drift 1e-4 under tolerance 1e-5", &bk, r, &|e| {
            matches!(e, Error::NotNormalized { row: 0, .. })
        });
        match eval(
            &bk.ctx,
            Measure::Entropy,
            Input::new(&d, 1, Form::Probs),
            None,
            cols,
            &Options::default(),
        ) {
            Ok(out) => {
                let want = ref_measure(
                    Measure::Entropy,
                    Input::new(&d, 1, Form::Probs),
                    None,
                    cols,
                    Normalization::Validate,
                    Base::E,
                );
                if !close(out.values[0] as f64, want[0]) {
                    f.push(format!(
                        "drift 1e-4 [{}]: got {}, expected {}",
                        bk.name, out.values[0], want[0]
                    ));
                }
            }
            Err(e) => f.push(format!(
                "drift 1e-4 under the default tolerance [{}]: {e}",
                bk.name
            )),
        }
        // AsGiven: the terms of the unnormalised row, summed with no check.
        let as_given = Options::default().normalization(Normalization::AsGiven);
        let want = ref_measure(
            Measure::Entropy,
            Input::new(&p, 3, Form::Probs),
            None,
            cols,
            Normalization::AsGiven,
            Base::E,
        );
        match eval(
            &bk.ctx,
            Measure::Entropy,
            Input::new(&p, 3, Form::Probs),
            None,
            cols,
            &as_given,
        ) {
            Ok(out) => {
                if let Err(e) = check_output(&out, &want, 3.0, Reduction::None, ABS_TOL, REL_TOL) {
                    f.push(format!("AsGiven [{}]: {e}", bk.name));
                }
            }
            Err(e) => f.push(format!("AsGiven [{}]: {e}", bk.name)),
        }
        // Renormalize: a row summing to 0, or to a subnormal, cannot be divided.
        let renorm = Options::default().normalization(Normalization::Renormalize);
        let mut z = vec![3.0f32; 3 * cols];
        for v in &mut z[cols..2 * cols] {
            *v = 0.0;
        }
        for reduction in REDUCTIONS {
            let r = eval(
                &bk.ctx,
                Measure::Entropy,
                Input::new(&z, 3, Form::Probs),
                None,
                cols,
                &renorm.reduction(reduction),
            );
            check_err(
                &mut f,
                &format!("zero-sum p row 1, {reduction:?}"),
                &bk,
                r,
                &|e| {
                    matches!(
                        e,
                        Error::CannotNormalize {
                            arg: Arg::P,
                            row: 1,
                            ..
                        }
                    )
                },
            );
        }
        let ones = vec![1.0f32; 3 * cols];
        let r = eval(
            &bk.ctx,
            Measure::Js,
            Input::new(&ones, 3, Form::Probs),
            Some(Input::new(&z, 3, Form::Probs)),
            cols,
            &renorm,
        );
        check_err(&mut f, "zero-sum q row 1, JS", &bk, r, &|e| {
            matches!(
                e,
                Error::CannotNormalize {
                    arg: Arg::Q,
                    row: 1,
                    ..
                }
            )
        });
        // a subnormal sum is normalised like any other (it was refused before
        // the hardening issue, item 10): only an all-zero row cannot be
        let sub = [1e-40f32, 1e-40, 0.0, 2e-40];
        check_measure(
            &mut f,
            &bk,
            "subnormal-sum row",
            Measure::Entropy,
            Input::new(&sub, 1, Form::Probs),
            None,
            cols,
            Normalization::Renormalize,
            Base::E,
            &REDUCTIONS,
        );
        // Renormalize accepts log-probabilities above 0.
        let up = [1.0f32, 2.0, 0.5, -1.0];
        let want = ref_measure(
            Measure::Entropy,
            Input::new(&up, 1, Form::LogProbs),
            None,
            cols,
            Normalization::Renormalize,
            Base::E,
        );
        match eval(
            &bk.ctx,
            Measure::Entropy,
            Input::new(&up, 1, Form::LogProbs),
            None,
            cols,
            &renorm,
        ) {
            Ok(out) if close(out.values[0] as f64, want[0]) => {}
            other => f.push(format!(
                "renormalised positive log-probs [{}]: {other:?}, expected {want:?}",
                bk.name
            )),
        }
    }
    report("row sums", &f);
}

#[test]
fn invalid_options() {
    let mut f = Vec::new();
    let p = [0.5f32, 0.5];
    for bk in all() {
        for b in [1.0, 0.0, -2.0, f64::NAN, f64::INFINITY] {
            let o = Options::default().base(Base::Custom(b));
            let r = bk.ctx.entropy(&Batch::new(&p, 1, 2), &o);
            check_err(&mut f, &format!("base {b}"), &bk, r, &|e| {
                matches!(
                    e,
                    Error::InvalidOption {
                        option: Setting::Base,
                        ..
                    }
                )
            });
            let r = bk.ctx.nll(
                &Batch::new(&p, 1, 2),
                &[0i64][..],
                &NllOptions::default().base(Base::Custom(b)),
            );
            check_err(&mut f, &format!("NLL base {b}"), &bk, r, &|e| {
                matches!(
                    e,
                    Error::InvalidOption {
                        option: Setting::Base,
                        ..
                    }
                )
            });
        }
        for t in [-1.0f32, f32::NAN] {
            let r = bk
                .ctx
                .entropy(&Batch::new(&p, 1, 2), &Options::default().tolerance(t));
            check_err(&mut f, &format!("tolerance {t}"), &bk, r, &|e| {
                matches!(
                    e,
                    Error::InvalidOption {
                        option: Setting::Tolerance,
                        ..
                    }
                )
            });
        }
        for eps in [-0.1f32, 1.5, f32::NAN] {
            let r = bk.ctx.nll(
                &Batch::new(&p, 1, 2),
                &[0i64][..],
                &NllOptions::default().label_smoothing(eps),
            );
            check_err(&mut f, &format!("label smoothing {eps}"), &bk, r, &|e| {
                matches!(
                    e,
                    Error::InvalidOption {
                        option: Setting::LabelSmoothing,
                        ..
                    }
                )
            });
        }
        // A custom base that is valid gives nats / ln(base).
        match bk.ctx.entropy(
            &Batch::new(&p, 1, 2),
            &Options::default().base(Base::Custom(4.0)),
        ) {
            Ok(out) if close(out.values[0] as f64, 0.5) => {}
            other => f.push(format!(
                "H([.5,.5]) base 4 [{}]: {other:?}, expected 0.5",
                bk.name
            )),
        }
    }
    report("options", &f);
}

#[test]
fn f64_input_that_does_not_fit_f32() {
    let mut f = Vec::new();
    for bk in all() {
        // q = 1e-50 would become 0 and turn a finite KL into +inf: an error.
        let p = [0.25f64, 0.25, 0.25, 0.25, 0.5, 0.5, 0.0, 0.0];
        let q = [0.25f64, 0.25, 0.25, 0.25, 0.5, 0.5 - 1e-50, 1e-50, 0.0];
        let r = bk.ctx.kl(
            &Batch::new(&p, 2, 4),
            &Batch::new(&q, 2, 4),
            &Options::default(),
        );
        check_err(
            &mut f,
            "f64 q 1e-50",
            &bk,
            r,
            &bad(Arg::Q, 1, 2, BadValue::Underflow),
        );
        let r = bk.ctx.entropy(&Batch::new(&q, 2, 4), &Options::default());
        check_err(
            &mut f,
            "f64 p 1e-50",
            &bk,
            r,
            &bad(Arg::P, 1, 2, BadValue::Underflow),
        );
        // A finite f64 beyond f32's range.
        let big = [0.0f64, 1e39, 1.0];
        let r = bk.ctx.entropy(
            &Batch::new(&big, 1, 3).form(Form::Logits),
            &Options::default(),
        );
        check_err(
            &mut f,
            "f64 logit 1e39",
            &bk,
            r,
            &bad(Arg::P, 0, 1, BadValue::Overflow),
        );
        let r = bk.ctx.nll(
            &Batch::new(&big, 1, 3).form(Form::Logits),
            &[0i64][..],
            &NllOptions::default(),
        );
        check_err(
            &mut f,
            "f64 NLL logit 1e39",
            &bk,
            r,
            &bad(Arg::Q, 0, 1, BadValue::Overflow),
        );
        // A logit of 1e-50 is just 0 in f32: no error, and the value is right.
        let l = [1e-50f64, 0.0];
        match bk.ctx.entropy(
            &Batch::new(&l, 1, 2).form(Form::Logits),
            &Options::default(),
        ) {
            Ok(out) if close(out.values[0] as f64, LN2) => {}
            other => f.push(format!("f64 logit 1e-50 [{}]: {other:?}", bk.name)),
        }
        // f64 input that fits gives the same value as its f32 rounding.
        let p64 = [0.1f64, 0.2, 0.7];
        let p32: Vec<f32> = p64.iter().map(|&v| v as f32).collect();
        let a = bk.ctx.entropy(&Batch::new(&p64, 1, 3), &Options::default());
        let b = bk.ctx.entropy(&Batch::new(&p32, 1, 3), &Options::default());
        match (a, b) {
            (Ok(a), Ok(b)) if a.values == b.values => {}
            other => f.push(format!("f64 vs f32 [{}]: {other:?}", bk.name)),
        }
    }
    report("f64 input", &f);
}

#[test]
fn nll_targets_and_weights() {
    let mut f = Vec::new();
    let q = [0.2f32, 0.3, 0.5, 0.1, 0.1, 0.8, 0.6, 0.2, 0.2];
    let qb = Batch::new(&q, 3, 3);
    for bk in all() {
        let o = NllOptions::default();
        let r = bk.ctx.nll(&qb, &[0i64, 3, 1][..], &o);
        check_err(&mut f, "target 3 of 3 classes", &bk, r, &|e| {
            matches!(
                e,
                Error::TargetOutOfRange {
                    row: 1,
                    target: 3,
                    classes: 3
                }
            )
        });
        let r = bk.ctx.nll(&qb, &[0i64, 1, -100][..], &o);
        check_err(&mut f, "target -100 without ignore_index", &bk, r, &|e| {
            matches!(
                e,
                Error::TargetOutOfRange {
                    row: 2,
                    target: -100,
                    classes: 3
                }
            )
        });
        let r = bk.ctx.nll(&qb, &[0i32, 1, 7][..], &o.ignore_index(-100));
        check_err(&mut f, "i32 target 7", &bk, r, &|e| {
            matches!(
                e,
                Error::TargetOutOfRange {
                    row: 2,
                    target: 7,
                    ..
                }
            )
        });
        let r = bk.ctx.nll(&qb, &[5u32, 1, 2][..], &o);
        check_err(&mut f, "u32 target 5", &bk, r, &|e| {
            matches!(
                e,
                Error::TargetOutOfRange {
                    row: 0,
                    target: 5,
                    ..
                }
            )
        });
        let r = bk.ctx.nll(&qb, &[0i64, 1][..], &o);
        check_err(&mut f, "2 targets for 3 rows", &bk, r, &|e| {
            matches!(
                e,
                Error::TargetCount {
                    targets: 2,
                    q_rows: 3,
                    q_cols: 3,
                }
            )
        });
        let r = bk.ctx.nll(&qb, &[0i64; 0][..], &o);
        check_err(&mut f, "no targets", &bk, r, &|e| {
            matches!(
                e,
                Error::Empty {
                    arg: Arg::Targets,
                    ..
                }
            )
        });
        let w2 = [1.0f32, 2.0];
        let r = bk.ctx.nll(&qb, &[0i64, 1, 2][..], &o.weights(&w2));
        check_err(&mut f, "2 weights for 3 classes", &bk, r, &|e| {
            matches!(
                e,
                Error::Length {
                    arg: Arg::Weights,
                    len: 2,
                    ..
                }
            )
        });
        let wn = [1.0f32, -2.0, 1.0];
        let r = bk.ctx.nll(&qb, &[0i64, 1, 2][..], &o.weights(&wn));
        check_err(&mut f, "negative weight", &bk, r, &|e| {
            matches!(
                e,
                Error::BadValue {
                    arg: Arg::Weights,
                    col: Some(1),
                    what: BadValue::Negative,
                    ..
                }
            )
        });
        let mut qn = q;
        qn[4] = f32::NAN;
        let r = bk.ctx.nll(&Batch::new(&qn, 3, 3), &[0i64, 1, 2][..], &o);
        check_err(
            &mut f,
            "NaN in q",
            &bk,
            r,
            &bad(Arg::Q, 1, 1, BadValue::Nan),
        );
        let mut qu = q;
        qu[8] = 0.5; // row 2 sums to 1.3
        let r = bk.ctx.nll(
            &Batch::new(&qu, 3, 3),
            &[0i64, 1, 2][..],
            &o.reduction(Reduction::Mean),
        );
        check_err(&mut f, "unnormalised q row 2", &bk, r, &|e| {
            matches!(
                e,
                Error::NotNormalized {
                    arg: Arg::Q,
                    row: 2,
                    ..
                }
            )
        });
        // Values: -ln q_t; q_t = 0 is +inf; i32 / u32 / i64 targets agree.
        let qz = [0.5f32, 0.5, 0.0];
        let r = bk.ctx.nll(&Batch::new(&qz, 1, 3), &[0u32, 2, 1][..], &o);
        match r {
            Ok(out)
                if out.values.len() == 3
                    && close(out.values[0] as f64, LN2)
                    && out.values[1] == f32::INFINITY
                    && close(out.values[2] as f64, LN2)
                    && out.rows == 3 => {}
            other => f.push(format!("NLL [ln2, inf, ln2] [{}]: {other:?}", bk.name)),
        }
    }
    report("NLL targets", &f);
}

#[test]
fn nll_all_ignored_mean_is_nan() {
    let mut f = Vec::new();
    let q = [0.0f32, 1.0, 2.0, 3.0, -1.0, 0.5];
    let qb = Batch::new(&q, 2, 3).form(Form::Logits);
    let t = [-100i64, -100];
    for bk in all() {
        let o = NllOptions::default().ignore_index(-100);
        match bk.ctx.nll(&qb, &t[..], &o.reduction(Reduction::Mean)) {
            Ok(out)
                if out.values.len() == 1
                    && out.values[0].is_nan()
                    && out.counted == 0.0
                    && out.perplexity.is_some_and(f64::is_nan) => {}
            other => f.push(format!(
                "all ignored, mean [{}]: {other:?} (want NaN, counted 0, perplexity NaN)",
                bk.name
            )),
        }
        match bk.ctx.nll(&qb, &t[..], &o.reduction(Reduction::Sum)) {
            Ok(out) if out.values == [0.0] && out.counted == 0.0 => {}
            other => f.push(format!(
                "all ignored, sum [{}]: {other:?} (want 0)",
                bk.name
            )),
        }
        match bk.ctx.nll(&qb, &t[..], &o) {
            Ok(out) if out.values == [0.0, 0.0] => {}
            other => f.push(format!(
                "all ignored, none [{}]: {other:?} (want [0, 0])",
                bk.name
            )),
        }
        // One row counted: the mean is that row's value, the perplexity exp of it.
        let t1 = [-100i64, 2];
        let want = ref_nll(
            Input::new(&q, 2, Form::Logits),
            3,
            &t1,
            Some(-100),
            None,
            0.0,
            Normalization::Validate,
            Base::E,
        )
        .0[1];
        match bk.ctx.nll(&qb, &t1[..], &o.reduction(Reduction::Mean)) {
            Ok(out)
                if close(out.values[0] as f64, want)
                    && out.counted == 1.0
                    && out
                        .perplexity
                        .is_some_and(|p| close_tol(p, want.exp(), 0.0, 1e-5)) => {}
            other => f.push(format!(
                "one counted row [{}]: {other:?}, want {want}",
                bk.name
            )),
        }
    }
    report("all ignored", &f);
}
