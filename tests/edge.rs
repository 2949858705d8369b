//! Zero rules, subnormal probabilities, and every kind of bad input: the right
//! [`Error`] variant naming the argument, row and column, on every backend
//! (CPU, GPU, GPU with capped bindings), under every reduction.

mod common;

use common::*;
use kullback::{
    Arg, BadValue, Base, Batch, Context, Error, Form, Measure, NllOptions, Normalization, Options,
    Output, Reduction, Setting,
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

/// One call of a table, with reduction none unless its options say: label,
/// measure, p (values, form), q, columns, options, the expected values.
type ValueCase<'a> = (
    &'a str,
    Measure,
    (&'a [f32], Form),
    Option<(&'a [f32], Form)>,
    usize,
    Options,
    &'a [f64],
);

/// [`value`] for every case of a table.
fn values(failures: &mut Vec<String>, cases: &[ValueCase<'_>]) {
    for &(label, measure, p, q, cols, opts, expected) in cases {
        value(failures, label, measure, p, q, cols, opts, expected);
    }
}

#[test]
fn zero_rules() {
    use Form::{LogProbs, Logits, Probs};
    use Measure::{CrossEntropy as Ce, Entropy as H, Js, Kl};
    let mut f = Vec::new();
    let o = Options::default();
    let ni = f64::INFINITY;
    let ninf = f32::NEG_INFINITY;
    let p = [0.0f32, 1.0, 0.0, 0.5, 0.5, 0.0];
    let q = [0.0f32, 1.0, 0.0, 0.5, 0.0, 0.5];
    let l5f = (0.5f32).ln();
    let lq = [ninf, 0.0, ninf, l5f, ninf, l5f];
    let lp = [ninf, 0.0, ninf];
    let a = [1.0f32, 0.0, 0.0, 0.0];
    let b = [0.0f32, 0.0, 0.0, 1.0];
    // JS with log forms where both sides are 0 in a column.
    let l5 = l5f as f64;
    let la = [0.0f32, ninf, ninf];
    let lb = [l5f, l5f, ninf];
    let js = 0.5 * (1.0 * (0.0 - (0.75f64).ln()))
        + 0.5 * (0.5 * (l5 - 0.75f64.ln()) + 0.5 * (l5 - 0.25f64.ln()));
    let p2 = [1.0f32, 0.0, 0.5, 0.5];
    let q2 = [0.0f32, 1.0, 0.5, 0.5];
    let (sum, mean) = (o.reduction(Reduction::Sum), o.reduction(Reduction::Mean));
    #[rustfmt::skip]
    let cases: &[ValueCase<'_>] = &[
        // 0 · ln 0 = 0.
        ("H([.5,.5,0])", H, (&[0.5, 0.5, 0.0], Probs), None, 3, o, &[LN2]),
        // p = 0 terms are 0 whatever q is (q = 0 included).
        ("CE p=0,q=0", Ce, (&p, Probs), Some((&q, Probs)), 3, o, &[0.0, ni]),
        ("KL p=0,q=0", Kl, (&p, Probs), Some((&q, Probs)), 3, o, &[0.0, ni]),
        // q as log-probabilities: log q = -inf under p = 0 is 0, under p > 0 is +inf.
        ("CE log q=-inf", Ce, (&p, Probs), Some((&lq, LogProbs)), 3, o, &[0.0, ni]),
        ("KL log q=-inf", Kl, (&p, Probs), Some((&lq, LogProbs)), 3, o, &[0.0, ni]),
        // p as log-probabilities with -inf: p = 0.
        ("H(log p = -inf)", H, (&lp, LogProbs), None, 3, o, &[0.0]),
        ("KL(log p=-inf || q=0)", Kl, (&lp, LogProbs), Some((&[0.0, 1.0, 0.0], Probs)), 3, o, &[0.0]),
        // Disjoint supports: KL +inf, JS ln 2 (1 bit), one-hot entropies 0.
        ("JS disjoint", Js, (&a, Probs), Some((&b, Probs)), 4, o, &[LN2]),
        ("JS disjoint bits", Js, (&a, Probs), Some((&b, Probs)), 4, o.base(Base::Two), &[1.0]),
        ("JS same", Js, (&a, Probs), Some((&a, Probs)), 4, o, &[0.0]),
        ("KL disjoint", Kl, (&a, Probs), Some((&b, Probs)), 4, o, &[ni]),
        ("H one-hot", H, (&a, Probs), None, 4, o, &[0.0]),
        ("CE one-hot same", Ce, (&a, Probs), Some((&a, Probs)), 4, o, &[0.0]),
        ("JS log forms, shared -inf column", Js, (&la, LogProbs), Some((&lb, LogProbs)), 3, o, &[js]),
        // Masked logits.
        ("H masked logits", H, (&[3.0, ninf, 3.0], Logits), None, 3, o, &[LN2]),
        ("KL masked q logit under p > 0", Kl, (&[0.0, 0.0, ninf], Logits), Some((&[0.0, ninf, 0.0], Logits)), 3, o, &[ni]),
        ("KL masked p logit", Kl, (&[ninf, 0.0, ninf], Logits), Some((&[7.0, 7.0, ninf], Logits)), 3, o, &[LN2]),
        ("JS disjoint masked logits", Js, (&[5.0, ninf], Logits), Some((&[ninf, -5.0], Logits)), 2, o, &[LN2]),
        // +inf rows make sum and mean +inf; finite rows alongside.
        ("KL sum with +inf row", Kl, (&p2, Probs), Some((&q2, Probs)), 2, sum, &[ni]),
        ("KL mean with +inf row", Kl, (&p2, Probs), Some((&q2, Probs)), 2, mean, &[ni]),
        // N = 1.
        ("KL 1 column", Kl, (&[1.0, 1.0], Probs), Some((&[1.0, 1.0], Probs)), 1, o, &[0.0, 0.0]),
    ];
    values(&mut f, cases);
    report("zero rules", &f);
}

#[test]
fn subnormal_probabilities() {
    use Form::{LogProbs, Probs};
    use Measure::{CrossEntropy as Ce, Entropy as H, Js, Kl};
    let mut f = Vec::new();
    let o = Options::default();
    let (s1, s2) = (1e-40f32, 3e-44f32);
    assert!(s1 != 0.0 && !s1.is_normal() && s2 != 0.0 && !s2.is_normal());
    let (l1, l2) = ((s1 as f64).ln(), (s2 as f64).ln());
    // In q: ln(1e-40) = -92.10 (WGSL's log gives -88.02 on lavapipe), ln(3e-44) = -100.93.
    let pq = [0.5f32, 0.5, 0.0, 1.0, 0.0, 0.0];
    let sq = [s1, 1.0, 0.0, s2, 1.0, 0.0];
    let ce = [-0.5 * l1, -l2];
    let kl = [0.5 * (0.5f64.ln() - l1) + 0.5 * 0.5f64.ln(), -l2];
    // In p: a subnormal p is not zero: over q = 0 it gives +inf.
    let sp = [s1, 1.0, 0.0, s2, 0.0, 1.0];
    let q0 = [0.0f32, 1.0, 0.0, 0.0, 0.0, 1.0];
    let h = [-(s1 as f64) * l1, -(s2 as f64) * l2];
    // Renormalised rows whose sum is normal but whose terms are subnormal.
    let tiny = [2e-38f32, 1e-40, 3e-44];
    let renorm = Normalization::Renormalize;
    let tiny_h = ref_measure(H, Input::new(&tiny, 1, Probs), None, 3, renorm, Base::E);
    assert!(tiny_h[0] > 0.03, "reference {tiny_h:?}");
    // Log forms whose probabilities are subnormal in f32: exp(-92) = 1.1e-40.
    let half = [0.5f32, 0.5];
    let lq = [-92.0f32, 0.0];
    let oracle = |m| {
        let (p, q) = (Input::new(&half, 1, Probs), Input::new(&lq, 1, LogProbs));
        ref_measure(m, p, Some(q), 2, Normalization::Validate, Base::E)
    };
    let (js, kl92) = (oracle(Js), oracle(Kl));
    #[rustfmt::skip]
    let cases: &[ValueCase<'_>] = &[
        ("CE subnormal q", Ce, (&pq, Probs), Some((&sq, Probs)), 3, o, &ce),
        ("KL subnormal q", Kl, (&pq, Probs), Some((&sq, Probs)), 3, o, &kl),
        ("KL subnormal p over q=0", Kl, (&sp, Probs), Some((&q0, Probs)), 3, o, &[f64::INFINITY; 2]),
        ("CE subnormal p over q=0", Ce, (&sp, Probs), Some((&q0, Probs)), 3, o, &[f64::INFINITY; 2]),
        ("H subnormal p", H, (&sp, Probs), None, 3, o, &h),
        ("H renormalised tiny row", H, (&tiny, Probs), None, 3, o.normalization(renorm), &tiny_h),
        ("JS with q log-prob -92 (subnormal probability)", Js, (&half, Probs), Some((&lq, LogProbs)), 2, o, &js),
        ("KL with q log-prob -92", Kl, (&half, Probs), Some((&lq, LogProbs)), 2, o, &kl92),
    ];
    values(&mut f, cases);
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

/// A call on a context (of a table of calls that must fail).
type Call<'a> = &'a dyn Fn(&Context) -> kullback::Result<Output>;
/// The test of the error a call must give.
type Wanted<'a> = &'a dyn Fn(&Error) -> bool;
/// A call that must fail: label, the call, the error it must give.
type ErrCase<'a> = (&'a str, Call<'a>, Wanted<'a>);

/// The call of `m` over `p` (and `q`) of `cols` columns under `o`.
fn call<'a>(
    m: Measure,
    p: Input<'a>,
    q: Option<Input<'a>>,
    cols: usize,
    o: Options,
) -> impl Fn(&Context) -> kullback::Result<Output> + 'a {
    move |c| eval(c, m, p, q, cols, &o)
}

/// `rows` rows of probabilities.
fn probs(data: &[f32], rows: usize) -> Input<'_> {
    Input::new(data, rows, Form::Probs)
}

