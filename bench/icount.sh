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

echo "# static: the vector loops of each hand-written kernel (instructions a trip; the pointer"
echo "# step gives the elements a trip: 0x10 = 16 f32 indices, 0x40 bytes = 16 f32, ...),"
echo "# with llvm-mca's cycles a trip (skylake-avx512 for zmm loops, znver3 for ymm loops)"
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
names = ["fast512::kl", "fast512::cross", "fast512::entropy", "fast512::lse",
         "fast::kl", "fast::cross", "fast::entropy", "fast::lse",
         # short rows: every loop of the row kernels (one per unrolled width;
         # the 16-column row loop is the one with one vdivps and no mask)
         "short512::kl_rows", "fast::kl_rows"]
for name in names:
    for fn, body in funcs.items():
        if not fn.endswith(name):
            continue
        for a, ins in body:
            m = re.match(r"^j\w+\s+([0-9a-f]+)", ins)
            if not m or int(m.group(1), 16) >= a:
                continue
            t = int(m.group(1), 16)
            txt = [i for x, i in body if t <= x <= a]
            regs = sorted(set(re.findall(r"\b([xyz]mm)\d+", " ".join(txt))))
            if "ymm" not in regs and "zmm" not in regs:
                continue
            steps = [i for i in txt if re.match(r"^(add|inc)\s", i)]
            cpu = "skylake-avx512" if "zmm" in regs else "znver3"
            src = ".intel_syntax noprefix\n" + "\n".join(re.sub(r"<[^>]*>|#.*", "", i) for i in txt) + "\n"
            mca = subprocess.run(["llvm-mca", "-mcpu=" + cpu, "-iterations=300"], input=src,
                                 capture_output=True, text=True).stdout
            cyc = re.search(r"Block RThroughput:\s+([\d.]+)", mca)
            print(f"{name:18s} {len(txt):4d} instructions a trip, steps {steps}, "
                  f"{cpu} {cyc.group(1) if cyc else '?'} cycles a trip")
PY
