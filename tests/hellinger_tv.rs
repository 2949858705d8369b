//! Squared Hellinger distance and total variation per row (`Context::evaluate`
//! with one q per p), on both backends, against the f64 reference of
//! tests/common: every form and normalisation, broadcast rows, short and long
//! rows, zeros, one-hot and disjoint rows, subnormals, and the log base they
//! refuse. The per-row value is the all-pairs value of the same pair (one
//! form of H² in both places).

mod common;

use common::{Input, Rng};
use kullback::{
    Base, Batch, Error, Form, Measure, Normalization, Options, PairwiseOptions, Setting,
};

const BOTH: [Measure; 2] = [Measure::Hellinger, Measure::TotalVariation];

/// Random shapes and forms: short rows (one-call row kernels), rows across
/// several blocks, many rows; q with as many rows as p or one row.
#[test]
fn every_form_shape_and_normalisation() {
    let bks = common::backends();
    let mut rng = Rng::new(1717);
    let mut failures = Vec::new();
    for (rows, cols) in [(1, 1), (7, 3), (33, 257), (3, 100_003), (5000, 5)] {
        for (pf, qf) in [
            (Form::Probs, Form::Probs),
            (Form::LogProbs, Form::Probs),
            (Form::Logits, Form::Logits),
            (Form::Probs, Form::Logits),
        ] {
            let p = common::rand_form(&mut rng, rows, cols, pf, 0.2);
            for qrows in [rows, 1] {
                let q = common::rand_form(&mut rng, qrows, cols, qf, 0.2);
                for norm in [Normalization::Validate, Normalization::Renormalize] {
                    for bk in &bks {
                        for m in BOTH {
                            common::check_measure(
                                &mut failures,
                                bk,
                                &format!("{rows}x{cols} q rows {qrows} {norm:?}"),
                                m,
                                Input::new(&p, rows, pf),
                                Some(Input::new(&q, qrows, qf)),
                                cols,
                                norm,
                                Base::E,
                                &common::REDUCTIONS,
                            );
                        }
                    }
                }
            }
        }
    }
    common::report("hellinger / total variation", &failures);
}

/// Zeros, one-hot and disjoint rows (exactly 1), equal rows (exactly 0),
/// subnormals in p and q, near-identical rows, masked logits.
#[test]
fn zero_rules_and_specials() {
    let bks = common::backends();
    let sub = f32::from_bits(1); // 2^-149
    let sub2 = f32::from_bits(0x40_0000); // 2^-127
    let cols = 4;
    #[rustfmt::skip]
    let p: Vec<f32> = vec![
        1.0, 0.0, 0.0, 0.0,        // one-hot against a disjoint one-hot: 1
        0.25, 0.25, 0.25, 0.25,    // equal rows: 0
        0.5, 0.5, 0.0, 0.0,        // p = 0 where q > 0: ½ q each
        0.5, 0.5 - sub2, sub2, sub, // subnormals in p
        0.4, 0.3, 0.2, 0.1,        // subnormals in q
        0.4, 0.3, 0.2, 0.1,        // near-identical rows
    ];
    #[rustfmt::skip]
    let q: Vec<f32> = vec![
        0.0, 1.0, 0.0, 0.0,
        0.25, 0.25, 0.25, 0.25,
        0.25, 0.25, 0.25, 0.25,
        0.5, 0.5, 0.0, 0.0,
        0.4, 0.3, 0.3 - sub2, sub2,
        0.400_001, 0.299_999, 0.2, 0.1,
    ];
    let rows = p.len() / cols;
    let mut failures = Vec::new();
    for bk in &bks {
        for m in BOTH {
            common::check_measure(
                &mut failures,
                bk,
                "specials",
                m,
                Input::new(&p, rows, Form::Probs),
                Some(Input::new(&q, rows, Form::Probs)),
                cols,
                Normalization::Validate,
                Base::E,
                &[kullback::Reduction::None],
            );
            let out = bk
                .ctx
                .evaluate(
                    m,
                    &Batch::new(&p, rows, cols),
                    Some(&Batch::new(&q, rows, cols)),
                    &Options::default(),
                )
                .expect("specials");
            assert_eq!(out.values[0], 1.0, "{m:?} {}: disjoint", bk.name);
            assert_eq!(out.values[1], 0.0, "{m:?} {}: equal", bk.name);
            assert!(out.values.iter().all(|v| v.is_finite()), "{m:?}: {out:?}");
        }
        // masked logits: p = 0 there (a zero's term is ½ the other side)
        let lp = [0.0f32, f32::NEG_INFINITY, 0.0];
        let lq = [f32::NEG_INFINITY, 0.0, 0.0];
        for m in BOTH {
            let out = bk
                .ctx
                .evaluate(
                    m,
                    &Batch::new(&lp, 1, 3).form(Form::Logits),
                    Some(&Batch::new(&lq, 1, 3).form(Form::Logits)),
                    &Options::default(),
                )
                .expect("masked logits");
            // p = [½, 0, ½], q = [0, ½, ½]: H² = ½ (½ + ½) and TV = ½ (½ + ½)
            let want = 0.5;
            assert!(
                (out.values[0] as f64 - want).abs() < 2e-6,
                "{m:?} {}: {out:?}",
                bk.name
            );
        }
    }
    common::report("specials", &failures);
}

