//! `kullback pairwise` end to end (issue 17): the matrix written to a 2-D
//! float32 .npy equal bit for bit to `Context::pairwise` on the same
//! backend, band after band; `--top-k` writing values and uint32 indices;
//! the JSON; bad input naming the file, row and column, with nothing written.

#![cfg(feature = "cli")]

use std::path::PathBuf;
use std::process::Command;

mod common;

use kullback::{Backend, Batch, Context, Measure, PairwiseOptions};
use npyz::WriterBuilder;
use serde_json::Value;

fn backends() -> Vec<&'static str> {
    if common::gpu().is_some() {
        vec!["cpu", "gpu"]
    } else {
        vec!["cpu"]
    }
}

struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!(
            "kullback-cli-pairwise-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }
    fn save(&self, file: &str, rows: usize, cols: usize, data: &[f32]) -> String {
        let path = self.0.join(file);
        let f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[rows as u64, cols as u64])
            .writer(f)
            .begin_nd()
            .unwrap();
        w.extend(data.iter().copied()).unwrap();
        w.finish().unwrap();
        path.to_str().unwrap().to_string()
    }
    fn path(&self, file: &str) -> String {
        self.0.join(file).to_str().unwrap().to_string()
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
        .output()
        .expect("run kullback");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read<T: npyz::Deserialize>(path: &str) -> (Vec<u64>, Vec<T>) {
    let f =
        npyz::NpyFile::new(std::io::BufReader::new(std::fs::File::open(path).unwrap())).unwrap();
    (f.shape().to_vec(), f.into_vec::<T>().unwrap())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn ctx(backend: &str) -> Context {
    match backend {
        "gpu" => common::gpu().expect("gpu"),
        _ => Context::with_backend(Backend::Cpu).unwrap(),
    }
}

#[test]
fn matrix_and_json() {
    let tmp = Tmp::new("matrix");
    let mut rng = common::Rng::new(5);
    let (m, n, k) = (37, 23, 11);
    let p = common::rand_probs(&mut rng, m, k, 0.2);
    let q = common::rand_probs(&mut rng, n, k, 0.2);
    let pf = tmp.save("p.npy", m, k, &p);
    let qf = tmp.save("q.npy", n, k, &q);
    let out = tmp.path("d.npy");
    for backend in backends() {
        for (name, measure) in [
            ("js", Measure::Js),
            ("kl", Measure::Kl),
            ("cross-entropy", Measure::CrossEntropy),
            ("hellinger", Measure::Hellinger),
            ("total-variation", Measure::TotalVariation),
        ] {
            for (with_q, rows_per_band) in [(true, "5"), (false, "100")] {
                let mut args = vec![
                    "pairwise",
                    name,
                    "--p",
                    &pf,
                    "--out",
                    &out,
                    "--backend",
                    backend,
                    "--rows-per-band",
                    rows_per_band,
                ];
                if with_q {
                    args.extend(["--q", &qf]);
                }
                let (ok, stdout, stderr) = run(&args);
                assert!(ok, "{backend} {name}: {stderr}");
                let j: Value = serde_json::from_str(stdout.trim()).expect("json");
                let nn = if with_q { n } else { m };
                assert_eq!(j["measure"], measure.name());
                assert_eq!(j["backend"], backend);
                assert_eq!(j["rows"], m);
                assert_eq!(j["cols"], k);
                assert_eq!(j["q_rows"], nn);
                assert_eq!(j["reduction"], "none");
                assert_eq!(j["pairwise"], true);
                assert!(j.get("values").is_none());
                let (shape, d) = read::<f32>(&out);
                assert_eq!(shape, [m as u64, nn as u64]);
                let qb = Batch::new(&q, n, k);
                let want = ctx(backend)
                    .pairwise(
                        measure,
                        &Batch::new(&p, m, k),
                        with_q.then_some(&qb),
                        &PairwiseOptions::default(),
                    )
                    .unwrap();
                assert_eq!(bits(&d), bits(&want.values), "{backend} {name} q {with_q}");
            }
        }
    }
}

#[test]
fn top_k_writes_values_and_indices() {
    let tmp = Tmp::new("topk");
    let mut rng = common::Rng::new(6);
    let (m, k) = (30, 9);
    let p = common::rand_probs(&mut rng, m, k, 0.2);
    let pf = tmp.save("p.npy", m, k, &p);
    let (vf, idf) = (tmp.path("v.npy"), tmp.path("i.npy"));
    for backend in backends() {
        let (ok, stdout, stderr) = run(&[
            "pairwise",
            "js",
            "--p",
            &pf,
            "--top-k",
            "4",
            "--exclude-self",
            "--out",
            &vf,
            "--out-index",
            &idf,
            "--backend",
            backend,
        ]);
        assert!(ok, "{stderr}");
        let j: Value = serde_json::from_str(stdout.trim()).expect("json");
        assert_eq!(j["top_k"], 4);
        let (vs, v) = read::<f32>(&vf);
        let (is, i) = read::<u32>(&idf);
        assert_eq!((vs, is), (vec![m as u64, 4], vec![m as u64, 4]));
        let want = ctx(backend)
            .pairwise_top_k(
                Measure::Js,
                &Batch::new(&p, m, k),
                None,
                4,
                &PairwiseOptions::default().exclude_self(true),
            )
            .unwrap();
        assert_eq!(bits(&v), bits(&want.values));
        assert_eq!(i, want.indices);
    }
}

#[test]
fn errors_name_the_file_row_and_column() {
    let tmp = Tmp::new("errors");
    let mut rng = common::Rng::new(7);
    let (m, k) = (8, 5);
    let p = common::rand_probs(&mut rng, m, k, 0.0);
    let mut q = common::rand_probs(&mut rng, 4, k, 0.0);
    q[2 * k + 3] = f32::NAN;
    let pf = tmp.save("p.npy", m, k, &p);
    let qf = tmp.save("q.npy", 4, k, &q);
    let out = tmp.path("d.npy");
    for backend in backends() {
        let (ok, stdout, stderr) = run(&[
            "pairwise",
            "kl",
            "--p",
            &pf,
            "--q",
            &qf,
            "--out",
            &out,
            "--backend",
            backend,
        ]);
        assert!(!ok && stdout.is_empty());
        let last = stderr.lines().last().unwrap_or("");
        assert!(
            last.contains("q.npy") && last.contains("row 2") && last.contains("column 3"),
            "{last}"
        );
        assert!(
            !std::path::Path::new(&out).exists(),
            "nothing written on bad input"
        );
    }
    // a log base for a measure that takes none; --out naming an input
    let (ok, _, stderr) = run(&[
        "pairwise",
        "hellinger",
        "--p",
        &pf,
        "--base",
        "2",
        "--out",
        &out,
    ]);
    assert!(!ok && stderr.contains("not logarithmic"), "{stderr}");
    let (ok, _, stderr) = run(&["pairwise", "js", "--p", &pf, "--out", &pf]);
    assert!(!ok && stderr.contains("also an input"), "{stderr}");
    let (ok, _, _) = run(&["pairwise", "js", "--p", &pf, "--top-k", "3", "--out", &out]);
    assert!(!ok, "--top-k needs --out-index");
}

/// The per-row subcommands `hellinger` and `total-variation`: values as the
/// library's, `--base` refused (they are not logarithmic).
#[test]
fn per_row_hellinger_and_total_variation() {
    let tmp = Tmp::new("per-row");
    let mut rng = common::Rng::new(8);
    let (m, k) = (6, 9);
    let p = common::rand_probs(&mut rng, m, k, 0.2);
    let q = common::rand_probs(&mut rng, m, k, 0.2);
    let pf = tmp.save("p.npy", m, k, &p);
    let qf = tmp.save("q.npy", m, k, &q);
    for backend in backends() {
        for (name, measure) in [
            ("hellinger", Measure::Hellinger),
            ("total-variation", Measure::TotalVariation),
        ] {
            let (ok, stdout, stderr) = run(&[name, "--p", &pf, "--q", &qf, "--backend", backend]);
            assert!(ok, "{stderr}");
            let json: Value = serde_json::from_str(&stdout).expect("json");
            assert_eq!(json["measure"], name);
            let want = ctx(backend)
                .evaluate(
                    measure,
                    &Batch::new(&p, m, k),
                    Some(&Batch::new(&q, m, k)),
                    &Default::default(),
                )
                .expect("library");
            let got: Vec<f32> = json["values"]
                .as_array()
                .expect("values")
                .iter()
                .map(|v| v.as_f64().expect("number") as f32)
                .collect();
            assert_eq!(bits(&got), bits(&want.values), "{name} {backend}");
            let (ok, stdout, stderr) = run(&[name, "--p", &pf, "--q", &qf, "--base", "2"]);
            assert!(!ok && stdout.is_empty(), "{name}: --base 2 accepted");
            assert!(stderr.contains("not logarithmic"), "{stderr}");
        }
    }
}
