//! The stored SciPy / NumPy float64 reference cases (`tests/data/manifest.json`,
//! made by `tests/data/make_reference.py`) fed through the `kullback` binary:
//! the very float32 .npy inputs on its command line, its JSON values compared
//! with the stored per-row values (`--reduction none`) and the stored totals
//! (`--reduction sum`, `--reduction mean`, and the perplexity of an NLL mean),
//! within each case's tolerance (abs + rel·|expected|; inf must be "inf", NaN "nan").
//!
//! Every case runs on `--backend cpu`, and on `--backend gpu` when an adapter
//! exists; with `KULLBACK_REQUIRE_GPU=1` a missing adapter fails the test.

#![cfg(feature = "cli")]

mod common;

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{close_tol, data_dir, read_f64};
use npyz::WriterBuilder;
use serde_json::Value;

/// Reductions, as the CLI spells them.
const REDUCTIONS: [&str; 3] = ["none", "sum", "mean"];

/// Fewer checked cases than this (per backend) means the manifest was misread.
const MIN_CASES: usize = 80;

/// A fresh directory under the system temp dir, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new() -> Tmp {
        let dir = std::env::temp_dir().join(format!("kullback-cli-scipy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a 1-D float32 .npy file.
fn save_f32(path: &Path, data: &[f32]) {
    let file = BufWriter::new(File::create(path).unwrap());
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[data.len() as u64])
        .writer(file)
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

/// One manifest case turned into a command line.
struct Case {
    name: String,
    measure: String,
    /// The arguments before `--reduction` and `--backend`.
    args: Vec<String>,
    rows: u64,
    cols: u64,
    ln_base: f64,
    abs: f64,
    rel: f64,
    /// Per-row values, in the case's base.
    expected: Vec<f64>,
    /// [sum, mean, counted].
    reduced: Vec<f64>,
}

fn str_field<'a>(c: &'a Value, key: &str) -> Option<&'a str> {
    c.get(key).and_then(Value::as_str)
}

/// The CLI spelling of a manifest form.
fn form_arg(form: &str) -> Option<&'static str> {
    match form {
        "probs" => Some("probs"),
        "log_probs" => Some("log-probs"),
        "logits" => Some("logits"),
        _ => None,
    }
}