/// Not logarithmic: a base other than e is an error naming the option (e
/// itself, given as a number, is fine); bad input is reported as for every
/// measure.
#[test]
fn base_and_errors() {
    let bks = common::backends();
    let p = [0.5f32, 0.5, 0.25, 0.75];
    let q = [0.75f32, 0.25, 0.25, 0.75];
    for bk in &bks {
        for m in BOTH {
            for base in [Base::Two, Base::Ten, Base::Custom(3.0)] {
                let e = bk.ctx.evaluate(
                    m,
                    &Batch::new(&p, 2, 2),
                    Some(&Batch::new(&q, 2, 2)),
                    &Options::default().base(base),
                );
                assert!(
                    matches!(
                        e,
                        Err(Error::InvalidOption {
                            option: Setting::Base,
                            ..
                        })
                    ),
                    "{m:?} {base:?} {}: {e:?}",
                    bk.name
                );
            }
            let a = bk
                .ctx
                .evaluate(
                    m,
                    &Batch::new(&p, 2, 2),
                    Some(&Batch::new(&q, 2, 2)),
                    &Options::default().base(Base::Custom(std::f64::consts::E)),
                )
                .expect("base e as a number");
            assert_eq!(a.values.len(), 2);
            let e = bk
                .ctx
                .evaluate(m, &Batch::new(&p, 2, 2), None, &Options::default());
            assert!(matches!(e, Err(Error::MissingArg { .. })), "{e:?}");
            let bad = [0.5f32, 0.5, f32::NAN, 1.0];
            let e = bk.ctx.evaluate(
                m,
                &Batch::new(&p, 2, 2),
                Some(&Batch::new(&bad, 2, 2)),
                &Options::default(),
            );
            match e {
                Err(Error::BadValue { row, col, .. }) => assert_eq!((row, col), (1, Some(0))),
                other => panic!("{m:?} {}: {other:?}", bk.name),
            }
        }
    }
}

/// The per-row value of a pair is its all-pairs value (the same form of H²
/// on both paths), within the tolerance.
#[test]
fn per_row_is_the_all_pairs_diagonal() {
    let bks = common::backends();
    let mut rng = Rng::new(99);
    let (rows, cols) = (40, 300);
    let p = common::rand_probs(&mut rng, rows, cols, 0.3);
    let q = common::rand_probs(&mut rng, rows, cols, 0.3);
    for bk in &bks {
        for m in BOTH {
            let per_row = bk
                .ctx
                .evaluate(
                    m,
                    &Batch::new(&p, rows, cols),
                    Some(&Batch::new(&q, rows, cols)),
                    &Options::default(),
                )
                .expect("per row");
            let all = bk
                .ctx
                .pairwise(
                    m,
                    &Batch::new(&p, rows, cols),
                    Some(&Batch::new(&q, rows, cols)),
                    &PairwiseOptions::default(),
                )
                .expect("all pairs");
            for i in 0..rows {
                let (a, b) = (per_row.values[i] as f64, all.values[i * rows + i] as f64);
                assert!(
                    common::close(a, b),
                    "{m:?} {} row {i}: per row {a}, all pairs {b}",
                    bk.name
                );
            }
        }
    }
}