/// `rows` rows of logits.
fn logits(data: &[f32], rows: usize) -> Input<'_> {
    Input::new(data, rows, Form::Logits)
}

/// [`check_err`] for every case of a table, on every backend.
fn errors(failures: &mut Vec<String>, cases: &[ErrCase<'_>]) {
    for bk in all() {
        for (label, call, want) in cases {
            check_err(failures, label, &bk, call(&bk.ctx), want);
        }
    }
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
    }
    let o = Options::default();
    // -inf probability: negative (or infinite), row and column named.
    let minus_inf = with_value(rows, cols, 1, 3, f32::NEG_INFINITY);
    // The first bad row is the one named.
    let mut two_bad = good.clone();
    two_bad[3 * cols + 1] = f32::NAN;
    two_bad[cols + 6] = -1.0;
    // A bad broadcast row is row 0 of its argument.
    let one = with_value(1, cols, 0, 4, f32::NAN);
    // All -inf logits: the row cannot be normalised.
    let mut l = vec![0.5f32; rows * cols];
    for v in &mut l[2 * cols..3 * cols] {
        *v = f32::NEG_INFINITY;
    }
    let ok = vec![0.1f32; rows * cols];
    let targets = [0i64, 1, 2, 3];
    let nll = |c: &Context| {
        let q = Batch::new(&l, rows, cols).form(Form::Logits);
        c.nll(&q, &targets[..], &NllOptions::default())
    };
    #[rustfmt::skip]
    let cases: &[ErrCase<'_>] = &[
        ("-inf probability", &call(Measure::Entropy, probs(&minus_inf, rows), None, cols, o),
            &|e| matches!(e, Error::BadValue { arg: Arg::P, row: 1, col: Some(3), what: BadValue::Negative | BadValue::Infinite })),
        ("first of two bad rows", &call(Measure::Entropy, probs(&two_bad, rows), None, cols, o.reduction(Reduction::Mean)),
            &bad(Arg::P, 1, 6, BadValue::Negative)),
        ("NaN in a one-row q", &call(Measure::Kl, probs(&good, rows), Some(probs(&one, 1)), cols, o),
            &|e| matches!(e, Error::BadValue { arg: Arg::Q, col: Some(4), what: BadValue::Nan, .. })),
        ("all -inf logits in p", &call(Measure::Entropy, logits(&l, rows), None, cols, o),
            &|e| matches!(e, Error::CannotNormalize { arg: Arg::P, row: 2, .. })),
        ("all -inf logits in q", &call(Measure::Kl, logits(&ok, rows), Some(logits(&l, rows)), cols, o),
            &|e| matches!(e, Error::CannotNormalize { arg: Arg::Q, row: 2, .. })),
        ("NLL all -inf logits", &nll,
            &|e| matches!(e, Error::CannotNormalize { arg: Arg::Q, row: 2, .. })),
    ];
    errors(&mut f, cases);
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
    let empty: [f32; 0] = [];
    let o = Options::default();
    #[rustfmt::skip]
    let cases: &[ErrCase<'_>] = &[
        ("2x3 vs 3x3", &|c| c.kl(&Batch::new(&p6, 2, 3), &Batch::new(&p9, 3, 3), &o),
            &|e| matches!(e, Error::ShapeMismatch { p_rows: 2, p_cols: 3, q_rows: 3, q_cols: 3 })),
        ("2x3 vs 2x4", &|c| c.js(&Batch::new(&p6, 2, 3), &Batch::new(&p8, 2, 4), &o),
            &|e| matches!(e, Error::ShapeMismatch { p_rows: 2, p_cols: 3, q_rows: 2, q_cols: 4 })),
        ("1x3 vs 2x4", &|c| c.kl(&Batch::new(&p6[..3], 1, 3), &Batch::new(&p8, 2, 4), &o),
            &|e| matches!(e, Error::ShapeMismatch { .. })),
        ("5 values for 2x3", &|c| c.entropy(&Batch::new(&p6[..5], 2, 3), &o),
            &|e| matches!(e, Error::Length { arg: Arg::P, len: 5, rows: 2, cols: 3, expected: 6 })),
        ("9 values in q for 2x3", &|c| c.cross_entropy(&Batch::new(&p6, 2, 3), &Batch::new(&p9, 2, 3), &o),
            &|e| matches!(e, Error::Length { arg: Arg::Q, len: 9, rows: 2, cols: 3, expected: 6 })),
        ("0 rows", &|c| c.entropy(&Batch::new(&empty, 0, 3), &o),
            &|e| matches!(e, Error::Empty { arg: Arg::P, rows: 0, cols: 3 })),
        ("0 columns in q", &|c| c.kl(&Batch::new(&p6, 2, 3), &Batch::new(&empty, 2, 0), &o),
            &|e| matches!(e, Error::Empty { arg: Arg::Q, rows: 2, cols: 0 })),
        ("KL without q", &|c| c.evaluate(Measure::Kl, &Batch::new(&p6, 2, 3), None, &o),
            &|e| matches!(e, Error::MissingArg { arg: Arg::Q, .. })),
    ];
    errors(&mut f, cases);
    report("shapes", &f);
}

