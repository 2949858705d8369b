//! Shapes that reach every code path of the backends, against the plain f64
//! reference (tests/common) computed from the same seeded f32 inputs:
//! one column; columns around the workgroup (256 threads) and the block of
//! 256 × 8 = 2048 columns; rows of 1,000,003; more than 65,535 rows; inputs
//! split into whole-row and within-row chunks by a binding cap; a 256,000-class
//! NLL streamed under a cap; one reference row against many.

mod common;

use common::*;
use kullback::{Base, Form, Measure, Normalization, Reduction};

const ALL_RED: &[Reduction] = &REDUCTIONS;

#[test]
fn columns_around_workgroup_and_block_sizes() {
    let mut failures = Vec::new();
    let mut rng = Rng::new(1);
    let sizes = [1, 255, 256, 257, 2047, 2048, 2049, 4095, 4096, 4097];
    for bk in backends() {
        for &n in &sizes {
            let rows = 3;
            for form in [Form::Probs, Form::Logits] {
                let p = rand_form(&mut rng, rows, n, form, 0.1);
                let q = rand_form(&mut rng, rows, n, form, 0.0);
                for m in MEASURES {
                    check_measure(
                        &mut failures,
                        &bk,
                        &format!("{rows}x{n}"),
                        m,
                        Input::new(&p, rows, form),
                        Some(Input::new(&q, rows, form)),
                        n,
                        Normalization::Validate,
                        Base::E,
                        &[Reduction::None, Reduction::Sum],
                    );
                }
            }
            // Renormalised counts (the two-pass plan) and log-probabilities.
            let counts: Vec<f32> = (0..rows * n).map(|_| rng.below(1000) as f32).collect();
            let q = rand_form(&mut rng, rows, n, Form::LogProbs, 0.0);
            let mut counts = counts;
            counts[0] += 1.0; // no zero-sum row
            counts[(rows - 1) * n] += 1.0;
            counts[n.min(rows * n - 1)] += 1.0;
            for m in [Measure::Kl, Measure::Js] {
                check_measure(
                    &mut failures,
                    &bk,
                    &format!("{rows}x{n} renormalised counts"),
                    m,
                    Input::new(&counts, rows, Form::Probs),
                    Some(Input::new(&q, rows, Form::LogProbs)),
                    n,
                    Normalization::Renormalize,
                    Base::Two,
                    &[Reduction::None],
                );
            }
            let logits = rand_logits(&mut rng, rows, n, 4.0, 0.0);
            let t = rand_targets(&mut rng, rows, n);
            check_nll(
                &mut failures,
                &bk,
                &format!("{rows}x{n}"),
                Input::new(&logits, rows, Form::Logits),
                n,
                &t,
                NllCase::default(),
                Normalization::Validate,
                Base::E,
                &[Reduction::None, Reduction::Mean],
            );
        }
    }
    report("columns around block sizes", &failures);
}

#[test]
fn long_rows_of_a_million() {
    let (rows, n) = (3, 1_000_003);
    let mut rng = Rng::new(2);
    let p = rand_probs(&mut rng, rows, n, 0.05);
    let q = rand_probs(&mut rng, rows, n, 0.0);
    let a = rand_logits(&mut rng, rows, n, 3.0, 0.0);
    let b = rand_logits(&mut rng, rows, n, 3.0, 500.0);
    let mut failures = Vec::new();
    for bk in backends_with_cap(1 << 20) {
        let pi = Input::new(&p, rows, Form::Probs);
        let qi = Input::new(&q, rows, Form::Probs);
        for m in [Measure::Kl, Measure::Js, Measure::CrossEntropy] {
            check_measure(
                &mut failures,
                &bk,
                "3x1000003",
                m,
                pi,
                Some(qi),
                n,
                Normalization::Validate,
                Base::E,
                &[Reduction::None, Reduction::Mean],
            );
        }
        let ai = Input::new(&a, rows, Form::Logits);
        let bi = Input::new(&b, rows, Form::Logits);
        for m in [Measure::Entropy, Measure::Kl] {
            check_measure(
                &mut failures,
                &bk,
                "3x1000003",
                m,
                ai,
                Some(bi),
                n,
                Normalization::Validate,
                Base::E,
                &[Reduction::None],
            );
        }
        check_nll(
            &mut failures,
            &bk,
            "3x1000003",
            ai,
            n,
            &[0, 999_999, 1_000_002],
            NllCase::default(),
            Normalization::Validate,
            Base::E,
            &[Reduction::None],
        );
    }
    report("rows of 1,000,003", &failures);
}

