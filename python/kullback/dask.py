"""kullback over Dask arrays: the same calls, block by block, on any scheduler.

Inputs are Dask arrays (NumPy arrays and array-likes are wrapped) whose rows
are chunked any way you like; the columns of a block are put in one chunk
(rechunked if they are not), and arguments chunked differently are brought to
common row chunks. Each block of rows is computed by the in-memory call on a
worker, so reduction 'none' gives the very same bits as the in-memory call on
the whole batch, on the same backend (a row's value does not depend on the
other rows of the call). Sum and mean are combined exactly across blocks: each
block gives its sum and what it counted (its rows; for ``nll``, the class
weight of its targets not ignored), sums and counts are added in float64, and
the mean is sum of values / rows counted (``nll`` with ``weight``:
sum_i w[t_i] l_i / sum_i w[t_i]), never a mean of block means; the result
agrees with the in-memory sum or mean within the library's bound.

Results are lazy Dask arrays: shape (rows,) of float32 under reduction
'none', 0-d float32 for sum and mean (and for 1-D inputs); ``.compute()``
them.

    import dask.array as da
    from dask.distributed import Client, LocalCluster
    import kullback.dask as kd

    client = Client(LocalCluster(n_workers=2, threads_per_worker=1))
    # the same code on a remote cluster: client = Client("tcp://scheduler:8786")
    p = da.random.random((200_000, 1024), chunks=(12_500, 1024)).astype("float32")
    p = p / p.sum(axis=1, keepdims=True)
    per_row = kd.entropy(p).compute()             # numpy float32, shape (200000,)
    mean = float(kd.entropy(p, reduction="mean").compute())

A single row (1-D, or shape (1, n)) is given whole to every block. Each worker
process keeps one ``kullback`` context per backend (under ``backend='gpu'`` a
GPU device of its own). Errors name the row of the whole array, not of the
block. Shapes and options are checked when the graph is built, values when it
runs. ``help(kullback.kl)`` describes every option; the calls here take the
same ones, except ``context`` (a worker makes its own).
"""

import numpy as np
import dask.array as da

import kullback as _k
from kullback import _kullback as _native

__all__ = ["cross_entropy", "entropy", "hellinger", "js", "kl", "nll", "total_variation"]


def _array(x, name, ndims):
    x = x if isinstance(x, da.Array) else da.asarray(x)
    if x.ndim not in ndims:
        raise ValueError("%s must be %s, got shape %s" % (
            name, " or ".join("%d-D" % n for n in ndims), x.shape))
    if any(np.isnan(s) for s in x.shape):
        raise ValueError("%s has unknown chunk sizes: call compute_chunk_sizes() first" % name)
    return x


def _floats(x, name):
    """``x`` as a 2-D Dask array (a 1-D one is one row), and whether it was 1-D."""
    x = _array(x, name, (1, 2))
    x, one = (x.reshape(1, -1), True) if x.ndim == 1 else (x, False)
    if 0 in x.shape:
        raise ValueError("%s is empty: %d rows x %d columns (both must be at least 1)"
                         % ((name,) + x.shape))
    return x, one


def _layout(args, targets=None):
    """Blockwise operands for the 2-D arguments ``args`` ([(letter, array)]),
    and 1-D ``targets``. The rows come from the first argument with more than
    one row (or the targets); arguments with those rows are chunked along them
    ('ij', columns in one chunk), the others are single rows given whole to
    every block (1-D, 'j'); targets take the same row chunks ('i').
    Returns (operands, rows, row chunks, letters of the row-chunked)."""
    ref = next((x for _, x in args if x.shape[0] != 1), None)
    if ref is None:
        ref = targets if targets is not None else args[0][1]
    rows, chunks = ref.shape[0], ref.chunks[0]
    ops, chunked = [], ""
    for letter, x in args:
        if x is ref or (rows != 1 and x.shape[0] == rows):
            ops += [x.rechunk({0: chunks, 1: -1}), "ij"]
            chunked += letter
        else:
            ops += [x.reshape(-1).rechunk(-1), "j"]
    if targets is not None:
        ops += [targets.rechunk((chunks,)), "i"]
        chunked += "t"
    return ops, rows, chunks, chunked


