//! The online log-sum-exp of logits (and of log-probabilities or
//! probabilities being renormalised) reads its values in blocks: the GPU
//! raises a row's running maximum once per block of four (a vec4 load, or
//! four lane-strided scalar loads), then adds each element relative to it.
//! Here: orders that raise the maximum at every element (ascending rows), at
//! none (descending), alternately, late (the largest value last, in a partial
//! block), masked classes among them, spreads beyond the f32 range inside a
//! block; on shapes of every plan (scalar and vec4 loads, one block, several
//! blocks merged, rows split by a binding cap); against the f64 reference,
//! and bad values after a block's maximum and rows of all -inf as the same
//! errors as before, on every backend. The all-pairs preparation reads its
//! rows' normalisers the same way (its own test at the end).

mod common;

use common::*;
use kullback::{
    Arg, BadValue, Base, Batch, Error, Form, Measure, Normalization, PairwiseOptions, Reduction,
};

fn all() -> Vec<Bk> {
    backends_with_cap(64 * 1024)
}

/// Shapes: scalar loads (columns not a multiple of 4) and vec4 loads, short
/// rows, one block, two blocks merged (more than 8,192 loads), and rows that
/// the 64 KiB binding cap splits.
const SHAPES: [(usize, usize); 6] = [(3, 7), (5, 16), (2, 257), (4, 1024), (2, 9001), (1, 40_000)];

/// Row orders of the values (kinds of [`ordered`]).
const ORDERS: [&str; 5] = ["ascending", "descending", "alternating", "masked", "late"];

/// `rows` x `cols` logits in order `kind` (of [`ORDERS`]).
fn ordered(rng: &mut Rng, rows: usize, cols: usize, kind: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        for c in 0..cols {
            let t = c as f64 / cols as f64;
            let noise = 0.01 * rng.normal();
            let v = match kind {
                0 => 20.0 * t + noise,
                1 => 20.0 * (1.0 - t) + noise,
                2 => {
                    if c % 2 == 0 {
                        10.0 * t
                    } else {
                        -10.0 * t
                    }
                }
                3 => {
                    if rng.below(3) == 0 {
                        f64::NEG_INFINITY
                    } else {
                        5.0 * t + 3.0 * rng.normal()
                    }
                }
                _ => {
                    if c + 1 == cols {
                        60.0
                    } else {
                        rng.normal()
                    }
                }
            };
            x.push(v as f32);
        }
    }
    x
}

/// Probabilities whose binary exponents rise along the row, subnormals to
/// beyond 1 (renormalised: summed relative to a power of two, in blocks).
fn rising_probs(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let t = (i % cols) as f64 / cols as f64;
            ((1.0 + rng.uniform()) * (2f64).powf(-140.0 + 200.0 * t)) as f32
        })
        .collect()
}

#[test]
fn blockwise_online_sums_match_f64() {
    let mut failures = Vec::new();
    let mut rng = Rng::new(16);
    let measures = [
        Measure::Entropy,
        Measure::CrossEntropy,
        Measure::Kl,
        Measure::Js,
    ];
    for bk in all() {
        for &(rows, cols) in &SHAPES {
            for (k, order) in ORDERS.iter().enumerate() {
                let p = ordered(&mut rng, rows, cols, k);
                let q = ordered(&mut rng, rows, cols, (k + 1) % ORDERS.len());
                let label = format!("{rows}x{cols} {order}");
                for &m in &measures {
                    check_measure(
                        &mut failures,
                        &bk,
                        &label,
                        m,
                        Input::new(&p, rows, Form::Logits),
                        Some(Input::new(&q, rows, Form::Logits)),
                        cols,
                        Normalization::Validate,
                        Base::E,
                        &[Reduction::None],
                    );
                }
                // log-probabilities renormalised: online in one pass, or the
                // first pass of two when the measure needs normalised values
                for m in [Measure::Kl, Measure::Js] {
                    check_measure(
                        &mut failures,
                        &bk,
                        &label,
                        m,
                        Input::new(&p, rows, Form::LogProbs),
                        Some(Input::new(&q, rows, Form::Logits)),
                        cols,
                        Normalization::Renormalize,
                        Base::Two,
                        &[Reduction::None, Reduction::Mean],
                    );
                }
                let targets = rand_targets(&mut rng, rows, cols);
                let weights: Vec<f32> = (0..cols).map(|c| 0.5 + (c % 5) as f32).collect();
                for (eps, w) in [(0.0, None), (0.1, Some(&weights[..]))] {
                    check_nll(
                        &mut failures,
                        &bk,
                        &label,
                        Input::new(&q, rows, Form::Logits),
                        cols,
                        &targets,
                        NllCase {
                            ignore: Some(targets[0]),
                            weights: w,
                            eps,
                            tol: None,
                        },
                        Normalization::Validate,
                        Base::E,
                        &[Reduction::None, Reduction::Mean],
                    );
                }
            }
            // a spread beyond f32::MAX inside the first block
            let mut p = ordered(&mut rng, rows, cols, 4);
            for r in 0..rows {
                let n = cols.min(4);
                p[r * cols..r * cols + n].copy_from_slice(&[3e38, -3e38, 1.0, -1e30][..n]);
            }
            let label = format!("{rows}x{cols} spread");
            check_measure(
                &mut failures,
                &bk,
                &label,
                Measure::Entropy,
                Input::new(&p, rows, Form::Logits),
                None,
                cols,
                Normalization::Validate,
                Base::E,
                &[Reduction::None],
            );
            let targets = vec![0i64; rows];
            check_nll(
                &mut failures,
                &bk,
                &label,
                Input::new(&p, rows, Form::Logits),
                cols,
                &targets,
                NllCase::default(),
                Normalization::Validate,
                Base::E,
                &[Reduction::None],
            );
            let probs = rising_probs(&mut rng, rows, cols);
            check_measure(
                &mut failures,
                &bk,
                &format!("{rows}x{cols} rising probabilities"),
                Measure::Entropy,
                Input::new(&probs, rows, Form::Probs),
                None,
                cols,
                Normalization::Renormalize,
                Base::E,
                &[Reduction::None],
            );
        }
    }
    report("blockwise online sums", &failures);
}

