#!/usr/bin/env python3
"""All pairs: kullback beside SciPy, JAX and NumPy on the same data.

Times, in each of --rounds rounds and back to back on the very same seeded
float32 P [M, K] and Q [N, K]:
  scipy-cdist-js   scipy.spatial.distance.cdist(P, Q, 'jensenshannon') (float64
                   inside; it returns the square root: squared for the check)
  jax-bcast-js     JAX jit of the broadcast JS over [M, N, K]
  jax-mm-kl        JAX jit of the matrix-product KL, sum(P log P) - P @ log(Q).T
  numpy-mm-kl      the same with NumPy (float32 sgemm)
  numpy-bcast-js   NumPy broadcast JS in float32, a block of rows at a time
  kullback-<m>     bench/pairwise.rs (`cargo build --release --example
                   pairwise_bench`) for js, kl and cross-entropy (ce)
and checks every result against a float64 reference computed from the same
float32 inputs: the worst error in units of the crate's bound (abs 2e-6 + rel
2e-5; at most 1 passes) and the worst absolute error. Reports the median over
rounds of each implementation's time, as pair-elements (M*N*K) per second;
one JSON line per implementation on stdout, a table on stderr.

    python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install numpy scipy 'jax[cpu]'
    cargo build --release --example pairwise_bench
    /tmp/bench-venv/bin/python bench/pairwise.py -M 1000 -N 1000 -K 256 --rounds 3

--data dirichlet:ALPHA draws rows from Dirichlet(ALPHA) (ALPHA 100 over 256
columns: KL about 0.01 between any two rows, where the matrix-product forms
cancel worst); the default draws uniform(0, 1) + 2^-24 rows. Peers missing
from the environment are skipped with a note.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", "target", "release", "examples", "pairwise_bench")

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("-M", type=int, default=1000)
ap.add_argument("-N", type=int, default=1000)
ap.add_argument("-K", type=int, default=256)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--data", default="uniform", help="uniform, or dirichlet:ALPHA")
ap.add_argument("--seed", type=int, default=20261207)
ap.add_argument("--backend", default="cpu", help="kullback's backend: cpu, gpu or auto")
ap.add_argument("--measures", default="js,kl,ce", help="kullback's measures (js, kl, ce, hellinger, tv)")
ap.add_argument("--skip", default="", help="comma list of peers to leave out")
ap.add_argument("--bench", default=BENCH)
A = ap.parse_args()

import numpy as np  # noqa: E402

np.seterr(all="ignore")
M, N, K = A.M, A.N, A.K
WORK = M * N * K
SKIP = set(filter(None, A.skip.split(",")))


def note(msg):
    print(msg, file=sys.stderr)


def make_data():
    rng = np.random.default_rng(A.seed)

    def rows(r):
        if A.data.startswith("dirichlet:"):
            x = rng.dirichlet(np.full(K, float(A.data.split(":")[1])), size=r)
        else:
            x = rng.random((r, K)) + 2.0 ** -24
        x = x / x.sum(axis=1, keepdims=True)
        return x.astype(np.float32)

    return rows(M), rows(N)


P, Q = make_data()
P64, Q64 = P.astype(np.float64), Q.astype(np.float64)


def ref_kl():
    lp, lq = np.log(P64), np.log(Q64)
    return (P64 * lp).sum(1)[:, None] - P64 @ lq.T


def ref_js(block=64):
    out = np.empty((M, N))
    for r0 in range(0, M, block):
        p = P64[r0:r0 + block, None, :]
        q = Q64[None, :, :]
        m = 0.5 * (p + q)
        out[r0:r0 + block] = 0.5 * (p * np.log(p / m)).sum(-1) + 0.5 * (q * np.log(q / m)).sum(-1)
    return out


# float64 references: the matrix-product form is exact enough in float64
# (cancellation costs ~1e-15 there), JS from its definition
REF = {"kl": ref_kl(), "js": ref_js()}
REF["ce"] = -(P64 @ np.log(Q64).T)
REF["hellinger"] = 0.5 * ((np.sqrt(P64)[:, None, :] - np.sqrt(Q64)[None, :, :]) ** 2).sum(-1) if M * N * K <= 1 << 27 else None
REF["tv"] = None


def check(name, got, measure):
    ref = REF.get(measure)
    if ref is None:
        return None, None
    got = np.asarray(got, dtype=np.float64).reshape(M, N)
    err = np.abs(got - ref)
    return float((err / (2e-6 + 2e-5 * np.abs(ref))).max()), float(err.max())


IMPLS = []  # (name, measure, fn) where fn() -> (seconds, result)


def timed(fn):
    def run():
        t = time.perf_counter()
        r = fn()
        return time.perf_counter() - t, r
    return run


if "scipy" not in SKIP:
    try:
        from scipy.spatial.distance import cdist

        IMPLS.append(("scipy-cdist-js", "js", timed(lambda: cdist(P, Q, "jensenshannon") ** 2)))
    except ImportError:
        note("note: scipy not installed: skipped")

if "jax" not in SKIP:
    try:
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", False)

        from jax.scipy.special import rel_entr

        @jax.jit
        def jax_js(p, q):
            # rel_entr: twice as fast here as p * log(p / m) written out
            p3, q3 = p[:, None, :], q[None, :, :]
            m = 0.5 * (p3 + q3)
            return 0.5 * jnp.sum(rel_entr(p3, m) + rel_entr(q3, m), -1)

        @jax.jit
        def jax_kl(p, q):
            return jnp.sum(p * jnp.log(p), 1)[:, None] - p @ jnp.log(q).T

        jp, jq = jnp.asarray(P), jnp.asarray(Q)
        jax_js(jp, jq).block_until_ready()  # compile outside the timings
        jax_kl(jp, jq).block_until_ready()
        IMPLS.append(("jax-bcast-js", "js", timed(lambda: np.asarray(jax_js(jp, jq).block_until_ready()))))
        IMPLS.append(("jax-mm-kl", "kl", timed(lambda: np.asarray(jax_kl(jp, jq).block_until_ready()))))
    except ImportError:
        note("note: jax not installed: skipped")

if "numpy" not in SKIP:
    def np_kl():
        return (P * np.log(P)).sum(1, dtype=np.float32)[:, None] - P @ np.log(Q).T

    def np_js(block=32):
        out = np.empty((M, N), dtype=np.float32)
        q = Q[None, :, :]
        for r0 in range(0, M, block):
            p = P[r0:r0 + block, None, :]
            m = np.float32(0.5) * (p + q)
            out[r0:r0 + block] = np.float32(0.5) * ((p * np.log(p / m)).sum(-1) + (q * np.log(q / m)).sum(-1))
        return out

    IMPLS.append(("numpy-mm-kl", "kl", timed(np_kl)))
    IMPLS.append(("numpy-bcast-js", "js", timed(np_js)))

tmp = tempfile.mkdtemp(prefix="kullback-pairwise-")
P.tofile(os.path.join(tmp, "p.f32"))
Q.tofile(os.path.join(tmp, "q.f32"))
have_bench = os.path.exists(A.bench)
if not have_bench:
    note(f"note: {A.bench} not found (cargo build --release --example pairwise_bench): kullback skipped")


def kullback(measure):
    out = os.path.join(tmp, f"d-{measure}.f32")

    def run():
        cmd = [A.bench, "--measure", measure, "-M", str(M), "-N", str(N), "-K", str(K),
               "--data", tmp, "--backend", A.backend, "--repeat", "1", "--warmup", "1",
               "--out", out, "--json"]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        j = json.loads(line)
        return j["median_s"], np.fromfile(out, dtype=np.float32)
    return run


if have_bench:
    for m in filter(None, A.measures.split(",")):
        IMPLS.append((f"kullback-{m}", m, kullback(m)))

times = {name: [] for name, _, _ in IMPLS}
errors = {}
for rnd in range(A.rounds):
    for name, measure, fn in IMPLS:
        s, r = fn()
        times[name].append(s)
        if name not in errors:
            errors[name] = check(name, r, measure)
    note(f"round {rnd + 1}/{A.rounds} done")

load = os.getloadavg()
rows = []
for name, measure, _ in IMPLS:
    med = statistics.median(times[name])
    bound, abs_err = errors[name]
    rec = {
        "impl": name,
        "measure": measure,
        "shape": [M, N, K],
        "data": A.data,
        "median_s": med,
        "runs_s": times[name],
        "pair_elem_per_s": WORK / med,
        "max_err_in_bounds": bound,
        "max_abs_err": abs_err,
        "loadavg": load,
    }
    print(json.dumps(rec))
    rows.append(rec)

note(f"\n{M} x {N} x {K}, data {A.data}, {A.rounds} rounds, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
note(f"{'implementation':<22}{'median ms':>11}{'G pair-elem/s':>15}{'worst err / bound':>19}{'max abs err':>13}")
for r in rows:
    b = "-" if r["max_err_in_bounds"] is None else f"{r['max_err_in_bounds']:.3f}"
    a = "-" if r["max_abs_err"] is None else f"{r['max_abs_err']:.2e}"
    note(f"{r['impl']:<22}{r['median_s'] * 1e3:>11.2f}{r['pair_elem_per_s'] / 1e9:>15.3f}{b:>19}{a:>13}")
