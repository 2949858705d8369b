//! Properties of the repository itself (issue 14 items 14 and 16): every GPU
//! test decides "GPU or skip" through the one helper of tests/common (which
//! fails under KULLBACK_REQUIRE_GPU=1), no test inside src/ makes a GPU
//! context (it could only skip silently), and nothing refers to files
//! outside the repository.

use std::path::{Path, PathBuf};

fn files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("dir") {
        let p = e.expect("entry").path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                files(&p, exts, out);
            }
        } else if exts.iter().any(|x| name.ends_with(x)) {
            out.push(p);
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn gpu_tests_go_through_the_one_helper() {
    let mut v = Vec::new();
    files(&root().join("tests"), &[".rs"], &mut v);
    for f in v {
        if f.ends_with("common/mod.rs") || f.ends_with("repository.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        // a GPU context whose failure is swallowed (a silent skip), or a
        // file reading the variable itself
        let swallowed = text
            .lines()
            .any(|l| l.contains("Backend::Gpu") && (l.contains(".ok()") || l.contains("let Ok(")));
        assert!(
            !swallowed && !text.contains("KULLBACK_REQUIRE_GPU\")"),
            "{}: decides GPU-or-skip itself; use tests/common (gpu, gpu_capped, gpu_device, gpu_or_skip)",
            f.display()
        );
    }
    let mut v = Vec::new();
    files(&root().join("src"), &[".rs"], &mut v);
    for f in v {
        let text = std::fs::read_to_string(&f).unwrap();
        if let Some(tests) = text.split("#[cfg(test)]").nth(1) {
            assert!(
                !tests.contains("with_backend(Backend::Gpu)")
                    && !tests.contains(".backend(Backend::Gpu)"),
                "{}: a GPU test inside src/ (move it to tests/)",
                f.display()
            );
        }
    }
}

#[test]
fn nothing_refers_outside_the_repository() {
    let mut v = Vec::new();
    files(
        &root(),
        &[".rs", ".md", ".py", ".toml", ".wgsl", "run"],
        &mut v,
    );
    let needle = ["..", "/shared"].concat();
    let needle2 = ["shared/", "conventions.md"].concat();
    for f in v {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        assert!(
            !text.contains(&needle) && !text.contains(&needle2),
            "{} refers outside the repository",
            f.display()
        );
    }
}
