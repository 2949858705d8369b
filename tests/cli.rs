//! The `kullback` binary end to end: .npy files in a temporary directory, the
//! JSON on stdout checked against a plain f64 reference computed here from the
//! very f32 values the binary reads, and the error rules (non-zero exit, empty
//! stdout, a last stderr line naming the file and the row).
//!
//! Every test runs on `--backend cpu`, and on `--backend gpu` when an adapter
//! exists; with `KULLBACK_REQUIRE_GPU=1` a missing adapter fails the tests.

#![cfg(feature = "cli")]

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;

use npyz::WriterBuilder;
use serde_json::Value;

// ---------------------------------------------------------------- harness

/// The backends to run on: cpu always, gpu when an adapter exists (the
/// shared GPU-or-skip decision of tests/common).
fn backends() -> Vec<&'static str> {
    if common::gpu().is_some() {
        vec!["cpu", "gpu"]
    } else {
        vec!["cpu"]
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kullback-cli-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
    /// Writes `data` with `shape` (C order) and returns the path as a string.
    fn save<T: npyz::AutoSerialize + Copy>(&self, file: &str, shape: &[u64], data: &[T]) -> String {
        let path = self.path(file);
        save_npy(&path, shape, data, npyz::Order::C);
        path.to_str().unwrap().to_string()
    }
    fn mat(&self, file: &str, m: &Mat) -> String {
        self.save(file, &[m.rows as u64, m.cols as u64], &m.data)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn save_npy<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[u64],
    data: &[T],
    order: npyz::Order,
) {
    let file = BufWriter::new(File::create(path).unwrap());
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .order(order)
        .writer(file)
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` and `KULLBACK_BACKEND` set to `env` (or unset).
fn run_env(args: &[&str], env: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kullback"));
    cmd.args(args).env_remove("KULLBACK_BACKEND");
    if let Some(v) = env {
        cmd.env("KULLBACK_BACKEND", v);
    }
    let out = cmd.output().expect("run kullback");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run(args: &[&str]) -> Run {
    run_env(args, None)
}

/// Runs and parses the JSON; checks the backend that ran and the common fields.
fn json(args: &[&str], backend: &str) -> Value {
    let mut all = args.to_vec();
    all.extend(["--backend", backend]);
    let r = run(&all);
    assert!(r.ok, "kullback {all:?} failed:\n{}", r.stderr);
    let v: Value = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", r.stdout));
    assert_eq!(v["backend"], backend, "{v}");
    match backend {
        "cpu" => assert!(v["adapter"].is_null(), "{v}"),
        _ => assert!(v["adapter"].is_string(), "{v}"),
    }
    assert_eq!(v["measure"], args[0], "{v}");
    v
}

/// Checks a failure: non-zero exit, nothing on stdout, no panic, and a last
/// stderr line `error: ...` holding every needle.
fn fails(args: &[&str], backend: &str, needles: &[&str]) {
    let mut all = args.to_vec();
    all.extend(["--backend", backend]);
    let r = run(&all);
    assert!(!r.ok, "kullback {all:?} should fail; stdout: {}", r.stdout);
    assert!(
        r.stdout.is_empty(),
        "stdout should be empty: {:?}",
        r.stdout
    );
    assert!(!r.stderr.contains("panicked"), "panic: {}", r.stderr);
    let last = r
        .stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(last.starts_with("error: "), "last stderr line: {last:?}");
    for n in needles {
        assert!(last.contains(n), "last stderr line {last:?} lacks {n:?}");
    }
}

/// A usage error from clap: non-zero exit, nothing on stdout.
fn usage_error(args: &[&str]) {
    let r = run(args);
    assert!(!r.ok, "kullback {args:?} should fail");
    assert!(
        r.stdout.is_empty(),
        "stdout should be empty: {:?}",
        r.stdout
    );
    assert!(!r.stderr.contains("panicked"), "panic: {}", r.stderr);
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        Value::String(s) if s == "nan" => f64::NAN,
        other => panic!("not a value: {other}"),
    }
}

fn values(v: &Value) -> Vec<f64> {
    v["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(num)
        .collect()
}

fn close(got: f64, want: f64) -> bool {
    if want.is_nan() || want.is_infinite() {
        return got.is_nan() && want.is_nan() || got == want;
    }
    (got - want).abs() <= 2e-6 + 2e-5 * want.abs()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(close(*g, *w), "{what}: value {i}: got {g}, want {w}");
    }
}

/// Checks values and, for a non-finite expected value, the string form.
fn check(v: &Value, want: &[f64], what: &str) {
    assert_close(&values(v), want, what);
    for (x, w) in v["values"].as_array().unwrap().iter().zip(want) {
        if !w.is_finite() {
            assert!(
                x.is_string(),
                "{what}: non-finite {w} must be a string, got {x}"
            );
        }
    }
}

// ---------------------------------------------------------------- data

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone)]
struct Mat {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Mat {
    fn row(&self, i: usize) -> &[f32] {
        let i = if self.rows == 1 { 0 } else { i };
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Random distributions (normalised in f64, then rounded to f32); `zero(r, c)`
/// marks entries that are exactly 0.
fn random_probs(seed: u64, rows: usize, cols: usize, zero: impl Fn(usize, usize) -> bool) -> Mat {
    let mut rng = Rng(seed);
    let mut data = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let raw: Vec<f64> = (0..cols)
            .map(|c| if zero(r, c) { 0.0 } else { -rng.unit().ln() })
            .collect();
        let s: f64 = raw.iter().sum();
        data.extend(raw.iter().map(|x| (x / s) as f32));
    }
    Mat { data, rows, cols }
}

fn random_logits(seed: u64, rows: usize, cols: usize, scale: f64) -> Mat {
    let mut rng = Rng(seed);
    let data = (0..rows * cols)
        .map(|_| ((rng.unit() - 0.5) * 2.0 * scale) as f32)
        .collect();
    Mat { data, rows, cols }
}

/// p and q, 6 × 257, with zeros, a one-hot row, a uniform row and subnormals.
fn special_pair() -> (Mat, Mat) {
    let cols = 257;
    let mut p = random_probs(1, 6, cols, |r, c| {
        (r == 1 && c % 3 == 0) || (r == 4 && c < 5) || (r == 5 && c == 0)
    });
    let mut q = random_probs(2, 6, cols, |r, c| {
        (r == 1 && c % 6 == 0) || (r == 4 && (3..8).contains(&c)) || (r == 5 && c == 1)
    });
    for c in 0..cols {
        p.data[2 * cols + c] = if c == 100 { 1.0 } else { 0.0 };
        p.data[3 * cols + c] = 1.0 / cols as f32;
    }
    for c in 0..5 {
        p.data[4 * cols + c] = 1e-40;
        q.data[4 * cols + c + 3] = 1e-40;
    }
    p.data[5 * cols] = 3e-44;
    q.data[5 * cols + 1] = 3e-44;
    (p, q)
}

// ---------------------------------------------------------------- reference (f64)

#[derive(Clone, Copy, PartialEq)]
enum F {
    Probs,
    LogProbs,
    Logits,
}

impl F {
    fn name(self) -> &'static str {
        match self {
            F::Probs => "probs",
            F::LogProbs => "log-probs",
            F::Logits => "logits",
        }
    }
}

fn lse(x: &[f64]) -> f64 {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// (probabilities, natural logs, support) of one row, as the conventions define
/// them: p = 0 is a probability of 0, or a log-probability or logit of -inf (a
/// finite logit far below the maximum is a p > 0 even where exp underflows).
fn dist(row: &[f32], form: F, normalize: bool) -> (Vec<f64>, Vec<f64>, Vec<bool>) {
    let x: Vec<f64> = row.iter().map(|&v| v as f64).collect();
    match form {
        F::Probs => {
            let s = if normalize { x.iter().sum() } else { 1.0 };
            let p: Vec<f64> = x.iter().map(|v| v / s).collect();
            let lp = p.iter().map(|v| v.ln()).collect();
            (p, lp, x.iter().map(|&v| v != 0.0).collect())
        }
        F::LogProbs | F::Logits => {
            let c = if form == F::Logits || normalize {
                lse(&x)
            } else {
                0.0
            };
            let lp: Vec<f64> = x.iter().map(|v| v - c).collect();
            let support = x.iter().map(|&v| v != f64::NEG_INFINITY).collect();
            (lp.iter().map(|v| v.exp()).collect(), lp, support)
        }
    }
}

/// Per-row values in nats.
fn reference(measure: &str, p: (&Mat, F), q: Option<(&Mat, F)>, normalize: bool) -> Vec<f64> {
    let rows = q.map_or(p.0.rows, |q| p.0.rows.max(q.0.rows));
    (0..rows)
        .map(|i| {
            let (pp, lp, sp) = dist(p.0.row(i), p.1, normalize);
            let (qq, lq, _) = q.map_or((vec![], vec![], vec![]), |q| {
                dist(q.0.row(i), q.1, normalize)
            });
            // Σ over the support of p; p > 0 against q = 0 is +inf.
            let sum = |f: &dyn Fn(usize) -> f64| -> f64 {
                (0..pp.len())
                    .filter(|&c| sp[c])
                    .map(|c| {
                        if !lq.is_empty() && lq[c] == f64::NEG_INFINITY {
                            f64::INFINITY
                        } else {
                            f(c)
                        }
                    })
                    .sum()
            };
            match measure {
                "entropy" => sum(&|c| -pp[c] * lp[c]),
                "cross-entropy" => sum(&|c| -pp[c] * lq[c]),
                "kl" => sum(&|c| pp[c] * (lp[c] - lq[c])),
                "js" => {
                    let mut s = 0.0;
                    for c in 0..pp.len() {
                        let m = 0.5 * (pp[c] + qq[c]);
                        if pp[c] > 0.0 {
                            s += 0.5 * pp[c] * (pp[c] / m).ln();
                        }
                        if qq[c] > 0.0 {
                            s += 0.5 * qq[c] * (qq[c] / m).ln();
                        }
                    }
                    s
                }
                other => panic!("{other}"),
            }
        })
        .collect()
}

fn reduce(v: &[f64], reduction: &str) -> Vec<f64> {
    let s: f64 = v.iter().sum();
    match reduction {
        "none" => v.to_vec(),
        "sum" => vec![s],
        "mean" => vec![s / v.len() as f64],
        other => panic!("{other}"),
    }
}

fn in_base(v: &[f64], base: f64) -> Vec<f64> {
    v.iter().map(|x| x / base.ln()).collect()
}

/// Per-row NLL in nats and each row's weight (0 when ignored).
fn nll_reference(
    q: &Mat,
    form: F,
    targets: &[i64],
    ignore: Option<i64>,
    weights: Option<&[f32]>,
    eps: f64,
) -> (Vec<f64>, Vec<f64>) {
    let c = q.cols as f64;
    targets
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if ignore == Some(t) {
                return (0.0, 0.0);
            }
            let (_, lq, _) = dist(q.row(i), form, false);
            let w = weights.map_or(1.0, |w| w[t as usize] as f64);
            let smooth: f64 = if eps > 0.0 {
                lq.iter().map(|l| -l).sum::<f64>() / c
            } else {
                0.0
            };
            (w * ((1.0 - eps) * -lq[t as usize] + eps * smooth), w)
        })
        .unzip()
}

// ---------------------------------------------------------------- values

#[test]
fn entropy_json_shape_and_values() {
    let tmp = Tmp::new("entropy");
    let (p, _) = special_pair();
    let pf = tmp.mat("P.npy", &p);
    let want = reference("entropy", (&p, F::Probs), None, false);
    for b in backends() {
        let v = json(&["entropy", "--p", &pf], b);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "adapter",
                "backend",
                "cols",
                "measure",
                "reduction",
                "rows",
                "values"
            ],
            "{v}"
        );
        assert_eq!(v["rows"], 6);
        assert_eq!(v["cols"], 257);
        assert_eq!(v["reduction"], "none");
        check(&v, &want, &format!("entropy on {b}"));
    }
}

#[test]
fn keys_in_documented_order() {
    let tmp = Tmp::new("order");
    let pf = tmp.save("P.npy", &[2], &[0.5f32, 0.5]);
    let r = run(&["entropy", "--p", &pf, "--backend", "cpu"]);
    assert!(r.ok, "{}", r.stderr);
    let order = [
        "measure",
        "backend",
        "adapter",
        "rows",
        "cols",
        "reduction",
        "values",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|k| r.stdout.find(&format!("\"{k}\":")).expect(k))
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{}", r.stdout);
    assert_eq!(r.stdout.lines().count(), 1, "one line: {}", r.stdout);
}

#[test]
fn shapes_from_the_acceptance_list() {
    let tmp = Tmp::new("shapes");
    for (i, &(rows, cols)) in [
        (5, 1),
        (6, 255),
        (6, 256),
        (6, 257),
        (3, 1_000_003),
        (70_001, 5),
    ]
    .iter()
    .enumerate()
    {
        let seed = 200 + 2 * i as u64;
        let p = random_probs(seed, rows, cols, |r, c| (r + c) % 4 == 1 && cols > 1);
        let q = random_probs(seed + 1, rows, cols, |_, _| false);
        let (pf, qf) = (
            tmp.mat(&format!("P{i}.npy"), &p),
            tmp.mat(&format!("Q{i}.npy"), &q),
        );
        for m in ["entropy", "cross-entropy", "kl"] {
            let q_arg = (m != "entropy").then_some((&q, F::Probs));
            let per_row = reference(m, (&p, F::Probs), q_arg, false);
            for b in backends() {
                for red in ["none", "mean"] {
                    let mut args = vec![m, "--p", &pf, "--reduction", red];
                    if m != "entropy" {
                        args.extend(["--q", &qf]);
                    }
                    let v = json(&args, b);
                    assert_eq!(
                        (v["rows"].as_u64(), v["cols"].as_u64()),
                        (Some(rows as u64), Some(cols as u64))
                    );
                    check(
                        &v,
                        &reduce(&per_row, red),
                        &format!("{m} {rows}x{cols} {red} on {b}"),
                    );
                }
            }
        }
    }
}

#[test]
fn cross_entropy_and_kl_match_reference() {
    let tmp = Tmp::new("pair");
    let (p, q) = special_pair();
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    for b in backends() {
        for m in ["cross-entropy", "kl", "js"] {
            let want = reference(m, (&p, F::Probs), Some((&q, F::Probs)), false);
            let v = json(&[m, "--p", &pf, "--q", &qf], b);
            assert_eq!(
                (v["rows"].as_u64(), v["cols"].as_u64()),
                (Some(6), Some(257))
            );
            check(&v, &want, &format!("{m} on {b}"));
        }
    }
}

#[test]
fn infinite_values_are_strings() {
    let tmp = Tmp::new("inf");
    let p = Mat {
        data: vec![0.5, 0.5, 0.0, 0.0, 0.5, 0.5],
        rows: 2,
        cols: 3,
    };
    let q = Mat {
        data: vec![1.0, 0.0, 0.0, 0.0, 0.5, 0.5],
        rows: 2,
        cols: 3,
    };
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    for b in backends() {
        for m in ["cross-entropy", "kl"] {
            let v = json(&[m, "--p", &pf, "--q", &qf], b);
            let want = reference(m, (&p, F::Probs), Some((&q, F::Probs)), false);
            assert_eq!(want[0], f64::INFINITY);
            check(&v, &want, &format!("{m} on {b}"));
            assert_eq!(v["values"][0], "inf");
            let v = json(&[m, "--p", &pf, "--q", &qf, "--reduction", "sum"], b);
            assert_eq!(v["values"], serde_json::json!(["inf"]), "{m} sum on {b}");
        }
        let v = json(&["js", "--p", &pf, "--q", &qf], b);
        let want = reference("js", (&p, F::Probs), Some((&q, F::Probs)), false);
        check(&v, &want, &format!("js on {b}"));
    }
}

#[test]
fn reductions_sum_and_mean() {
    let tmp = Tmp::new("reduce");
    let (p, q) = special_pair();
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    for b in backends() {
        for red in ["none", "sum", "mean"] {
            let v = json(&["entropy", "--p", &pf, "--reduction", red], b);
            assert_eq!(v["reduction"], red);
            let want = reduce(&reference("entropy", (&p, F::Probs), None, false), red);
            check(&v, &want, &format!("entropy {red} on {b}"));
            for m in ["kl", "js", "cross-entropy"] {
                let v = json(&[m, "--p", &pf, "--q", &qf, "--reduction", red], b);
                let per_row = reference(m, (&p, F::Probs), Some((&q, F::Probs)), false);
                check(&v, &reduce(&per_row, red), &format!("{m} {red} on {b}"));
                assert_eq!(v["rows"], 6);
            }
        }
    }
}

#[test]
fn bases() {
    let tmp = Tmp::new("base");
    let (p, q) = special_pair();
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    let ent = reference("entropy", (&p, F::Probs), None, false);
    let kl = reference("kl", (&p, F::Probs), Some((&q, F::Probs)), false);
    for b in backends() {
        for (arg, base) in [
            ("e", std::f64::consts::E),
            ("2", 2.0),
            ("10", 10.0),
            ("3.5", 3.5),
            ("0.5", 0.5),
        ] {
            let v = json(&["entropy", "--p", &pf, "--base", arg], b);
            check(
                &v,
                &in_base(&ent, base),
                &format!("entropy base {arg} on {b}"),
            );
            let v = json(
                &[
                    "kl",
                    "--p",
                    &pf,
                    "--q",
                    &qf,
                    "--base",
                    arg,
                    "--reduction",
                    "mean",
                ],
                b,
            );
            check(
                &v,
                &in_base(&reduce(&kl, "mean"), base),
                &format!("kl base {arg} on {b}"),
            );
        }
    }
    for bad in ["1", "0", "-2", "inf", "nan", "two"] {
        usage_error(&["entropy", "--p", &pf, "--base", bad]);
    }
}

#[test]
fn normalize_divides_rows_by_their_sums() {
    let tmp = Tmp::new("normalize");
    // Counts, as scipy.stats.entropy takes them.
    let mut rng = Rng(7);
    let counts = |rng: &mut Rng, rows, cols| Mat {
        data: (0..rows * cols).map(|_| (rng.next() % 50) as f32).collect(),
        rows,
        cols,
    };
    let p = counts(&mut rng, 5, 33);
    let q = {
        let mut q = counts(&mut rng, 5, 33);
        q.data.iter_mut().for_each(|x| *x += 1.0);
        q
    };
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    for b in backends() {
        let v = json(&["entropy", "--p", &pf, "--normalize", "--base", "2"], b);
        let want = in_base(&reference("entropy", (&p, F::Probs), None, true), 2.0);
        check(&v, &want, &format!("entropy --normalize on {b}"));
        for m in ["cross-entropy", "kl", "js"] {
            let v = json(&[m, "--p", &pf, "--q", &qf, "--normalize"], b);
            let want = reference(m, (&p, F::Probs), Some((&q, F::Probs)), true);
            check(&v, &want, &format!("{m} --normalize on {b}"));
        }
        fails(
            &["entropy", "--p", &pf],
            b,
            &["P.npy", "row 0", "--normalize"],
        );
        fails(
            &["kl", "--p", &pf, "--q", &qf],
            b,
            &["row 0", ".npy", "--normalize"],
        );
    }
}

#[test]
fn out_writes_values_as_f32_npy() {
    let tmp = Tmp::new("out");
    let (p, q) = special_pair();
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    let out = tmp.path("OUT.npy");
    let out_s = out.to_str().unwrap();
    for b in backends() {
        for red in ["none", "sum", "mean"] {
            let v = json(
                &[
                    "kl",
                    "--p",
                    &pf,
                    "--q",
                    &qf,
                    "--reduction",
                    red,
                    "--out",
                    out_s,
                ],
                b,
            );
            assert!(v.get("values").is_none(), "{v}");
            assert_eq!(v["rows"], 6);
            assert_eq!(v["reduction"], red);
            let npy = npyz::NpyFile::new(File::open(&out).unwrap()).unwrap();
            let n = if red == "none" { 6 } else { 1 };
            assert_eq!(npy.shape(), &[n]);
            assert_eq!(npy.dtype(), npyz::DType::new_scalar("<f4".parse().unwrap()));
            let got: Vec<f64> = npy
                .into_vec::<f32>()
                .unwrap()
                .iter()
                .map(|&x| x as f64)
                .collect();
            let per_row = reference("kl", (&p, F::Probs), Some((&q, F::Probs)), false);
            assert_close(&got, &reduce(&per_row, red), &format!("--out {red} on {b}"));
            // The same values as the JSON prints without --out.
            let w = json(&["kl", "--p", &pf, "--q", &qf, "--reduction", red], b);
            let printed: Vec<f32> = values(&w).iter().map(|&x| x as f32).collect();
            let written: Vec<f32> = got.iter().map(|&x| x as f32).collect();
            assert_eq!(printed, written, "JSON and --out differ on {b}");
        }
    }
}

#[test]
fn js_is_bounded_by_ln2_and_finite() {
    let tmp = Tmp::new("js");
    // Disjoint supports: JS = ln 2 (1 bit); identical rows: 0.
    let p = Mat {
        data: vec![0.5, 0.5, 0.0, 0.0, 0.25, 0.75, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
        rows: 3,
        cols: 4,
    };
    let q = Mat {
        data: vec![0.0, 0.0, 0.5, 0.5, 0.25, 0.75, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
        rows: 3,
        cols: 4,
    };
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    for b in backends() {
        let v = json(&["js", "--p", &pf, "--q", &qf], b);
        let ln2 = std::f64::consts::LN_2;
        check(&v, &[ln2, 0.0, ln2], &format!("js on {b}"));
        let v = json(
            &[
                "js",
                "--p",
                &pf,
                "--q",
                &qf,
                "--base",
                "2",
                "--reduction",
                "sum",
            ],
            b,
        );
        check(&v, &[2.0], &format!("js bits on {b}"));
    }
}

#[test]
fn input_forms() {
    let tmp = Tmp::new("forms");
    let a = random_logits(11, 4, 100, 3000.0);
    let mut bl = random_logits(12, 4, 100, 5.0);
    // Log-probabilities with -inf (probability 0), normalised in f64.
    bl.data[5] = f32::NEG_INFINITY;
    let mut lq = bl.clone();
    for r in 0..4 {
        let x: Vec<f64> = lq.row(r).iter().map(|&v| v as f64).collect();
        let c = lse(&x);
        for (out, v) in lq.data[r * 100..(r + 1) * 100].iter_mut().zip(&x) {
            *out = (v - c) as f32;
        }
    }
    let mut masked = a.clone();
    masked.data[3] = f32::NEG_INFINITY;
    let (af, bf, lqf, mf) = (
        tmp.mat("A.npy", &a),
        tmp.mat("B.npy", &bl),
        tmp.mat("LQ.npy", &lq),
        tmp.mat("M.npy", &masked),
    );
    let (p, _) = {
        let p = random_probs(13, 4, 100, |r, c| r == 0 && c == 5);
        (p, ())
    };
    let pf = tmp.mat("P.npy", &p);
    for b in backends() {
        let v = json(&["entropy", "--p", &af, "--p-form", "logits"], b);
        check(
            &v,
            &reference("entropy", (&a, F::Logits), None, false),
            &format!("entropy logits {b}"),
        );
        let v = json(&["entropy", "--p", &mf, "--p-form", "logits"], b);
        check(
            &v,
            &reference("entropy", (&masked, F::Logits), None, false),
            &format!("masked {b}"),
        );
        for m in ["kl", "cross-entropy", "js"] {
            for (pfile, pm, pform, qfile, qm, qform) in [
                (&af, &a, F::Logits, &bf, &bl, F::Logits),
                (&pf, &p, F::Probs, &lqf, &lq, F::LogProbs),
                (&mf, &masked, F::Logits, &lqf, &lq, F::LogProbs),
            ] {
                let v = json(
                    &[
                        m,
                        "--p",
                        pfile,
                        "--q",
                        qfile,
                        "--p-form",
                        pform.name(),
                        "--q-form",
                        qform.name(),
                    ],
                    b,
                );
                let want = reference(m, (pm, pform), Some((qm, qform)), false);
                check(
                    &v,
                    &want,
                    &format!("{m} {} vs {} on {b}", pform.name(), qform.name()),
                );
            }
        }
        // Row 0 of p has p = 0 where log q = -inf: a finite cross-entropy and KL.
        let v = json(&["kl", "--p", &pf, "--q", &lqf, "--q-form", "log-probs"], b);
        assert!(values(&v)[0].is_finite(), "{v}");
    }
}

#[test]
fn one_reference_row() {
    let tmp = Tmp::new("broadcast");
    let p = random_probs(21, 5, 17, |_, _| false);
    let r = random_probs(22, 1, 17, |_, _| false);
    let pf = tmp.mat("P.npy", &p);
    let r1 = tmp.save("R.npy", &[17], &r.data);
    let r2 = tmp.mat("R2.npy", &r);
    for b in backends() {
        for rf in [&r1, &r2] {
            let v = json(&["kl", "--p", &pf, "--q", rf], b);
            assert_eq!(v["rows"], 5);
            check(
                &v,
                &reference("kl", (&p, F::Probs), Some((&r, F::Probs)), false),
                "q one row",
            );
            let v = json(&["kl", "--p", rf, "--q", &pf], b);
            assert_eq!(v["rows"], 5);
            check(
                &v,
                &reference("kl", (&r, F::Probs), Some((&p, F::Probs)), false),
                "p one row",
            );
        }
    }
}

#[test]
fn one_dimensional_input_is_one_row() {
    let tmp = Tmp::new("1d");
    let p = random_probs(31, 1, 1000, |_, c| c % 10 == 0);
    let pf = tmp.save("P.npy", &[1000], &p.data);
    let one = tmp.save("ONE.npy", &[1], &[1.0f32]);
    for b in backends() {
        let v = json(&["entropy", "--p", &pf], b);
        assert_eq!(
            (v["rows"].as_u64(), v["cols"].as_u64()),
            (Some(1), Some(1000))
        );
        check(
            &v,
            &reference("entropy", (&p, F::Probs), None, false),
            &format!("1-D on {b}"),
        );
        let v = json(&["entropy", "--p", &one], b);
        check(&v, &[0.0], &format!("N = 1 on {b}"));
    }
}

#[test]
fn f64_input_is_converted() {
    let tmp = Tmp::new("f64");
    let mut rng = Rng(41);
    let (rows, cols) = (3, 50);
    let mut p64 = Vec::new();
    let mut q64 = Vec::new();
    for _ in 0..rows {
        for v in [&mut p64, &mut q64] {
            let raw: Vec<f64> = (0..cols).map(|_| rng.unit()).collect();
            let s: f64 = raw.iter().sum();
            v.extend(raw.iter().map(|x| x / s));
        }
    }
    let pf = tmp.save("P.npy", &[rows as u64, cols as u64], &p64);
    let qf = tmp.save("Q.npy", &[rows as u64, cols as u64], &q64);
    // The reference sees what the library sees: the values rounded to f32.
    let as32 = |v: &[f64]| Mat {
        data: v.iter().map(|&x| x as f32).collect(),
        rows,
        cols,
    };
    let (p, q) = (as32(&p64), as32(&q64));
    for b in backends() {
        let v = json(&["kl", "--p", &pf, "--q", &qf], b);
        check(
            &v,
            &reference("kl", (&p, F::Probs), Some((&q, F::Probs)), false),
            &format!("f64 on {b}"),
        );
        let v = json(&["entropy", "--p", &pf, "--base", "2"], b);
        check(
            &v,
            &in_base(&reference("entropy", (&p, F::Probs), None, false), 2.0),
            "f64 entropy",
        );
    }
}

#[test]
fn nll_per_row_and_mean_with_perplexity() {
    let tmp = Tmp::new("nll");
    let (rows, cols) = (8, 10);
    let q = random_probs(51, rows, cols, |_, _| false);
    let logits = random_logits(52, rows, cols, 8.0);
    let t: Vec<i64> = vec![0, 3, -100, 9, 4, -100, 1, 2];
    let t_plain: Vec<i64> = t.iter().map(|&x| x.max(0)).collect();
    let qf = tmp.mat("Q.npy", &q);
    let lf = tmp.mat("L.npy", &logits);
    let tf = tmp.save("T.npy", &[rows as u64], &t);
    let tpf = tmp.save("TP.npy", &[rows as u64], &t_plain);
    for b in backends() {
        // Per row, from probabilities.
        let v = json(&["nll", "--q", &qf, "--targets", &tpf], b);
        assert_eq!(v["rows"], rows);
        assert!(v.get("perplexity").is_none(), "{v}");
        let (want, _) = nll_reference(&q, F::Probs, &t_plain, None, None, 0.0);
        check(&v, &want, &format!("nll probs on {b}"));
        // From logits, ignoring -100, mean and perplexity, in bits.
        let (per_row, w) = nll_reference(&logits, F::Logits, &t, Some(-100), None, 0.0);
        let mean = per_row.iter().sum::<f64>() / w.iter().sum::<f64>();
        for (base, lnb) in [("e", 1.0), ("2", std::f64::consts::LN_2)] {
            let v = json(
                &[
                    "nll",
                    "--q",
                    &lf,
                    "--targets",
                    &tf,
                    "--q-form",
                    "logits",
                    "--ignore-index",
                    "-100",
                    "--reduction",
                    "mean",
                    "--base",
                    base,
                ],
                b,
            );
            check(&v, &[mean / lnb], &format!("nll mean base {base} on {b}"));
            let ppl = num(&v["perplexity"]);
            assert!(
                close(ppl.ln(), mean),
                "perplexity {ppl} vs exp({mean}) on {b}"
            );
        }
        let v = json(
            &[
                "nll",
                "--q",
                &lf,
                "--targets",
                &tf,
                "--q-form",
                "logits",
                "--ignore-index=-100",
            ],
            b,
        );
        check(&v, &per_row, &format!("nll logits per row on {b}"));
        assert_eq!(values(&v)[2], 0.0);
    }
}

#[test]
fn nll_weights_and_label_smoothing() {
    let tmp = Tmp::new("nllw");
    let (rows, cols) = (6, 5);
    let logits = random_logits(61, rows, cols, 4.0);
    let t: Vec<i64> = vec![0, 1, 4, 2, 1, 3];
    let weights: Vec<f32> = vec![0.5, 2.0, 1.0, 0.25, 3.0];
    let lf = tmp.mat("L.npy", &logits);
    let tf = tmp.save("T.npy", &[rows as u64], &t);
    let wf = tmp.save("W.npy", &[cols as u64], &weights);
    let w64: Vec<f64> = weights.iter().map(|&w| w as f64).collect();
    let wf64 = tmp.save("W64.npy", &[cols as u64], &w64);
    for b in backends() {
        let (per_row, w) = nll_reference(&logits, F::Logits, &t, None, Some(&weights), 0.0);
        for file in [&wf, &wf64] {
            let base = [
                "nll",
                "--q",
                &lf,
                "--targets",
                &tf,
                "--q-form",
                "logits",
                "--weights",
                file,
            ];
            let v = json(&base, b);
            check(&v, &per_row, &format!("weighted per row on {b}"));
            let v = json(&[&base[..], &["--reduction", "mean"]].concat(), b);
            let mean = per_row.iter().sum::<f64>() / w.iter().sum::<f64>();
            check(&v, &[mean], &format!("weighted mean on {b}"));
        }
        let (per_row, _) = nll_reference(&logits, F::Logits, &t, None, None, 0.1);
        let v = json(
            &[
                "nll",
                "--q",
                &lf,
                "--targets",
                &tf,
                "--q-form",
                "logits",
                "--label-smoothing",
                "0.1",
            ],
            b,
        );
        check(&v, &per_row, &format!("label smoothing on {b}"));
        let v = json(
            &[
                "nll",
                "--q",
                &lf,
                "--targets",
                &tf,
                "--q-form",
                "logits",
                "--label-smoothing",
                "0.1",
                "--reduction",
                "sum",
            ],
            b,
        );
        check(
            &v,
            &reduce(&per_row, "sum"),
            &format!("label smoothing sum on {b}"),
        );
        fails(
            &[
                "nll",
                "--q",
                &lf,
                "--targets",
                &tf,
                "--q-form",
                "logits",
                "--label-smoothing",
                "1.5",
            ],
            b,
            &["smoothing"],
        );
    }
}

#[test]
fn nll_target_dtypes_and_one_shared_row() {
    let tmp = Tmp::new("nllt");
    let q = random_probs(71, 1, 6, |_, _| false);
    let qf = tmp.save("Q.npy", &[6], &q.data);
    let t: Vec<i64> = vec![5, 0, 0, 2, 3, 1, 4];
    let files = [
        tmp.save("T64.npy", &[7], &t),
        tmp.save(
            "T32.npy",
            &[7],
            &t.iter().map(|&x| x as i32).collect::<Vec<_>>(),
        ),
        tmp.save(
            "TU32.npy",
            &[7],
            &t.iter().map(|&x| x as u32).collect::<Vec<_>>(),
        ),
    ];
    let (per_row, _) = nll_reference(&q, F::Probs, &t, None, None, 0.0);
    for b in backends() {
        for tf in &files {
            let v = json(&["nll", "--q", &qf, "--targets", tf], b);
            assert_eq!(v["rows"], 7, "{v}");
            check(&v, &per_row, &format!("shared q, {tf} on {b}"));
            let v = json(
                &["nll", "--q", &qf, "--targets", tf, "--reduction", "mean"],
                b,
            );
            check(
                &v,
                &reduce(&per_row, "mean"),
                &format!("shared q mean on {b}"),
            );
        }
    }
}

#[test]
fn nll_all_ignored_mean_is_nan() {
    let tmp = Tmp::new("nllnan");
    let q = random_probs(81, 3, 4, |_, _| false);
    let qf = tmp.mat("Q.npy", &q);
    let tf = tmp.save("T.npy", &[3], &[-1i64, -1, -1]);
    for b in backends() {
        let v = json(
            &[
                "nll",
                "--q",
                &qf,
                "--targets",
                &tf,
                "--ignore-index",
                "-1",
                "--reduction",
                "mean",
            ],
            b,
        );
        assert_eq!(v["values"], serde_json::json!(["nan"]), "{v}");
        assert_eq!(v["perplexity"], "nan", "{v}");
    }
}

#[test]
fn same_input_same_output() {
    let tmp = Tmp::new("determinism");
    let p = random_probs(91, 300, 1000, |_, c| c % 7 == 0);
    let q = random_probs(92, 300, 1000, |_, _| false);
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    for b in backends() {
        for red in ["none", "sum"] {
            let args = [
                "kl",
                "--p",
                &pf,
                "--q",
                &qf,
                "--reduction",
                red,
                "--backend",
                b,
            ];
            let first = run(&args);
            assert!(first.ok, "{}", first.stderr);
            for _ in 0..2 {
                assert_eq!(run(&args).stdout, first.stdout, "{red} on {b}");
            }
        }
    }
}

#[test]
fn explicit_backend_wins_over_environment() {
    let tmp = Tmp::new("env");
    let pf = tmp.save("P.npy", &[2], &[0.5f32, 0.5]);
    let backend = |r: Run| -> String {
        assert!(r.ok, "{}", r.stderr);
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        v["backend"].as_str().unwrap().to_string()
    };
    assert_eq!(
        backend(run_env(
            &["entropy", "--p", &pf, "--backend", "cpu"],
            Some("gpu")
        )),
        "cpu"
    );
    assert_eq!(
        backend(run_env(&["entropy", "--p", &pf], Some("cpu"))),
        "cpu"
    );
    assert_eq!(
        backend(run_env(
            &["entropy", "--p", &pf, "--backend", "auto"],
            Some("cpu")
        )),
        "cpu"
    );
    if backends().contains(&"gpu") {
        assert_eq!(
            backend(run_env(&["entropy", "--p", &pf], Some("gpu"))),
            "gpu"
        );
    }
    let r = run_env(&["entropy", "--p", &pf], Some("tpu"));
    assert!(!r.ok && r.stdout.is_empty());
    assert!(
        r.stderr
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .contains("KULLBACK_BACKEND"),
        "{}",
        r.stderr
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn error_nan_names_file_row_and_column() {
    let tmp = Tmp::new("nan");
    let mut p = random_probs(101, 5, 9, |_, _| false);
    p.data[3 * 9 + 7] = f32::NAN;
    let q = random_probs(102, 5, 9, |_, _| false);
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    let (pf_ok, qf_bad) = (tmp.mat("P2.npy", &q), tmp.mat("Q2.npy", &p));
    for b in backends() {
        for red in ["none", "sum", "mean"] {
            fails(
                &["entropy", "--p", &pf, "--reduction", red],
                b,
                &["P.npy", "row 3", "column 7", "NaN"],
            );
            fails(
                &["kl", "--p", &pf, "--q", &qf, "--reduction", red],
                b,
                &["P.npy", "row 3", "column 7"],
            );
            fails(
                &["js", "--p", &pf_ok, "--q", &qf_bad, "--reduction", red],
                b,
                &["Q2.npy", "row 3", "column 7"],
            );
        }
    }
}

#[test]
fn error_negative_probability() {
    let tmp = Tmp::new("neg");
    let mut p = random_probs(111, 4, 6, |_, _| false);
    p.data[2 * 6 + 1] = -0.1;
    let q = random_probs(112, 4, 6, |_, _| false);
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    for b in backends() {
        fails(
            &["entropy", "--p", &pf],
            b,
            &["P.npy", "row 2", "column 1", "negative"],
        );
        fails(
            &["cross-entropy", "--p", &qf, "--q", &pf],
            b,
            &["P.npy", "row 2", "column 1"],
        );
        fails(
            &[
                "nll",
                "--q",
                &pf,
                "--targets",
                &tmp.save("T.npy", &[4], &[0i32; 4]),
            ],
            b,
            &["P.npy", "row 2"],
        );
    }
}

#[test]
fn error_infinite_probability_and_f64_underflow() {
    let tmp = Tmp::new("infp");
    let mut p = random_probs(121, 3, 6, |_, _| false);
    p.data[6 + 4] = f32::INFINITY;
    let pf = tmp.mat("P.npy", &p);
    let mut q64: Vec<f64> = random_probs(122, 3, 6, |_, _| false)
        .data
        .iter()
        .map(|&x| x as f64)
        .collect();
    q64[2 * 6 + 5] = 1e-50;
    let qf = tmp.save("Q64.npy", &[3, 6], &q64);
    let p_ok = tmp.mat("POK.npy", &random_probs(123, 3, 6, |_, _| false));
    for b in backends() {
        fails(&["entropy", "--p", &pf], b, &["P.npy", "row 1", "column 4"]);
        fails(
            &["kl", "--p", &p_ok, "--q", &qf],
            b,
            &["Q64.npy", "row 2", "column 5"],
        );
    }
}

#[test]
fn error_mismatched_shapes() {
    let tmp = Tmp::new("shape");
    let p = tmp.mat("P.npy", &random_probs(131, 3, 4, |_, _| false));
    let q = tmp.mat("Q.npy", &random_probs(132, 2, 4, |_, _| false));
    let q5 = tmp.mat("Q5.npy", &random_probs(133, 3, 5, |_, _| false));
    for b in backends() {
        for m in ["kl", "cross-entropy", "js"] {
            fails(&[m, "--p", &p, "--q", &q], b, &["P.npy", "Q.npy", "shape"]);
            fails(
                &[m, "--p", &p, "--q", &q5],
                b,
                &["P.npy", "Q5.npy", "shape"],
            );
        }
    }
}

#[test]
fn error_unnormalised_rows_without_normalize() {
    let tmp = Tmp::new("unnorm");
    let mut p = random_probs(141, 4, 8, |_, _| false);
    p.data[2 * 8..3 * 8].iter_mut().for_each(|x| *x *= 1.5);
    let q = random_probs(142, 4, 8, |_, _| false);
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    for b in backends() {
        fails(
            &["entropy", "--p", &pf],
            b,
            &["P.npy", "row 2", "--normalize"],
        );
        fails(
            &["kl", "--p", &qf, "--q", &pf, "--reduction", "mean"],
            b,
            &["P.npy", "row 2"],
        );
        fails(
            &[
                "nll",
                "--q",
                &pf,
                "--targets",
                &tmp.save("T.npy", &[4], &[1u32; 4]),
            ],
            b,
            &["P.npy", "row 2"],
        );
        // The same file passes with --normalize.
        let v = json(&["entropy", "--p", &pf, "--normalize"], b);
        check(
            &v,
            &reference("entropy", (&p, F::Probs), None, true),
            "--normalize",
        );
    }
}

#[test]
fn error_file_that_is_not_npy() {
    let tmp = Tmp::new("notnpy");
    let bad = tmp.path("P.npy");
    std::fs::write(&bad, "0.5,0.5\n0.25,0.75\n").unwrap();
    let bad = bad.to_str().unwrap();
    let truncated = tmp.path("TRUNC.npy");
    save_npy(
        &truncated,
        &[100, 100],
        &vec![0.0001f32; 10_000],
        npyz::Order::C,
    );
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let truncated = truncated.to_str().unwrap();
    let missing = tmp.path("MISSING.npy");
    let q = tmp.save("Q.npy", &[2], &[0.5f32, 0.5]);
    for b in backends() {
        fails(&["entropy", "--p", bad], b, &["P.npy", ".npy"]);
        fails(&["kl", "--p", &q, "--q", bad], b, &["P.npy"]);
        fails(&["entropy", "--p", truncated], b, &["TRUNC.npy"]);
        fails(
            &["entropy", "--p", missing.to_str().unwrap()],
            b,
            &["MISSING.npy"],
        );
        fails(&["nll", "--q", &q, "--targets", bad], b, &["P.npy"]);
    }
}

#[test]
fn error_unsupported_layouts_and_dtypes() {
    let tmp = Tmp::new("layout");
    let three_d = tmp.save("P3.npy", &[2, 2, 2], &[0.25f32; 8]);
    let scalar = tmp.save("P0.npy", &[], &[1.0f32]);
    let fortran = tmp.path("PF.npy");
    save_npy(
        &fortran,
        &[2, 3],
        &[0.25f32, 0.5, 0.25, 0.25, 0.5, 0.25],
        npyz::Order::Fortran,
    );
    let fortran = fortran.to_str().unwrap();
    let ints = tmp.save("PI.npy", &[2, 2], &[1i32, 0, 0, 1]);
    let half = tmp.save("PU8.npy", &[2], &[1u8, 0]);
    let q = tmp.save("Q.npy", &[2], &[0.5f32, 0.5]);
    let float_targets = tmp.save("TF.npy", &[1], &[1.0f32]);
    let targets_2d = tmp.save("T2.npy", &[1, 1], &[1i64]);
    let t = tmp.save("T.npy", &[1], &[1i64]);
    let weights_i = tmp.save("WI.npy", &[2], &[1i32, 1]);
    for b in backends() {
        fails(&["entropy", "--p", &three_d], b, &["P3.npy", "3-D"]);
        fails(&["entropy", "--p", &scalar], b, &["P0.npy", "0-D"]);
        fails(&["entropy", "--p", fortran], b, &["PF.npy", "Fortran"]);
        fails(&["entropy", "--p", &ints], b, &["PI.npy", "dtype"]);
        fails(&["kl", "--p", &q, "--q", &half], b, &["PU8.npy", "dtype"]);
        fails(
            &["nll", "--q", &q, "--targets", &float_targets],
            b,
            &["TF.npy", "dtype"],
        );
        fails(
            &["nll", "--q", &q, "--targets", &targets_2d],
            b,
            &["T2.npy", "1-D"],
        );
        fails(
            &["nll", "--q", &q, "--targets", &t, "--weights", &weights_i],
            b,
            &["WI.npy", "dtype"],
        );
    }
}

#[test]
fn error_target_out_of_range_and_length() {
    let tmp = Tmp::new("targets");
    let q = random_probs(151, 4, 5, |_, _| false);
    let qf = tmp.mat("Q.npy", &q);
    let out_of_range = tmp.save("T.npy", &[4], &[0i64, 4, 5, 1]);
    let negative = tmp.save("TN.npy", &[4], &[0i32, 1, 2, -3]);
    let short = tmp.save("TS.npy", &[3], &[0i64, 1, 2]);
    let ok = tmp.save("TOK.npy", &[4], &[0i64, 1, 2, 3]);
    let weights_short = tmp.save("W.npy", &[4], &[1.0f32; 4]);
    for b in backends() {
        fails(
            &["nll", "--q", &qf, "--targets", &out_of_range],
            b,
            &["T.npy", "row 2", "5"],
        );
        fails(
            &["nll", "--q", &qf, "--targets", &negative],
            b,
            &["TN.npy", "row 3"],
        );
        fails(
            &["nll", "--q", &qf, "--targets", &short],
            b,
            &["TS.npy", "Q.npy"],
        );
        fails(
            &[
                "nll",
                "--q",
                &qf,
                "--targets",
                &ok,
                "--weights",
                &weights_short,
            ],
            b,
            &["W.npy"],
        );
        // The ignore index is not out of range.
        json(
            &[
                "nll",
                "--q",
                &qf,
                "--targets",
                &negative,
                "--ignore-index",
                "-3",
            ],
            b,
        );
    }
}

#[test]
fn usage_errors() {
    let tmp = Tmp::new("usage");
    let pf = tmp.save("P.npy", &[2], &[0.5f32, 0.5]);
    usage_error(&[]);
    usage_error(&["entropy"]);
    usage_error(&["kl", "--p", &pf]);
    usage_error(&["nll", "--q", &pf]);
    usage_error(&["entropy", "--p", &pf, "--reduction", "batchmean"]);
    usage_error(&["entropy", "--p", &pf, "--backend", "tpu"]);
    usage_error(&["entropy", "--p", &pf, "--p-form", "odds"]);
    usage_error(&["entropy", "--p", &pf, "--q", &pf]);
    usage_error(&["variance", "--p", &pf]);
}
