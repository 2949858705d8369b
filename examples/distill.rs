//! Distillation of a linear teacher into a linear student with kullback's
//! forward-KL gradient (T = 2) and plain SGD, headless.
//!
//! A fixed random teacher that is linear in the features (logits = X·W_T over
//! 1,000 classes for 4,096 synthetic inputs of 16 features, so the student
//! can match it) and
//! a linear student (X·W_S, W_S from zero) are trained twice: once from the
//! full teacher, once from its top-32 sparse form with the tail bucket. The
//! products run on the CPU (plain loops over the machine's threads); kullback
//! computes the loss and its gradient with respect to the student's logits,
//! and W_S moves by −lr·Xᵀ·∂loss/∂logits.
//!
//! Prints the loss every 50 steps. Exits non-zero unless both losses fall by
//! at least 90%, and unless the sparse-trained student's full forward KL
//! ends within 10% of the full run's initial loss of the full run's final
//! loss (|KL_full(sparse student) − KL_full(full student)| ≤ 0.1·initial
//! loss; the top-32 teacher does not say how its tail mass spreads, so the
//! sparse student cannot match the full one exactly).
//!
//! `cargo run --release --example distill`

use std::process::ExitCode;

use kullback::{
    Backend, Batch, Context, DistillOptions, Divergence, Form, Reduction, SparseTeacher, Tail,
    Teacher,
};

const N: usize = 4096;
const F: usize = 16;
const C: usize = 1000;
const K: usize = 32;
const T: f32 = 2.0;
const STEPS: usize = 150;
const LR: f32 = 24.0;

/// A seeded generator of normal values.
struct Rng(u64);
impl Rng {
    fn unif(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.unif(), self.unif());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// Runs `f(first_row, rows_of_out)` over row blocks of `out` on every core.
fn par_rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rows = out.len() / width;
    let per = rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (i, part) in out.chunks_mut(per * width).enumerate() {
            let f = &f;
            s.spawn(move || f(i * per, part));
        }
    });
}

/// out[N × C] = x[N × F] · w[F × C].
fn forward(x: &[f32], w: &[f32], out: &mut [f32]) {
    par_rows(out, C, |r0, part| {
        for (i, row) in part.chunks_mut(C).enumerate() {
            row.fill(0.0);
            for f in 0..F {
                let a = x[(r0 + i) * F + f];
                for (o, &b) in row.iter_mut().zip(&w[f * C..(f + 1) * C]) {
                    *o += a * b;
                }
            }
        }
    });
}

/// gw[F × C] = xᵀ[F × N] · g[N × C].
fn backward(x: &[f32], g: &[f32], gw: &mut [f32]) {
    par_rows(gw, C, |f0, part| {
        for (j, row) in part.chunks_mut(C).enumerate() {
            let f = f0 + j;
            row.fill(0.0);
            for i in 0..N {
                let a = x[i * F + f];
                for (o, &b) in row.iter_mut().zip(&g[i * C..(i + 1) * C]) {
                    *o += a * b;
                }
            }
        }
    });
}

/// The teacher's top-K columns of each row at temperature T and their ln p_T.
fn top_k(logits: &[f32]) -> (Vec<i32>, Vec<f32>) {
    let (mut ix, mut lp) = (Vec::with_capacity(N * K), Vec::with_capacity(N * K));
    for row in logits.chunks(C) {
        let a: Vec<f64> = row.iter().map(|&v| v as f64 / T as f64).collect();
        let m = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + a.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let mut order: Vec<usize> = (0..C).collect();
        order.sort_by(|&i, &j| a[j].total_cmp(&a[i]));
        for &c in &order[..K] {
            ix.push(c as i32);
            lp.push((a[c] - lse) as f32);
        }
    }
    (ix, lp)
}

/// Trains a student from zero against `teacher`; returns (first loss, last
/// loss, the trained weights).
fn train(
    ctx: &Context,
    x: &[f32],
    teacher: &Teacher<'_>,
    name: &str,
) -> kullback::Result<(f32, f32, Vec<f32>)> {
    let opts = DistillOptions::default()
        .divergence(Divergence::ForwardKl)
        .temperature(T)
        .tail(Tail::Bucket)
        .reduction(Reduction::Mean);
    let mut w = vec![0f32; F * C];
    let mut logits = vec![0f32; N * C];
    let mut grad = vec![0f32; N * C];
    let mut gw = vec![0f32; F * C];
    let (mut first, mut last) = (f32::NAN, f32::NAN);
    for step in 0..=STEPS {
        forward(x, &w, &mut logits);
        let student = Batch::new(&logits, N, C).form(Form::Logits);
        let loss = ctx.distill(&student, teacher, &opts, &mut grad)?.values[0];
        if step == 0 {
            first = loss;
        }
        last = loss;
        if step % 50 == 0 {
            println!("{name:>6} step {step:>3}: loss {loss:.5}");
        }
        if step == STEPS {
            break;
        }
        backward(x, &grad, &mut gw);
        for (a, b) in w.iter_mut().zip(&gw) {
            *a -= LR * b;
        }
    }
    Ok((first, last, w))
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> kullback::Result<bool> {
    let ctx = Context::with_backend(Backend::Cpu)?;
    let mut rng = Rng(18);
    let x: Vec<f32> = (0..N * F).map(|_| rng.normal()).collect();
    // teacher logits of standard deviation about 4 (2 at T = 2)
    let scale = 4.0 / (F as f32).sqrt();
    let wt: Vec<f32> = (0..F * C).map(|_| scale * rng.normal()).collect();
    let mut tl = vec![0f32; N * C];
    forward(&x, &wt, &mut tl);
    let full = Teacher::Dense(Batch::new(&tl, N, C).form(Form::Logits));
    let (ix, lp) = top_k(&tl);
    let sparse = Teacher::Sparse(SparseTeacher::new(&ix, &lp, K));
    let start = std::time::Instant::now();
    let (f0, f1, _) = train(&ctx, &x, &full, "full")?;
    let (s0, s1, ws) = train(&ctx, &x, &sparse, "top-32")?;
    // the sparse-trained student under the full teacher
    let mut logits = vec![0f32; N * C];
    forward(&x, &ws, &mut logits);
    let mut grad = vec![0f32; N * C];
    let opts = DistillOptions::default()
        .temperature(T)
        .reduction(Reduction::Mean);
    let cross = ctx
        .distill(
            &Batch::new(&logits, N, C).form(Form::Logits),
            &full,
            &opts,
            &mut grad,
        )?
        .values[0];
    let fall = |a: f32, b: f32| 1.0 - b / a;
    println!(
        "full: {f0:.4} -> {f1:.4} ({:.1}% lower); top-{K}: {s0:.4} -> {s1:.4} ({:.1}% lower); \
         the top-{K} student's full loss {cross:.4} (full run {f1:.4}); {:.1} s",
        100.0 * fall(f0, f1),
        100.0 * fall(s0, s1),
        start.elapsed().as_secs_f64()
    );
    let mut ok = true;
    for (name, a, b) in [("full", f0, f1), ("top-32", s0, s1)] {
        // NaN fails too
        if fall(a, b).is_nan() || fall(a, b) < 0.9 {
            eprintln!(
                "{name}: the loss fell by {:.1}%, less than 90%",
                100.0 * fall(a, b)
            );
            ok = false;
        }
    }
    let gap = (cross - f1).abs();
    if gap.is_nan() || gap > 0.1 * f0 {
        eprintln!(
            "the top-{K} student's full loss {cross} is not within 10% of {f0} of the full run's {f1}"
        );
        ok = false;
    }
    Ok(ok)
}
