//! Headless batch evaluation: entropy, cross-entropy and KL divergence of a
//! seeded batch of random distributions, with the throughput of each.
//!
//! ```text
//! cargo run --release --example batch                      # 4096 x 4096, Backend::Auto
//! cargo run --release --example batch -- --rows 1000 --cols 50000
//! KULLBACK_BACKEND=gpu cargo run --release --example batch # any adapter, lavapipe included
//! KULLBACK_BACKEND=cpu cargo run --release --example batch
//! ```
//!
//! `Backend::Auto` takes a hardware GPU when there is one and the CPU
//! otherwise; `KULLBACK_BACKEND=auto|gpu|cpu` replaces it. No window, no
//! display: runs as written on a machine without a GPU.

use std::time::{Duration, Instant};

use kullback::{Backend, Batch, Context, Options, Output, Reduction};

/// One measure's call, timed by `main`.
type Eval<'a> = &'a dyn Fn() -> kullback::Result<Output>;

/// Timed runs per measure; the median is reported.
const RUNS: usize = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let (rows, cols) = parse_args()?;

    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let p = random_distributions(&mut rng, rows, cols);
    let q = random_distributions(&mut rng, rows, cols);
    let p = Batch::new(&p, rows, cols);
    let q = Batch::new(&q, rows, cols);

    let ctx = Context::with_backend(Backend::Auto)?;
    println!(
        "batch: {rows} x {cols} f32 probabilities; backend {}; adapter {}",
        ctx.backend().name(),
        ctx.adapter_name().unwrap_or("none")
    );

    let opts = Options::default().reduction(Reduction::None);
    let measures: [(&str, usize, Eval<'_>); 3] = [
        ("entropy", 1, &|| ctx.entropy(&p, &opts)),
        ("cross-entropy", 2, &|| ctx.cross_entropy(&p, &q, &opts)),
        ("kl", 2, &|| ctx.kl(&p, &q, &opts)),
    ];
    for (name, inputs, eval) in measures {
        let out = eval()?; // also warms up: pipelines, buffers, threads
        let mut times = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let start = Instant::now();
            let out = eval()?;
            times.push(start.elapsed());
            std::hint::black_box(out);
        }
        times.sort();
        let t = times[RUNS / 2];
        let elements = (rows * cols) as f64;
        let bytes = elements * 4.0 * inputs as f64;
        let first: Vec<String> = out
            .values
            .iter()
            .take(3)
            .map(|v| format!("{v:.6}"))
            .collect();
        let mean = out.values.iter().map(|&v| v as f64).sum::<f64>() / out.values.len() as f64;
        println!(
            "{name:>13}: first rows [{}], mean {mean:.6} nats | {} ({}) | median {} of {RUNS}: \
             {:.3e} elements/s, {:.2} GB/s of input read",
            first.join(", "),
            out.backend.name(),
            out.adapter.as_deref().unwrap_or("no adapter"),
            ms(t),
            elements / t.as_secs_f64(),
            bytes / t.as_secs_f64() / 1e9,
        );
    }
    Ok(())
}

fn ms(t: Duration) -> String {
    format!("{:.2} ms", t.as_secs_f64() * 1e3)
}

/// `--rows R --cols N` (both optional; default 4096 x 4096).
fn parse_args() -> Result<(usize, usize), String> {
    let (mut rows, mut cols) = (4096, 4096);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let target = match flag.as_str() {
            "--rows" => &mut rows,
            "--cols" => &mut cols,
            "-h" | "--help" => {
                println!("usage: batch [--rows R] [--cols N]   (default 4096 x 4096)");
                std::process::exit(0);
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: [--rows R] [--cols N]"
                ));
            }
        };
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        *target = value
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or(format!("{flag} {value:?}: expected a positive integer"))?;
    }
    Ok((rows, cols))
}

/// xorshift64*: enough randomness for test data, no dependency.
struct XorShift(u64);

impl XorShift {
    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// Rows drawn uniformly from the probability simplex (normalised exponentials),
/// normalised in f64 and rounded to f32: each row sums to 1 within f32 rounding.
fn random_distributions(rng: &mut XorShift, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    let mut row = vec![0.0f64; cols];
    for _ in 0..rows {
        let mut sum = 0.0;
        for x in row.iter_mut() {
            *x = -rng.unit().ln();
            sum += *x;
        }
        out.extend(row.iter().map(|x| (x / sum) as f32));
    }
    out
}
