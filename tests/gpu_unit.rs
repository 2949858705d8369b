//! GPU tests of the host path moved out of src/ (where they returned early
//! without an adapter): every GPU test decides "GPU or skip" through
//! tests/common, which fails under KULLBACK_REQUIRE_GPU=1.

mod common;

use kullback::{
    Arg, Base, Batch, Context, Error, Form, Measure, NllOptions, Normalization, Options, Reduction,
};

fn gpu() -> Option<Context> {
    common::gpu()
}

fn capped(cap: u64) -> Option<Context> {
    common::gpu_capped(cap)
}
fn dist(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    common::rand_probs(&mut common::Rng::new(seed), rows, cols, 0.0)
}

/// The oracle's per-row KL of probabilities.
fn kl64(p: &[f32], q: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    common::ref_measure(
        Measure::Kl,
        common::Input::new(p, rows, Form::Probs),
        Some(common::Input::new(q, rows, Form::Probs)),
        cols,
        Normalization::Validate,
        Base::E,
    )
}

#[test]
fn smoke_kl_shapes() {
    let Some(ctx) = gpu() else { return };
    for &(rows, cols) in &[
        (5usize, 1usize),
        (6, 255),
        (6, 257),
        (3, 5000),
        (2, 100_003),
    ] {
        let p = dist(rows, cols, 1);
        let q = dist(rows, cols, 2);
        let out = ctx
            .kl(
                &Batch::new(&p, rows, cols),
                &Batch::new(&q, rows, cols),
                &Options::default(),
            )
            .unwrap();
        let want = kl64(&p, &q, rows, cols);
        for (r, &e) in want.iter().enumerate() {
            let g = out.values[r] as f64;
            assert!(
                (g - e).abs() <= 2e-6 + 2e-5 * e.abs(),
                "{rows}x{cols} row {r}: {g} vs {e}"
            );
        }
        let s = ctx
            .evaluate(
                Measure::Kl,
                &Batch::new(&p, rows, cols),
                Some(&Batch::new(&q, rows, cols)),
                &Options::default().reduction(Reduction::Mean),
            )
            .unwrap();
        let e: f64 = want.iter().sum::<f64>() / rows as f64;
        assert!(
            (s.values[0] as f64 - e).abs() <= 2e-6 + 2e-5 * e,
            "mean {} vs {e}",
            s.values[0]
        );
    }
}

#[test]
fn smoke_logits_entropy() {
    let Some(ctx) = gpu() else { return };
    // logits around 3000 (a naive exp overflows)
    let a = common::rand_logits(&mut common::Rng::new(3), 1, 3000, 10.0, 3000.0);
    let h = common::ref_measure(
        Measure::Entropy,
        common::Input::new(&a, 1, Form::Logits),
        None,
        3000,
        Normalization::Validate,
        Base::E,
    )[0];
    let out = ctx
        .entropy(
            &Batch::new(&a, 1, 3000).form(Form::Logits),
            &Options::default(),
        )
        .unwrap();
    assert!(
        (out.values[0] as f64 - h).abs() <= 2e-6 + 2e-5 * h,
        "{} vs {h}",
        out.values[0]
    );
}

#[test]
fn chunked_equals_unchunked() {
    let (Some(small), Some(full)) = (capped(64 * 1024), capped(1 << 30)) else {
        return;
    };
    let mut rng = common::Rng::new(4);
    for &(rows, cols) in &[(70_001usize, 5usize), (2, 40_000), (40, 300), (2, 1)] {
        let n = rows * cols;
        // counts, renormalised below
        let p = common::rand_counts(&mut rng, n, 1, 97);
        let q = common::rand_counts(&mut rng, n, 1, 89);
        let o = Options::default().normalization(Normalization::Renormalize);
        let a = small
            .kl(&Batch::new(&p, rows, cols), &Batch::new(&q, rows, cols), &o)
            .unwrap();
        let b = full
            .kl(&Batch::new(&p, rows, cols), &Batch::new(&q, rows, cols), &o)
            .unwrap();
        assert_eq!(a.values.len(), rows);
        for (i, (x, y)) in a.values.iter().zip(&b.values).enumerate() {
            assert!(
                (x - y).abs() <= 1e-6 + 1e-5 * y.abs(),
                "{rows}x{cols} row {i}: {x} vs {y}"
            );
        }
        let m = small
            .kl(
                &Batch::new(&p, rows, cols),
                &Batch::new(&q, rows, cols),
                &o.reduction(Reduction::Sum),
            )
            .unwrap();
        let e: f64 = b.values.iter().map(|&v| v as f64).sum();
        assert!(
            (m.values[0] as f64 - e).abs() <= 1e-5 * e.abs() + 1e-5,
            "sum {} vs {e}",
            m.values[0]
        );
    }
}

#[test]
fn nll_logits_with_ignore() {
    let Some(ctx) = capped(1 << 30) else { return };
    let (rows, cols) = (4usize, 3000usize);
    let q = common::rand_logits(&mut common::Rng::new(5), rows, cols, 3.0, 0.0);
    let t: Vec<i64> = vec![3, -100, 2999, 0];
    let out = ctx
        .nll(
            &Batch::new(&q, rows, cols).form(Form::Logits),
            &t,
            &NllOptions::default().ignore_index(-100),
        )
        .unwrap();
    let (want, _) = common::ref_nll(
        common::Input::new(&q, rows, Form::Logits),
        cols,
        &t,
        Some(-100),
        None,
        0.0,
        Normalization::Validate,
        Base::E,
    );
    for (r, &e) in want.iter().enumerate() {
        assert!(
            (out.values[r] as f64 - e).abs() <= 2e-6 + 2e-5 * e.abs(),
            "row {r}: {} vs {e}",
            out.values[r]
        );
    }
    let mean = ctx
        .nll(
            &Batch::new(&q, rows, cols).form(Form::Logits),
            &t,
            &NllOptions::default()
                .ignore_index(-100)
                .reduction(Reduction::Mean),
        )
        .unwrap();
    let e = (out.values[0] + out.values[2] + out.values[3]) / 3.0;
    assert!(
        (mean.values[0] - e).abs() < 1e-5,
        "{} vs {e}",
        mean.values[0]
    );
    assert_eq!(mean.counted, 3.0);
}

/// JS next to logits takes two passes; a probability row used as given is
/// still checked (it is not divided by its sum behind the caller's back).
#[test]
fn js_next_to_logits_still_validates_the_probabilities() {
    let Some(gpu) = gpu() else { return };
    let cpu = common::cpu();
    let logits = [1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5];
    let q = [0.2f32, 0.3, 0.5, 0.4, 0.4, 0.4]; // row 1 sums to 1.2
    for ctx in [&gpu, &cpu] {
        let e = ctx
            .evaluate(
                Measure::Js,
                &Batch::new(&logits, 2, 3).form(Form::Logits),
                Some(&Batch::new(&q, 2, 3)),
                &Options::default(),
            )
            .expect_err("row 1 of q is not normalised");
        assert!(
            matches!(
                e,
                Error::NotNormalized {
                    arg: Arg::Q,
                    row: 1,
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
