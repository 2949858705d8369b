"""The module's surface: backends(), Context, docs, threads and the GIL."""

import threading
import time

import numpy as np
import pytest

import kullback
from conftest import gpu_or_skip

rng = np.random.default_rng(11)


def rows(r, c):
    a = rng.random((r, c), dtype=np.float32) + np.float32(1e-3)
    return a / a.sum(1, keepdims=True, dtype=np.float64).astype(np.float32)


def test_backends():
    b = kullback.backends()
    assert set(b) == {"available", "gpu", "auto", "auto_adapter"}
    assert "cpu" in b["available"]
    assert b["auto"] in ("cpu", "gpu")
    assert ("gpu" in b["available"]) == (b["gpu"] is not None)
    if b["auto"] == "cpu":
        assert b["auto_adapter"] is None


def test_context(backend):
    ctx = kullback.Context(backend)
    assert ctx.backend == backend
    assert (ctx.adapter is not None) == (backend == "gpu")
    p, q = rows(8, 100), rows(8, 100)
    assert np.array_equal(ctx.kl(p, q), kullback.kl(p, q, backend=backend))
    assert ctx.nll(q, np.arange(8), reduction="sum") == kullback.nll(
        q, np.arange(8), reduction="sum", backend=backend)
    assert np.array_equal(ctx.js(p, q), kullback.js(p, q, context=ctx))
    ctx.trim()
    assert "Context(backend='%s'" % backend in repr(ctx)


def test_gpu_context_with_a_small_binding():
    """Chunked GPU path (bindings capped at 64 KiB) gives the same bits."""
    gpu_or_skip()
    small = kullback.Context("gpu", max_binding_bytes=64 * 1024, pool_bytes=1 << 20)
    p, q = rows(300, 200), rows(300, 200)
    assert np.array_equal(small.kl(p, q), kullback.kl(p, q, backend="gpu"))


def test_output_of_the_native_call():
    ctx = kullback.Context("cpu")._native
    out = ctx.nll(np.log(rows(4, 3)), [0, 1, -100, 2], "mean", None, "validate", 1e-3,
                  "log_probs", -100, np.array([1.0, 2.0, 0.5], np.float32), 0.0)
    assert out.counted == 3.5 and out.backend == "cpu" and out.adapter is None
    assert out.perplexity == pytest.approx(np.exp(out.values[0]), rel=1e-6)
    assert out.scalar and isinstance(out.result(), float)


def test_help_is_enough():
    for name in ("entropy", "cross_entropy", "kl", "js", "nll"):
        doc = getattr(kullback, name).__doc__
        for word in ("Parameters", "reduction", "base", "normalize", "backend", "Returns"):
            assert word in doc, (name, word)
        assert getattr(kullback.Context, name).__doc__ == doc
    assert "p_i = 0 is 0 whatever q_i is" in kullback.kl.__doc__
    assert "+inf" in kullback.cross_entropy.__doc__
    assert "ln 2" in kullback.js.__doc__
    assert "ignore_index" in kullback.nll.__doc__ and "label_smoothing" in kullback.nll.__doc__
    assert "axis is 0" in kullback.__doc__ and "0 ln 0 = 0" in kullback.entropy.__doc__
    assert "must not be modified while a call" in kullback.__doc__
    import inspect
    sig = inspect.signature(kullback.Context.kl)
    assert "backend" not in sig.parameters and "context" not in sig.parameters
    assert list(sig.parameters)[:3] == ["self", "p", "q"]


def test_the_gil_is_released_while_the_library_works(backend):
    """A Python thread keeps running while another thread is inside a long
    call: with the GIL held it could not run at all during the call."""
    p, q = rows(1024, 4096), rows(1024, 4096)
    ctx = kullback.Context(backend)
    ctx.kl(p, q)  # warm
    t0 = time.perf_counter()
    ctx.kl(p, q)
    one = time.perf_counter() - t0
    # a call of about 0.6 s, at most 32 copies (1 GiB in all): on a fast
    # machine an uncapped count tiled 20 GiB and the test was killed
    reps = max(1, min(int(0.6 / one), 32))
    pp, qq = np.tile(p, (reps, 1)), np.tile(q, (reps, 1))
    ticks, done = [], threading.Event()

    def count():
        while not done.is_set():
            ticks.append(time.perf_counter())

    counter = threading.Thread(target=count)
    counter.start()
    try:
        time.sleep(0.05)
        t0 = time.perf_counter()
        ctx.kl(pp, qq)
        t1 = time.perf_counter()
    finally:
        done.set()
        counter.join()
    inner = [t for t in ticks if t0 + 0.1 * (t1 - t0) < t < t1 - 0.1 * (t1 - t0)]
    assert len(inner) > 100, (len(inner), t1 - t0)


def test_threads_share_a_context(backend):
    """Several Python threads on one context at once: each gets its own answer."""
    ctx = kullback.Context(backend)
    data = [(rows(64, 500), rows(64, 500)) for _ in range(6)]
    want = [ctx.kl(p, q) for p, q in data]
    got = [None] * len(data)

    def work(i):
        for _ in range(3):
            got[i] = ctx.kl(*data[i])

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(data))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for g, w in zip(got, want):
        assert np.array_equal(g, w)
