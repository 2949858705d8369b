#!/usr/bin/env bash
# The GPU check: one command, on a Linux x86-64 machine with a GPU and no
# network, that runs the GPU tests against the real adapter, the benchmarks of
# the speed acceptance (with the device's read and upload bandwidth measured in
# the same run) and PyTorch on the same data, and writes one JSON file.
#
#   bash bench/gpu-check.sh build        # here: prebuilt binaries into .gpu-check/ (git-ignored)
#   bash bench/gpu-check.sh run [OUT]    # there, from the repository root: OUT (gpu-check.json)
#
# The machine there needs python3 with numpy (and torch with CUDA for the
# comparison; without it those lines say "skipped"), a Vulkan driver, and the
# Vulkan loader: if `ldconfig -p` has no libvulkan, the .deb files under .gl/
# are unpacked first (see README, "GPU check"). GPU_CHECK_SMALL=1 runs small
# shapes (a software adapter here: lavapipe proves the script, never speed).
# The CLI test binaries are not run there: they find the CLI at the path it
# was built at.
set -u
mode=${1:-run}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dir=.gpu-check

build() {
    set -e
    rm -rf "$dir" && mkdir -p "$dir/tests"
    cargo build --release --example bench --example pairwise_bench --example train-bench
    cp target/release/examples/bench "$dir/bench"
    cp target/release/examples/pairwise_bench "$dir/pairwise_bench"
    cp target/release/examples/train-bench "$dir/train-bench"
    cargo test --release --all-features --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        # the unit tests of the library and of the CLI share the name "kullback"
        # (no apostrophes in here: this program is a single-quoted shell word)
        print(m["target"]["kind"][0] + "-" + m["target"]["name"], m["executable"])
' | while read -r name exe; do
        case $name in test-cli*) continue ;; esac
        cp "$exe" "$dir/tests/$name"
    done
    local n
    n=$(ls "$dir/tests" | wc -l)
    echo "test binaries: $n"
    if [ "$n" -eq 0 ]; then
        echo "gpu-check: no test binary was found in cargo's output" >&2
        exit 1
    fi
}