/// Builds the command line of `c`, or says why the CLI cannot express it.
fn case_of(c: &Value, tmp: &Tmp) -> Result<Case, String> {
    let name = str_field(c, "name").ok_or("no name")?.to_string();
    let measure = str_field(c, "measure").ok_or("no measure")?.to_string();
    let files = &c["files"];
    let file = |k: &str| {
        files
            .get(k)
            .and_then(Value::as_str)
            .map(|f| data_dir().join(f).to_str().unwrap().to_string())
    };
    let form = |k: &str| -> Result<&'static str, String> {
        let f = str_field(c, k).ok_or_else(|| format!("no {k}"))?;
        form_arg(f).ok_or_else(|| format!("{k} {f:?}"))
    };
    let mut args: Vec<String> = Vec::new();
    let mut push = |a: &str, b: String| {
        args.push(a.to_string());
        args.push(b);
    };
    match measure.as_str() {
        "kl" | "cross_entropy" | "entropy" | "js" => {
            push("--p", file("p").ok_or("no p file")?);
            push("--p-form", form("p_form")?.into());
            if measure != "entropy" {
                push("--q", file("q").ok_or("no q file")?);
                push("--q-form", form("q_form")?.into());
            }
        }
        "nll" => {
            push("--q", file("q").ok_or("no q file")?);
            push("--targets", file("targets").ok_or("no targets file")?);
            push("--q-form", form("q_form")?.into());
            if let Some(k) = c.get("ignore_index").and_then(Value::as_i64) {
                push("--ignore-index", k.to_string());
            }
            if let Some(w) = file("weights") {
                push("--weights", w);
            } else if let Some(w) = c.get("weights").and_then(Value::as_array) {
                // Weights stored inline in the manifest: a temporary .npy.
                let w: Vec<f32> = w.iter().map(|v| v.as_f64().unwrap() as f32).collect();
                let path = tmp.0.join(format!("{name}.weights.npy"));
                save_f32(&path, &w);
                push("--weights", path.to_str().unwrap().to_string());
            }
            let eps = c.get("label_smoothing").and_then(Value::as_f64);
            if let Some(eps) = eps.filter(|&e| e != 0.0) {
                push("--label-smoothing", eps.to_string());
            }
        }
        other => return Err(format!("measure {other:?}")),
    }
    let base = str_field(c, "base").unwrap_or("e");
    let ln_base = match base {
        "e" => 1.0,
        "2" => 2f64.ln(),
        "10" => 10f64.ln(),
        b => b
            .parse::<f64>()
            .map_err(|e| format!("base {b:?}: {e}"))?
            .ln(),
    };
    push("--base", base.to_string());
    match str_field(c, "normalization").unwrap_or("validate") {
        "validate" => {}
        "renormalize" => args.push("--normalize".into()),
        other => return Err(format!("normalization {other:?} (no CLI flag)")),
    }
    if c.get("tolerance").is_some_and(|t| !t.is_null()) {
        return Err("a validation tolerance (no CLI flag)".into());
    }
    let mut full = vec![match measure.as_str() {
        "cross_entropy" => "cross-entropy".to_string(),
        m => m.to_string(),
    }];
    full.extend(args);
    let expected = read_f64(files["expected"].as_str().ok_or("no expected file")?);
    let reduced = read_f64(files["reduced"].as_str().ok_or("no reduced file")?);
    if reduced.len() != 3 {
        return Err(format!("reduced has {} values", reduced.len()));
    }
    Ok(Case {
        measure,
        args: full,
        rows: c["rows"].as_u64().ok_or("no rows")?,
        cols: c["cols"].as_u64().ok_or("no cols")?,
        ln_base,
        abs: c["abs_tol"].as_f64().unwrap_or(common::ABS_TOL),
        rel: c["rel_tol"].as_f64().unwrap_or(common::REL_TOL),
        expected,
        reduced,
        name,
    })
}

/// A JSON value: a number, or "inf" / "-inf" / "nan".
fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s == "inf" => Some(f64::INFINITY),
        Value::String(s) if s == "-inf" => Some(f64::NEG_INFINITY),
        Value::String(s) if s == "nan" => Some(f64::NAN),
        _ => None,
    }
}

