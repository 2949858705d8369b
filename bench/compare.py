#!/usr/bin/env python3
"""kullback beside the libraries a user would pick instead, on the same data.

Times NumPy, SciPy, JAX (jit, XLA CPU), where installed PyTorch (CPU) and
kullback's own Python binding (kullback_py: `pip install ./python`) on
per-row kl, ce (cross-entropy), entropy or ce_logits (NLL of integer targets
under log_softmax(logits)) of a row-major [B, N] float32 batch, and runs
kullback's benchmark (bench/bench.rs) on the very same inputs. Every result is
checked against a float64 NumPy reference computed from the same float32
inputs. Prints one JSON line per implementation on stdout (a table on stderr).

    python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install numpy scipy 'jax[cpu]'
    cargo build --release --example bench
    /tmp/bench-venv/bin/python bench/compare.py -B 4096 -N 4096 --measure kl --repeat 7

Peers missing from the environment are skipped with a note. Timings on a
shared machine move 2x within minutes: compare inside one run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

MEASURES = ("kl", "ce", "entropy", "ce_logits")
PEERS = ("numpy", "scipy", "jax", "torch", "kullback_py")
HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", "target", "release", "examples", "bench")

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--rows", "-B", type=int, required=True)
ap.add_argument("--cols", "-N", type=int, required=True)
ap.add_argument("--measure", choices=MEASURES, required=True)
ap.add_argument("--repeat", type=int, default=7, help="timed runs (median reported)")
ap.add_argument("--warmup", type=int, default=2, help="untimed runs first (jax compiles outside them)")
ap.add_argument("--seed", type=int, default=20261205)
ap.add_argument("--peers", default=",".join(PEERS), help="comma list from " + ",".join(PEERS))
ap.add_argument("--backend", default="cpu", help="kullback's backend: cpu, gpu or auto")
ap.add_argument("--bench", default=BENCH, help="path of the built benchmark (cargo build --release --example bench)")
A = ap.parse_args()

import numpy as np  # noqa: E402

np.seterr(all="ignore")
TINY = float(np.finfo(np.float32).tiny)


def make_data():
    rng = np.random.default_rng(A.seed)
    B, N = A.rows, A.cols
    if A.measure == "ce_logits":
        x = rng.standard_normal((B, N), dtype=np.float32) * np.float32(2.0)
        return {"logits": x, "targets": rng.integers(0, N, size=B, dtype=np.int64)}

    def dist():
        a = rng.random((B, N), dtype=np.float32) + np.float32(2.0 ** -24)
        a /= a.sum(axis=1, dtype=np.float64, keepdims=True).astype(np.float32)
        return a

    d = {"p": dist()}
    if A.measure in ("kl", "ce"):
        d["q"] = dist()
    return d


def reference(d, chunk=1 << 24):
    key = "logits" if A.measure == "ce_logits" else "p"
    B, N = d[key].shape
    out = np.empty(B)
    step = max(1, chunk // N)
    for r0 in range(0, B, step):
        r1 = min(B, r0 + step)
        if A.measure == "ce_logits":
            x = d["logits"][r0:r1].astype(np.float64)
            m = x.max(axis=1)
            lse = m + np.log(np.exp(x - m[:, None]).sum(axis=1))
            out[r0:r1] = lse - x[np.arange(r1 - r0), d["targets"][r0:r1]]
            continue
        p = d["p"][r0:r1].astype(np.float64)
        lp = np.log(np.where(p > 0, p, 1.0))
        if A.measure == "entropy":
            out[r0:r1] = -(p * lp).sum(axis=1)
        else:
            lq = np.log(d["q"][r0:r1].astype(np.float64))
            out[r0:r1] = (p * (lp - lq)).sum(axis=1) if A.measure == "kl" else -(p * lq).sum(axis=1)
    return out


def input_bytes():
    n = A.rows * A.cols
    return {"kl": 8 * n, "ce": 8 * n, "entropy": 4 * n, "ce_logits": 4 * n + 8 * A.rows}[A.measure]


def peer_numpy(d):
    import numpy
    if A.measure == "kl":
        p, q = d["p"], d["q"]

        def fn():
            t = np.divide(p, q)
            np.maximum(t, TINY, out=t)  # p = 0: p * log(tiny) = 0
            np.log(t, out=t)
            t *= p
            return t.sum(axis=1)
    elif A.measure == "ce":
        p, q = d["p"], d["q"]

        def fn():
            t = np.log(q)
            t *= p
            return -t.sum(axis=1)
    elif A.measure == "entropy":
        p = d["p"]

        def fn():
            t = np.maximum(p, TINY)
            np.log(t, out=t)
            t *= p
            return -t.sum(axis=1)
    else:
        x, tg = d["logits"], d["targets"]
        rows = np.arange(x.shape[0])

        def fn():
            m = x.max(axis=1, keepdims=True)
            e = np.exp(x - m)
            return np.log(e.sum(axis=1)) + m[:, 0] - x[rows, tg]
    return fn, "numpy " + numpy.__version__


def peer_scipy(d):
    import scipy
    import scipy.special as sp
    if A.measure == "kl":
        fn = lambda: sp.rel_entr(d["p"], d["q"]).sum(axis=1)  # noqa: E731
    elif A.measure == "ce":
        fn = lambda: -sp.xlogy(d["p"], d["q"]).sum(axis=1)  # noqa: E731
    elif A.measure == "entropy":
        fn = lambda: sp.entr(d["p"]).sum(axis=1)  # noqa: E731
    else:
        rows = np.arange(A.rows)
        fn = lambda: sp.logsumexp(d["logits"], axis=1) - d["logits"][rows, d["targets"]]  # noqa: E731
    return fn, "scipy " + scipy.__version__


def peer_jax(d):
    import jax
    import jax.numpy as jnp
    dev = jax.devices("cpu")[0]
    if A.measure == "ce_logits":
        args = (jax.device_put(d["logits"], dev), jax.device_put(d["targets"].astype(np.int32), dev))
    else:
        args = tuple(jax.device_put(d[k], dev) for k in ("p", "q") if k in d)
    f = {
        "kl": lambda p, q: jnp.sum(p * jnp.log(jnp.maximum(p / q, TINY)), axis=1),
        "ce": lambda p, q: -jnp.sum(p * jnp.log(q), axis=1),
        "entropy": lambda p: -jnp.sum(p * jnp.log(jnp.maximum(p, TINY)), axis=1),
        "ce_logits": lambda x, t: jax.nn.logsumexp(x, axis=1)
        - jnp.take_along_axis(x, t[:, None], axis=1)[:, 0],
    }[A.measure]
    compiled = jax.jit(f).lower(*args).compile()
    return (lambda: compiled(*args).block_until_ready()), "jax " + jax.__version__ + " (jit, XLA CPU)"


def peer_torch(d):
    import torch
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    if A.measure == "ce_logits":
        x, t = torch.from_numpy(d["logits"]), torch.from_numpy(d["targets"])
        f = lambda: torch.logsumexp(x, 1) - x.gather(1, t[:, None])[:, 0]  # noqa: E731
    else:
        p = torch.from_numpy(d["p"])
        q = torch.from_numpy(d["q"]) if "q" in d else None
        f = {
            "kl": lambda: torch.special.xlogy(p, p / q).sum(1),
            "ce": lambda: -torch.special.xlogy(p, q).sum(1),
            "entropy": lambda: torch.special.entr(p).sum(1),
        }[A.measure]

    def fn():
        with torch.inference_mode():
            return f().numpy()
    return fn, "torch " + torch.__version__


def peer_kullback_py(d):
    """The Python binding of this repository (python/), on kullback's backend."""
    import kullback
    be = A.backend
    if A.measure == "ce_logits":
        x, t = d["logits"], d["targets"]
        fn = lambda: kullback.nll(x, t, q_form="logits", backend=be)  # noqa: E731
    else:
        call = {"kl": kullback.kl, "ce": kullback.cross_entropy, "entropy": kullback.entropy}[A.measure]
        args = tuple(d[k] for k in ("p", "q") if k in d)
        fn = lambda: call(*args, backend=be)  # noqa: E731
    return fn, "kullback-py %s (%s)" % (kullback.__version__, be)


