#!/usr/bin/env python3
"""The CPU acceptance figures of issue 16: kullback's CPU backend against JAX
jit (XLA CPU) on the same data, as the median of rounds, each round one run of
compare.py (JAX timed, then kullback's bench, back to back on the same data).

    /tmp/bench-venv/bin/python bench/acceptance.py [--rounds 3] [--bench PATH] [--only kl:4096x4096,...]

Prints one line per round and a summary per shape (median ratio, the load
average before and after). Timings on a shared machine move 2x within minutes:
only the ratios inside a round are compared.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = [
    ("kl", 4096, 4096, 1.5),
    ("ce", 4096, 4096, 1.5),
    ("entropy", 4096, 4096, 1.5),
    ("ce_logits", 4096, 4096, 1.5),
    ("kl", 1_000_000, 16, 1.3),
    ("kl", 64, 1_000_000, 1.3),
]

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--repeat", type=int, default=7)
ap.add_argument("--bench", default=None, help="kullback's bench binary (compare.py's default otherwise)")
ap.add_argument("--only", default="", help="comma list of measure:BxN")
A = ap.parse_args()


def load():
    return os.getloadavg()[0]


summary = []
for measure, rows, cols, want in SHAPES:
    if A.only and f"{measure}:{rows}x{cols}" not in A.only.split(","):
        continue
    ratios, l0 = [], load()
    for r in range(A.rounds):
        cmd = [sys.executable, os.path.join(HERE, "compare.py"), "-B", str(rows), "-N", str(cols),
               "--measure", measure, "--repeat", str(A.repeat), "--peers", "jax", "--seed", str(20261205 + r)]
        if A.bench:
            cmd += ["--bench", A.bench]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
        k = next((x for x in lines if x["impl"].startswith("kullback")), None)
        j = next((x for x in lines if x["impl"].startswith("jax")), None)
        if k is None or j is None:
            print(out.stderr, file=sys.stderr)
            sys.exit(f"round {r} of {measure} {rows}x{cols}: no result")
        ratio = j["median_s"] / k["median_s"]
        ratios.append(ratio)
        print(f"{measure:9s} {rows}x{cols} round {r}: kullback {k['elem_per_s'] / 1e9:.3f} G/s, "
              f"jax {j['elem_per_s'] / 1e9:.3f} G/s, ratio {ratio:.2f}, kullback max abs err "
              f"{k['max_abs_err']:.1e}, load {load():.2f}", flush=True)
    med = statistics.median(ratios)
    summary.append((measure, rows, cols, med, want, l0, load()))
print()
for measure, rows, cols, med, want, l0, l1 in summary:
    print(f"{measure:9s} {rows:>9d} x {cols:<9d} median ratio {med:.2f} (need {want}): "
          f"{'met' if med >= want else 'NOT met'}; load {l0:.2f} -> {l1:.2f}")
