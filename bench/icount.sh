#!/usr/bin/env bash
# Instructions per element of the CPU path, repeatable where seconds are not.
#
# AVX2 (and the baseline): valgrind --tool=callgrind counts the instructions
# executed inside Context::evaluate / Context::nll (the whole call: planning,
# kernels, finalize, records) for two calls of the bench on one core, divided
# by the elements of the two calls. Valgrind hides AVX-512 from CPUID (and
# cannot run EVEX code), so AVX-512 is counted statically: the instructions of
# the hot loop of each fast512 kernel in the disassembly, divided by the
# elements one trip of the loop handles (16), with llvm-mca's estimate of its
# cycles per trip on an AVX-512 core beside it.
#
#   cargo build --release --example bench
#   bash bench/icount.sh [path/to/bench]    # needs valgrind, objdump, llvm-mca
set -euo pipefail
BENCH=${1:-target/release/examples/bench}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

count() { # isa measure rows cols
    local f="$OUT/cg.$1.$2.$3x$4"
    KULLBACK_CPU_ISA=$1 taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$f" \
        --toggle-collect='kullback::context::Context::evaluate' \
        --toggle-collect='kullback::context::Context::nll' \
        "$BENCH" --measure "$2" --rows "$3" --cols "$4" --backend cpu --warmup 1 --repeat 1 \
        >/dev/null 2>&1
    local ir
    ir=$(grep -m1 '^summary:' "$f" | awk '{print $2}')
    awk -v ir="$ir" -v n="$(( 2 * $3 * $4 ))" -v isa="$1" -v m="$2" -v s="$3x$4" \
        'BEGIN { printf "%-8s %-10s %-12s %6.2f instructions/element\n", isa, m, s, ir / n }'
}

echo "# measured: callgrind, whole call (2 calls), one core"
for isa in avx2 baseline; do
    for m in kl ce entropy ce_logits; do
        count "$isa" "$m" 256 4096
    done
    count "$isa" kl 65536 16
    count "$isa" kl 4 262144
done

echo "# static: AVX-512 hot loops (instructions per trip / 16 elements), llvm-mca cycles per trip"
python3 - "$BENCH" <<'PY'
import re, subprocess, sys
bench = sys.argv[1]
asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-M", "intel", "-C", bench],
                     capture_output=True, text=True).stdout
funcs, cur = {}, None
for ln in asm.splitlines():
    m = re.match(r"^([0-9a-f]+) <(.*)>:$", ln)
    if m:
        cur = m.group(2); funcs[cur] = []; continue
    m = re.match(r"^\s+([0-9a-f]+):\s+(.*)$", ln)
    if m and cur is not None:
        funcs[cur].append((int(m.group(1), 16), m.group(2).strip()))
def loops(body):
    # backward jumps: (start, end) address ranges, innermost first by size
    out = []
    for i, (a, ins) in enumerate(body):
        m = re.match(r"^j\w+\s+([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) < a:
            t = int(m.group(1), 16)
            out.append([x for x in body if t <= x[0] <= a])
    return out
for name in ("fast512::segment", "fast512::lse", "fast512::kl", "fast512::cross", "fast512::entropy", "fast::segment", "fast::kl", "fast::cross", "fast::entropy", "fast::lse"):
    for fn, body in funcs.items():
        if name not in fn or "::{{closure}}" in fn:
            continue
        for lp in loops(body):
            if not any("zmm" in i or "ymm" in i for _, i in lp):
                continue
            text = "\n".join(i for _, i in lp)
            mca = subprocess.run(["llvm-mca", "-mcpu=skylake-avx512", "-iterations=200", "--x86-asm-syntax=intel"],
                                 input=".intel_syntax noprefix\n" + re.sub(r"<[^>]*>", "", re.sub(r"\s+#.*", "", text)) + "\n",
                                 capture_output=True, text=True).stdout
            cyc = re.search(r"Block RThroughput:\s+([\d.]+)", mca)
            wide = "zmm" in text
            print(f"{fn[:60]:60s} loop of {len(lp):3d} instructions ({'zmm' if wide else 'ymm'}), "
                  f"llvm-mca {cyc.group(1) if cyc else '?'} cycles/trip")
PY
