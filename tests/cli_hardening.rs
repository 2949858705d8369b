//! The CLI under memory pressure, unwritable stdout and hostile inputs
//! (issue 14 items 2, 7, 8, 11 and 12), running the binary.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_kullback");

/// A fresh directory, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("kullback-clih-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A .npy file (version 1.0) with `descr`, `shape` and raw `data`, then
/// `sparse` bytes of zeros that take no disk (a hole).
fn npy(path: &Path, descr: &str, shape: &[u64], data: &[u8], sparse: u64) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(b"\x93NUMPY\x01\x00").unwrap();
    f.write_all(&(h.len() as u16).to_le_bytes()).unwrap();
    f.write_all(h.as_bytes()).unwrap();
    f.write_all(data).unwrap();
    if sparse > 0 {
        let len = f.metadata().unwrap().len();
        f.set_len(len + sparse).unwrap();
    }
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f64s(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The runtime dir Mesa's Vulkan WSI wants (without one it prints a line on
/// every adapter probe, which would read as output on stderr).
fn xdg() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR").map_or_else(
        || {
            let d = std::env::temp_dir().join("kullback-xdg");
            let _ = std::fs::create_dir_all(&d);
            d
        },
        PathBuf::from,
    )
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .env("XDG_RUNTIME_DIR", xdg())
        .args(args)
        .env_remove("KULLBACK_BACKEND")
        .output()
        .expect("run kullback")
}

/// `sh -c script` with the binary as $0's $B.
fn sh(script: &str) -> Output {
    Command::new("sh")
        .env("XDG_RUNTIME_DIR", xdg())
        .arg("-c")
        .arg(script)
        .env("B", BIN)
        .env_remove("KULLBACK_BACKEND")
        .output()
        .expect("run sh")
}

fn last_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

/// A failure: exit 1 (not a panic's 101 or an abort's signal), nothing on
/// stdout, a last stderr line `error: ...` holding every needle.
fn failed(o: &Output, needles: &[&str]) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "status {:?}; stderr {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let last = last_line(o);
    assert!(last.starts_with("error: "), "last line {last:?}");
    for n in needles {
        assert!(last.contains(n), "last line {last:?} lacks {n:?}");
    }
}

/// Item 2, CPU: a 4 GiB .npy under `ulimit -v` 2 GiB is an error naming the
/// file ("does not fit"), not an abort.
#[test]
fn a_file_larger_than_memory_is_an_error() {
    let t = Tmp::new("oom");
    let big = t.path("BIG.npy");
    npy(&big, "<f4", &[65536, 16384], &[], 65536 * 16384 * 4);
    let big64 = t.path("BIG64.npy");
    npy(&big64, "<f8", &[32768, 16384], &[], 32768 * 16384 * 8);
    for f in [&big, &big64] {
        let o = sh(&format!(
            "ulimit -v 2097152 && exec \"$B\" entropy --p '{}' --backend cpu",
            f.display()
        ));
        let name = f.file_name().unwrap().to_str().unwrap();
        failed(&o, &[name, "does not fit in memory"]);
    }
}

/// Item 2, GPU: under a few `ulimit -v` settings a 1 GiB input on the GPU
/// backend either runs or fails with a one-line error (never a panic or an
/// abort); at least one of them reports the memory that did not fit.
#[test]
fn gpu_out_of_memory_is_an_error() {
    if common::gpu().is_none() {
        return;
    }
    let t = Tmp::new("gpuoom");
    let mid = t.path("MID.npy");
    npy(&mid, "<f4", &[16384, 16384], &[], 16384 * 16384 * 4);
    let mut oom = 0;
    for kib in [2_500_000u64, 3_000_000, 3_500_000] {
        let o = sh(&format!(
            "ulimit -v {kib} && exec \"$B\" entropy --p '{}' --backend gpu",
            mid.display()
        ));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "ulimit {kib}: {err}");
        assert_eq!(
            o.status.code(),
            Some(1),
            "ulimit {kib}: {:?} {err}",
            o.status
        );
        let last = last_line(&o);
        assert!(
            last.starts_with("error: \"") && last.contains("MID.npy"),
            "{last}"
        );
        if last.contains("out of memory") || last.contains("does not fit") {
            oom += 1;
        }
    }
    assert!(oom > 0, "no setting ran out of memory");
}

