#!/usr/bin/env python3
"""The CPU acceptance figures of issue 18: kullback's loss + gradient against
JAX jit `value_and_grad` on the same data (and PyTorch eager autograd where
installed), B x C float32 logits, as the median of rounds, each round timing
the peers and then kullback's bench (bench/train.rs) back to back on the
same files.

    python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install numpy jax optax torch
    cargo build --release --example train-bench
    /tmp/bench-venv/bin/python bench/train_acceptance.py [-B 4096 -C 32768] [--rounds 3]

distill: forward KL at T = 2, T^2 * mean_rows KL(softmax(t/T) || softmax(s/T)),
written plainly with jax.nn.log_softmax; nll: optax's
softmax_cross_entropy_with_integer_labels, mean. Each implementation's loss
and the L1 norm of its gradient are printed beside its time (a check that
they computed the same thing). kullback's peak RSS (ru_maxrss of its
process) is compared with inputs + gradient + 64 MiB.
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
BENCH = os.path.join(HERE, "..", "target", "release", "examples", "train-bench")

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("-B", type=int, default=4096)
ap.add_argument("-C", type=int, default=32768)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--repeat", type=int, default=1, help="timed calls per implementation per round (median)")
ap.add_argument("--modes", default="distill,nll")
ap.add_argument("--bench", default=BENCH)
A = ap.parse_args()

import numpy as np  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

T = 2.0
rng = np.random.default_rng(18)
s = (rng.standard_normal((A.B, A.C), dtype=np.float32) * np.float32(2.0))
t = s + rng.standard_normal((A.B, A.C), dtype=np.float32)
y = rng.integers(0, A.C, size=A.B, dtype=np.int64)
tmp = tempfile.mkdtemp(prefix="kullback-train-bench-")
paths = {k: os.path.join(tmp, f"{k}.npy") for k in ("s", "t", "y")}
np.save(paths["s"], s)
np.save(paths["t"], t)
np.save(paths["y"], y)


def jax_distill(sv, tv):
    lq = jax.nn.log_softmax(sv / T, axis=-1)
    lp = jax.nn.log_softmax(tv / T, axis=-1)
    return T * T * jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1))


def jax_nll(sv, yv):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(sv, yv))


jd = jax.jit(jax.value_and_grad(jax_distill))
jn = jax.jit(jax.value_and_grad(jax_nll))
js, jt, jy = jnp.asarray(s), jnp.asarray(t), jnp.asarray(y)


def timed(f, repeat):
    out = f()  # warm (compiles jax)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def run_jax(mode):
    if mode == "distill":
        f = lambda: jax.block_until_ready(jd(js, jt))
    else:
        f = lambda: jax.block_until_ready(jn(js, jy))
    sec, (v, g) = timed(f, A.repeat)
    return sec, float(v), float(jnp.sum(jnp.abs(g)))


def run_torch(mode):
    ts_, tt_ = torch.from_numpy(s), torch.from_numpy(t)
    ty = torch.from_numpy(y)

    def f():
        x = ts_.clone().requires_grad_(True)
        if mode == "distill":
            lq = torch.log_softmax(x / T, -1)
            lp = torch.log_softmax(tt_ / T, -1)
            loss = T * T * (lp.exp() * (lp - lq)).sum(-1).mean()
        else:
            loss = torch.nn.functional.cross_entropy(x, ty)
        loss.backward()
        return loss.item(), x.grad
    sec, (v, g) = timed(f, A.repeat)
    return sec, v, float(g.abs().sum())


def run_kullback(mode):
    cmd = [A.bench, "--mode", mode, "--student", paths["s"], "--repeat", str(A.repeat), "--temperature", str(T)]
    cmd += ["--teacher", paths["t"]] if mode == "distill" else ["--targets", paths["y"]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    j = json.loads(out.strip().splitlines()[-1])
    return j["median_s"], j["loss"], j["grad_l1"]


def kullback_rss(mode):
    """Peak RSS of a separate run, from /usr/bin/time (ru_maxrss of a child
    forked from this process would count the pages it shared with Python)."""
    cmd = ["/usr/bin/time", "-f", "maxrss_kb %M", A.bench, "--mode", mode, "--student", paths["s"], "--repeat", "1"]
    cmd += ["--teacher", paths["t"]] if mode == "distill" else ["--targets", paths["y"]]
    err = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    kb = next(int(x.split()[1]) for x in err.splitlines() if x.startswith("maxrss_kb"))
    return kb * 1024


elems = A.B * A.C
print(f"B={A.B} C={A.C} ({elems / 1e6:.0f} M elements), jax {jax.__version__}, optax {optax.__version__}, "
      f"torch {torch.__version__ if torch else 'absent'}, load {os.getloadavg()[0]:.2f}", flush=True)
for mode in A.modes.split(","):
    ratios = []
    for r in range(A.rounds):
        jsec, jv, jg = run_jax(mode)
        tsec = tv = tg = None
        if torch is not None:
            tsec, tv, tg = run_torch(mode)
        ksec, kv, kg = run_kullback(mode)
        ratios.append(jsec / ksec)
        line = (f"{mode:7s} round {r}: kullback {ksec:.3f} s ({elems / ksec / 1e9:.3f} G el/s, loss {kv:.6f}, |g|1 {kg:.6f}); "
                f"jax {jsec:.3f} s ({elems / jsec / 1e9:.3f} G el/s, loss {jv:.6f}, |g|1 {jg:.6f})")
        if tsec is not None:
            line += f"; torch {tsec:.3f} s (loss {tv:.6f}, |g|1 {tg:.6f})"
        print(line + f"; jax/kullback {jsec / ksec:.2f}, load {os.getloadavg()[0]:.2f}", flush=True)
    rss = kullback_rss(mode)
    inputs = s.nbytes + (t.nbytes if mode == "distill" else y.nbytes)
    bound = inputs + s.nbytes + (64 << 20)
    print(f"{mode:7s} median jax/kullback {statistics.median(ratios):.2f}; kullback peak RSS {rss / 2**20:.0f} MiB "
          f"(inputs + gradient + 64 MiB = {bound / 2**20:.0f} MiB: {'met' if rss <= bound else 'NOT met'})", flush=True)