/// Runs `c` on `backend` under `reduction`; `Err` describes every mismatch.
fn check(c: &Case, backend: &str, reduction: &str) -> Result<(), String> {
    let mut args = c.args.clone();
    args.extend(["--reduction", reduction, "--backend", backend].map(String::from));
    let out = Command::new(env!("CARGO_BIN_EXE_kullback"))
        .args(&args)
        .env_remove("KULLBACK_BACKEND")
        .output()
        .map_err(|e| format!("cannot run kullback: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "exit {}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: Value =
        serde_json::from_str(stdout.trim()).map_err(|e| format!("not JSON ({e}): {stdout:?}"))?;
    let mut bad = Vec::new();
    if v["backend"] != backend {
        bad.push(format!("ran on {}", v["backend"]));
    }
    if v["reduction"] != reduction {
        bad.push(format!("reduction {}", v["reduction"]));
    }
    if v["rows"].as_u64() != Some(c.rows) || v["cols"].as_u64() != Some(c.cols) {
        bad.push(format!(
            "shape {} x {}, expected {} x {}",
            v["rows"], v["cols"], c.rows, c.cols
        ));
    }
    let got: Vec<Option<f64>> = match v["values"].as_array() {
        Some(a) => a.iter().map(num).collect(),
        None => return Err(format!("no values array: {v}")),
    };
    // (expected, allowed error) per value, as tests/common's reduced_expectation.
    let n = c.expected.len() as f64;
    let mag: f64 = c
        .expected
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| v.abs())
        .sum();
    let sum_tol = n * c.abs + c.rel * mag;
    let (sum, mean, counted) = (c.reduced[0], c.reduced[1], c.reduced[2]);
    let want: Vec<(f64, f64)> = match reduction {
        "none" => c
            .expected
            .iter()
            .map(|&e| (e, c.abs + c.rel * e.abs()))
            .collect(),
        "sum" => vec![(sum, sum_tol)],
        _ => vec![(
            mean,
            if counted > 0.0 {
                sum_tol / counted
            } else {
                0.0
            },
        )],
    };
    if got.len() != want.len() {
        bad.push(format!("{} values, expected {}", got.len(), want.len()));
    }
    for (i, (g, &(e, tol))) in got.iter().zip(&want).enumerate() {
        match g {
            Some(g) if close_tol(*g, e, tol, 0.0) => {}
            Some(g) => bad.push(format!(
                "[{i}] got {g:e}, expected {e:e} (diff {:e}, allowed {tol:e})",
                g - e
            )),
            None => bad.push(format!("[{i}] not a value: {}", v["values"][i])),
        }
    }
    if c.measure == "nll" && reduction == "mean" {
        // exp(mean in nats): its error is exp(x)·(exp(tolerance in nats) − 1).
        let e = (mean * c.ln_base).exp();
        let tol = e * (want[0].1 * c.ln_base).exp_m1() + 1e-9 * e;
        match num(&v["perplexity"]) {
            Some(g) if close_tol(g, e, tol, 0.0) => {}
            g => bad.push(format!(
                "perplexity {g:?}, expected {e:e} (allowed {tol:e})"
            )),
        }
    } else if v.get("perplexity").is_some() {
        bad.push(format!("unexpected perplexity {}", v["perplexity"]));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

#[test]
fn cli_matches_scipy_reference() {
    let text = std::fs::read_to_string(data_dir().join("manifest.json")).expect("manifest.json");
    let manifest: Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let entries = manifest["cases"].as_array().expect("manifest cases");
    let tmp = Tmp::new();
    let mut cases = Vec::new();
    let mut skipped = Vec::new();
    for c in entries {
        match case_of(c, &tmp) {
            Ok(case) => cases.push(case),
            Err(why) => skipped.push(format!("{}: {why}", c["name"])),
        }
    }
    if !skipped.is_empty() {
        eprintln!(
            "note: {} manifest cases skipped (not expressible on the CLI):\n  {}",
            skipped.len(),
            skipped.join("\n  ")
        );
    }
    let backends = common::cli_backends();
    // The cases split over a few threads; each runs the binary once per
    // backend and reduction.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let chunk = cases.len().div_ceil(threads).max(1);
    let (failures, checked): (Vec<String>, usize) = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .chunks(chunk)
            .map(|part| {
                let backends = &backends;
                s.spawn(move || {
                    let mut failures = Vec::new();
                    let mut checked = 0;
                    for c in part {
                        for &backend in backends {
                            for reduction in REDUCTIONS {
                                if let Err(e) = check(c, backend, reduction) {
                                    failures.push(format!(
                                        "{} [{backend}, {reduction}]: {e}\n    kullback {}",
                                        c.name,
                                        c.args.join(" ")
                                    ));
                                }
                            }
                            checked += 1;
                        }
                    }
                    (failures, checked)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread"))
            .fold((Vec::new(), 0), |(mut f, n), (g, m)| {
                f.extend(g);
                (f, n + m)
            })
    });
    eprintln!(
        "checked {} cases x {} backends ({checked} case-backend pairs, 3 reductions each), {} skipped",
        cases.len(),
        backends.len(),
        skipped.len()
    );
    common::report("CLI vs SciPy reference", &failures);
    assert!(
        cases.len() >= MIN_CASES,
        "only {} manifest cases checked (of {}); expected at least {MIN_CASES}",
        cases.len(),
        entries.len()
    );
    assert_eq!(checked, cases.len() * backends.len());
    for m in ["kl", "cross_entropy", "entropy", "js", "nll"] {
        assert!(cases.iter().any(|c| c.measure == m), "no {m} case checked");
    }
}
