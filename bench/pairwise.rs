//! All-pairs benchmark: `Context::pairwise` over an M × K p and N × K q.
//!
//! ```text
//! cargo run --release --example pairwise_bench -- --measure js -M 1000 -N 1000 -K 256 [--backend cpu] [--repeat 3] [--warmup 1]
//! cargo run --release --example pairwise_bench -- --measure kl --data DIR --out D.f32 --json   # bench/pairwise.py
//! ```
//!
//! Measures: kl, cross-entropy (ce), js, hellinger, total-variation (tv).
//! Without `--data` the inputs are seeded random distributions; with it,
//! `DIR/p.f32` and `DIR/q.f32` (raw little-endian f32, row-major) of the
//! given shape. Prints the median and every run's seconds, and the rate in
//! pair-elements (M·N·K) per second; `--out` writes the last run's matrix
//! (raw f32, row-major).

use std::time::Instant;

use kullback::{Backend, Batch, Context, Measure, PairwiseOptions};

struct Args {
    measure: Measure,
    m: usize,
    n: usize,
    k: usize,
    backend: Backend,
    repeat: usize,
    warmup: usize,
    data: Option<String>,
    out: Option<String>,
    json: bool,
}

fn measure(s: &str) -> Option<Measure> {
    Some(match s {
        "kl" => Measure::Kl,
        "ce" | "cross-entropy" => Measure::CrossEntropy,
        "js" => Measure::Js,
        "hellinger" => Measure::Hellinger,
        "tv" | "total-variation" => Measure::TotalVariation,
        _ => return None,
    })
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        measure: Measure::Js,
        m: 1000,
        n: 1000,
        k: 256,
        backend: Backend::Cpu,
        repeat: 3,
        warmup: 1,
        data: None,
        out: None,
        json: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = |i: usize| {
            argv.get(i + 1)
                .cloned()
                .ok_or(format!("{} needs a value", argv[i]))
        };
        let num = |i: usize| -> Result<usize, String> {
            v(i)?.parse().map_err(|e| format!("{}: {e}", argv[i]))
        };
        match argv[i].as_str() {
            "--measure" => a.measure = measure(&v(i)?).ok_or("unknown measure")?,
            "-M" => a.m = num(i)?,
            "-N" => a.n = num(i)?,
            "-K" => a.k = num(i)?,
            "--backend" => a.backend = Backend::parse(&v(i)?).ok_or("backend: auto, gpu or cpu")?,
            "--repeat" => a.repeat = num(i)?.max(1),
            "--warmup" => a.warmup = num(i)?,
            "--data" => a.data = Some(v(i)?),
            "--out" => a.out = Some(v(i)?),
            "--json" => {
                a.json = true;
                i += 1;
                continue;
            }
            other => return Err(format!("unknown argument {other}")),
        }
        i += 2;
    }
    Ok(a)
}

/// Seeded rows of positive probabilities (xorshift; no zeros).
fn random_rows(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let row: Vec<f64> = (0..cols)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 + 1e-3
            })
            .collect();
        let t: f64 = row.iter().sum();
        out.extend(row.iter().map(|x| (x / t) as f32));
    }
    out
}

fn read_f32(path: &str, len: usize) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if bytes.len() != len * 4 {
        return Err(format!(
            "{path}: {} bytes, expected {}",
            bytes.len(),
            len * 4
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let (p, q) = match &a.data {
        Some(dir) => match (
            read_f32(&format!("{dir}/p.f32"), a.m * a.k),
            read_f32(&format!("{dir}/q.f32"), a.n * a.k),
        ) {
            (Ok(p), Ok(q)) => (p, q),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        },
        None => (random_rows(a.m, a.k, 1), random_rows(a.n, a.k, 2)),
    };
    let ctx = Context::with_backend(a.backend).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let (pb, qb) = (Batch::new(&p, a.m, a.k), Batch::new(&q, a.n, a.k));
    let opts = PairwiseOptions::default();
    let mut times = Vec::new();
    let mut last = None;
    for r in 0..a.warmup + a.repeat {
        let t = Instant::now();
        let d = ctx
            .pairwise(a.measure, &pb, Some(&qb), &opts)
            .unwrap_or_else(|e| {
                eprintln!("error: {e}");
                std::process::exit(1)
            });
        let s = t.elapsed().as_secs_f64();
        if r >= a.warmup {
            times.push(s);
        }
        last = Some(d);
    }
    let d = last.expect("at least one run");
    if let Some(path) = &a.out {
        let bytes: Vec<u8> = d.values.iter().flat_map(|x| x.to_le_bytes()).collect();
        if let Err(e) = std::fs::write(path, bytes) {
            eprintln!("error: {path}: {e}");
            std::process::exit(1);
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let work = (a.m * a.n * a.k) as f64;
    if a.json {
        println!(
            "{{\"impl\":\"kullback\",\"measure\":\"{}\",\"backend\":\"{}\",\"adapter\":{:?},\"median_s\":{median},\"runs_s\":{times:?},\"pair_elem_per_s\":{}}}",
            a.measure.name(),
            d.backend.name(),
            d.adapter.unwrap_or_default(),
            work / median
        );
    } else {
        println!(
            "{} {}x{}x{} on {}: median {:.3} ms of {:?}, {:.2} G pair-elements/s",
            a.measure.name(),
            a.m,
            a.n,
            a.k,
            d.backend.name(),
            median * 1e3,
            times
                .iter()
                .map(|t| (t * 1e6).round() / 1e3)
                .collect::<Vec<_>>(),
            work / median / 1e9
        );
    }
}
