//! f64 input is converted where it is read (a CPU block, a GPU upload chunk),
//! never copied whole: its results must be bit for bit those of the same
//! values converted to f32 first, on every backend, and its conversion errors
//! (a non-zero probability that underflows, a finite value that overflows)
//! the same as before: the first in row-major order, p before q.

mod common;

use common::{Rng, rand_logits_f64, rand_probs_f64};
use kullback::{
    Arg, BadValue, Batch, Context, Error, Form, Measure, NllOptions, Normalization, Options,
    Output, Reduction,
};

/// The CPU context, the GPU one and a GPU one with small bindings (chunked
/// kernels over the converted uploads), those that exist.
fn contexts() -> Vec<(String, Context)> {
    let mut v: Vec<(String, Context)> = common::backends()
        .into_iter()
        .map(|b| (b.name, b.ctx))
        .collect();
    if let Some(c) = common::gpu_capped(64 * 1024) {
        v.push(("gpu-64KiB".into(), c));
    }
    v
}

/// Rows of f64 probabilities summing to 1 in f64, with exact zeros (one value
/// in `zero_every`) and a few tiny values (1e-30) that stay non-zero in f32.
fn probs(rows: usize, cols: usize, seed: u64, zero_every: u64) -> Vec<f64> {
    let zero_frac = if zero_every > 0 {
        1.0 / zero_every as f64
    } else {
        0.0
    };
    rand_probs_f64(
        &mut Rng::new(seed),
        rows,
        cols,
        zero_frac,
        1.0 / 997.0,
        1e-30,
    )
}

/// f64 logits of magnitude up to 30, a few masked (-inf).
fn logits(rows: usize, cols: usize, seed: u64) -> Vec<f64> {
    rand_logits_f64(&mut Rng::new(seed), rows, cols, 30.0, 1.0 / 211.0)
}

fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The same output, bit for bit (values, counts, perplexity).
fn assert_same(label: &str, a: &kullback::Result<Output>, b: &kullback::Result<Output>) {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.values.len(), b.values.len(), "{label}: lengths");
            for (i, (x, y)) in a.values.iter().zip(&b.values).enumerate() {
                assert_eq!(x.to_bits(), y.to_bits(), "{label}: value {i}: {x} vs {y}");
            }
            assert_eq!(a.counted.to_bits(), b.counted.to_bits(), "{label}: counted");
            assert_eq!(
                a.perplexity.map(f64::to_bits),
                b.perplexity.map(f64::to_bits),
                "{label}: perplexity"
            );
            assert_eq!(a.backend, b.backend, "{label}: backend");
        }
        (Err(a), Err(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{label}: errors"),
        _ => panic!("{label}: {a:?} vs {b:?}"),
    }
}

/// Shapes: one column, a row of one block and a bit, rows of many blocks
/// (several super-blocks), many short rows (the CPU's row kernels), and a
/// broadcast q of one row.
const SHAPES: &[(usize, usize)] = &[(9, 1), (5, 4099), (3, 70_001), (70_001, 5)];