def _block(offsets, *arrays, call, reduction, options, offset_args):
    """One block of rows, on a worker: its per-row values, or [[sum, counted]]."""
    if offsets.size == 0:  # an empty block of rows
        return np.zeros((0, 2)) if reduction != "none" else np.zeros((0,), np.float32)
    ctx = _k._default(options["backend"])
    out = call(ctx, arrays, "none" if reduction == "none" else "sum", options,
               int(offsets[0]), offset_args)
    if reduction == "none":
        return out.values
    return np.array([[float(out.values[0]), out.counted]])


def _finish(total, reduction):
    """[sum of the block sums, sum of the counts] -> the float32 sum or mean."""
    s, n = float(total[0]), float(total[1])
    if reduction == "sum":
        v = s
    elif n == 0.0:
        v = float("nan")  # a mean over no counted weight, as in memory
    else:
        v = s / n
    with np.errstate(over="ignore"):
        return np.asarray(np.float32(v))


def _graph(call, reduction, options, layout, scalar):
    ops, rows, chunks, chunked = layout
    offsets = da.arange(rows, chunks=(chunks,))  # each block learns its first row
    kw = dict(call=call, reduction=reduction, options=options, offset_args=chunked)
    if reduction == "none":
        out = da.blockwise(_block, "i", offsets, "i", *ops, dtype=np.float32,
                           meta=np.empty((0,), np.float32), concatenate=True, **kw)
        return out.reshape(()) if scalar else out
    parts = da.blockwise(_block, "ik", offsets, "i", *ops, dtype=np.float64,
                         new_axes={"k": 2}, adjust_chunks={"i": 1},
                         meta=np.empty((0, 2)), concatenate=True, **kw)
    total = parts.sum(axis=0, dtype=np.float64)
    return total.map_blocks(_finish, reduction, drop_axis=0, dtype=np.float32,
                            meta=np.empty((), np.float32))


def _one(form):
    """A valid one-element row in ``form`` (for checking options early)."""
    f = form.strip().lower().replace("-", "_") if isinstance(form, str) else form
    return np.array([0.0 if f in ("log_probs", "logprobs", "logits") else 1.0], np.float32)


def _options(reduction, backend, **options):
    """Options checked now (one tiny call on the CPU with the same options, so
    that a bad option fails when the graph is built, with the message of the
    in-memory call), reduction and backend in their canonical names."""
    options["backend"] = _native._canonical("backend", backend)
    options["tolerance"] = float(options["tolerance"])
    return _native._canonical("reduction", reduction), options


def _measure(name, p, q, reduction, **opts):
    reduction, o = _options(reduction, **opts)
    p2, p1 = _floats(p, "p")
    args, scalar = [("p", p2)], p1
    if q is not None:
        q2, q1 = _floats(q, "q")
        (pr, pc), (qr, qc) = p2.shape, q2.shape
        if pc != qc or (pr != qr and pr != 1 and qr != 1):
            raise ValueError(
                "shape mismatch: p is %d x %d, q is %d x %d (same shape, or one of them a "
                "single row with the same columns)" % (pr, pc, qr, qc))
        args.append(("q", q2))
        scalar = p1 and q1
    one = _one(o["p_form"]), _one(o["q_form"])
    _k._default("cpu").evaluate(name, one[0], one[1] if q is not None else None, reduction,
                                o["base"], o["normalize"], o["tolerance"], o["p_form"],
                                o["q_form"])

    def call(ctx, arrays, red, o, offset, offset_args):
        return ctx.evaluate(name, arrays[0], arrays[1] if len(arrays) > 1 else None, red,
                            o["base"], o["normalize"], o["tolerance"], o["p_form"],
                            o["q_form"], offset, offset_args)

    return _graph(call, reduction, o, _layout(args), scalar)


def _nll_call(ctx, arrays, red, o, offset, offset_args):
    q, t = arrays
    return ctx.nll(q, t, red, o["base"], o["normalize"], o["tolerance"], o["q_form"],
                   o["ignore_index"], o["weight"], o["label_smoothing"], offset, offset_args)


def entropy(p, *, reduction="none", base=None, normalize="validate",
            tolerance=_k.DEFAULT_TOLERANCE, p_form="probs", backend="auto"):
    return _measure("entropy", p, None, reduction, base=base, normalize=normalize,
                    tolerance=tolerance, p_form=p_form, q_form="probs", backend=backend)


def cross_entropy(p, q, *, reduction="none", base=None, normalize="validate",
                  tolerance=_k.DEFAULT_TOLERANCE, p_form="probs", q_form="probs", backend="auto"):
    return _measure("cross_entropy", p, q, reduction, base=base, normalize=normalize,
                    tolerance=tolerance, p_form=p_form, q_form=q_form, backend=backend)


