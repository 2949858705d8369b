//! Regression tests of the hardening issue's numerics items, on every backend
//! against the f64 reference of tests/common:
//! - logits whose spread exceeds f32::MAX (NaN before, now the float64 answers);
//! - a log base below 1 (infinities of the right sign, per row and reduced);
//! - a mean over no counted weight with label smoothing (NaN on both backends);
//! - Renormalize of subnormal counts and of counts whose f32 sum overflows;
//! - +0.0 where a value is zero (the GPU printed -0.0 for ignored NLL rows).

mod common;

use common::*;
use kullback::{Base, Batch, Form, Measure, NllOptions, Normalization, Options, Reduction};

const BIG_SPREAD: [f32; 6] = [3e38, -3e38, 0.0, 3.4e38, 3.4e38, -3.4e38];

/// Entropy, KL of a row against itself, JS and NLL from logit rows whose
/// spread exceeds f32::MAX: the float64 values (they were NaN).
#[test]
fn logits_beyond_the_f32_range() {
    let mut failures = Vec::new();
    let lg = Input::new(&BIG_SPREAD, 2, Form::Logits);
    let probs = [0.2f32, 0.3, 0.5, 0.25, 0.25, 0.5];
    let pr = Input::new(&probs, 2, Form::Probs);
    for bk in backends_with_cap(64 * 1024) {
        for norm in [Normalization::Validate, Normalization::Renormalize] {
            let base = Base::E;
            let all = &REDUCTIONS[..];
            check_measure(
                &mut failures,
                &bk,
                "big",
                Measure::Entropy,
                lg,
                None,
                3,
                norm,
                base,
                all,
            );
            check_measure(
                &mut failures,
                &bk,
                "big",
                Measure::Kl,
                lg,
                Some(lg),
                3,
                norm,
                base,
                all,
            );
            check_measure(
                &mut failures,
                &bk,
                "big",
                Measure::Js,
                lg,
                Some(lg),
                3,
                norm,
                base,
                all,
            );
            check_measure(
                &mut failures,
                &bk,
                "big",
                Measure::Js,
                lg,
                Some(pr),
                3,
                norm,
                base,
                all,
            );
            check_measure(
                &mut failures,
                &bk,
                "big",
                Measure::Js,
                pr,
                Some(lg),
                3,
                norm,
                base,
                all,
            );
            // log-probabilities renormalised: the same rows through the online path
            let lp = Input::new(&BIG_SPREAD, 2, Form::LogProbs);
            if norm == Normalization::Renormalize {
                check_measure(
                    &mut failures,
                    &bk,
                    "big lp",
                    Measure::Entropy,
                    lp,
                    None,
                    3,
                    norm,
                    base,
                    all,
                );
                check_measure(
                    &mut failures,
                    &bk,
                    "big lp",
                    Measure::Kl,
                    lp,
                    Some(lp),
                    3,
                    norm,
                    base,
                    all,
                );
            }
            for targets in [[0i64, 1], [2, 0]] {
                check_nll(
                    &mut failures,
                    &bk,
                    "big",
                    lg,
                    3,
                    &targets,
                    NllCase::default(),
                    norm,
                    base,
                    all,
                );
            }
        }
        // the values themselves: entropy 0 and ln 2, KL 0, never NaN
        let h = bk
            .ctx
            .entropy(
                &Batch::new(&BIG_SPREAD[..], 2, 3).form(Form::Logits),
                &Options::default(),
            )
            .expect("entropy");
        assert_eq!(h.values[0], 0.0, "{}", bk.name);
        assert!(
            (h.values[1] as f64 - 2f64.ln()).abs() < 1e-6,
            "{}: {:?}",
            bk.name,
            h.values
        );
    }
    report("logits beyond the f32 range", &failures);
}