#[test]
fn every_measure_matches_f32_bit_for_bit() {
    for (name, ctx) in contexts() {
        for (si, &(rows, cols)) in SHAPES.iter().enumerate() {
            let seed = si as u64 * 10;
            let p = probs(rows, cols, seed + 1, 13);
            let q = probs(rows, cols, seed + 2, 0);
            let q1 = probs(1, cols, seed + 3, 0);
            let lq = logits(rows, cols, seed + 4);
            let (p32, q32, q132, lq32) = (to32(&p), to32(&q), to32(&q1), to32(&lq));
            for (norm, red) in [
                (Normalization::Validate, Reduction::None),
                (Normalization::Renormalize, Reduction::Sum),
            ] {
                let o = Options::default().normalization(norm).reduction(red);
                for m in [
                    Measure::Entropy,
                    Measure::CrossEntropy,
                    Measure::Kl,
                    Measure::Js,
                ] {
                    let cases: [(&str, Batch<'_>, Batch<'_>, Batch<'_>, Batch<'_>); 4] = [
                        (
                            "probs",
                            Batch::new(&p, rows, cols),
                            Batch::new(&q, rows, cols),
                            Batch::new(&p32, rows, cols),
                            Batch::new(&q32, rows, cols),
                        ),
                        (
                            "q one row",
                            Batch::new(&p, rows, cols),
                            Batch::new(&q1, 1, cols),
                            Batch::new(&p32, rows, cols),
                            Batch::new(&q132, 1, cols),
                        ),
                        (
                            "q logits",
                            Batch::new(&p, rows, cols),
                            Batch::new(&lq, rows, cols).form(Form::Logits),
                            Batch::new(&p32, rows, cols),
                            Batch::new(&lq32, rows, cols).form(Form::Logits),
                        ),
                        (
                            // one argument f64, the other f32
                            "p logits, q f32",
                            Batch::new(&lq, rows, cols).form(Form::Logits),
                            Batch::new(&q32, rows, cols),
                            Batch::new(&lq32, rows, cols).form(Form::Logits),
                            Batch::new(&q32, rows, cols),
                        ),
                    ];
                    for (case, p64b, q64b, p32b, q32b) in cases {
                        if m == Measure::Entropy && case == "q one row" {
                            continue;
                        }
                        let label = format!("{name} {rows}x{cols} {m:?} {norm:?} {case}");
                        let a = ctx.evaluate(m, &p64b, Some(&q64b), &o);
                        let b = ctx.evaluate(m, &p32b, Some(&q32b), &o);
                        assert!(
                            a.is_ok() || matches!(a, Err(Error::NotNormalized { .. })),
                            "{label}: {a:?}"
                        );
                        assert_same(&label, &a, &b);
                    }
                }
            }
            // negative log-likelihood of f64 logits and probabilities
            let t: Vec<i64> = (0..rows as i64)
                .map(|r| {
                    if r % 7 == 3 {
                        -100
                    } else {
                        (r * 31) % cols as i64
                    }
                })
                .collect();
            for (eps, red) in [(0.0, Reduction::None), (0.1, Reduction::Mean)] {
                let o = NllOptions::default()
                    .ignore_index(-100)
                    .label_smoothing(eps)
                    .reduction(red);
                let label = format!("{name} {rows}x{cols} nll logits eps {eps}");
                let a = ctx.nll(&Batch::new(&lq, rows, cols).form(Form::Logits), &t, &o);
                let b = ctx.nll(&Batch::new(&lq32, rows, cols).form(Form::Logits), &t, &o);
                assert!(a.is_ok(), "{label}: {a:?}");
                assert_same(&label, &a, &b);
                let label = format!("{name} {rows}x{cols} nll probs eps {eps}");
                let a = ctx.nll(&Batch::new(&q, rows, cols), &t, &o);
                let b = ctx.nll(&Batch::new(&q32, rows, cols), &t, &o);
                assert_same(&label, &a, &b);
                let label = format!("{name} {rows}x{cols} nll one row of logits eps {eps}");
                let a = ctx.nll(&Batch::new(&lq[..cols], 1, cols).form(Form::Logits), &t, &o);
                let b = ctx.nll(
                    &Batch::new(&lq32[..cols], 1, cols).form(Form::Logits),
                    &t,
                    &o,
                );
                assert_same(&label, &a, &b);
            }
        }
    }
}

/// (arg, row, col, what) of a conversion error.
fn bad(e: &Error) -> (Arg, usize, Option<usize>, BadValue) {
    match e {
        Error::BadValue {
            arg,
            row,
            col,
            what,
        } => (*arg, *row, *col, *what),
        other => panic!("not a bad value: {other:?}"),
    }
}

