"""Training calls (nll_grad, distill): loss and gradient against an
independent float64 NumPy reference of the formulas in src/train/mod.rs, on
the CPU and (conftest's ``backend``) the GPU; and their errors."""

import numpy as np
import pytest

import kullback

rng = np.random.default_rng(2024)

ROWS, COLS = 7, 50


def logits(rows=ROWS, cols=COLS, scale=3.0):
    return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)


# ---------------------------------------------------------------------------
# The reference: float64 from the float32 values the library reads.


def log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def reduce_ref(losses, grads, reduction, count):
    """Per-row losses and gradients of those losses (rows not counted are 0)
    → the call's loss and gradient."""
    if reduction == "none":
        return losses, grads
    if reduction == "sum":
        return losses.sum(), grads
    return losses.sum() / count, grads / count


def nll_ref(z, t, *, eps=0.0, w=None, ignore_index=None, reduction="none", base=None):
    z = np.asarray(z, np.float64)
    rows, cols = z.shape
    w = np.ones(cols) if w is None else np.asarray(w, np.float64)
    lq = log_softmax(z)
    losses, grads, count = np.zeros(rows), np.zeros((rows, cols)), 0.0
    for i in range(rows):
        if ignore_index is not None and t[i] == ignore_index:
            continue
        p = eps * w / cols
        p[t[i]] += (1 - eps) * w[t[i]]
        losses[i] = -(p * lq[i]).sum()
        grads[i] = p.sum() * np.exp(lq[i]) - p
        count += w[t[i]]
    loss, grad = reduce_ref(losses, grads, reduction, count)
    ln = 1.0 if base is None else np.log(base)
    return loss / ln, grad / ln


def kl_rows(a, la, lb):
    """sum_c a (ln a - ln b) per row, 0 where a = 0."""
    return np.where(a > 0, a * (la - lb), 0.0).sum(-1, keepdims=True)


def distill_ref(s, t, *, divergence="forward-kl", beta=0.5, T=1.0, mask=None,
                reduction="none"):
    """Loss, student gradient and teacher gradient of the dense formulas."""
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    lq, lp = log_softmax(s / T), log_softmax(t / T)
    q, p = np.exp(lq), np.exp(lp)
    if divergence == "forward-kl":
        kl = kl_rows(p, lp, lq)
        loss, gs, gt = T * T * kl, T * (q - p), T * p * (lp - lq - kl)
    elif divergence == "reverse-kl":
        kl = kl_rows(q, lq, lp)
        loss, gs, gt = T * T * kl, T * q * (lq - lp - kl), T * (p - q)
    else:
        m = beta * p + (1 - beta) * q
        lm = np.log(m)
        kp, kq = kl_rows(p, lp, lm), kl_rows(q, lq, lm)
        loss = T * T * (beta * kp + (1 - beta) * kq)
        gs = T * (1 - beta) * q * (lq - lm - kq)
        gt = T * beta * p * (lp - lm - kp)
    loss = loss[:, 0]
    keep = np.ones(len(s), bool) if mask is None else np.asarray(mask, bool)
    loss, gs, gt = loss * keep, gs * keep[:, None], gt * keep[:, None]
    count = keep.sum()
    out, gs = reduce_ref(loss, gs, reduction, count)
    _, gt = reduce_ref(loss, gt, reduction, count)
    return out, gs, gt