#[test]
fn more_rows_than_one_dispatch_dimension() {
    let (rows, n) = (70_001, 5);
    let mut rng = Rng::new(3);
    let p = rand_probs(&mut rng, rows, n, 0.2);
    let q = rand_probs(&mut rng, rows, n, 0.0);
    let a = rand_logits(&mut rng, rows, n, 2.0, 0.0);
    let mut t = rand_targets(&mut rng, rows, n);
    for i in (0..rows).step_by(7) {
        t[i] = -1;
    }
    let mut failures = Vec::new();
    for bk in backends() {
        for m in MEASURES {
            check_measure(
                &mut failures,
                &bk,
                "70001x5",
                m,
                Input::new(&p, rows, Form::Probs),
                Some(Input::new(&q, rows, Form::Probs)),
                n,
                Normalization::Validate,
                Base::E,
                ALL_RED,
            );
        }
        check_measure(
            &mut failures,
            &bk,
            "70001x5",
            Measure::Entropy,
            Input::new(&a, rows, Form::Logits),
            None,
            n,
            Normalization::Validate,
            Base::Ten,
            ALL_RED,
        );
        check_nll(
            &mut failures,
            &bk,
            "70001x5 ignore -1",
            Input::new(&a, rows, Form::Logits),
            n,
            &t,
            NllCase {
                ignore: Some(-1),
                ..Default::default()
            },
            Normalization::Validate,
            Base::E,
            ALL_RED,
        );
    }
    report("70,001 rows", &failures);
}

/// Contexts capped at 64 KiB per binding: 16,384 f32 per chunk.
fn capped() -> Vec<Bk> {
    let mut v = vec![Bk {
        name: "cpu".into(),
        ctx: cpu(),
    }];
    if let Some(ctx) = gpu_capped(64 * 1024) {
        v.push(Bk {
            name: "gpu-cap64KiB".into(),
            ctx,
        });
    }
    v
}

#[test]
fn chunks_of_whole_rows() {
    let (rows, n) = (300, 1000); // 1.2 MB per input: about 19 chunks of 16 rows
    let mut rng = Rng::new(4);
    let mut failures = Vec::new();
    for bk in capped() {
        for form in FORMS {
            let p = rand_form(&mut rng, rows, n, form, 0.1);
            let q = rand_form(&mut rng, rows, n, form, 0.0);
            for m in MEASURES {
                check_measure(
                    &mut failures,
                    &bk,
                    "300x1000 capped",
                    m,
                    Input::new(&p, rows, form),
                    Some(Input::new(&q, rows, form)),
                    n,
                    Normalization::Validate,
                    Base::E,
                    ALL_RED,
                );
            }
        }
        let counts: Vec<f32> = (0..rows * n)
            .map(|_| 1.0 + rng.below(5000) as f32)
            .collect();
        let q = rand_probs(&mut rng, rows, n, 0.0);
        for m in MEASURES {
            check_measure(
                &mut failures,
                &bk,
                "300x1000 capped, renormalised counts",
                m,
                Input::new(&counts, rows, Form::Probs),
                Some(Input::new(&q, rows, Form::Probs)),
                n,
                Normalization::Renormalize,
                Base::E,
                &[Reduction::None, Reduction::Mean],
            );
        }
        let a = rand_logits(&mut rng, rows, n, 3.0, 0.0);
        let mut t = rand_targets(&mut rng, rows, n);
        t[17] = -100;
        let w: Vec<f32> = (0..n).map(|_| rng.uniform() as f32 * 2.0).collect();
        check_nll(
            &mut failures,
            &bk,
            "300x1000 capped",
            Input::new(&a, rows, Form::Logits),
            n,
            &t,
            NllCase {
                ignore: Some(-100),
                weights: Some(&w),
                eps: 0.1,
                tol: None,
            },
            Normalization::Validate,
            Base::E,
            ALL_RED,
        );
    }
    report("whole-row chunks", &failures);
}