/// Where the log-probabilities of q do not fit f32 (a logit spread beyond
/// f32::MAX), cross-entropy and KL with p > 0 there are +inf (documented):
/// never NaN and never a finite wrong number.
#[test]
fn cross_entropy_beyond_the_f32_range_is_inf() {
    let p = [1.0f32 / 3.0; 3];
    let q = [3e38f32, -3e38, 0.0];
    for bk in backends() {
        for m in [Measure::CrossEntropy, Measure::Kl] {
            let out = bk
                .ctx
                .evaluate(
                    m,
                    &Batch::new(&p[..], 1, 3),
                    Some(&Batch::new(&q[..], 1, 3).form(Form::Logits)),
                    &Options::default(),
                )
                .expect("evaluate");
            assert_eq!(out.values, vec![f32::INFINITY], "{} {m:?}", bk.name);
        }
    }
}

/// A log base below 1 divides by ln(base) < 0: +inf becomes -inf, per row and
/// in sums and means, as SciPy gives.
#[test]
fn base_below_one_flips_infinities() {
    let mut failures = Vec::new();
    let p = [0.5f32, 0.5, 0.0, 0.9, 0.1, 0.0];
    let q = [0.5f32, 0.0, 0.5, 0.5, 0.25, 0.25]; // row 0: p > 0 where q = 0
    let pi = Input::new(&p, 2, Form::Probs);
    let qi = Input::new(&q, 2, Form::Probs);
    for bk in backends() {
        for base in [Base::Custom(0.5), Base::Custom(0.1), Base::Two] {
            for m in [
                Measure::CrossEntropy,
                Measure::Kl,
                Measure::Js,
                Measure::Entropy,
            ] {
                let norm = Normalization::Validate;
                check_measure(
                    &mut failures,
                    &bk,
                    "base",
                    m,
                    pi,
                    Some(qi),
                    3,
                    norm,
                    base,
                    &REDUCTIONS,
                );
            }
        }
        let out = bk
            .ctx
            .kl(
                &Batch::new(&p[..], 2, 3),
                &Batch::new(&q[..], 2, 3),
                &Options::default().base(Base::Custom(0.5)),
            )
            .expect("kl");
        assert_eq!(out.values[0], f32::NEG_INFINITY, "{}", bk.name);
        // NLL of a zero probability in base 0.5
        let t = [1i64, 0];
        let nll = bk
            .ctx
            .nll(
                &Batch::new(&q[..], 2, 3),
                &t,
                &NllOptions::default()
                    .base(Base::Custom(0.5))
                    .reduction(Reduction::Mean),
            )
            .expect("nll");
        assert_eq!(nll.values[0], f32::NEG_INFINITY, "{}", bk.name);
    }
    report("base below one", &failures);
}

/// A mean over rows whose total weight is 0 is NaN on every backend, with or
/// without label smoothing (the CPU gave +inf with smoothing).
#[test]
fn nll_mean_over_zero_weight_is_nan() {
    let q = [0.2f32, 0.3, 0.5, 0.6, 0.2, 0.2];
    let w = [0.0f32, 1.0, 2.0];
    let t = [0i64, 0];
    for bk in backends() {
        for eps in [0.0f32, 0.1, 1.0] {
            let o = NllOptions::default()
                .weights(&w)
                .label_smoothing(eps)
                .reduction(Reduction::Mean);
            let out = bk.ctx.nll(&Batch::new(&q[..], 2, 3), &t, &o).expect("nll");
            assert!(
                out.values[0].is_nan(),
                "{} eps {eps}: {:?}",
                bk.name,
                out.values
            );
            assert_eq!(out.counted, 0.0, "{}", bk.name);
            // and every target ignored
            let o = NllOptions::default()
                .ignore_index(0)
                .label_smoothing(eps)
                .reduction(Reduction::Mean);
            let out = bk.ctx.nll(&Batch::new(&q[..], 2, 3), &t, &o).expect("nll");
            assert!(
                out.values[0].is_nan(),
                "{} eps {eps}: {:?}",
                bk.name,
                out.values
            );
        }
    }
}