def coarse_ref(s, idx, lt, *, divergence="forward-kl", beta=0.5, T=1.0, tail="bucket",
               mask=None, reduction="none"):
    """A sparse teacher: the divergence between the (k + 1)-bucket coarsenings
    (tail='bucket') or the renormalised k columns, with the gradient by the
    chain rule through the student's softmax: for a loss L(Q~) of bucket
    masses Q~_b, dL/du_c = q_c (dL/dQ~_b(c) - sum_b Q~_b dL/dQ~_b), u = s/T."""
    s = np.asarray(s, np.float64)
    rows, cols = s.shape
    lq = log_softmax(s / T)
    keep = np.ones(rows, bool) if mask is None else np.asarray(mask, bool)
    losses, grads = np.zeros(rows), np.zeros((rows, cols))
    for i in range(rows):
        if not keep[i]:
            continue
        ix = np.asarray(idx[i], np.int64)
        pk = np.exp(np.asarray(lt[i], np.float64))
        qi = np.exp(lq[i])
        out = np.ones(cols, bool)
        out[ix] = False
        if tail == "bucket":
            P = np.append(pk, max(0.0, 1.0 - pk.sum()))
            Q = np.append(qi[ix], qi[out].sum())
            qcol = qi
        else:
            P = pk / pk.sum()
            Q = qi[ix] / qi[ix].sum()
            qcol = np.zeros(cols)
            qcol[ix] = Q
        if divergence == "forward-kl":
            loss = (P * (np.log(P) - np.log(Q))).sum()
            g = -P / Q
        elif divergence == "reverse-kl":
            loss = (Q * (np.log(Q) - np.log(P))).sum()
            g = np.log(Q) - np.log(P) + 1
        else:
            M = beta * P + (1 - beta) * Q
            loss = beta * (P * np.log(P / M)).sum() + (1 - beta) * (Q * np.log(Q / M)).sum()
            g = (1 - beta) * np.log(Q / M)
        gcol = np.full(cols, g[-1] if tail == "bucket" else 0.0)
        gcol[ix] = g[: len(ix)]
        losses[i] = T * T * loss
        grads[i] = T * qcol * (gcol - (Q * g).sum())
    return reduce_ref(losses, grads, reduction, keep.sum())


# ---------------------------------------------------------------------------
# Comparisons: losses within abs 2e-6 + rel 2e-5; gradients per row
# ||g - g_ref||_1 <= 1e-4 ||g_ref||_1 + 1e-6.


def close_loss(got, want):
    if np.ndim(want) == 0:
        assert isinstance(got, float), type(got)
    else:
        assert got.dtype == np.float32 and got.shape == np.shape(want)
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.abs(got - want)
    assert np.all(err <= 2e-6 + 2e-5 * np.abs(want)), (got, want)


def close_grad(got, want, shape):
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == shape
    assert got.flags.c_contiguous and got.flags.writeable and got.flags.owndata
    g = np.asarray(got, np.float64).reshape(-1, shape[-1])
    w = np.asarray(want, np.float64).reshape(-1, shape[-1])
    err = np.abs(g - w).sum(-1)
    bound = 1e-4 * np.abs(w).sum(-1) + 1e-6
    assert np.all(err <= bound), (err, bound)


# ---------------------------------------------------------------------------
# nll_grad


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_nll_grad(backend, reduction):
    z = logits()
    t = rng.integers(0, COLS, ROWS)
    loss, grad = kullback.nll_grad(z, t, reduction=reduction, backend=backend)
    want, gwant = nll_ref(z, t, reduction=reduction)
    close_loss(loss, want)
    close_grad(grad, gwant, z.shape)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_nll_grad_ignore_index_weights_smoothing(backend, reduction):
    z = logits()
    t = rng.integers(0, COLS, ROWS)
    t[[1, 4]] = -100
    w = rng.uniform(0.2, 2.0, COLS).astype(np.float32)
    ctx = kullback.Context(backend)
    loss, grad = ctx.nll_grad(z, t, reduction=reduction, ignore_index=-100, weight=w,
                              label_smoothing=0.1)
    want, gwant = nll_ref(z, t, eps=0.1, w=w, ignore_index=-100, reduction=reduction)
    close_loss(loss, want)
    close_grad(grad, gwant, z.shape)
    assert not grad[[1, 4]].any()
    # the loss is nll's
    same = kullback.nll(z, t, q_form="logits", reduction=reduction, ignore_index=-100,
                        weight=w, label_smoothing=0.1, context=ctx)
    close_loss(loss, same)


def test_nll_grad_base_and_one_row(backend):
    z = logits(1, 9)[0]
    loss, grad = kullback.nll_grad(z, 3, base=2, backend=backend)
    want, gwant = nll_ref(z[None], [3], base=2)
    close_loss(loss, want[0])
    close_grad(grad, gwant[0], z.shape)


# ---------------------------------------------------------------------------
# distill, dense teacher


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("divergence,beta", [("forward-kl", 0.5), ("reverse-kl", 0.5),
                                             ("jsd", 0.3), ("jsd", 0.5)])