#[test]
fn chunks_within_rows() {
    let (rows, n) = (4, 40_000); // 160 KB per row against a 64 KiB binding
    let mut rng = Rng::new(5);
    let mut failures = Vec::new();
    for bk in capped() {
        for form in FORMS {
            let p = rand_form(&mut rng, rows, n, form, 0.1);
            let q = rand_form(&mut rng, rows, n, form, 0.0);
            for m in MEASURES {
                check_measure(
                    &mut failures,
                    &bk,
                    "4x40000 capped",
                    m,
                    Input::new(&p, rows, form),
                    Some(Input::new(&q, rows, form)),
                    n,
                    Normalization::Validate,
                    Base::E,
                    ALL_RED,
                );
            }
        }
        let counts: Vec<f32> = (0..rows * n).map(|_| rng.below(100) as f32).collect();
        let q = rand_probs(&mut rng, rows, n, 0.0);
        for m in [Measure::Entropy, Measure::Kl, Measure::Js] {
            check_measure(
                &mut failures,
                &bk,
                "4x40000 capped, renormalised counts",
                m,
                Input::new(&counts, rows, Form::Probs),
                Some(Input::new(&q, rows, Form::Probs)),
                n,
                Normalization::Renormalize,
                Base::E,
                &[Reduction::None],
            );
        }
        let shifted: Vec<f32> = log_of(&rand_probs(&mut rng, rows, n, 0.1))
            .iter()
            .map(|v| v + 3.0)
            .collect();
        check_measure(
            &mut failures,
            &bk,
            "4x40000 capped, unnormalised log-probs renormalised",
            Measure::Kl,
            Input::new(&shifted, rows, Form::LogProbs),
            Some(Input::new(&q, rows, Form::Probs)),
            n,
            Normalization::Renormalize,
            Base::E,
            &[Reduction::None],
        );
    }
    report("within-row chunks", &failures);
}

/// Issue 8: C = 256,000 classes with B·C beyond one binding: streamed column blocks.
#[test]
fn huge_vocabulary_streamed_under_a_cap() {
    let (rows, n) = (4, 256_000);
    let mut rng = Rng::new(6);
    let a = rand_logits(&mut rng, rows, n, 2.0, 0.0);
    let b = rand_logits(&mut rng, rows, n, 2.0, 0.0);
    let t = vec![0, 255_999, -100, 123_456];
    let mut failures = Vec::new();
    let mut bks = vec![Bk {
        name: "cpu".into(),
        ctx: cpu(),
    }];
    if let Some(ctx) = gpu_capped(1 << 20) {
        bks.push(Bk {
            name: "gpu-cap1MiB".into(),
            ctx,
        });
    }
    for bk in bks {
        check_nll(
            &mut failures,
            &bk,
            "4x256000 logits",
            Input::new(&a, rows, Form::Logits),
            n,
            &t,
            NllCase {
                ignore: Some(-100),
                tol: Some((1e-4, 1e-5)),
                ..Default::default()
            },
            Normalization::Validate,
            Base::E,
            ALL_RED,
        );
        check_measure(
            &mut failures,
            &bk,
            "4x256000 logits",
            Measure::Kl,
            Input::new(&a, rows, Form::Logits),
            Some(Input::new(&b, rows, Form::Logits)),
            n,
            Normalization::Validate,
            Base::E,
            &[Reduction::None],
        );
    }
    report("256,000 classes", &failures);
}

#[test]
fn one_reference_row_against_many() {
    let mut rng = Rng::new(7);
    let (rows, n) = (500, 300);
    let mut failures = Vec::new();
    for bk in backends_with_cap(64 * 1024) {
        for form in FORMS {
            let many = rand_form(&mut rng, rows, n, form, 0.1);
            let one = rand_form(&mut rng, 1, n, form, 0.0);
            for m in [Measure::CrossEntropy, Measure::Kl, Measure::Js] {
                check_measure(
                    &mut failures,
                    &bk,
                    "q one row",
                    m,
                    Input::new(&many, rows, form),
                    Some(Input::new(&one, 1, form)),
                    n,
                    Normalization::Validate,
                    Base::E,
                    ALL_RED,
                );
                check_measure(
                    &mut failures,
                    &bk,
                    "p one row",
                    m,
                    Input::new(&one, 1, form),
                    Some(Input::new(&many, rows, form)),
                    n,
                    Normalization::Validate,
                    Base::E,
                    ALL_RED,
                );
            }
        }
        let q = rand_probs(&mut rng, 1, n, 0.0);
        let t = rand_targets(&mut rng, 1000, n);
        check_nll(
            &mut failures,
            &bk,
            "q one row, 1000 targets",
            Input::new(&q, 1, Form::Probs),
            n,
            &t,
            NllCase::default(),
            Normalization::Validate,
            Base::Two,
            ALL_RED,
        );
    }
    report("one reference row", &failures);
}