def timed(fn):
    out = None
    for _ in range(A.warmup):
        out = fn()
    ts = []
    for _ in range(A.repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return ts, out


def errors(out, ref):
    out = np.asarray(out, dtype=np.float64).reshape(-1)
    if out.shape != ref.shape or not np.all(np.isfinite(out)):
        return float("inf"), float("inf")
    d = np.abs(out - ref)
    return float(d.max()), float((d / np.maximum(np.abs(ref), 1e-30)).max())


def run_kullback(d, tmp):
    for k, v in d.items():
        name = {"p": "p.f32", "q": "q.f32", "logits": "logits.f32", "targets": "targets.i64"}[k]
        v.tofile(os.path.join(tmp, name))
    vals = os.path.join(tmp, "values.f32")
    cmd = [A.bench, "--measure", A.measure, "--rows", str(A.rows), "--cols", str(A.cols),
           "--backend", A.backend, "--repeat", str(A.repeat), "--warmup", str(A.warmup),
           "--data", tmp, "--values-out", vals, "--json"]
    cp = subprocess.run(cmd, capture_output=True, text=True)
    if cp.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), cp.stderr.strip()))
    row = json.loads(cp.stdout.strip().splitlines()[-1])
    return row, np.fromfile(vals, dtype=np.float32)


def main():
    d = make_data()
    ref = reference(d)
    nbytes = input_bytes()
    elems = A.rows * A.cols
    rows = []

    def emit(impl, median_s, min_s, out, extra=None):
        abs_err, rel_err = errors(out, ref)
        row = {"impl": impl, "measure": A.measure, "rows": A.rows, "cols": A.cols,
               "median_s": median_s, "min_s": min_s, "elem_per_s": elems / median_s,
               "gbps": nbytes / median_s / 1e9, "max_abs_err": abs_err, "max_rel_err": rel_err}
        row.update(extra or {})
        rows.append(row)
        print(json.dumps(row), flush=True)

    with tempfile.TemporaryDirectory(prefix="kullback-compare-") as tmp:
        r, out = run_kullback(d, tmp)
        extra = {k: r[k] for k in ("backend", "adapter", "bw_gbps", "bw_isa", "bw_ratio") if k in r}
        emit(r["impl"], r["median_s"], r["min_s"], out, extra)
    for name in [p for p in A.peers.split(",") if p]:
        try:
            fn, impl = globals()["peer_" + name](d)
        except ImportError as e:
            print("note: %s skipped (%s)" % (name, e), file=sys.stderr)
            continue
        ts, out = timed(fn)
        emit(impl, statistics.median(ts), min(ts), out)
    print("%-34s %10s %12s %9s %10s" % ("impl", "median ms", "G elem/s", "GB/s", "max abs"), file=sys.stderr)
    for r in rows:
        print("%-34s %10.2f %12.3f %9.2f %10.2e" % (r["impl"][:34], r["median_s"] * 1e3,
              r["elem_per_s"] / 1e9, r["gbps"], r["max_abs_err"]), file=sys.stderr)


if __name__ == "__main__":
    main()