def kl(p, q, *, reduction="none", base=None, normalize="validate",
       tolerance=_k.DEFAULT_TOLERANCE, p_form="probs", q_form="probs", backend="auto"):
    return _measure("kl", p, q, reduction, base=base, normalize=normalize,
                    tolerance=tolerance, p_form=p_form, q_form=q_form, backend=backend)


def js(p, q, *, reduction="none", base=None, normalize="validate",
       tolerance=_k.DEFAULT_TOLERANCE, p_form="probs", q_form="probs", backend="auto"):
    return _measure("js", p, q, reduction, base=base, normalize=normalize,
                    tolerance=tolerance, p_form=p_form, q_form=q_form, backend=backend)


def hellinger(p, q, *, reduction="none", base=None, normalize="validate",
              tolerance=_k.DEFAULT_TOLERANCE, p_form="probs", q_form="probs", backend="auto"):
    return _measure("hellinger", p, q, reduction, base=base, normalize=normalize,
                    tolerance=tolerance, p_form=p_form, q_form=q_form, backend=backend)


def total_variation(p, q, *, reduction="none", base=None, normalize="validate",
                    tolerance=_k.DEFAULT_TOLERANCE, p_form="probs", q_form="probs",
                    backend="auto"):
    return _measure("total_variation", p, q, reduction, base=base, normalize=normalize,
                    tolerance=tolerance, p_form=p_form, q_form=q_form, backend=backend)


def nll(q, targets, *, reduction="none", base=None, normalize="validate",
        tolerance=_k.DEFAULT_TOLERANCE, q_form="probs", ignore_index=None, weight=None,
        label_smoothing=0.0, backend="auto"):
    # class weights are small: one NumPy array given to every block
    w = None if weight is None else np.ascontiguousarray(
        weight.compute() if isinstance(weight, da.Array) else weight)
    reduction, o = _options(reduction, backend, base=base, normalize=normalize,
                            tolerance=tolerance, q_form=q_form, ignore_index=ignore_index,
                            weight=w, label_smoothing=float(label_smoothing))
    q2, _ = _floats(q, "q")
    t = _array(targets, "targets", (0, 1))
    scalar = t.ndim == 0
    t1 = t.reshape(1) if scalar else t
    (qr, qc), tr = q2.shape, t1.shape[0]
    if qr != tr and qr != 1:
        raise ValueError(
            "%d targets, but q (the probabilities or logits) has %d rows of %d classes (one "
            "target per row of q, or q a single row)" % (tr, qr, qc))
    cpu = _k._default("cpu")
    cpu.nll(_one(q_form).reshape(1, 1), np.zeros(1, np.int64), reduction, o["base"],
            o["normalize"], o["tolerance"], o["q_form"], o["ignore_index"], None,
            o["label_smoothing"])
    if w is not None:  # the weights' own checks (values, length), also now
        uniform = np.full((1, max(qc, 1)), 1.0 / max(qc, 1), np.float32)
        cpu.nll(uniform, np.zeros(1, np.int64), "none", None, "as_given", 1.0, "probs", None,
                w, 0.0)
    return _graph(_nll_call, reduction, o, _layout([("q", q2)], t1), scalar)


for _fn in (entropy, cross_entropy, kl, js, hellinger, total_variation, nll):
    _fn.__doc__ = (
        "``kullback.%s`` over Dask arrays chunked along rows (see ``help(kullback.dask)``).\n\n"
        "    Returns a lazy Dask array: shape (rows,) of float32 under reduction 'none', 0-d\n"
        "    float32 for sum and mean. The options are those of the in-memory call:\n"
        % _fn.__name__) + getattr(_k, _fn.__name__).__doc__
del _fn


# ---------------------------------------------------------------------------
# Training: loss and gradient, block by block (one task per block of rows
# computes both).

def _train_block(offset, scale, *arrays, call, reduction, options):
    """One block of rows, on a worker: its per-row losses (or [sum, counted])
    and gradient(s) of the block's sum of losses times ``scale``."""
    ctx = _k._default(options["backend"])
    red = "none" if reduction == "none" else "sum"
    out, *grads = call(ctx, arrays, red, options, float(scale), offset)
    if reduction == "none":
        loss = np.asarray(out.values, np.float32).reshape(-1)
    else:
        loss = np.array([float(out.values[0]), out.counted])
    return (loss,) + tuple(grads)


