#!/usr/bin/env bash
# Every test of the repository, in one command (README's test line):
#   1. the Rust crate:  KULLBACK_REQUIRE_GPU=1 cargo test --release --all-features
#   2. the Python binding: a virtual environment made here (target/python-venv),
#      `pip install ./python[test]` (maturin builds the extension), a smoke call,
#      then pytest (python/tests), its GPU tests on the same adapter.
# KULLBACK_REQUIRE_GPU=1 throughout: a missing GPU adapter (lavapipe counts;
# `apt-get install mesa-vulkan-drivers`) fails the GPU tests instead of
# skipping them. Needs cargo and python3 (>= 3.9) with venv.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
export KULLBACK_REQUIRE_GPU=1
# one target dir for both builds: crates built with the same features are
# compiled once (wgpu itself is built twice: the Python build's features of
# num-traits, bitflags and log differ from the test build's)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# Mesa's Vulkan WSI complains on every adapter probe without one (harmless noise)
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
PYTHON="${PYTHON:-python3}"
VENV="$CARGO_TARGET_DIR/python-venv"

step() { printf '\n==> %s\n' "$*"; }

step "KULLBACK_REQUIRE_GPU=1 cargo test --release --all-features"
cargo test --release --all-features

step "Python: virtual environment $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV"; then
        rm -rf "$VENV"
        echo "error: '$PYTHON -m venv' failed; install Python's venv (Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
fi
"$VENV/bin/python" --version

step "Python: pip install ./python[test] (maturin builds the extension)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$ROOT/python[test]"
# run from outside python/ so that the installed package is the one imported
(cd "$ROOT" && "$VENV/bin/python" -c 'import kullback; print(kullback.kl([[0.5, 0.5]], [[0.9, 0.1]]))')

step "Python: pytest python/tests"
set +e
"$VENV/bin/python" -m pytest -p no:cacheprovider "$ROOT/python/tests"
rc=$?
set -e
case $rc in
    0) ;;
    5) echo "error: pytest collected no tests" >&2; exit 1 ;;
    *) echo "error: pytest failed (exit $rc)" >&2; exit "$rc" ;;
esac
step "all tests passed"