def test_distill_dense(backend, divergence, beta, reduction):
    s, t = logits(), logits()
    mask = np.array([1, 1, 0, 1, 0, 1, 1], bool)
    loss, gs, gt = kullback.distill(s, t, divergence=divergence, beta=beta, temperature=2.0,
                                    mask=mask, reduction=reduction, teacher_grad=True,
                                    backend=backend)
    want, gswant, gtwant = distill_ref(s, t, divergence=divergence, beta=beta, T=2.0,
                                       mask=mask, reduction=reduction)
    close_loss(loss, want)
    close_grad(gs, gswant, s.shape)
    close_grad(gt, gtwant, t.shape)
    assert not gs[~mask].any() and not gt[~mask].any()
    # without the teacher's gradient: the same loss and student gradient, bit for bit
    loss2, gs2 = kullback.distill(s, t, divergence=divergence, beta=beta, temperature=2.0,
                                  mask=mask, reduction=reduction, backend=backend)
    assert np.array_equal(loss2, loss) and np.array_equal(gs2, gs)


def test_distill_teacher_log_probs_and_one_row(backend):
    s, t = logits(1, 30)[0], logits(1, 30)[0]
    lt = log_softmax(t).astype(np.float32)
    ctx = kullback.Context(backend)
    loss, gs = ctx.distill(s, lt, teacher_form="log_probs", divergence="reverse_kl",
                           temperature=1.5)
    want, gswant, _ = distill_ref(s[None], lt[None], divergence="reverse-kl", T=1.5)
    close_loss(loss, want[0])
    close_grad(gs, gswant[0], s.shape)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_distill_dtypes(backend, dtype):
    if dtype == "bfloat16":
        dt = pytest.importorskip("ml_dtypes").bfloat16
    else:
        dt = np.dtype(dtype)
    s, t = logits().astype(dt), logits().astype(dt)
    # the values the library reads: float32 (float64 through a checked conversion)
    s32, t32 = s.astype(np.float32), t.astype(np.float32)
    loss, gs = kullback.distill(s, t, temperature=2.0, reduction="mean", backend=backend)
    want, gswant, _ = distill_ref(s32, t32, T=2.0, reduction="mean")
    close_loss(loss, want)
    close_grad(gs, gswant, s.shape)


def test_distill_mask_as_uint8_and_ints(backend):
    s, t = logits(), logits()
    m = np.array([0, 1, 1, 0, 1, 1, 1], np.uint8)
    want, gswant, _ = distill_ref(s, t, mask=m, reduction="mean")
    for mask in (m, m.astype(np.int64) * 3, list(m.astype(bool))):
        loss, gs = kullback.distill(s, t, mask=mask, reduction="mean", backend=backend)
        close_loss(loss, want)
        close_grad(gs, gswant, s.shape)


# ---------------------------------------------------------------------------
# distill, sparse (top-k) teacher


def top_k(t, k, T):
    """The teacher's k most likely columns per row (in random order) and ln p_T there."""
    lp = log_softmax(np.asarray(t, np.float64) / T)
    idx = np.argsort(-lp, axis=-1)[:, :k]
    idx = np.array([rng.permutation(r) for r in idx])
    return idx, np.take_along_axis(lp, idx, -1).astype(np.float32)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("divergence,beta", [("forward-kl", 0.5), ("reverse-kl", 0.5),
                                             ("jsd", 0.3)])
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_distill_sparse(backend, divergence, beta, tail, reduction):
    s, t = logits(), logits()
    idx, lt = top_k(t, 8, 2.0)
    mask = np.array([1, 0, 1, 1, 1, 0, 1], bool)
    for ix in (idx.astype(np.int64), idx.astype(np.int32), idx.astype(np.uint32),
               idx.astype(np.int16)):
        loss, gs = kullback.distill(s, teacher_indices=ix, teacher_logprobs=lt,
                                    divergence=divergence, beta=beta, temperature=2.0, tail=tail,
                                    mask=mask, reduction=reduction, backend=backend)
        want, gswant = coarse_ref(s, idx, lt, divergence=divergence, beta=beta, T=2.0,
                                  tail=tail, mask=mask, reduction=reduction)
        close_loss(loss, want)
        close_grad(gs, gswant, s.shape)


def test_distill_sparse_f64_logprobs_and_one_row(backend):
    s, t = logits(1, 40), logits(1, 40)
    idx, lt = top_k(t, 5, 1.0)
    loss, gs = kullback.distill(s[0], teacher_indices=idx[0],
                                teacher_logprobs=lt[0].astype(np.float64), backend=backend)
    want, gswant = coarse_ref(s, idx, lt)
    close_loss(loss, want[0])
    close_grad(gs, gswant[0], (40,))


