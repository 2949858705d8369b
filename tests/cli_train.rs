//! `kullback nll --out-grad` and `kullback distill` end to end: .npy files in
//! a temporary directory, the JSON and the gradient file checked against a
//! plain f64 reference computed here (dense teachers) or against the
//! library's own call (sparse teachers: their numerics are tested in
//! tests/train.rs; here the plumbing), and the error rules (non-zero exit,
//! empty stdout, a last stderr line naming the file).

#![cfg(feature = "cli")]

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use kullback::{
    Backend, Batch, Context, DistillOptions, Divergence, Form, SparseTeacher, Tail, Teacher,
};
use npyz::WriterBuilder;
use serde_json::Value;

mod common;

struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kullback-cli-train-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }
    fn path(&self, file: &str) -> String {
        self.0.join(file).to_str().unwrap().to_string()
    }
    fn save<T: npyz::AutoSerialize + Copy>(&self, file: &str, shape: &[u64], data: &[T]) -> String {
        let path = self.path(file);
        let f = BufWriter::new(File::create(&path).unwrap());
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(f)
            .begin_nd()
            .unwrap();
        w.extend(data.iter().copied()).unwrap();
        w.finish().unwrap();
        path
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kullback"))
        .args(args)
        .env_remove("KULLBACK_BACKEND")
        .output()
        .expect("run kullback");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(args: &[&str]) -> Value {
    let (ok, stdout, stderr) = run(args);
    assert!(ok, "kullback {args:?} failed:\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout:?}"))
}

fn fails(args: &[&str], needles: &[&str]) {
    let (ok, stdout, stderr) = run(args);
    assert!(!ok, "kullback {args:?} should fail; stdout: {stdout}");
    assert!(stdout.is_empty(), "stdout should be empty: {stdout:?}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let last = stderr.lines().last().unwrap_or("");
    for n in needles {
        assert!(
            last.contains(n),
            "{args:?}: {n:?} not in the last stderr line {last:?}"
        );
    }
}

fn read_grad(path: &str) -> (Vec<f32>, Vec<u64>) {
    let f = npyz::NpyFile::new(std::io::BufReader::new(File::open(path).unwrap())).unwrap();
    let shape = f.shape().to_vec();
    (f.into_vec::<f32>().unwrap(), shape)
}

fn logits(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f64 / (1u64 << 24) as f64 * 6.0 - 3.0) as f32
        })
        .collect()
}

fn log_softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let l = m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    x.iter().map(|v| v - l).collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn close(got: f64, want: f64, abs: f64) {
    assert!(
        (got - want).abs() <= abs + 2e-5 * want.abs(),
        "{got} vs {want}"
    );
}

#[test]
fn nll_out_grad() {
    let tmp = Tmp::new("nll");
    let (rows, cols) = (3usize, 5usize);
    let z = logits(1, rows * cols);
    let q = tmp.save("q.npy", &[rows as u64, cols as u64], &z);
    let t = tmp.save("t.npy", &[rows as u64], &[4i64, 0, 2]);
    let g = tmp.path("g.npy");
    let v = json(&[
        "nll",
        "--q",
        &q,
        "--q-form",
        "logits",
        "--targets",
        &t,
        "--reduction",
        "mean",
        "--out-grad",
        &g,
        "--backend",
        "cpu",
    ]);
    assert_eq!(v["measure"], "nll");
    assert_eq!(v["backend"], "cpu");
    let (grad, shape) = read_grad(&g);
    assert_eq!(shape, vec![rows as u64, cols as u64]);
    let mut loss = 0.0;
    for (r, &t) in [4usize, 0, 2].iter().enumerate() {
        let lq = log_softmax(
            &z[r * cols..(r + 1) * cols]
                .iter()
                .map(|&x| x as f64)
                .collect::<Vec<_>>(),
        );
        loss += -lq[t] / rows as f64;
        for c in 0..cols {
            let want = (lq[c].exp() - if c == t { 1.0 } else { 0.0 }) / rows as f64;
            close(grad[r * cols + c] as f64, want, 1e-6);
        }
    }
    close(num(&v["values"][0]), loss, 2e-6);
    assert!(v["perplexity"].is_number());
    // probabilities have no gradient here
    fails(
        &[
            "nll",
            "--q",
            &q,
            "--targets",
            &t,
            "--out-grad",
            &g,
            "--backend",
            "cpu",
        ],
        &["logits"],
    );
    // --out-grad may not overwrite an input
    fails(
        &[
            "nll",
            "--q",
            &q,
            "--q-form",
            "logits",
            "--targets",
            &t,
            "--out-grad",
            &q,
        ],
        &["--out-grad is also an input"],
    );
}

