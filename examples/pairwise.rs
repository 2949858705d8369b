//! Nearest prototypes by Jensen-Shannon: 20,000 random "documents" (topic
//! mixtures over 256 topics, about a third of them zero) against 500
//! prototypes, each document's 5 nearest, on the backend `Backend::Auto`
//! picks (or `KULLBACK_BACKEND`). Prints a few matches and the throughput
//! in pair-elements (M·N·K) per second, then checks a sample of documents
//! against an f64 computation on the CPU and exits non-zero on any
//! disagreement.
//!
//! ```text
//! cargo run --release --example pairwise [-- --docs 20000 --protos 500 --topics 256 --k 5]
//! ```

use std::process::ExitCode;
use std::time::Instant;

use kullback::{Batch, Context, Measure, PairwiseOptions};

/// A seeded xorshift generator (no dependency for an example).
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

/// `rows` topic mixtures: a few dominant topics, the rest small or zero.
fn mixtures(rng: &mut Rng, rows: usize, topics: usize, zeros: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * topics);
    for _ in 0..rows {
        let mut row: Vec<f64> = (0..topics)
            .map(|_| {
                if rng.uniform() < zeros {
                    0.0
                } else {
                    // heavy-tailed weights: a few topics carry most of the mass
                    (-rng.uniform().ln()).powi(3)
                }
            })
            .collect();
        if row.iter().all(|&x| x == 0.0) {
            row[0] = 1.0;
        }
        let s: f64 = row.iter().sum();
        out.extend(row.iter().map(|x| (x / s) as f32));
    }
    out
}

/// JS(p, q) in nats, in f64 from the f32 values.
fn js64(p: &[f32], q: &[f32]) -> f64 {
    let mut s = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let (a, b) = (a as f64, b as f64);
        let m = 0.5 * (a + b);
        if a > 0.0 {
            s += 0.5 * a * (a / m).ln();
        }
        if b > 0.0 {
            s += 0.5 * b * (b / m).ln();
        }
    }
    s
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let (docs, protos, topics, k) = (
        arg("--docs", 20_000),
        arg("--protos", 500),
        arg("--topics", 256),
        arg("--k", 5),
    );
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let d = mixtures(&mut rng, docs, topics, 0.35);
    let p = mixtures(&mut rng, protos, topics, 0.1);
    let ctx = match Context::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = PairwiseOptions::default();
    let (db, pb) = (Batch::new(&d, docs, topics), Batch::new(&p, protos, topics));
    let t = Instant::now();
    let near = match ctx.pairwise_top_k(Measure::Js, &db, Some(&pb), k, &opts) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let secs = t.elapsed().as_secs_f64();
    let work = (docs * protos * topics) as f64;
    println!(
        "{docs} documents x {protos} prototypes x {topics} topics, top {k} by JS on {} ({}): {:.1} ms, {:.2} G pair-elements/s",
        near.backend.name(),
        near.adapter.as_deref().unwrap_or("no adapter"),
        secs * 1e3,
        work / secs / 1e9
    );
    for i in [0, 1, docs / 2, docs - 1] {
        let list: Vec<String> = (0..k)
            .map(|t| {
                format!(
                    "#{} ({:.4})",
                    near.indices[i * k + t],
                    near.values[i * k + t]
                )
            })
            .collect();
        println!("document {i}: {}", list.join(", "));
    }
    // a sample of documents against f64 on the CPU: each listed value is
    // its pair's JS, and no prototype left out is nearer than the last
    let tol = |x: f64| 2e-6 + 2e-5 * x.abs();
    let mut bad = 0;
    for s in 0..64 {
        let i = (s * 7919) % docs;
        let row = &d[i * topics..(i + 1) * topics];
        let exact: Vec<f64> = (0..protos)
            .map(|j| js64(row, &p[j * topics..(j + 1) * topics]))
            .collect();
        let listed = &near.indices[i * k..(i + 1) * k];
        let values = &near.values[i * k..(i + 1) * k];
        let last = values[k - 1] as f64;
        for (&j, &v) in listed.iter().zip(values) {
            let (j, v) = (j as usize, v as f64);
            if (v - exact[j]).abs() > tol(exact[j]) {
                eprintln!("document {i}: JS to #{j} is {v}, f64 says {}", exact[j]);
                bad += 1;
            }
        }
        for (j, &x) in exact.iter().enumerate() {
            if !listed.contains(&(j as u32)) && x < last - tol(last) {
                eprintln!("document {i}: #{j} ({x}) is nearer than the listed {last}");
                bad += 1;
            }
        }
    }
    if bad > 0 {
        eprintln!("error: {bad} disagreements with the f64 check");
        return ExitCode::FAILURE;
    }
    println!("checked 64 documents against f64 on the CPU: all agree");
    ExitCode::SUCCESS
}