def test_training_calls_are_context_methods():
    import inspect
    for name in ("nll_grad", "distill"):
        assert getattr(kullback.Context, name).__doc__ == getattr(kullback, name).__doc__
        sig = inspect.signature(getattr(kullback.Context, name))
        assert "backend" not in sig.parameters and "context" not in sig.parameters
        assert name in kullback.__all__
    assert "teacher_grad" in kullback.distill.__doc__
    assert "label_smoothing" in kullback.nll_grad.__doc__


# ---------------------------------------------------------------------------
# Errors: ValueError naming the keyword argument, the crate's message after it.


def raises(match, fn, *args, exc=ValueError, **kwargs):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


def test_distill_errors(backend):
    s, t = logits(2, 5), logits(2, 5)
    d = kullback.Context(backend).distill
    raises(r"^teacher, student: shape mismatch: p is 3 x 5, q is 2 x 5", d, s, logits(3, 5))
    raises(r"^teacher, student: shape mismatch", d, s, logits(2, 6))
    raises(r"^mask: mask holds 3 values, but its shape 2 x 1 needs 2", d, s, t,
           mask=[True, False, True])
    raises(r"^beta: invalid option: β = 0: use forward-kl", d, s, t, divergence="jsd", beta=0.0)
    raises(r"^beta: invalid option: β = 1: use reverse-kl", d, s, t, divergence="jsd", beta=1.0)
    raises(r"^beta: invalid option: β must be in \(0, 1\)", d, s, t, divergence="jsd",
           beta=1.5)
    d(s, t, divergence="forward-kl", beta=0.0)  # β is the JSD's only
    raises(r"^temperature: invalid option: the temperature must be finite and > 0", d, s, t,
           temperature=0.0)
    bad = s.copy()
    bad[1, 3] = np.nan
    raises(r"^student: q row 1, column 3: NaN", d, bad, t)
    raises(r"^teacher: p row 1, column 3: NaN", d, s, bad)
    inf = s.copy()
    inf[0, 2] = -np.inf
    raises(r"^row 0, column 2: the loss is infinite", d, inf, t)
    raises(r"^teacher_form must be 'logits' or 'log_probs', got 'probs'", d, s, t,
           teacher_form="probs")
    raises(r"^divergence must be 'forward-kl', 'reverse-kl' or 'jsd', got 'kl'", d, s, t,
           divergence="kl")
    raises(r"^tail must be 'bucket' or 'renormalize'", d, s, t, tail="drop")
    raises(r"^student must be 1-D .* got shape \[1, 2, 5\]", d, s[None], t)
    raises(r"^mask must be bool or integer", d, s, t, mask=[0.5, 1.0], exc=TypeError)
    raises(r"^give teacher, or teacher_indices with teacher_logprobs, not both", d, s, t,
           teacher_indices=[[0], [1]], teacher_logprobs=[[-1.0], [-1.0]])
    raises(r"^distill needs a teacher", d, s)
    raises(r"^a sparse teacher needs both", d, s, teacher_indices=[[0], [1]])


def test_distill_sparse_errors(backend):
    s = logits(2, 5)
    d = kullback.Context(backend).distill
    ix = np.array([[0, 1], [2, 3]])
    lp = np.log(np.full((2, 2), 0.3, np.float32))
    raises(r"^unsupported: a gradient with respect to the teacher needs a dense teacher "
           r"\(teacher=\.\.\.,", d, s, teacher_indices=ix, teacher_logprobs=lp, teacher_grad=True)
    raises(r"^teacher_indices: teacher indices row 1, position 0: index 9", d, s,
           teacher_indices=[[0, 1], [9, 3]], teacher_logprobs=lp)
    raises(r"^teacher_indices: teacher indices row 0, position 1", d, s,
           teacher_indices=[[0, 0], [2, 3]], teacher_logprobs=lp)
    raises(r"^teacher_indices, teacher_logprobs: the indices have shape \[2, 2\] but the "
           r"log-probabilities \[2, 3\]", d, s, teacher_indices=ix,
           teacher_logprobs=np.zeros((2, 3), np.float32) - 2)
    raises(r"^teacher_indices: teacher indices holds 6 values, but its shape 2 x 2 needs 4", d,
           s, teacher_indices=np.zeros((3, 2), np.int64) + [0, 1],
           teacher_logprobs=np.zeros((3, 2), np.float32) - 2)
    raises(r"^teacher_indices: invalid option: a sparse teacher needs 1 <= k <= 5", d, s,
           teacher_indices=np.zeros((2, 6), np.int64), teacher_logprobs=np.zeros((2, 6)) - 9)
    raises(r"^teacher_logprobs: p row 0", d, s, teacher_indices=ix,
           teacher_logprobs=np.log(np.full((2, 2), 0.6, np.float32)))
    raises(r"^teacher_indices must be integer class indices", d, s, teacher_indices=ix * 1.0,
           teacher_logprobs=lp, exc=TypeError)