def _row_blocks(x, chunks):
    """The Delayed blocks of ``x`` (2-D: columns in one chunk; 1-D) in row chunks ``chunks``."""
    if x.ndim == 2:
        return list(x.rechunk({0: chunks, 1: -1}).to_delayed()[:, 0])
    return list(x.rechunk((chunks,)).to_delayed())


def _train_graph(call, reduction, options, student, others, n_grads, one, grad_dtype, count):
    """(loss, gradient(s)) of ``call`` over the row blocks of the 2-D
    ``student`` and ``others`` (2-D or 1-D arrays of its rows, or None);
    ``one``: (a 0-d loss under 'none', 1-D gradients); ``count``: a Delayed
    of what the whole call's mean divides by (as the in-memory call counts
    it), for 'mean'."""
    import dask
    rows, cols = student.shape
    chunks = student.chunks[0]
    parts = [_row_blocks(x, chunks) if x is not None else [None] * len(chunks)
             for x in [student] + others]
    # a mean's gradient: each block's sum's times 1 / count, the factor the
    # in-memory mean takes (so the same bits), applied by the library
    scale = dask.delayed(_inverse, pure=True)(count) if reduction == "mean" else 1.0
    options = dict(options, grad_dtype=grad_dtype)
    gdt = _grad_np_dtype(grad_dtype)
    losses, grads, offset = [], [[] for _ in range(n_grads)], 0
    for i, n in enumerate(chunks):
        if n == 0:
            offset += n
            continue
        d = dask.delayed(_train_block, nout=1 + n_grads, pure=True)(
            offset, scale, *[p[i] for p in parts], call=call, reduction=reduction,
            options=options)
        if reduction == "none":
            losses.append(da.from_delayed(d[0], (n,), np.float32))
        else:
            losses.append(da.from_delayed(d[0], (2,), np.float64).reshape(1, 2))
        for k in range(n_grads):
            grads[k].append(da.from_delayed(d[1 + k], (n, cols), gdt))
        offset += n
    grads = [da.concatenate(g, axis=0) for g in grads]
    if reduction == "none":
        loss = da.concatenate(losses)
        loss = loss.reshape(()) if one[0] else loss
    else:
        total = da.concatenate(losses, axis=0).sum(axis=0, dtype=np.float64)
        loss = total.map_blocks(_finish, reduction, drop_axis=0, dtype=np.float32,
                                meta=np.empty((), np.float32))
    if one[1]:
        grads = [g.reshape(-1) for g in grads]
    return (loss,) + tuple(grads)


def _inverse(count):
    """1 / count, 0 for no count (as the in-memory mean's gradient)."""
    return 0.0 if count == 0.0 else 1.0 / count


def _nll_count(targets, ignore_index, weight):
    """What an in-memory NLL mean divides by: sum of w[t] over the targets
    not ignored, added in row order in float64 (``cumsum`` adds in order, as
    the library does; a target out of range counts 0 here, its block fails)."""
    t = np.asarray(targets).reshape(-1)
    counted = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
    if weight is None:
        return float(np.count_nonzero(counted))
    w = np.asarray(weight, np.float32).astype(np.float64)
    inside = counted & (t >= 0) & (t < w.shape[0])
    wt = np.where(inside, w[np.clip(t, 0, w.shape[0] - 1)], 0.0)
    return float(np.cumsum(wt)[-1]) if wt.size else 0.0


def _mask_count(mask, rows):
    """The rows a distillation mean counts: mask nonzero (all without one)."""
    return float(rows if mask is None else np.count_nonzero(np.asarray(mask)))


def _grad_np_dtype(grad_dtype):
    if grad_dtype == "bfloat16":
        import ml_dtypes
        return ml_dtypes.bfloat16
    return np.dtype(grad_dtype)


