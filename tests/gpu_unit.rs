//! GPU tests of the host path moved out of src/ (where they returned early
//! without an adapter): every GPU test decides "GPU or skip" through
//! tests/common, which fails under KULLBACK_REQUIRE_GPU=1.

mod common;

use kullback::{
    Arg, Batch, Context, Error, Form, Measure, NllOptions, Normalization, Options, Reduction,
};

fn gpu() -> Option<Context> {
    common::gpu()
}

fn capped(cap: u64) -> Option<Context> {
    common::gpu_capped(cap)
}
fn kl64(p: &[f32], q: &[f32]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            if a == 0.0 {
                0.0
            } else {
                a as f64 * ((a as f64).ln() - (b as f64).ln())
            }
        })
        .sum()
}

fn dist(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 1000) as f32 / 1000.0 + 0.001
        })
        .collect();
    for r in v.chunks_mut(cols) {
        let t: f64 = r.iter().map(|&x| x as f64).sum();
        r.iter_mut().for_each(|x| *x = (*x as f64 / t) as f32);
    }
    v
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
        for r in 0..rows {
            let e = kl64(&p[r * cols..(r + 1) * cols], &q[r * cols..(r + 1) * cols]);
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
        let e: f64 = (0..rows)
            .map(|r| kl64(&p[r * cols..(r + 1) * cols], &q[r * cols..(r + 1) * cols]))
            .sum::<f64>()
            / rows as f64;
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
    let a: Vec<f32> = (0..3000)
        .map(|i| 3000.0 + ((i * 37) % 101) as f32 * 0.37)
        .collect();
    let m = a.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let s: f64 = a.iter().map(|&x| (x as f64 - m).exp()).sum();
    let h: f64 = -a
        .iter()
        .map(|&x| {
            let lp = x as f64 - m - s.ln();
            lp.exp() * lp
        })
        .sum::<f64>();
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
    for &(rows, cols) in &[(70_001usize, 5usize), (2, 40_000), (40, 300), (2, 1)] {
        let n = rows * cols;
        let p: Vec<f32> = (0..n).map(|i| ((i * 7919) % 97 + 1) as f32).collect();
        let q: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 89 + 1) as f32).collect();
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
    let q: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 31) % 1000) as f32 * 0.01 - 5.0)
        .collect();
    let t: Vec<i64> = vec![3, -100, 2999, 0];
    let out = ctx
        .nll(
            &Batch::new(&q, rows, cols).form(Form::Logits),
            &t,
            &NllOptions::default().ignore_index(-100),
        )
        .unwrap();
    for r in 0..rows {
        let row = &q[r * cols..(r + 1) * cols];
        let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        let e = if t[r] < 0 {
            0.0
        } else {
            lse - row[t[r] as usize] as f64
        };
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