def test_nll_grad_errors(backend):
    z = logits(3, 4)
    g = kullback.Context(backend).nll_grad
    raises(r"^logits, targets: 2 targets, but q", g, z, [0, 1])
    raises(r"^targets: targets row 1: class 4 is outside \[0, 4\)", g, z, [0, 4, 1])
    raises(r"^label_smoothing: invalid option", g, z, [0, 1, 2], label_smoothing=1.5)
    raises(r"^weight: ", g, z, [0, 1, 2], weight=[1.0, 1.0])
    bad = z.copy()
    bad[2, 0] = np.inf
    raises(r"^logits: q row 2, column 0: an infinite value", g, bad, [0, 1, 2])
    raises(r"^unsupported: a loss gradient needs one row of logits per target", g, z[:1],
           [0, 1, 2])
    raises(r"^logits must be 1-D", g, z[None], [0, 1, 2])


def test_where_it_ran(backend):
    """A dense teacher, a sparse one and the NLL run on the context's
    backend (the native Output says which)."""
    ctx = kullback.Context(backend)._native
    s, t = logits(3, 6), logits(3, 6)
    out, g, tg = ctx.distill(s, t, "logits", None, None, "jsd", 0.3, 2.0, "bucket", 1e-3, None,
                             "mean", True, "float32")
    assert out.backend == backend and out.counted == 3 and out.scalar
    assert g.shape == tg.shape == (3, 6) and g is not tg
    out, g = ctx.nll_grad(s, [0, 1, 2], "mean", None, None, None, 0.0, "float32")
    assert out.backend == backend and out.perplexity is not None
    idx, lt = top_k(t, 2, 1.0)
    out, g, tg = ctx.distill(s, None, "logits", idx, lt, "forward-kl", 0.5, 1.0, "bucket", 1e-3,
                             None, "none", False, "float32")
    assert out.backend == backend and tg is None and not out.scalar


def test_readme_example_runs():
    """python/README.md's training example runs as written."""
    import pathlib
    import re
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    part = readme.split("## Training: loss and gradient", 1)[1]
    code = re.search(r"```python\n(.*?)```", part, re.S).group(1)
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["grad"].shape == (4, 10) and ns["grad"].dtype == np.float32
    assert ns["teacher_grad"].shape == (4, 10)


def test_the_gil_is_released_during_distill():
    """Another Python thread keeps running while distill works (as
    test_api's check for the measures)."""
    import threading
    import time
    s, t = logits(256, 4096), logits(256, 4096)
    ctx = kullback.Context("cpu")
    ctx.distill(s, t, divergence="jsd", teacher_grad=True)  # warm
    t0 = time.perf_counter()
    ctx.distill(s, t, divergence="jsd", teacher_grad=True)
    # about 0.5 s, at most 64 copies (1 GiB of inputs and gradients)
    reps = max(1, min(int(0.5 / (time.perf_counter() - t0)), 64))
    ss, tt = np.tile(s, (reps, 1)), np.tile(t, (reps, 1))
    ticks, done = [], threading.Event()

    def count():
        while not done.is_set():
            ticks.append(time.perf_counter())

    counter = threading.Thread(target=count)
    counter.start()
    try:
        time.sleep(0.05)
        t0 = time.perf_counter()
        ctx.distill(ss, tt, divergence="jsd", teacher_grad=True)
        t1 = time.perf_counter()
    finally:
        done.set()
        counter.join()
    inner = [x for x in ticks if t0 + 0.1 * (t1 - t0) < x < t1 - 0.1 * (t1 - t0)]
    assert len(inner) > 100, (len(inner), t1 - t0)