def nll_grad(logits, targets, *, reduction="none", base=None, ignore_index=None, weight=None,
             label_smoothing=0.0, grad_dtype="float32", backend="auto"):
    w = None if weight is None else np.ascontiguousarray(
        weight.compute() if isinstance(weight, da.Array) else weight)
    reduction, o = _options(reduction, backend, base=base, ignore_index=ignore_index,
                            weight=w, label_smoothing=float(label_smoothing), tolerance=0.0)
    z, one = _floats(logits, "logits")
    t = _array(targets, "targets", (0, 1))
    t1 = t.reshape(1) if t.ndim == 0 else t
    if t1.shape[0] != z.shape[0]:
        raise ValueError("%d targets, but logits has %d rows (one target per row)"
                         % (t1.shape[0], z.shape[0]))
    # the options' own checks, now, with the in-memory call's messages
    _k.nll_grad(np.zeros((1, z.shape[1]), np.float32), [0], reduction=reduction, base=base,
                weight=w, label_smoothing=label_smoothing, grad_dtype=grad_dtype,
                backend="cpu")

    def call(ctx, arrays, red, o, scale, offset):
        q, tt = arrays
        return ctx.nll_grad(q, tt, red, o["base"], o["ignore_index"], o["weight"],
                            o["label_smoothing"], o["grad_dtype"], scale, offset)

    import dask
    count = dask.delayed(_nll_count, pure=True)(t1, ignore_index, w)
    return _train_graph(call, reduction, o, z, [t1], 1, (t.ndim == 0, one), grad_dtype, count)


def distill(student, teacher=None, *, teacher_form="logits", teacher_indices=None,
            teacher_logprobs=None, divergence="forward-kl", beta=0.5, temperature=1.0,
            tail="bucket", tolerance=_k.DEFAULT_TOLERANCE, mask=None, reduction="none",
            teacher_grad=False, grad_dtype="float32", backend="auto"):
    reduction, o = _options(reduction, backend, teacher_form=teacher_form,
                            divergence=divergence, beta=float(beta),
                            temperature=float(temperature), tail=tail, tolerance=tolerance,
                            teacher_grad=bool(teacher_grad))
    s, one = _floats(student, "student")
    rows = s.shape[0]
    others = []
    for name, x in (("teacher", teacher), ("teacher_indices", teacher_indices),
                    ("teacher_logprobs", teacher_logprobs)):
        if x is None:
            others.append(None)
            continue
        x = _array(x, name, (1, 2))
        x = x.reshape(1, -1) if x.ndim == 1 else x
        if x.shape[0] != rows:
            raise ValueError("%s has %d rows, the student %d (one per row)"
                             % (name, x.shape[0], rows))
        others.append(x)
    if mask is not None:
        mask = _array(mask, "mask", (1,))
        if mask.shape[0] != rows:
            raise ValueError("mask has %d rows, the student %d" % (mask.shape[0], rows))
    others.append(mask)
    # the options' own checks, now, with the in-memory call's messages
    _k.distill(np.zeros(2, np.float32), np.zeros(2, np.float32), teacher_form=teacher_form,
               divergence=divergence, beta=beta, temperature=temperature, tail=tail,
               tolerance=tolerance, reduction=reduction, grad_dtype=grad_dtype, backend="cpu")

    def call(ctx, arrays, red, o, scale, offset):
        st, te, ix, lp, m = arrays
        return ctx.distill(st, te, o["teacher_form"], ix, lp, o["divergence"], o["beta"],
                           o["temperature"], o["tail"], o["tolerance"], m, red,
                           o["teacher_grad"], o["grad_dtype"], scale, offset)

    import dask
    count = dask.delayed(_mask_count, pure=True)(mask, rows)
    return _train_graph(call, reduction, o, s, others, 2 if teacher_grad else 1, (one, one),
                        grad_dtype, count)


nll_grad.__doc__ = (
    "``kullback.nll_grad`` over Dask arrays chunked along rows (see ``help(kullback.dask)``).\n\n"
    "    Returns (loss, grad): lazy Dask arrays, the loss as the other calls give it, the\n"
    "    gradient of the logits' shape, computed with the loss by one task per block. The\n"
    "    gradients are the in-memory call's bits, a mean's too (the blocks take the whole\n"
    "    call's count first, from the targets or the mask alone, and scale by it).\n"
    "    The options are those of the in-memory call:\n") + _k.nll_grad.__doc__
distill.__doc__ = (
    "``kullback.distill`` over Dask arrays chunked along rows (see ``help(kullback.dask)``).\n\n"
    "    Returns (loss, grad) or, with ``teacher_grad``, (loss, grad, teacher_grad): lazy Dask\n"
    "    arrays as in ``nll_grad`` here (the teacher, its indices and log-probabilities and\n"
    "    the mask are split by the student's rows). The options are those of the in-memory\n"
    "    call:\n") + _k.distill.__doc__
__all__ += ["distill", "nll_grad"]