#[test]
fn row_sums() {
    let mut f = Vec::new();
    let cols = 4;
    // Validate: a row off by more than the tolerance is an error naming it.
    let mut p = vec![0.25f32; 3 * cols];
    p[2 * cols] = 0.15; // row 2 sums to 0.9
    let good = vec![0.25f32; 3 * cols];
    // Log-probabilities: Σ exp(lp) is checked.
    let lp: Vec<f32> = p.iter().map(|v| v.ln()).collect();
    // A tighter tolerance catches a smaller drift; the default lets it pass.
    let mut d = vec![0.25f32; cols];
    d[0] += 1e-4;
    // Renormalize: a row summing to 0 cannot be divided.
    let renorm = Options::default().normalization(Normalization::Renormalize);
    let mut z = vec![3.0f32; 3 * cols];
    for v in &mut z[cols..2 * cols] {
        *v = 0.0;
    }
    let ones = vec![1.0f32; 3 * cols];
    let o = Options::default();
    let row_2_of_p_sums_to_0_9 = |e: &Error| {
        matches!(e, Error::NotNormalized { arg: Arg::P, row: 2, sum, tolerance }
            if (sum - 0.9).abs() < 1e-5 && *tolerance == kullback::DEFAULT_TOLERANCE)
    };
    let row_1_of_p_is_zero = |e: &Error| {
        matches!(
            e,
            Error::CannotNormalize {
                arg: Arg::P,
                row: 1,
                ..
            }
        )
    };
    let (p3, good3, z3) = (probs(&p, 3), probs(&good, 3), probs(&z, 3));
    let (sum, mean) = (Reduction::Sum, Reduction::Mean);
    #[rustfmt::skip]
    let cases: &[ErrCase<'_>] = &[
        ("unnormalised p row 2, Entropy", &call(Measure::Entropy, p3, Some(good3), cols, o), &row_2_of_p_sums_to_0_9),
        ("unnormalised p row 2, Kl", &call(Measure::Kl, p3, Some(good3), cols, o), &row_2_of_p_sums_to_0_9),
        ("unnormalised q row 2, sum", &call(Measure::Kl, good3, Some(p3), cols, o.reduction(sum)),
            &|e| matches!(e, Error::NotNormalized { arg: Arg::Q, row: 2, .. })),
        ("unnormalised log-probs row 2", &call(Measure::Entropy, Input::new(&lp, 3, Form::LogProbs), None, cols, o),
            &|e| matches!(e, Error::NotNormalized { arg: Arg::P, row: 2, .. })),
        ("drift 1e-4 under tolerance 1e-5", &call(Measure::Entropy, probs(&d, 1), None, cols, o.tolerance(1e-5)),
            &|e| matches!(e, Error::NotNormalized { row: 0, .. })),
        ("zero-sum p row 1, None", &call(Measure::Entropy, z3, None, cols, renorm), &row_1_of_p_is_zero),
        ("zero-sum p row 1, Sum", &call(Measure::Entropy, z3, None, cols, renorm.reduction(sum)), &row_1_of_p_is_zero),
        ("zero-sum p row 1, Mean", &call(Measure::Entropy, z3, None, cols, renorm.reduction(mean)), &row_1_of_p_is_zero),
        ("zero-sum q row 1, JS", &call(Measure::Js, probs(&ones, 3), Some(z3), cols, renorm),
            &|e| matches!(e, Error::CannotNormalize { arg: Arg::Q, row: 1, .. })),
    ];
    errors(&mut f, cases);
    // The drift passes the default tolerance; Renormalize accepts
    // log-probabilities above 0.
    let up = [1.0f32, 2.0, 0.5, -1.0];
    let oracle = |x: Input<'_>, norm| ref_measure(Measure::Entropy, x, None, cols, norm, Base::E);
    let drift = oracle(probs(&d, 1), Normalization::Validate);
    let up_h = oracle(
        Input::new(&up, 1, Form::LogProbs),
        Normalization::Renormalize,
    );
    #[rustfmt::skip]
    let cases: &[ValueCase<'_>] = &[
        ("drift 1e-4 under the default tolerance", Measure::Entropy, (&d, Form::Probs), None, cols, o, &drift),
        ("renormalised positive log-probs", Measure::Entropy, (&up, Form::LogProbs), None, cols, renorm, &up_h),
    ];
    values(&mut f, cases);
    // AsGiven: the terms of the unnormalised row, summed with no check.
    let as_given = Normalization::AsGiven;
    let want = oracle(p3, as_given);
    for bk in all() {
        match eval(
            &bk.ctx,
            Measure::Entropy,
            p3,
            None,
            cols,
            &o.normalization(as_given),
        ) {
            Ok(out) => {
                if let Err(e) = check_output(&out, &want, 3.0, Reduction::None, ABS_TOL, REL_TOL) {
                    f.push(format!("AsGiven [{}]: {e}", bk.name));
                }
            }
            Err(e) => f.push(format!("AsGiven [{}]: {e}", bk.name)),
        }
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
    // q = 1e-50 would become 0 and turn a finite KL into +inf: an error.
    let p = [0.25f64, 0.25, 0.25, 0.25, 0.5, 0.5, 0.0, 0.0];
    let q = [0.25f64, 0.25, 0.25, 0.25, 0.5, 0.5 - 1e-50, 1e-50, 0.0];
    // A finite f64 beyond f32's range.
    let big = [0.0f64, 1e39, 1.0];
    let (o, nll) = (Options::default(), NllOptions::default());
    let big_logits = || Batch::new(&big, 1, 3).form(Form::Logits);
    #[rustfmt::skip]
    let cases: &[ErrCase<'_>] = &[
        ("f64 q 1e-50", &|c| c.kl(&Batch::new(&p, 2, 4), &Batch::new(&q, 2, 4), &o),
            &bad(Arg::Q, 1, 2, BadValue::Underflow)),
        ("f64 p 1e-50", &|c| c.entropy(&Batch::new(&q, 2, 4), &o),
            &bad(Arg::P, 1, 2, BadValue::Underflow)),
        ("f64 logit 1e39", &|c| c.entropy(&big_logits(), &o),
            &bad(Arg::P, 0, 1, BadValue::Overflow)),
        ("f64 NLL logit 1e39", &|c| c.nll(&big_logits(), &[0i64][..], &nll),
            &bad(Arg::Q, 0, 1, BadValue::Overflow)),
    ];
    errors(&mut f, cases);
    for bk in all() {
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
    let o = NllOptions::default();
    let w2 = [1.0f32, 2.0];
    let wn = [1.0f32, -2.0, 1.0];
    let mut qn = q;
    qn[4] = f32::NAN;
    let mut qu = q;
    qu[8] = 0.5; // row 2 sums to 1.3
    let t012 = [0i64, 1, 2];
    #[rustfmt::skip]
    let cases: &[ErrCase<'_>] = &[
        ("target 3 of 3 classes", &|c| c.nll(&qb, &[0i64, 3, 1][..], &o),
            &|e| matches!(e, Error::TargetOutOfRange { row: 1, target: 3, classes: 3 })),
        ("target -100 without ignore_index", &|c| c.nll(&qb, &[0i64, 1, -100][..], &o),
            &|e| matches!(e, Error::TargetOutOfRange { row: 2, target: -100, classes: 3 })),
        ("i32 target 7", &|c| c.nll(&qb, &[0i32, 1, 7][..], &o.ignore_index(-100)),
            &|e| matches!(e, Error::TargetOutOfRange { row: 2, target: 7, .. })),
        ("u32 target 5", &|c| c.nll(&qb, &[5u32, 1, 2][..], &o),
            &|e| matches!(e, Error::TargetOutOfRange { row: 0, target: 5, .. })),
        ("2 targets for 3 rows", &|c| c.nll(&qb, &[0i64, 1][..], &o),
            &|e| matches!(e, Error::TargetCount { targets: 2, q_rows: 3, q_cols: 3 })),
        ("no targets", &|c| c.nll(&qb, &[0i64; 0][..], &o),
            &|e| matches!(e, Error::Empty { arg: Arg::Targets, .. })),
        ("2 weights for 3 classes", &|c| c.nll(&qb, &t012[..], &o.weights(&w2)),
            &|e| matches!(e, Error::Length { arg: Arg::Weights, len: 2, .. })),
        ("negative weight", &|c| c.nll(&qb, &t012[..], &o.weights(&wn)),
            &|e| matches!(e, Error::BadValue { arg: Arg::Weights, col: Some(1), what: BadValue::Negative, .. })),
        ("NaN in q", &|c| c.nll(&Batch::new(&qn, 3, 3), &t012[..], &o),
            &bad(Arg::Q, 1, 1, BadValue::Nan)),
        ("unnormalised q row 2", &|c| c.nll(&Batch::new(&qu, 3, 3), &t012[..], &o.reduction(Reduction::Mean)),
            &|e| matches!(e, Error::NotNormalized { arg: Arg::Q, row: 2, .. })),
    ];
    errors(&mut f, cases);
    for bk in all() {
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