@pytest.mark.parametrize("grad_dtype", ["float16", "bfloat16"])
def test_half_gradients_are_the_float32_ones_rounded(backend, grad_dtype):
    if grad_dtype == "bfloat16":
        dt = pytest.importorskip("ml_dtypes").bfloat16
    else:
        dt = np.float16
    bits = lambda a: np.asarray(a).view(np.uint16)  # noqa: E731
    z = logits()
    y = rng.integers(0, COLS, ROWS)
    out32, g32 = kullback.nll_grad(z, y, reduction="mean", label_smoothing=0.1, backend=backend)
    out, g = kullback.nll_grad(z, y, reduction="mean", label_smoothing=0.1,
                               grad_dtype=grad_dtype, backend=backend)
    assert g.dtype == np.dtype(dt) and g.shape == z.shape
    assert out == out32
    assert np.array_equal(bits(g), bits(g32.astype(dt)))
    t = logits()
    for div in ["forward-kl", "reverse-kl", "jsd"]:
        loss32, gs32, gt32 = kullback.distill(z, t, divergence=div, temperature=2.0,
                                              teacher_grad=True, backend=backend)
        loss, gs, gt = kullback.distill(z, t, divergence=div, temperature=2.0, teacher_grad=True,
                                        grad_dtype=grad_dtype, backend=backend)
        assert np.array_equal(loss, loss32)
        assert np.array_equal(bits(gs), bits(gs32.astype(dt)))
        assert np.array_equal(bits(gt), bits(gt32.astype(dt)))
    # a sparse teacher whose log-probabilities are halves too
    lp = log_softmax(t)
    idx = np.argsort(-lp, axis=1)[:, :5].astype(np.int32)
    l16 = np.take_along_axis(lp, idx, 1).astype(dt)
    loss32, g32 = kullback.distill(z, teacher_indices=idx, teacher_logprobs=l16.astype(np.float32),
                                   backend=backend)
    loss, g = kullback.distill(z, teacher_indices=idx, teacher_logprobs=l16,
                               grad_dtype=grad_dtype, backend=backend)
    assert np.array_equal(loss, loss32)
    assert np.array_equal(bits(g), bits(g32.astype(dt)))


def test_grad_dtype_errors():
    z = logits()
    with pytest.raises(ValueError, match="grad_dtype"):
        kullback.nll_grad(z, np.zeros(ROWS, np.int64), grad_dtype="float64", backend="cpu")
    with pytest.raises(ValueError, match="grad_dtype"):
        kullback.distill(z, z, grad_dtype="half", backend="cpu")


def test_grad_scale(backend):
    """``grad_scale`` multiplies the gradients, not the loss: with 'sum' and
    1 / N, the gradient of the mean over N rows, bit for bit; NaN names it."""
    bits = lambda a: np.asarray(a).view(np.uint32)  # noqa: E731
    z = logits()
    t = logits()
    mask = np.arange(ROWS) % 3 != 1
    for div in ["forward-kl", "reverse-kl", "jsd"]:
        mean = kullback.distill(z, t, divergence=div, temperature=2.0, mask=mask,
                                reduction="mean", teacher_grad=True, backend=backend)
        summed = kullback.distill(z, t, divergence=div, temperature=2.0, mask=mask,
                                  reduction="sum", teacher_grad=True,
                                  grad_scale=1.0 / mask.sum(), backend=backend)
        plain = kullback.distill(z, t, divergence=div, temperature=2.0, mask=mask,
                                 reduction="sum", backend=backend)
        assert summed[0] == plain[0]
        assert np.array_equal(bits(summed[1]), bits(mean[1])), div
        assert np.array_equal(bits(summed[2]), bits(mean[2])), div
    y = rng.integers(0, COLS, ROWS)
    w = rng.random(COLS).astype(np.float32)
    mean = kullback.nll_grad(z, y, weight=w, reduction="mean", backend=backend)
    count = np.cumsum(w[y].astype(np.float64))[-1]
    summed = kullback.nll_grad(z, y, weight=w, reduction="sum", grad_scale=1.0 / count,
                               backend=backend)
    assert np.array_equal(bits(summed[1]), bits(mean[1]))
    with pytest.raises(ValueError, match="grad_scale"):
        kullback.nll_grad(z, y, grad_scale=float("nan"), backend=backend)
    with pytest.raises(ValueError, match="grad_scale"):
        kullback.distill(z, t, grad_scale=float("inf"), backend=backend)