#[test]
fn bad_values_within_blocks_are_the_same_errors() {
    let mut failures = Vec::new();
    let mut rng = Rng::new(17);
    for bk in all() {
        for &(rows, cols) in &SHAPES {
            let opts = kullback::Options::default();
            // a NaN, then a +inf, after the block's largest value: named by
            // their row and column, the first one wins
            let col = (cols / 2) | 1;
            let mut p = ordered(&mut rng, rows, cols, 0);
            let r = rows - 1;
            p[r * cols + col] = f32::NAN;
            if col + 1 < cols {
                p[r * cols + col + 1] = f32::INFINITY;
            }
            let label = format!("{rows}x{cols} NaN at {col} [{}]", bk.name);
            let got = eval(
                &bk.ctx,
                Measure::Entropy,
                Input::new(&p, rows, Form::Logits),
                None,
                cols,
                &opts,
            );
            match got {
                Err(Error::BadValue {
                    arg: Arg::P,
                    row,
                    col: Some(c),
                    what: BadValue::Nan,
                }) if row == r && c == col => {}
                other => failures.push(format!("{label}: {other:?}")),
            }
            // a row of all -inf among good rows
            let mut q = ordered(&mut rng, rows, cols, 3);
            q[r * cols..(r + 1) * cols].fill(f32::NEG_INFINITY);
            let p = ordered(&mut rng, rows, cols, 1);
            let label = format!("{rows}x{cols} all -inf [{}]", bk.name);
            let got = eval(
                &bk.ctx,
                Measure::Kl,
                Input::new(&p, rows, Form::Logits),
                Some(Input::new(&q, rows, Form::Logits)),
                cols,
                &opts,
            );
            match got {
                Err(Error::CannotNormalize {
                    arg: Arg::Q, row, ..
                }) if row == r => {}
                other => failures.push(format!("{label}: {other:?}")),
            }
        }
    }
    report("bad values within blocks", &failures);
}

#[test]
fn pairwise_normalisers_read_blockwise_match_f64() {
    let mut failures = Vec::new();
    let mut rng = Rng::new(18);
    for bk in all() {
        for &(rows, cols) in &[(3usize, 7usize), (4, 1024), (2, 40_000)] {
            for (k, order) in ORDERS.iter().enumerate() {
                let p = ordered(&mut rng, rows, cols, k);
                let q = ordered(&mut rng, rows + 1, cols, (k + 2) % ORDERS.len());
                let probs = rising_probs(&mut rng, rows, cols);
                let cases = [
                    (&p, Form::Logits, Normalization::Validate),
                    (&p, Form::LogProbs, Normalization::Renormalize),
                    (&probs, Form::Probs, Normalization::Renormalize),
                ];
                for (x, form, norm) in cases {
                    let rp: Vec<_> = x.chunks(cols).map(|r| ref_dist(r, form, norm)).collect();
                    let rq: Vec<_> = q
                        .chunks(cols)
                        .map(|r| ref_dist(r, Form::Logits, norm))
                        .collect();
                    for m in [Measure::Kl, Measure::Js] {
                        let label = format!("{rows}x{cols} {order} {form:?} {m:?} [{}]", bk.name);
                        let got = bk.ctx.pairwise(
                            m,
                            &Batch::new(x, rows, cols).form(form),
                            Some(&Batch::new(&q, rows + 1, cols).form(Form::Logits)),
                            &PairwiseOptions::default().normalization(norm),
                        );
                        let got = match got {
                            Ok(d) => d.values,
                            Err(e) => {
                                failures.push(format!("{label}: {e}"));
                                continue;
                            }
                        };
                        for i in 0..rows {
                            for j in 0..rows + 1 {
                                let (a, b) = (&rp[i], &rq[j]);
                                let want = pair_row(m, (&a.0, &a.1), (&b.0, &b.1));
                                let g = got[i * (rows + 1) + j] as f64;
                                if !close(g, want) {
                                    failures.push(format!(
                                        "{label} D[{i}, {j}] = {g:e}, want {want:e}"
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    report("pairwise normalisers read blockwise", &failures);
}