run() {
    local out=${1:-gpu-check.json}
    local work
    if ! python3 -c 'import numpy' 2>/dev/null; then
        echo "gpu-check: python3 has no numpy (put a Python with numpy first on PATH)" >&2
        exit 2
    fi
    if [ ! -x "$dir/bench" ]; then
        echo "gpu-check: no $dir/bench; run 'bash bench/gpu-check.sh build' first" >&2
        exit 2
    fi
    work=$(mktemp -d)
    if ! ldconfig -p 2>/dev/null | grep -q libvulkan && ls .gl/*.deb >/dev/null 2>&1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    export KULLBACK_REQUIRE_GPU=1 KULLBACK_TEST_DATA="$root/tests/data" RUST_LOG=warn
    # 1. the test binaries against the adapter (a missing adapter fails every GPU test)
    : >"$work/tests.jsonl"
    for t in "$dir"/tests/*; do
        local name log rc
        name=$(basename "$t")
        log="$work/test-$name.log"
        timeout 120 "$t" >"$log" 2>&1
        rc=$?
        python3 - "$name" "$rc" "$log" >>"$work/tests.jsonl" <<'PY'
import json, re, sys
name, rc, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
text = open(log, errors="replace").read()
m = re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text)
passed, failed, ignored = (sum(int(x[i]) for x in m) for i in range(3))
fails = re.findall(r"^test (\S+) \.\.\. FAILED", text, re.M)
print(json.dumps({"test_binary": name, "rc": rc, "passed": passed, "failed": failed,
                  "ignored": ignored, "failures": fails, "timed_out": rc in (124, 137)}))
PY
    done
    # 2. the same data for kullback and PyTorch
    local kl_rows=4096 kl_cols=4096 nll_rows=4096 nll_cols=128000
    if [ "${GPU_CHECK_SMALL:-0}" = 1 ]; then
        kl_rows=256 kl_cols=4096 nll_rows=64 nll_cols=128000
    fi
    python3 - "$work" "$kl_rows" "$kl_cols" "$nll_rows" "$nll_cols" <<'PY'
import os, sys
import numpy as np
work, kr, kc, nr, nc = sys.argv[1], *map(int, sys.argv[2:])
rng = np.random.default_rng(20261207)
os.makedirs(f"{work}/kl", exist_ok=True)
os.makedirs(f"{work}/nll", exist_ok=True)
for name in ("p", "q"):
    x = rng.random((kr, kc), dtype=np.float32) + np.float32(1e-3)
    (x / x.sum(1, keepdims=True)).astype(np.float32).tofile(f"{work}/kl/{name}.f32")
rng.standard_normal((nr, nc), dtype=np.float32).__imul__(2).tofile(f"{work}/nll/logits.f32")
rng.integers(0, nc, nr, dtype=np.int64).tofile(f"{work}/nll/targets.i64")
PY
    : >"$work/bench.jsonl"
    ./"$dir/bench" --gpu-probe >>"$work/bench.jsonl" 2>>"$work/bench.err"
    ./"$dir/bench" --measure kl --rows $kl_rows --cols $kl_cols --backend gpu --data "$work/kl" --json \
        >>"$work/bench.jsonl" 2>>"$work/bench.err"
    ./"$dir/bench" --measure nll-logits --rows $nll_rows --cols $nll_cols --backend gpu --data "$work/nll" --json \
        >>"$work/bench.jsonl" 2>>"$work/bench.err"
    # all pairs (issue 17's shapes): kl and js, M = N, K = 256
    local pw=4096
    if [ "${GPU_CHECK_SMALL:-0}" = 1 ]; then pw=256; fi
    for m in kl js; do
        ./"$dir/pairwise_bench" --measure $m -M $pw -N $pw -K 256 --backend gpu --repeat 5 --json \
            >>"$work/bench.jsonl" 2>>"$work/bench.err"
    done
    python3 bench/torch_gpu.py "$work/kl" $kl_rows $kl_cols kl >>"$work/bench.jsonl" 2>>"$work/bench.err"
    python3 bench/torch_gpu.py "$work/nll" $nll_rows $nll_cols nll-logits >>"$work/bench.jsonl" 2>>"$work/bench.err"
    # loss and gradient (issue 18's shapes, B = 4,096, C = 32,768): GPU-resident
    # (f32 and bf16 gradients; timed by encoder timestamps where the adapter
    # has them) and from host slices, dense and sparse teachers, and
    # PyTorch's backward
    local tr_rows=4096 tr_cols=32768
    if [ "${GPU_CHECK_SMALL:-0}" = 1 ]; then tr_rows=64; fi
    mkdir -p "$work/train"
    python3 - "$work/train" $tr_rows $tr_cols <<'PY'
import sys
import numpy as np
d, r, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(20261208)
np.save(f"{d}/student.npy", (rng.standard_normal((r, c), dtype=np.float32) * 2))
np.save(f"{d}/teacher.npy", (rng.standard_normal((r, c), dtype=np.float32) * 2))
np.save(f"{d}/targets.npy", rng.integers(0, c, r, dtype=np.int64))
PY
    local tr="$work/train"
    for b in resident gpu; do
        for g in f32 bf16; do
            if [ $b = gpu ] && [ $g = bf16 ]; then continue; fi
            ./"$dir/train-bench" --backend $b --grad $g --mode distill --student "$tr/student.npy" \
                --teacher "$tr/teacher.npy" --repeat 5 >>"$work/bench.jsonl" 2>>"$work/bench.err"
            ./"$dir/train-bench" --backend $b --grad $g --mode nll --student "$tr/student.npy" \
                --targets "$tr/targets.npy" --repeat 5 >>"$work/bench.jsonl" 2>>"$work/bench.err"
        done
        # a sparse teacher: its top 64 (sorted in workgroup memory) and top
        # 1,024 (sorted in the call's scratch) with the tail bucket
        for k in 64 1024; do
            ./"$dir/train-bench" --backend $b --mode sparse --top $k --student "$tr/student.npy" \
                --teacher "$tr/teacher.npy" --repeat 5 >>"$work/bench.jsonl" 2>>"$work/bench.err"
        done
    done
    python3 bench/torch_gpu.py "$tr" $tr_rows $tr_cols nll-grad >>"$work/bench.jsonl" 2>>"$work/bench.err"
    python3 bench/torch_gpu.py "$tr" $tr_rows $tr_cols distill >>"$work/bench.jsonl" 2>>"$work/bench.err"
    # 3. one file
    python3 - "$work" "$out" <<'PY'
import json, platform, sys
work, out = sys.argv[1], sys.argv[2]
def lines(p):
    try:
        return [json.loads(l) for l in open(p) if l.strip().startswith("{")]
    except FileNotFoundError:
        return []
tests = lines(f"{work}/tests.jsonl")
doc = {
    "host": platform.node(), "machine": platform.machine(),
    "tests": tests,
    "tests_passed": sum(t["passed"] for t in tests),
    "tests_failed": sum(t["failed"] for t in tests) + sum(1 for t in tests if t["rc"] and not t["failed"]),
    "bench": lines(f"{work}/bench.jsonl"),
    "bench_stderr": open(f"{work}/bench.err", errors="replace").read()[-4000:],
}
# issue 17's bounds: all-pairs kl / cross-entropy as a fraction of the f32 FMA
# peak (one FMA per pair-element), js of the log rate (one log per
# pair-element), both peaks measured by `bench --gpu-probe` in this run. The
# pairwise figures are end-to-end from host slices (pairwise_bench's median).
probe = next((b for b in doc["bench"] if b.get("probe") == "gpu" and "fma_g_per_s" in b), None)
doc["pairwise_vs_peaks"] = []
for b in doc["bench"]:
    if "pair_elem_per_s" not in b or probe is None:
        continue
    row = {"measure": b.get("measure"), "backend": b.get("backend"), "pair_elem_g_per_s": b["pair_elem_per_s"] / 1e9}
    if b.get("measure") in ("kl", "cross-entropy") and probe["fma_g_per_s"] > 0:
        row["fraction_of_fma_peak"] = b["pair_elem_per_s"] / 1e9 / probe["fma_g_per_s"]
    if b.get("measure") == "js" and probe["log_g_per_s"] > 0:
        row["fraction_of_log_rate"] = b["pair_elem_per_s"] / 1e9 / probe["log_g_per_s"]
    doc["pairwise_vs_peaks"].append(row)
# issue 18's bound: a GPU-resident loss and gradient's bytes (each input read
# twice, the gradient written once) per second as a fraction of the device's
# read bandwidth measured by the probe in this run
doc["train_vs_read_bw"] = []
for b in doc["bench"]:
    if b.get("backend") == "resident" and probe is not None and probe.get("read_gbps"):
        doc["train_vs_read_bw"].append({
            "mode": b["mode"], "top": b.get("top"), "grad": b["grad"],
            "timing": b.get("timing"), "gbps": b["gbps"],
            "fraction_of_read_bw": b["gbps"] / probe["read_gbps"]})
json.dump(doc, open(out, "w"), indent=1)
print(f"{out}: {doc['tests_passed']} tests passed, {doc['tests_failed']} failed; {len(doc['bench'])} bench lines")
for r in doc["pairwise_vs_peaks"]:
    print("pairwise", r)
for r in doc["train_vs_read_bw"]:
    print("train", r)
PY
}

case $mode in
build) build ;;
run) run "${2:-gpu-check.json}" ;;
*) echo "usage: $0 build | run [OUT.json]" >&2; exit 2 ;;
esac