#[test]
fn conversion_errors_name_the_first_bad_value() {
    let (rows, cols) = (3usize, 70_001usize);
    let at = |r: usize, c: usize| r * cols + c;
    let clean_p = probs(rows, cols, 5, 0);
    let clean_q = probs(rows, cols, 6, 0);
    // (what p holds, what q holds, the error expected)
    type Case = (
        Vec<(usize, f64)>,
        Vec<(usize, f64)>,
        (Arg, usize, usize, BadValue),
    );
    let cases: Vec<Case> = vec![
        // p: an underflow before an overflow; q's earlier overflow loses to p's
        (
            vec![(at(1, 4100), 1e-50), (at(2, 3), 1e300)],
            vec![(at(0, 0), 1e300)],
            (Arg::P, 1, 4100, BadValue::Underflow),
        ),
        // p: an overflow before an underflow, in another super-block
        (
            vec![(at(2, 69_999), 1e-60), (at(0, 65_537), -3e39)],
            vec![],
            (Arg::P, 0, 65_537, BadValue::Overflow),
        ),
        // a NaN earlier in p still loses to the conversion error (as when the
        // whole array was converted before any check)
        (
            vec![(at(0, 1), f64::NAN), (at(1, 9), 1e-46)],
            vec![],
            (Arg::P, 1, 9, BadValue::Underflow),
        ),
        // p clean: q's first
        (
            vec![],
            vec![(at(2, 4096), 1e-45), (at(2, 4095), 4e38)],
            (Arg::Q, 2, 4095, BadValue::Overflow),
        ),
        (
            vec![(at(0, 5), f64::INFINITY)],
            vec![(at(1, 70_000), 1e-300)],
            (Arg::Q, 1, 70_000, BadValue::Underflow),
        ),
    ];
    let cpu = common::cpu();
    for (i, (pbad, qbad, want)) in cases.into_iter().enumerate() {
        let (mut p, mut q) = (clean_p.clone(), clean_q.clone());
        for (k, x) in pbad {
            p[k] = x;
        }
        for (k, x) in qbad {
            q[k] = x;
        }
        let want = (want.0, want.1, Some(want.2), want.3);
        for (name, ctx) in contexts() {
            for m in [Measure::CrossEntropy, Measure::Kl, Measure::Js] {
                let e = ctx
                    .evaluate(
                        m,
                        &Batch::new(&p, rows, cols),
                        Some(&Batch::new(&q, rows, cols)),
                        &Options::default(),
                    )
                    .expect_err("a value changes in f32");
                assert_eq!(bad(&e), want, "case {i} {name} {m:?}");
            }
        }
        // the same error whatever the backend that runs it
        let e = cpu
            .kl(
                &Batch::new(&p, rows, cols),
                &Batch::new(&q, rows, cols),
                &Options::default().reduction(Reduction::Mean),
            )
            .expect_err("a value changes in f32");
        assert_eq!(bad(&e), want, "case {i} cpu mean");
    }
}

#[test]
fn conversion_errors_by_form_and_in_nll() {
    let (rows, cols) = (70_001usize, 5usize);
    let mut l = logits(rows, cols, 9);
    // logits: 1e-50 is a fine logit (0 in f32), 1e300 overflows
    l[3 * cols + 1] = 1e-50;
    l[60_000 * cols + 4] = 1e300;
    l[60_001 * cols] = -1e300;
    let t: Vec<i64> = (0..rows as i64).map(|r| r % cols as i64).collect();
    let want = (Arg::Q, 60_000, Some(4), BadValue::Overflow);
    for (name, ctx) in contexts() {
        let e = ctx
            .nll(
                &Batch::new(&l, rows, cols).form(Form::Logits),
                &t,
                &NllOptions::default(),
            )
            .expect_err("overflow");
        assert_eq!(bad(&e), want, "{name} nll");
        let e = ctx
            .entropy(
                &Batch::new(&l, rows, cols).form(Form::Logits),
                &Options::default(),
            )
            .expect_err("overflow");
        assert_eq!(
            bad(&e),
            (Arg::P, 60_000, Some(4), BadValue::Overflow),
            "{name}"
        );
        // probabilities given to the NLL: an underflow
        let mut q = probs(rows, cols, 11, 0);
        q[123 * cols + 2] = 1e-50;
        let e = ctx
            .nll(&Batch::new(&q, rows, cols), &t, &NllOptions::default())
            .expect_err("underflow");
        assert_eq!(
            bad(&e),
            (Arg::Q, 123, Some(2), BadValue::Underflow),
            "{name}"
        );
        // the same value as a log-probability is fine (it is not a probability)
        let lp: Vec<f64> = q.iter().map(|&x| x.ln()).collect();
        ctx.nll(
            &Batch::new(&lp, rows, cols).form(Form::LogProbs),
            &t,
            &NllOptions::default().normalization(Normalization::Renormalize),
        )
        .expect("log-probabilities of any size are fine");
    }
}
