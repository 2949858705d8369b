//! Properties on random small batches (proptest), on the CPU and, when there is
//! an adapter, on the GPU: KL ≥ 0, KL(p, p) = 0, H(p, q) = H(p) + KL(p‖q),
//! JS symmetric and within [0, ln 2]; each within the crate's tolerance.

mod common;

use common::*;
use kullback::{Base, Form, Measure, Normalization, Options, Output};
use proptest::prelude::*;

const LN2: f64 = std::f64::consts::LN_2;

/// Rows × cols values, as raw non-negative weights (renormalised by the call)
/// or logits.
fn batch() -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<f32>, bool)> {
    (1usize..5, 1usize..48, any::<bool>()).prop_flat_map(|(rows, cols, logits)| {
        let val = if logits {
            (-30.0f32..30.0).boxed()
        } else {
            // Zeros about one time in four, otherwise (0, 10].
            prop_oneof![1 => Just(0.0f32), 3 => 1e-3f32..10.0].boxed()
        };
        (
            Just(rows),
            Just(cols),
            proptest::collection::vec(val.clone(), rows * cols),
            proptest::collection::vec(val, rows * cols),
            Just(logits),
        )
    })
}

fn fix_zero_rows(x: &mut [f32], cols: usize) {
    for row in x.chunks_mut(cols) {
        if row.iter().all(|v| *v == 0.0) {
            row[0] = 1.0;
        }
    }
}

fn run(bk: &Bk, m: Measure, p: Input<'_>, q: Input<'_>, cols: usize, o: &Options) -> Output {
    eval(&bk.ctx, m, p, Some(q), cols, o).unwrap_or_else(|e| panic!("{m:?} on {}: {e}", bk.name))
}

fn check_properties(rows: usize, cols: usize, mut p: Vec<f32>, mut q: Vec<f32>, logits: bool) {
    let form = if logits { Form::Logits } else { Form::Probs };
    if !logits {
        fix_zero_rows(&mut p, cols);
        fix_zero_rows(&mut q, cols);
    }
    let o = Options::default().normalization(Normalization::Renormalize);
    let pi = Input::new(&p, rows, form);
    let qi = Input::new(&q, rows, form);
    for bk in backends() {
        let kl = run(&bk, Measure::Kl, pi, qi, cols, &o);
        let kl_pp = run(&bk, Measure::Kl, pi, pi, cols, &o);
        let ce = run(&bk, Measure::CrossEntropy, pi, qi, cols, &o);
        let h = eval(&bk.ctx, Measure::Entropy, pi, None, cols, &o).expect("entropy");
        let js = run(&bk, Measure::Js, pi, qi, cols, &o);
        let js_qp = run(&bk, Measure::Js, qi, pi, cols, &o);
        // The values themselves match the f64 reference.
        let want = ref_measure(
            Measure::Kl,
            pi,
            Some(qi),
            cols,
            Normalization::Renormalize,
            Base::E,
        );
        assert_output(
            &format!("KL [{}]", bk.name),
            &kl,
            &want,
            rows as f64,
            kullback::Reduction::None,
            ABS_TOL,
            REL_TOL,
        );
        for r in 0..rows {
            let (k, kp, c, hh, j, jq) = (
                kl.values[r] as f64,
                kl_pp.values[r] as f64,
                ce.values[r] as f64,
                h.values[r] as f64,
                js.values[r] as f64,
                js_qp.values[r] as f64,
            );
            let at = format!(
                "[{}] row {r}: KL {k} KL(p,p) {kp} CE {c} H {hh} JS {j} JS(q,p) {jq}",
                bk.name
            );
            assert!(k >= -ABS_TOL, "KL < 0 {at}");
            assert!(close_tol(kp, 0.0, ABS_TOL, 0.0), "KL(p, p) != 0 {at}");
            if c.is_infinite() || k.is_infinite() {
                assert!(
                    c == f64::INFINITY && k == f64::INFINITY,
                    "CE and KL not both +inf {at}"
                );
            } else {
                let tol = 2.0 * ABS_TOL + REL_TOL * (c.abs() + hh.abs() + k.abs());
                assert!((c - hh - k).abs() <= tol, "CE != H + KL {at}");
            }
            assert!(
                (-ABS_TOL..=LN2 + ABS_TOL + REL_TOL * LN2).contains(&j),
                "JS outside [0, ln 2] {at}"
            );
            assert!(
                close_tol(j, jq, 2.0 * ABS_TOL, 2.0 * REL_TOL),
                "JS not symmetric {at}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn divergence_properties((rows, cols, p, q, logits) in batch()) {
        check_properties(rows, cols, p, q, logits);
    }
}
