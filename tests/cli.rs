//! The `kullback` binary end to end: .npy files in a temporary directory, the
//! JSON on stdout checked against the tests' f64 oracle (tests/common)
//! computed from the very f32 values the binary reads, and the error rules
//! (non-zero exit, empty stdout, a last stderr line naming the file and the
//! row).
//!
//! Every test runs on `--backend cpu`, and on `--backend gpu` when an adapter
//! exists (`common::cli_backends`: with `KULLBACK_REQUIRE_GPU=1` a missing
//! adapter fails the tests).

#![cfg(feature = "cli")]

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;

use common::{
    Input, Rng, cli_backends as backends, close, rand_counts, rand_logits, rand_probs_f64,
    rand_probs_where, ref_measure, ref_nll, save_raw_npy,
};
use kullback::Form::{self, LogProbs, Logits, Probs};
use kullback::{Base, Measure, Normalization, Reduction};
use npyz::WriterBuilder;
use serde_json::Value;

// ---------------------------------------------------------------- harness

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

/// A table of failures: (arguments, needles of the last stderr line).
type Failures<'a> = [(&'a [&'a str], &'a [&'a str])];

/// [`fails`] for every case of a table, on `backend`.
fn fails_all(cases: &Failures<'_>, backend: &str) {
    for (args, needles) in cases {
        fails(args, backend, needles);
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

/// `args` followed by `more`.
fn with<'a>(args: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    [args, more].concat()
}

// ---------------------------------------------------------------- data

/// A matrix as the binary reads it from a .npy file, in a form.
#[derive(Clone)]
struct Mat {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    form: Form,
}

impl Mat {
    fn new(data: Vec<f32>, rows: usize, cols: usize) -> Mat {
        Mat {
            data,
            rows,
            cols,
            form: Probs,
        }
    }
    fn form(self, form: Form) -> Mat {
        Mat { form, ..self }
    }
    fn input(&self) -> Input<'_> {
        Input::new(&self.data, self.rows, self.form)
    }
}

/// Random distributions (tests/common's generator with seed `seed`);
/// `zero(r, c)` marks entries that are exactly 0.
fn random_probs(seed: u64, rows: usize, cols: usize, zero: impl Fn(usize, usize) -> bool) -> Mat {
    let data = rand_probs_where(&mut Rng::new(seed), rows, cols, zero);
    Mat::new(data, rows, cols)
}

/// Random logits of scale `scale` (seed `seed`).
fn random_logits(seed: u64, rows: usize, cols: usize, scale: f64) -> Mat {
    let data = rand_logits(&mut Rng::new(seed), rows, cols, scale, 0.0);
    Mat::new(data, rows, cols).form(Logits)
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

// ---------------------------------------------------------------- the oracle, in CLI terms

/// The value of `--p-form` / `--q-form` for `form`.
fn form_arg(form: Form) -> &'static str {
    match form {
        Probs => "probs",
        LogProbs => "log-probs",
        Logits => "logits",
        other => panic!("no CLI form for {other:?}"),
    }
}

/// The measure of a CLI subcommand.
fn measure(name: &str) -> Measure {
    match name {
        "entropy" => Measure::Entropy,
        "cross-entropy" => Measure::CrossEntropy,
        "kl" => Measure::Kl,
        "js" => Measure::Js,
        other => panic!("{other}"),
    }
}

/// The reduction of a `--reduction` value.
fn reduction(name: &str) -> Reduction {
    match name {
        "none" => Reduction::None,
        "sum" => Reduction::Sum,
        "mean" => Reduction::Mean,
        other => panic!("{other}"),
    }
}

/// The oracle's per-row values of subcommand `m` over `p` (and `q`), with
/// `--normalize` when `normalize`, in base `base`.
fn reference_in(m: &str, p: &Mat, q: Option<&Mat>, normalize: bool, base: Base) -> Vec<f64> {
    let norm = if normalize {
        Normalization::Renormalize
    } else {
        Normalization::Validate
    };
    let q = q.map(Mat::input);
    ref_measure(measure(m), p.input(), q, p.cols, norm, base)
}

/// [`reference_in`] in nats, without `--normalize`.
fn reference(m: &str, p: &Mat, q: Option<&Mat>) -> Vec<f64> {
    reference_in(m, p, q, false, Base::E)
}

/// The per-row values `v` under `--reduction red` (a mean over every row).
fn reduce(v: &[f64], red: &str) -> Vec<f64> {
    common::reduce(v, reduction(red), v.len() as f64)
}

/// The oracle's per-row negative log-likelihood in nats, and the total
/// weight of the rows not ignored.
fn nll_reference(
    q: &Mat,
    targets: &[i64],
    ignore: Option<i64>,
    weights: Option<&[f32]>,
    eps: f64,
) -> (Vec<f64>, f64) {
    let norm = Normalization::Validate;
    ref_nll(
        q.input(),
        q.cols,
        targets,
        ignore,
        weights,
        eps,
        norm,
        Base::E,
    )
}

// ---------------------------------------------------------------- values

#[test]
fn entropy_json_shape_and_values() {
    let tmp = Tmp::new("entropy");
    let (p, _) = special_pair();
    let pf = tmp.mat("P.npy", &p);
    let want = reference("entropy", &p, None);
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
    let shapes = [
        (5, 1),
        (6, 255),
        (6, 256),
        (6, 257),
        (3, 1_000_003),
        (70_001, 5),
    ];
    for (i, &(rows, cols)) in shapes.iter().enumerate() {
        let seed = 200 + 2 * i as u64;
        let p = random_probs(seed, rows, cols, |r, c| (r + c) % 4 == 1 && cols > 1);
        let q = random_probs(seed + 1, rows, cols, |_, _| false);
        let (pf, qf) = (
            tmp.mat(&format!("P{i}.npy"), &p),
            tmp.mat(&format!("Q{i}.npy"), &q),
        );
        for m in ["entropy", "cross-entropy", "kl"] {
            let per_row = reference(m, &p, (m != "entropy").then_some(&q));
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
            let want = reference(m, &p, Some(&q));
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
    let p = Mat::new(vec![0.5, 0.5, 0.0, 0.0, 0.5, 0.5], 2, 3);
    let q = Mat::new(vec![1.0, 0.0, 0.0, 0.0, 0.5, 0.5], 2, 3);
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    for b in backends() {
        for m in ["cross-entropy", "kl"] {
            let v = json(&[m, "--p", &pf, "--q", &qf], b);
            let want = reference(m, &p, Some(&q));
            assert_eq!(want[0], f64::INFINITY);
            check(&v, &want, &format!("{m} on {b}"));
            assert_eq!(v["values"][0], "inf");
            let v = json(&[m, "--p", &pf, "--q", &qf, "--reduction", "sum"], b);
            assert_eq!(v["values"], serde_json::json!(["inf"]), "{m} sum on {b}");
        }
        let v = json(&["js", "--p", &pf, "--q", &qf], b);
        let want = reference("js", &p, Some(&q));
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
            let want = reduce(&reference("entropy", &p, None), red);
            check(&v, &want, &format!("entropy {red} on {b}"));
            for m in ["kl", "js", "cross-entropy"] {
                let v = json(&[m, "--p", &pf, "--q", &qf, "--reduction", red], b);
                let per_row = reference(m, &p, Some(&q));
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
    for b in backends() {
        for (arg, base) in [
            ("e", Base::E),
            ("2", Base::Two),
            ("10", Base::Ten),
            ("3.5", Base::Custom(3.5)),
            ("0.5", Base::Custom(0.5)),
        ] {
            let v = json(&["entropy", "--p", &pf, "--base", arg], b);
            let want = reference_in("entropy", &p, None, false, base);
            check(&v, &want, &format!("entropy base {arg} on {b}"));
            let kl = ["kl", "--p", &pf, "--q", &qf, "--base", arg];
            let v = json(&with(&kl, &["--reduction", "mean"]), b);
            let want = reduce(&reference_in("kl", &p, Some(&q), false, base), "mean");
            check(&v, &want, &format!("kl base {arg} on {b}"));
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
    let mut rng = Rng::new(7);
    let p = Mat::new(rand_counts(&mut rng, 5 * 33, 0, 49), 5, 33);
    let q = Mat::new(rand_counts(&mut rng, 5 * 33, 1, 50), 5, 33);
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    for b in backends() {
        let v = json(&["entropy", "--p", &pf, "--normalize", "--base", "2"], b);
        let want = reference_in("entropy", &p, None, true, Base::Two);
        check(&v, &want, &format!("entropy --normalize on {b}"));
        for m in ["cross-entropy", "kl", "js"] {
            let v = json(&[m, "--p", &pf, "--q", &qf, "--normalize"], b);
            let want = reference_in(m, &p, Some(&q), true, Base::E);
            check(&v, &want, &format!("{m} --normalize on {b}"));
        }
        #[rustfmt::skip]
        let cases: &Failures<'_> = &[
            (&["entropy", "--p", &pf], &["P.npy", "row 0", "--normalize"]),
            (&["kl", "--p", &pf, "--q", &qf], &["row 0", ".npy", "--normalize"]),
        ];
        fails_all(cases, b);
    }
}

#[test]
fn out_writes_values_as_f32_npy() {
    let tmp = Tmp::new("out");
    let (p, q) = special_pair();
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    let out = tmp.path("OUT.npy");
    let out_s = out.to_str().unwrap();
    let per_row = reference("kl", &p, Some(&q));
    for b in backends() {
        for red in ["none", "sum", "mean"] {
            let args = ["kl", "--p", &pf, "--q", &qf, "--reduction", red];
            let v = json(&with(&args, &["--out", out_s]), b);
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
            assert_close(&got, &reduce(&per_row, red), &format!("--out {red} on {b}"));
            // The same values as the JSON prints without --out.
            let w = json(&args, b);
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
    let p = Mat::new(
        vec![0.5, 0.5, 0.0, 0.0, 0.25, 0.75, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
        3,
        4,
    );
    let q = Mat::new(
        vec![0.0, 0.0, 0.5, 0.5, 0.25, 0.75, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
        3,
        4,
    );
    let (pf, qf) = (tmp.mat("P.npy", &p), tmp.mat("Q.npy", &q));
    let ln2 = std::f64::consts::LN_2;
    let js = ["js", "--p", &pf, "--q", &qf];
    for b in backends() {
        for (more, want) in [
            (&[][..], vec![ln2, 0.0, ln2]),
            (&["--base", "2", "--reduction", "sum"][..], vec![2.0]),
        ] {
            let v = json(&with(&js, more), b);
            check(&v, &want, &format!("js {more:?} on {b}"));
        }
    }
}

#[test]
fn input_forms() {
    let tmp = Tmp::new("forms");
    let a = random_logits(11, 4, 100, 3000.0);
    let mut bl = random_logits(12, 4, 100, 5.0);
    // Log-probabilities with -inf (probability 0), normalised in f64.
    bl.data[5] = f32::NEG_INFINITY;
    let mut lq = bl.clone().form(LogProbs);
    for r in 0..4 {
        let x: Vec<f64> = bl.data[r * 100..(r + 1) * 100]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let c = common::log_sum_exp(&x);
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
    let p = random_probs(13, 4, 100, |r, c| r == 0 && c == 5);
    let pf = tmp.mat("P.npy", &p);
    for b in backends() {
        for (file, mat, what) in [(&af, &a, "logits"), (&mf, &masked, "masked")] {
            let v = json(&["entropy", "--p", file, "--p-form", "logits"], b);
            check(&v, &reference("entropy", mat, None), &format!("{what} {b}"));
        }
        for m in ["kl", "cross-entropy", "js"] {
            for (pfile, pm, qfile, qm) in [
                (&af, &a, &bf, &bl),
                (&pf, &p, &lqf, &lq),
                (&mf, &masked, &lqf, &lq),
            ] {
                let (pform, qform) = (form_arg(pm.form), form_arg(qm.form));
                let args = [m, "--p", pfile, "--q", qfile];
                let v = json(&with(&args, &["--p-form", pform, "--q-form", qform]), b);
                let want = reference(m, pm, Some(qm));
                check(&v, &want, &format!("{m} {pform} vs {qform} on {b}"));
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
            check(&v, &reference("kl", &p, Some(&r)), "q one row");
            let v = json(&["kl", "--p", rf, "--q", &pf], b);
            assert_eq!(v["rows"], 5);
            check(&v, &reference("kl", &r, Some(&p)), "p one row");
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
        check(&v, &reference("entropy", &p, None), &format!("1-D on {b}"));
        let v = json(&["entropy", "--p", &one], b);
        check(&v, &[0.0], &format!("N = 1 on {b}"));
    }
}

#[test]
fn f64_input_is_converted() {
    let tmp = Tmp::new("f64");
    let mut rng = Rng::new(41);
    let (rows, cols) = (3, 50);
    let p64 = rand_probs_f64(&mut rng, rows, cols, 0.0, 0.0, 0.0);
    let q64 = rand_probs_f64(&mut rng, rows, cols, 0.0, 0.0, 0.0);
    let pf = tmp.save("P.npy", &[rows as u64, cols as u64], &p64);
    let qf = tmp.save("Q.npy", &[rows as u64, cols as u64], &q64);
    // The oracle sees what the library sees: the values rounded to f32.
    let as32 = |v: &[f64]| Mat::new(v.iter().map(|&x| x as f32).collect(), rows, cols);
    let (p, q) = (as32(&p64), as32(&q64));
    for b in backends() {
        let v = json(&["kl", "--p", &pf, "--q", &qf], b);
        check(&v, &reference("kl", &p, Some(&q)), &format!("f64 on {b}"));
        let v = json(&["entropy", "--p", &pf, "--base", "2"], b);
        let want = reference_in("entropy", &p, None, false, Base::Two);
        check(&v, &want, "f64 entropy");
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
    let nll = ["nll", "--q", &lf, "--targets", &tf, "--q-form", "logits"];
    for b in backends() {
        // Per row, from probabilities.
        let v = json(&["nll", "--q", &qf, "--targets", &tpf], b);
        assert_eq!(v["rows"], rows);
        assert!(v.get("perplexity").is_none(), "{v}");
        let (want, _) = nll_reference(&q, &t_plain, None, None, 0.0);
        check(&v, &want, &format!("nll probs on {b}"));
        // From logits, ignoring -100, mean and perplexity, in bits.
        let (per_row, counted) = nll_reference(&logits, &t, Some(-100), None, 0.0);
        let mean = per_row.iter().sum::<f64>() / counted;
        for (base, lnb) in [("e", 1.0), ("2", std::f64::consts::LN_2)] {
            let more = [
                "--ignore-index",
                "-100",
                "--reduction",
                "mean",
                "--base",
                base,
            ];
            let v = json(&with(&nll, &more), b);
            check(&v, &[mean / lnb], &format!("nll mean base {base} on {b}"));
            let ppl = num(&v["perplexity"]);
            assert!(
                close(ppl.ln(), mean),
                "perplexity {ppl} vs exp({mean}) on {b}"
            );
        }
        let v = json(&with(&nll, &["--ignore-index=-100"]), b);
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
    let nll = ["nll", "--q", &lf, "--targets", &tf, "--q-form", "logits"];
    let smoothed = with(&nll, &["--label-smoothing", "0.1"]);
    for b in backends() {
        let (per_row, w) = nll_reference(&logits, &t, None, Some(&weights), 0.0);
        for file in [&wf, &wf64] {
            let weighted = with(&nll, &["--weights", file]);
            let v = json(&weighted, b);
            check(&v, &per_row, &format!("weighted per row on {b}"));
            let v = json(&with(&weighted, &["--reduction", "mean"]), b);
            let mean = per_row.iter().sum::<f64>() / w;
            check(&v, &[mean], &format!("weighted mean on {b}"));
        }
        let (per_row, _) = nll_reference(&logits, &t, None, None, 0.1);
        let v = json(&smoothed, b);
        check(&v, &per_row, &format!("label smoothing on {b}"));
        let v = json(&with(&smoothed, &["--reduction", "sum"]), b);
        check(
            &v,
            &reduce(&per_row, "sum"),
            &format!("label smoothing sum on {b}"),
        );
        let bad = with(&nll, &["--label-smoothing", "1.5"]);
        fails(&bad, b, &["smoothing"]);
    }
}

#[test]
fn nll_target_dtypes_and_one_shared_row() {
    let tmp = Tmp::new("nllt");
    let q = random_probs(71, 1, 6, |_, _| false);
    let qf = tmp.save("Q.npy", &[6], &q.data);
    let t: Vec<i64> = vec![5, 0, 0, 2, 3, 1, 4];
    let t32: Vec<i32> = t.iter().map(|&x| x as i32).collect();
    let tu32: Vec<u32> = t.iter().map(|&x| x as u32).collect();
    let files = [
        tmp.save("T64.npy", &[7], &t),
        tmp.save("T32.npy", &[7], &t32),
        tmp.save("TU32.npy", &[7], &tu32),
    ];
    let (per_row, _) = nll_reference(&q, &t, None, None, 0.0);
    for b in backends() {
        for tf in &files {
            let args = ["nll", "--q", &qf, "--targets", tf];
            let v = json(&args, b);
            assert_eq!(v["rows"], 7, "{v}");
            check(&v, &per_row, &format!("shared q, {tf} on {b}"));
            let v = json(&with(&args, &["--reduction", "mean"]), b);
            let want = reduce(&per_row, "mean");
            check(&v, &want, &format!("shared q mean on {b}"));
        }
    }
}

#[test]
fn nll_all_ignored_mean_is_nan() {
    let tmp = Tmp::new("nllnan");
    let q = random_probs(81, 3, 4, |_, _| false);
    let qf = tmp.mat("Q.npy", &q);
    let tf = tmp.save("T.npy", &[3], &[-1i64, -1, -1]);
    let args = ["nll", "--q", &qf, "--targets", &tf, "--ignore-index", "-1"];
    for b in backends() {
        let v = json(&with(&args, &["--reduction", "mean"]), b);
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
    let entropy = ["entropy", "--p", &pf];
    // (extra arguments, KULLBACK_BACKEND, the backend that runs)
    let mut cases = vec![
        (&["--backend", "cpu"][..], "gpu", "cpu"),
        (&[][..], "cpu", "cpu"),
        (&["--backend", "auto"][..], "cpu", "cpu"),
    ];
    if backends().contains(&"gpu") {
        cases.push((&[][..], "gpu", "gpu"));
    }
    for (more, env, want) in cases {
        let got = backend(run_env(&with(&entropy, more), Some(env)));
        assert_eq!(got, want, "{more:?} with KULLBACK_BACKEND={env}");
    }
    let r = run_env(&entropy, Some("tpu"));
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
            let r = ["--reduction", red];
            #[rustfmt::skip]
            let cases: &Failures<'_> = &[
                (&with(&["entropy", "--p", &pf], &r), &["P.npy", "row 3", "column 7", "NaN"]),
                (&with(&["kl", "--p", &pf, "--q", &qf], &r), &["P.npy", "row 3", "column 7"]),
                (&with(&["js", "--p", &pf_ok, "--q", &qf_bad], &r), &["Q2.npy", "row 3", "column 7"]),
            ];
            fails_all(cases, b);
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
    let tf = tmp.save("T.npy", &[4], &[0i32; 4]);
    for b in backends() {
        #[rustfmt::skip]
        let cases: &Failures<'_> = &[
            (&["entropy", "--p", &pf], &["P.npy", "row 2", "column 1", "negative"]),
            (&["cross-entropy", "--p", &qf, "--q", &pf], &["P.npy", "row 2", "column 1"]),
            (&["nll", "--q", &pf, "--targets", &tf], &["P.npy", "row 2"]),
        ];
        fails_all(cases, b);
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
        #[rustfmt::skip]
        let cases: &Failures<'_> = &[
            (&["entropy", "--p", &pf], &["P.npy", "row 1", "column 4"]),
            (&["kl", "--p", &p_ok, "--q", &qf], &["Q64.npy", "row 2", "column 5"]),
        ];
        fails_all(cases, b);
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
            #[rustfmt::skip]
            let cases: &Failures<'_> = &[
                (&[m, "--p", &p, "--q", &q], &["P.npy", "Q.npy", "shape"]),
                (&[m, "--p", &p, "--q", &q5], &["P.npy", "Q5.npy", "shape"]),
            ];
            fails_all(cases, b);
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
    let tf = tmp.save("T.npy", &[4], &[1u32; 4]);
    for b in backends() {
        #[rustfmt::skip]
        let cases: &Failures<'_> = &[
            (&["entropy", "--p", &pf], &["P.npy", "row 2", "--normalize"]),
            (&["kl", "--p", &qf, "--q", &pf, "--reduction", "mean"], &["P.npy", "row 2"]),
            (&["nll", "--q", &pf, "--targets", &tf], &["P.npy", "row 2"]),
        ];
        fails_all(cases, b);
        // The same file passes with --normalize.
        let v = json(&["entropy", "--p", &pf, "--normalize"], b);
        let want = reference_in("entropy", &p, None, true, Base::E);
        check(&v, &want, "--normalize");
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
    let missing = missing.to_str().unwrap();
    let q = tmp.save("Q.npy", &[2], &[0.5f32, 0.5]);
    for b in backends() {
        #[rustfmt::skip]
        let cases: &Failures<'_> = &[
            (&["entropy", "--p", bad], &["P.npy", ".npy"]),
            (&["kl", "--p", &q, "--q", bad], &["P.npy"]),
            (&["entropy", "--p", truncated], &["TRUNC.npy"]),
            (&["entropy", "--p", missing], &["MISSING.npy"]),
            (&["nll", "--q", &q, "--targets", bad], &["P.npy"]),
        ];
        fails_all(cases, b);
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
        #[rustfmt::skip]
        let cases: &Failures<'_> = &[
            (&["entropy", "--p", &three_d], &["P3.npy", "3-D"]),
            (&["entropy", "--p", &scalar], &["P0.npy", "0-D"]),
            (&["entropy", "--p", fortran], &["PF.npy", "Fortran"]),
            (&["entropy", "--p", &ints], &["PI.npy", "dtype"]),
            (&["kl", "--p", &q, "--q", &half], &["PU8.npy", "dtype"]),
            (&["nll", "--q", &q, "--targets", &float_targets], &["TF.npy", "dtype"]),
            (&["nll", "--q", &q, "--targets", &targets_2d], &["T2.npy", "1-D"]),
            (&["nll", "--q", &q, "--targets", &t, "--weights", &weights_i], &["WI.npy", "dtype"]),
        ];
        fails_all(cases, b);
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
    let nll = ["nll", "--q", &qf, "--targets"];
    for b in backends() {
        #[rustfmt::skip]
        let cases: &Failures<'_> = &[
            (&with(&nll, &[&out_of_range]), &["T.npy", "row 2", "5"]),
            (&with(&nll, &[&negative]), &["TN.npy", "row 3"]),
            (&with(&nll, &[&short]), &["TS.npy", "Q.npy"]),
            (&with(&nll, &[&ok, "--weights", &weights_short]), &["W.npy"]),
        ];
        fails_all(cases, b);
        // The ignore index is not out of range.
        json(&with(&nll, &[&negative, "--ignore-index", "-3"]), b);
    }
}

#[test]
fn usage_errors() {
    let tmp = Tmp::new("usage");
    let pf = tmp.save("P.npy", &[2], &[0.5f32, 0.5]);
    #[rustfmt::skip]
    let cases: [&[&str]; 9] = [
        &[],
        &["entropy"],
        &["kl", "--p", &pf],
        &["nll", "--q", &pf],
        &["entropy", "--p", &pf, "--reduction", "batchmean"],
        &["entropy", "--p", &pf, "--backend", "tpu"],
        &["entropy", "--p", &pf, "--p-form", "odds"],
        &["entropy", "--p", &pf, "--q", &pf],
        &["variance", "--p", &pf],
    ];
    for args in cases {
        usage_error(args);
    }
}

fn sv(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

/// f16 files ('<f2') and bfloat16 ones ('<u2' or '<V2' with `--bf16`) give
/// the values of the f32 files holding the same values widened, bit for bit
/// (the same kernels read the same f32s); the dtype rules are errors naming
/// the file.
#[test]
fn half_precision_files() {
    use kullback::half::{bf16, f16};
    let t = Tmp::new("half");
    let p = random_probs(71, 4, 9, |r, c| (r + c) % 5 == 0);
    let q = random_probs(72, 4, 9, |_, _| false);
    let shape = [4u64, 9];
    for backend in common::cli_backends() {
        for m in ["entropy", "kl", "js", "cross-entropy"] {
            // f16
            let (ph, qh): (Vec<f16>, Vec<f16>) = (
                p.data.iter().map(|&x| f16::from_f32(x)).collect(),
                q.data.iter().map(|&x| f16::from_f32(x)).collect(),
            );
            let wide = |v: &[f16]| v.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
            let (pf, qf) = (
                t.save("p16.npy", &shape, &ph),
                t.save("q16.npy", &shape, &qh),
            );
            let (pw, qw) = (
                t.save("p16w.npy", &shape, &wide(&ph)),
                t.save("q16w.npy", &shape, &wide(&qh)),
            );
            let args = |p: &str, q: &str| -> Vec<String> {
                // renormalised: the widened f32 files have no roundoff allowance
                let mut a = vec![
                    m.to_string(),
                    "--normalize".into(),
                    "--p".into(),
                    p.to_string(),
                ];
                if m != "entropy" {
                    a.extend(["--q".into(), q.to_string()]);
                }
                a
            };
            let a16 = args(&pf, &qf);
            let aw = args(&pw, &qw);
            let got = json(&sv(&a16), backend);
            let want = json(&sv(&aw), backend);
            assert_eq!(got["values"], want["values"], "{m} f16 [{backend}]");
            // bf16, as '<u2' and as '<V2'
            let (pb, qb): (Vec<bf16>, Vec<bf16>) = (
                p.data.iter().map(|&x| bf16::from_f32(x)).collect(),
                q.data.iter().map(|&x| bf16::from_f32(x)).collect(),
            );
            let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<u16>>();
            let bytes = |v: &[bf16]| {
                v.iter()
                    .flat_map(|x| x.to_bits().to_le_bytes())
                    .collect::<Vec<u8>>()
            };
            let widen = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
            let (pu, qu) = (
                t.save("pu.npy", &shape, &bits(&pb)),
                t.save("qu.npy", &shape, &bits(&qb)),
            );
            save_raw_npy(&t.path("pv.npy"), "<V2", &shape, &bytes(&pb));
            save_raw_npy(&t.path("qv.npy"), "<V2", &shape, &bytes(&qb));
            let (pv, qv) = (
                t.path("pv.npy").to_str().unwrap().to_string(),
                t.path("qv.npy").to_str().unwrap().to_string(),
            );
            let (pw, qw) = (
                t.save("pbw.npy", &shape, &widen(&pb)),
                t.save("qbw.npy", &shape, &widen(&qb)),
            );
            let want = json(&sv(&args(&pw, &qw)), backend);
            let flag = if m == "entropy" { "p" } else { "p,q" };
            for (pp, qq) in [(&pu, &qu), (&pv, &qv)] {
                let mut a = args(pp, qq);
                a.extend(["--bf16".into(), flag.into()]);
                let got = json(&sv(&a), backend);
                assert_eq!(got["values"], want["values"], "{m} bf16 {pp} [{backend}]");
            }
        }
        // dtype rules
        let pv = t.path("pv.npy").to_str().unwrap().to_string();
        let pf32 = t.mat("p32.npy", &p);
        fails(&["entropy", "--p", &pv], backend, &["pv.npy", "--bf16"]);
        fails(
            &["entropy", "--p", &pf32, "--bf16", "p"],
            backend,
            &["p32.npy", "<u2", "<V2"],
        );
        fails(
            &["entropy", "--p", &pf32, "--bf16", "q"],
            backend,
            &["--bf16 q", "p"],
        );
        let pu = t.path("pu.npy").to_str().unwrap().to_string();
        fails(
            &["entropy", "--p", &pu],
            backend,
            &["pu.npy", "unsupported dtype"],
        );
    }
}