/// Item 7: f64 class weights get the checked conversion of p and q.
#[test]
fn f64_weights_are_converted_with_checks() {
    let t = Tmp::new("weights");
    let q = t.path("Q.npy");
    npy(
        &q,
        "<f4",
        &[2, 3],
        &f32s(&[0.2, 0.3, 0.5, 0.1, 0.1, 0.8]),
        0,
    );
    let tg = t.path("T.npy");
    npy(
        &tg,
        "<i8",
        &[2],
        &[0i64, 2]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<_>>(),
        0,
    );
    let (tiny, huge) = (t.path("W_TINY.npy"), t.path("W_HUGE.npy"));
    npy(&tiny, "<f8", &[3], &f64s(&[1e-300, 1.0, 1.0]), 0);
    npy(&huge, "<f8", &[3], &f64s(&[1.0, 1e300, 1.0]), 0);
    for b in common::cli_backends() {
        let args = |w: &Path| {
            vec![
                "nll".to_string(),
                "--q".into(),
                q.display().to_string(),
                "--targets".into(),
                tg.display().to_string(),
                "--weights".into(),
                w.display().to_string(),
                "--reduction".into(),
                "mean".into(),
                "--backend".into(),
                b.into(),
            ]
        };
        let a = args(&tiny);
        let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
        failed(&o, &["W_TINY.npy", "column 0", "underflows to 0 in f32"]);
        let a = args(&huge);
        let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
        failed(&o, &["W_HUGE.npy", "column 1", "overflows in f32"]);
    }
}

fn pq(t: &Tmp) -> (String, String) {
    let p = t.path("P.npy");
    let q = t.path("Q.npy");
    npy(
        &p,
        "<f4",
        &[2, 3],
        &f32s(&[0.5, 0.5, 0.0, 0.9, 0.1, 0.0]),
        0,
    );
    npy(
        &q,
        "<f4",
        &[2, 3],
        &f32s(&[0.25, 0.25, 0.5, 0.5, 0.25, 0.25]),
        0,
    );
    (p.display().to_string(), q.display().to_string())
}