/// Renormalize accepts every row with a non-zero entry: subnormal counts,
/// counts whose f32 sum overflows, a single subnormal column. Only an all-zero
/// row cannot be normalised.
#[test]
fn renormalize_tiny_and_huge_counts() {
    let mut failures = Vec::new();
    let norm = Normalization::Renormalize;
    let rows4: [f32; 12] = [
        1e-45, 2e-45, 3e-45, 4e-45, // subnormal counts
        3e38, 3e38, 1.0, 0.0, // the sum overflows f32
        1e-40, 0.0, 2e-38, 1.0, // a mixture
    ];
    let other: [f32; 12] = [
        4e-45, 3e-45, 2e-45, 1e-45, //
        1.0, 3e38, 2e38, 5.0, //
        1.0, 2.0, 3.0, 4.0,
    ];
    let a = Input::new(&rows4, 3, Form::Probs);
    let b = Input::new(&other, 3, Form::Probs);
    let one = [1e-45f32];
    let lg = Input::new(&BIG_SPREAD[..4], 1, Form::Logits);
    for bk in backends_with_cap(64 * 1024) {
        for m in MEASURES {
            check_measure(
                &mut failures,
                &bk,
                "renorm",
                m,
                a,
                Some(b),
                4,
                norm,
                Base::E,
                &REDUCTIONS,
            );
            check_measure(
                &mut failures,
                &bk,
                "renorm",
                m,
                b,
                Some(a),
                4,
                norm,
                Base::E,
                &REDUCTIONS,
            );
            let o = Input::new(&one, 1, Form::Probs);
            check_measure(
                &mut failures,
                &bk,
                "renorm 1",
                m,
                o,
                Some(o),
                1,
                norm,
                Base::E,
                &REDUCTIONS,
            );
            // a renormalised probability row beside logits (two passes); the
            // logits' spread exceeds f32::MAX, so cross-entropy and KL are +inf
            let pa = Input::new(&rows4[..4], 1, Form::Probs);
            if matches!(m, Measure::Entropy | Measure::Js) {
                check_measure(
                    &mut failures,
                    &bk,
                    "renorm+logits",
                    m,
                    pa,
                    Some(lg),
                    4,
                    norm,
                    Base::E,
                    &REDUCTIONS,
                );
            } else {
                let out = eval(
                    &bk.ctx,
                    m,
                    pa,
                    Some(lg),
                    4,
                    &Options::default().normalization(norm),
                )
                .expect("renorm+logits");
                assert_eq!(out.values, vec![f32::INFINITY], "{} {m:?}", bk.name);
            }
        }
        let z = [0.0f32, 0.0];
        let e = bk
            .ctx
            .entropy(
                &Batch::new(&z[..], 1, 2),
                &Options::default().normalization(norm),
            )
            .expect_err("an all-zero row");
        assert!(
            matches!(e, kullback::Error::CannotNormalize { row: 0, .. }),
            "{e:?}"
        );
    }
    report("renormalize tiny and huge counts", &failures);
}

/// Zero values are +0.0 on every backend (the GPU gave -0.0 for ignored NLL
/// rows and one-column cross-entropy).
#[test]
fn zeros_are_positive() {
    let q = [0.5f32, 0.5, 1.0, 0.0];
    for bk in backends() {
        let out = bk
            .ctx
            .nll(
                &Batch::new(&q[..2], 1, 2),
                &[0i64, -100],
                &NllOptions::default().ignore_index(-100),
            )
            .expect("nll");
        assert_eq!(out.values[1].to_bits(), 0, "{}: {:?}", bk.name, out.values);
        let one = [1.0f32];
        for m in MEASURES {
            let out = bk
                .ctx
                .evaluate(
                    m,
                    &Batch::new(&one[..], 1, 1),
                    Some(&Batch::new(&one[..], 1, 1)),
                    &Options::default(),
                )
                .expect("1 column");
            assert_eq!(
                out.values[0].to_bits(),
                0,
                "{} {m:?}: {:?}",
                bk.name,
                out.values
            );
        }
        let lq = [0.0f32];
        let out = bk
            .ctx
            .cross_entropy(
                &Batch::new(&one[..], 1, 1),
                &Batch::new(&lq[..], 1, 1).form(Form::LogProbs),
                &Options::default(),
            )
            .expect("ce");
        assert_eq!(out.values[0].to_bits(), 0, "{}: {:?}", bk.name, out.values);
    }
}