#[test]
fn distill_dense_forward_kl_with_mask() {
    let tmp = Tmp::new("dense");
    let (rows, cols) = (4usize, 7usize);
    let s = logits(2, rows * cols);
    let t = logits(3, rows * cols);
    let sp = tmp.save("s.npy", &[rows as u64, cols as u64], &s);
    let tp = tmp.save("t.npy", &[rows as u64, cols as u64], &t);
    let temp = 2.0;
    for (mname, mpath) in [
        ("u8", tmp.save("m8.npy", &[rows as u64], &[1u8, 0, 1, 1])),
        (
            "bool",
            tmp.save("mb.npy", &[rows as u64], &[true, false, true, true]),
        ),
    ] {
        let g = tmp.path(&format!("g-{mname}.npy"));
        let v = json(&[
            "distill",
            "--student",
            &sp,
            "--teacher",
            &tp,
            "--divergence",
            "forward-kl",
            "--temperature",
            "2",
            "--mask",
            &mpath,
            "--reduction",
            "mean",
            "--out-grad",
            &g,
            "--backend",
            "cpu",
        ]);
        assert_eq!(v["measure"], "distill");
        assert_eq!(v["reduction"], "mean");
        let (grad, shape) = read_grad(&g);
        assert_eq!(shape, vec![rows as u64, cols as u64]);
        let mut loss = 0.0;
        for r in 0..rows {
            let row = |x: &[f32]| {
                x[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|&v| v as f64 / temp)
                    .collect::<Vec<_>>()
            };
            if r == 1 {
                assert!(grad[r * cols..(r + 1) * cols].iter().all(|&g| g == 0.0));
                continue;
            }
            let (lq, lp) = (log_softmax(&row(&s)), log_softmax(&row(&t)));
            loss += temp
                * temp
                * lp.iter()
                    .zip(&lq)
                    .map(|(p, q)| p.exp() * (p - q))
                    .sum::<f64>()
                / 3.0;
            for c in 0..cols {
                close(
                    grad[r * cols + c] as f64,
                    temp * (lq[c].exp() - lp[c].exp()) / 3.0,
                    1e-6,
                );
            }
        }
        close(num(&v["values"][0]), loss, 2e-6);
    }
}