/// Item 8: a closed pipe ends quietly with success; a full disk is an error.
#[test]
fn unwritable_stdout() {
    let t = Tmp::new("stdout");
    let (p, q) = pq(&t);
    for b in common::cli_backends() {
        let o = sh(&format!(
            "exec \"$B\" kl --p '{p}' --q '{q}' --backend {b} > /dev/full"
        ));
        failed(&o, &["stdout", "cannot write"]);
        // the reader is gone before the binary writes
        let mut child = Command::new(BIN)
            .env("XDG_RUNTIME_DIR", xdg())
            .args(["kl", "--p", &p, "--q", &q, "--backend", b])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "{:?}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        // as in a shell pipeline
        let o = sh(&format!(
            "\"$B\" entropy --p '{p}' --backend {b} | head -c 5 >/dev/null; exit 0"
        ));
        assert!(
            o.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Item 11: every error is one last line that names the file.
#[test]
fn error_lines_name_the_file() {
    let t = Tmp::new("messages");
    let huge = t.path("HUGE.npy");
    npy(&huge, "<f4", &[1 << 40, 1 << 40], &[], 0);
    let o = run(&["entropy", "--p", huge.to_str().unwrap(), "--backend", "cpu"]);
    failed(&o, &["HUGE.npy", "too large"]);
    // a malformed header: the parser's multi-line message on one line
    let bad = t.path("BAD.npy");
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    let text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': }   \n";
    h.extend((text.len() as u16).to_le_bytes());
    h.extend(text);
    std::fs::write(&bad, &h).unwrap();
    let o = run(&["entropy", "--p", bad.to_str().unwrap(), "--backend", "cpu"]);
    failed(&o, &["BAD.npy", "not a readable .npy file"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim().lines().count(),
        1,
        "one line"
    );
    // a newline in a path stays inside the quoted name
    let nl = t.path("A\nB.npy");
    std::fs::write(&nl, b"junk").unwrap();
    let o = run(&["entropy", "--p", nl.to_str().unwrap(), "--backend", "cpu"]);
    failed(&o, &["A\\nB.npy\""]);
    // the NLL shape error speaks of targets and q
    let (_, q) = pq(&t);
    let tg = t.path("T3.npy");
    npy(
        &tg,
        "<i8",
        &[3],
        &[0i64, 1, 2]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<_>>(),
        0,
    );
    for b in common::cli_backends() {
        let o = run(&[
            "nll",
            "--q",
            &q,
            "--targets",
            tg.to_str().unwrap(),
            "--backend",
            b,
        ]);
        failed(&o, &["T3.npy", "3 targets", "Q.npy", "2 rows"]);
    }
    let ctx = common::cpu();
    let qv = [0.5f32, 0.5, 0.2, 0.8];
    let e = ctx
        .nll(
            &kullback::Batch::new(&qv, 2, 2),
            &[0i64, 1, 1][..],
            &Default::default(),
        )
        .expect_err("3 targets for 2 rows");
    let msg = e.to_string();
    assert!(
        msg.contains("3 targets") && msg.contains("q") && !msg.contains("p is"),
        "{msg}"
    );
}

/// Item 12: a pipe read as a stream, `--out` refusing an input, +0.0 on
/// every backend.
#[test]
fn small_cli_defects() {
    let t = Tmp::new("small");
    let (p, q) = pq(&t);
    for b in common::cli_backends() {
        let direct = run(&["kl", "--p", &p, "--q", &q, "--backend", b]);
        assert!(direct.status.success());
        let piped = sh(&format!(
            "cat '{p}' | exec \"$B\" kl --p /dev/stdin --q '{q}' --backend {b}"
        ));
        assert!(
            piped.status.success(),
            "{}",
            String::from_utf8_lossy(&piped.stderr)
        );
        assert_eq!(piped.stdout, direct.stdout);
        // --out equal to an input is refused and the input is untouched
        let before = std::fs::read(&q).unwrap();
        let o = run(&["kl", "--p", &p, "--q", &q, "--out", &q, "--backend", b]);
        failed(&o, &["Q.npy", "--out is also an input"]);
        assert_eq!(std::fs::read(&q).unwrap(), before);
        // the same file under another spelling
        let other = format!("{}/./Q.npy", t.0.display());
        let o = run(&["kl", "--p", &p, "--q", &q, "--out", &other, "--backend", b]);
        failed(&o, &["--out is also an input"]);
    }
    // +0.0: ignored NLL rows and a one-column cross-entropy
    let q1 = t.path("Q1.npy");
    npy(&q1, "<f4", &[2, 1], &f32s(&[1.0, 1.0]), 0);
    let tg = t.path("T.npy");
    npy(
        &tg,
        "<i8",
        &[2],
        &[0i64, -100]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<_>>(),
        0,
    );
    for b in common::cli_backends() {
        let q1s = q1.to_str().unwrap();
        for args in [
            vec![
                "nll",
                "--q",
                &q,
                "--targets",
                tg.to_str().unwrap(),
                "--ignore-index",
                "-100",
            ],
            vec!["cross-entropy", "--p", q1s, "--q", q1s],
            vec!["entropy", "--p", q1s],
        ] {
            let mut a = args.clone();
            a.extend(["--backend", b]);
            let o = run(&a);
            assert!(
                o.status.success(),
                "{a:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(!out.contains("-0"), "{a:?}: {out}");
        }
    }
}
