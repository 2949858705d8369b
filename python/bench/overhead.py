#!/usr/bin/env python3
"""What the Python binding adds to a call: kullback.kl from Python against the
same call from Rust (the project's benchmark, bench/bench.rs), on the very same
float32 data, in alternating rounds of the same run.

    cargo build --release --example bench          # from the repository root
    pip install ./python                           # into the Python that runs this
    python python/bench/overhead.py                # both cases below, cpu backend

Cases (issue 19): a 1 x 1,000 KL call, median of 1,000 calls on each side
(target: Python within 20 us of Rust), and 4096 x 4096 (target: within 10%),
each as the median of per-round medians over alternating rounds (Rust, then
Python, on the same data). One JSON line per round and a summary on stdout.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import kullback

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", "..", "target", "release", "examples", "bench")

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--backend", default="cpu", help="cpu, gpu or auto (both sides)")
ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per case")
ap.add_argument("--bench", default=BENCH, help="the built benchmark (cargo build --release --example bench)")
ap.add_argument("--cases", default="small,large", help="small (1 x 1000), large (4096 x 4096)")
A = ap.parse_args()

CASES = {  # name: rows, cols, timed calls per side and round, warm-up calls
    "small": (1, 1000, 1000, 100),
    "large": (4096, 4096, 7, 2),
}


def make(rows, cols, seed=20261205):
    rng = np.random.default_rng(seed)

    def dist():
        a = rng.random((rows, cols), dtype=np.float32) + np.float32(2.0 ** -24)
        a /= a.sum(axis=1, dtype=np.float64, keepdims=True).astype(np.float32)
        return a

    return dist(), dist()


def rust(tmp, rows, cols, repeat, warmup):
    cmd = [A.bench, "--measure", "kl", "--rows", str(rows), "--cols", str(cols), "--backend", A.backend,
           "--repeat", str(repeat), "--warmup", str(warmup), "--data", tmp,
           "--values-out", os.path.join(tmp, "values.f32"), "--json"]
    cp = subprocess.run(cmd, capture_output=True, text=True)
    if cp.returncode != 0:
        sys.exit("%s failed: %s" % (" ".join(cmd), cp.stderr.strip()))
    row = json.loads(cp.stdout.strip().splitlines()[-1])
    return float(row["median_s"]), np.fromfile(os.path.join(tmp, "values.f32"), dtype=np.float32)


def python(p, q, repeat, warmup):
    be = A.backend
    for _ in range(warmup):
        kullback.kl(p, q, backend=be)
    ts = []
    clock = time.perf_counter_ns
    for _ in range(repeat):
        t0 = clock()
        out = kullback.kl(p, q, backend=be)
        ts.append(clock() - t0)
    return statistics.median(ts) * 1e-9, np.atleast_1d(out)


def main():
    summary = {}
    for name in A.cases.split(","):
        rows, cols, repeat, warmup = CASES[name]
        p, q = make(rows, cols)
        rs, ps = [], []
        with tempfile.TemporaryDirectory(prefix="kullback-overhead-") as tmp:
            p.tofile(os.path.join(tmp, "p.f32"))
            q.tofile(os.path.join(tmp, "q.f32"))
            for r in range(A.rounds):
                r_s, r_vals = rust(tmp, rows, cols, repeat, warmup)
                p_s, p_vals = python(p, q, repeat, warmup)
                assert np.array_equal(r_vals.view(np.uint32), p_vals.view(np.uint32)), \
                    "Rust and Python disagree"
                rs.append(r_s)
                ps.append(p_s)
                print(json.dumps({"case": name, "round": r, "rows": rows, "cols": cols,
                                  "backend": A.backend, "rust_median_s": r_s,
                                  "python_median_s": p_s}), flush=True)
        r_med, p_med = statistics.median(rs), statistics.median(ps)
        summary[name] = {"rows": rows, "cols": cols, "calls_per_round": repeat, "rounds": A.rounds,
                         "rust_median_s": r_med, "python_median_s": p_med,
                         "difference_us": (p_med - r_med) * 1e6, "ratio": p_med / r_med}
    print(json.dumps({"summary": summary, "backend": A.backend, "python": sys.version.split()[0],
                      "kullback": kullback.__version__}), flush=True)
    for name, s in summary.items():
        print("%-5s %5d x %-5d rust %10.3f us   python %10.3f us   diff %+8.3f us   ratio %.3f"
              % (name, s["rows"], s["cols"], s["rust_median_s"] * 1e6, s["python_median_s"] * 1e6,
                 s["difference_us"], s["ratio"]), file=sys.stderr)


if __name__ == "__main__":
    main()