/// `--out-teacher-grad`: the gradient with respect to a dense teacher
/// (logits and log-probs), against the f64 formulas of the issue (forward
/// KL: T·p ⊙ (ln p − ln q − KL); reverse KL: T·(p − q); the JSD at β = ½:
/// T/2·p ⊙ (ln p − ln M − KL(p ‖ M))), with a mask and a mean; the student's
/// gradient file is the one plain `distill` writes.
#[test]
fn distill_out_teacher_grad() {
    let tmp = Tmp::new("tgrad");
    let (rows, cols) = (3usize, 5usize);
    let s = logits(7, rows * cols);
    let t = logits(8, rows * cols);
    let sp = tmp.save("s.npy", &[rows as u64, cols as u64], &s);
    let temp = 2.0;
    let mp = tmp.save("m.npy", &[rows as u64], &[1u8, 1, 0]);
    // the teacher as logits, and as log-probabilities (T = 1) of the same
    let lp_t: Vec<f32> = (0..rows)
        .flat_map(|r| {
            log_softmax(
                &t[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|&v| v as f64)
                    .collect::<Vec<_>>(),
            )
            .into_iter()
            .map(|v| v as f32)
        })
        .collect();
    for (form, tv) in [("logits", &t), ("log-probs", &lp_t)] {
        let tp = tmp.save(&format!("t-{form}.npy"), &[rows as u64, cols as u64], tv);
        for div in ["forward-kl", "reverse-kl", "jsd"] {
            let (g, tg, g0) = (
                tmp.path(&format!("g-{form}-{div}.npy")),
                tmp.path(&format!("tg-{form}-{div}.npy")),
                tmp.path(&format!("g0-{form}-{div}.npy")),
            );
            let args = |grad: &str, extra: &[&str]| {
                let mut a = vec![
                    "distill",
                    "--student",
                    &sp,
                    "--teacher",
                    &tp,
                    "--teacher-form",
                    form,
                    "--divergence",
                    div,
                    "--beta",
                    "0.5",
                    "--temperature",
                    "2",
                    "--mask",
                    &mp,
                    "--reduction",
                    "mean",
                    "--backend",
                    "cpu",
                    "--out-grad",
                ]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>();
                a.push(grad.to_string());
                a.extend(extra.iter().map(|s| s.to_string()));
                a
            };
            let a = args(&g, &["--out-teacher-grad", &tg]);
            let v = json(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
            let a0 = args(&g0, &[]);
            let v0 = json(&a0.iter().map(|s| s.as_str()).collect::<Vec<_>>());
            assert_eq!(v["values"], v0["values"], "{form} {div}");
            let (grad, _) = read_grad(&g);
            let (grad0, _) = read_grad(&g0);
            assert_eq!(grad, grad0, "{form} {div}: the student's gradient");
            let (tgrad, shape) = read_grad(&tg);
            assert_eq!(shape, vec![rows as u64, cols as u64]);
            for r in 0..rows {
                let row = |x: &[f32]| {
                    x[r * cols..(r + 1) * cols]
                        .iter()
                        .map(|&v| v as f64 / temp)
                        .collect::<Vec<_>>()
                };
                let got = &tgrad[r * cols..(r + 1) * cols];
                if r == 2 {
                    assert!(got.iter().all(|&g| g == 0.0), "masked row");
                    continue;
                }
                let (lq, lp) = (log_softmax(&row(&s)), log_softmax(&row(tv)));
                let lm: Vec<f64> = lp
                    .iter()
                    .zip(&lq)
                    .map(|(p, q)| (0.5 * p.exp() + 0.5 * q.exp()).ln())
                    .collect();
                let kl = |a: &[f64], b: &[f64]| -> f64 {
                    a.iter().zip(b).map(|(x, y)| x.exp() * (x - y)).sum()
                };
                let (kpq, kpm) = (kl(&lp, &lq), kl(&lp, &lm));
                for c in 0..cols {
                    let p = lp[c].exp();
                    let want = match div {
                        "forward-kl" => temp * p * (lp[c] - lq[c] - kpq),
                        "reverse-kl" => temp * (p - lq[c].exp()),
                        _ => temp * 0.5 * p * (lp[c] - lm[c] - kpm),
                    } / 2.0;
                    close(got[c] as f64, want, 1e-6);
                }
            }
        }
    }
}

#[test]
fn distill_sparse_matches_the_library() {
    let tmp = Tmp::new("sparse");
    let (rows, cols, k) = (3usize, 9usize, 2usize);
    let s = logits(4, rows * cols);
    let sp = tmp.save("s.npy", &[rows as u64, cols as u64], &s);
    let ix: Vec<i32> = vec![3, 0, 8, 1, 5, 6];
    let l: Vec<f32> = vec![-0.5, -1.5, -0.3, -2.0, -1.0, -1.2];
    let ip = tmp.save("i.npy", &[rows as u64, k as u64], &ix);
    let lp = tmp.save("l.npy", &[rows as u64, k as u64], &l);
    let ctx = Context::with_backend(Backend::Cpu).unwrap();
    for (div, dname) in [
        (Divergence::ForwardKl, "forward-kl"),
        (Divergence::ReverseKl, "reverse-kl"),
        (Divergence::Jsd, "jsd"),
    ] {
        for (tail, tname) in [(Tail::Bucket, "bucket"), (Tail::Renormalize, "renormalize")] {
            let g = tmp.path("g.npy");
            let out = tmp.path("out.npy");
            let v = json(&[
                "distill",
                "--student",
                &sp,
                "--teacher-index",
                &ip,
                "--teacher-logprob",
                &lp,
                "--tail",
                tname,
                "--divergence",
                dname,
                "--beta",
                "0.25",
                "--temperature",
                "0.5",
                "--out-grad",
                &g,
                "--out",
                &out,
                "--backend",
                "cpu",
            ]);
            assert!(
                v.get("values").is_none(),
                "--out leaves the values out: {v}"
            );
            let mut want = vec![0f32; rows * cols];
            let opts = DistillOptions::default()
                .divergence(div)
                .beta(0.25)
                .temperature(0.5)
                .tail(tail);
            let o = ctx
                .distill(
                    &Batch::new(&s, rows, cols).form(Form::Logits),
                    &Teacher::Sparse(SparseTeacher::new(&ix, &l, k)),
                    &opts,
                    &mut want,
                )
                .unwrap();
            let (grad, _) = read_grad(&g);
            assert_eq!(grad, want, "{dname} {tname}");
            let (vals, _) = read_grad(&out);
            assert_eq!(vals, o.values);
        }
    }
}

#[test]
fn distill_errors_name_the_file() {
    let tmp = Tmp::new("errors");
    let s = logits(5, 6);
    let sp = tmp.save("s.npy", &[2, 3], &s);
    let tp = tmp.save("t.npy", &[2, 3], &logits(6, 6));
    let base = |extra: &[&str]| {
        let mut v = vec!["distill", "--student", sp.as_str(), "--temperature", "1"];
        v.extend(extra);
        v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let f = |extra: &[&str], needles: &[&str]| {
        let a = base(extra);
        fails(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>(), needles);
    };
    f(
        &["--teacher", &tp, "--divergence", "jsd", "--beta", "0"],
        &["β = 0: use forward-kl"],
    );
    f(
        &["--teacher", &tp, "--divergence", "jsd", "--beta", "1"],
        &["β = 1: use reverse-kl"],
    );
    f(&["--divergence", "forward-kl"], &["--teacher"]);
    let ip = tmp.save("i.npy", &[2, 2], &[0i64, 0, 1, 2]);
    let lp = tmp.save("l.npy", &[2, 2], &[-1.0f32, -2.0, -1.0, -2.0]);
    f(
        &[
            "--teacher-index",
            &ip,
            "--teacher-logprob",
            &lp,
            "--divergence",
            "forward-kl",
        ],
        &["i.npy", "row 0, position 1", "repeats"],
    );
    let mp = tmp.save("m.npy", &[3], &[1u8, 1, 1]);
    f(
        &[
            "--teacher",
            &tp,
            "--divergence",
            "forward-kl",
            "--mask",
            &mp,
        ],
        &["m.npy"],
    );
    let bad = tmp.save("bad.npy", &[2, 3], &[0.0f32, f32::NAN, 0.0, 0.0, 0.0, 0.0]);
    f(
        &["--teacher", &bad, "--divergence", "reverse-kl"],
        &["bad.npy", "row 0, column 1"],
    );
    f(
        &[
            "--teacher",
            &tp,
            "--divergence",
            "forward-kl",
            "--out-grad",
            &sp,
        ],
        &["--out-grad is also an input"],
    );
    // a sparse teacher has no teacher gradient
    let tgp = tmp.path("tg.npy");
    f(
        &[
            "--teacher-index",
            &ip,
            "--teacher-logprob",
            &lp,
            "--divergence",
            "forward-kl",
            "--out-teacher-grad",
            &tgp,
        ],
        &["--out-teacher-grad needs a dense --teacher"],
    );
    f(
        &[
            "--teacher",
            &tp,
            "--divergence",
            "forward-kl",
            "--out-teacher-grad",
            &tp,
        ],
        &["--out-teacher-grad is also an input"],
    );
    f(
        &[
            "--teacher",
            &tp,
            "--divergence",
            "forward-kl",
            "--out-grad",
            &tgp,
            "--out-teacher-grad",
            &tgp,
        ],
        &["--out-grad and --out-teacher-grad name the same file"],
    );
    // a dense and a sparse teacher together is a usage error
    let a = base(&[
        "--teacher",
        &tp,
        "--teacher-index",
        &ip,
        "--teacher-logprob",
        &lp,
        "--divergence",
        "jsd",
    ]);
    let (ok, stdout, _) = run(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(!ok && stdout.is_empty());
}

/// The 2-byte items of a 2-D .npy file whose dtype is `descr`.
fn raw_u16s(path: &str, descr: &str, rows: usize, cols: usize) -> Vec<u16> {
    let b = std::fs::read(path).unwrap();
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains(&format!("'descr': '{descr}'")), "{header}");
    assert!(header.contains(&format!("({rows}, {cols}")), "{header}");
    b[10 + hlen..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Half files: a bf16 student ('<V2', named by `--bf16 student`), an f16
/// teacher ('<f2'), f16 NLL logits; the gradient files and values are the
/// library's on the same half values, bit for bit, on each backend.
#[test]
fn distill_and_nll_from_half_files() {
    use kullback::half::{bf16, f16};
    let tmp = Tmp::new("half");
    let (rows, cols) = (3usize, 11usize);
    let shape = [rows as u64, cols as u64];
    let s: Vec<bf16> = logits(7, rows * cols)
        .iter()
        .map(|&x| bf16::from_f32(x))
        .collect();
    let t: Vec<f16> = logits(8, rows * cols)
        .iter()
        .map(|&x| f16::from_f32(x))
        .collect();
    let sp = tmp.path("s.npy");
    let tp = tmp.path("t.npy");
    common::save_raw_npy(sp.as_ref(), "<V2", &shape, bytemuck::cast_slice(&s));
    common::save_raw_npy(tp.as_ref(), "<f2", &shape, bytemuck::cast_slice(&t));
    let targets = [3i64, 0, 10];
    let yp = tmp.save("y.npy", &[rows as u64], &targets);
    for backend in common::cli_backends() {
        let ctx = Context::with_backend(if backend == "gpu" {
            Backend::Gpu
        } else {
            Backend::Cpu
        })
        .unwrap();
        let (g, out) = (tmp.path("g.npy"), tmp.path("out.npy"));
        let run_distill = |dtype: &str| {
            json(&[
                "distill",
                "--student",
                &sp,
                "--teacher",
                &tp,
                "--bf16",
                "student",
                "--divergence",
                "reverse-kl",
                "--temperature",
                "2",
                "--reduction",
                "none",
                "--out-grad",
                &g,
                "--grad-dtype",
                dtype,
                "--out",
                &out,
                "--backend",
                backend,
            ])
        };
        run_distill("f32");
        let mut want = vec![0f32; rows * cols];
        let o = ctx
            .distill(
                &Batch::new(&s, rows, cols).form(Form::Logits),
                &Teacher::Dense(Batch::new(&t, rows, cols).form(Form::Logits)),
                &DistillOptions::default()
                    .divergence(Divergence::ReverseKl)
                    .temperature(2.0)
                    .reduction(kullback::Reduction::None),
                &mut want,
            )
            .unwrap();
        assert_eq!(read_grad(&g).0, want, "{backend}: distill gradient");
        assert_eq!(read_grad(&out).0, o.values, "{backend}: distill values");
        // --grad-dtype: the same gradient rounded, as '<f2' and as bf16 bits in '<u2'
        for (dtype, descr) in [("f16", "<f2"), ("bf16", "<u2")] {
            run_distill(dtype);
            let rounded: Vec<u16> = want
                .iter()
                .map(|&v| {
                    if dtype == "f16" {
                        f16::from_f32(v).to_bits()
                    } else {
                        bf16::from_f32(v).to_bits()
                    }
                })
                .collect();
            assert_eq!(
                raw_u16s(&g, descr, rows, cols),
                rounded,
                "{backend}: {dtype} gradient"
            );
            assert_eq!(read_grad(&out).0, o.values, "{backend}: {dtype} values");
        }
        // without --bf16 the '<V2' student is refused, naming its file
        fails(
            &[
                "distill",
                "--student",
                &sp,
                "--teacher",
                &tp,
                "--divergence",
                "forward-kl",
                "--temperature",
                "2",
                "--backend",
                backend,
            ],
            &["s.npy"],
        );
        json(&[
            "nll",
            "--q",
            &tp,
            "--q-form",
            "logits",
            "--targets",
            &yp,
            "--reduction",
            "none",
            "--out-grad",
            &g,
            "--out",
            &out,
            "--backend",
            backend,
        ]);
        let o = ctx
            .nll_grad(
                &Batch::new(&t, rows, cols).form(Form::Logits),
                &targets[..],
                &kullback::NllOptions::default().reduction(kullback::Reduction::None),
                &mut want,
            )
            .unwrap();
        assert_eq!(read_grad(&g).0, want, "{backend}: nll gradient");
        assert_eq!(read_grad(&out).0, o.values, "{backend}: nll values");
    }
}
