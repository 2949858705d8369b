"""The float64 reference of the tests: SciPy/NumPy from the very float32
inputs the library receives, written from the formulas (independently of the
library), and the closeness rule of the crate (abs 2e-6 + rel 2e-5)."""

import numpy as np
from scipy.special import entr, log_softmax, logsumexp, rel_entr, xlogy

ABS, REL = 2e-6, 2e-5


def dist(x32, form, normalize):
    """(p, ln p) in float64 of float32 values ``x32`` given in ``form``."""
    x = np.asarray(x32, dtype=np.float64)
    with np.errstate(divide="ignore"):
        if form == "probs":
            p = x / x.sum(-1, keepdims=True) if normalize == "renormalize" else x
            return p, np.log(p)
        if form == "log_probs":
            lp = x - logsumexp(x, axis=-1, keepdims=True) if normalize == "renormalize" else x
        else:
            lp = log_softmax(x, axis=-1)
        return np.exp(lp), lp


def measure(name, p32, q32=None, p_form="probs", q_form="probs", normalize="validate",
            base=None):
    """Per-row values in float64 (broadcasting a single row, as the library does)."""
    p, lp = dist(np.atleast_2d(p32), p_form, normalize)
    if q32 is not None:
        q, lq = dist(np.atleast_2d(q32), q_form, normalize)
        p, q = np.broadcast_arrays(p, q)
        lp, lq = np.broadcast_arrays(lp, lq)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        pos = p > 0
        if name == "entropy":
            v = entr(p).sum(-1) if p_form == "probs" else np.where(pos, -p * lp, 0).sum(-1)
        elif name == "cross_entropy":
            v = (-xlogy(p, q).sum(-1) if p_form == q_form == "probs"
                 else np.where(pos, -p * lq, 0).sum(-1))
        elif name == "kl":
            v = (rel_entr(p, q).sum(-1) if p_form == q_form == "probs"
                 else np.where(pos, p * (lp - lq), 0).sum(-1))
        elif name == "js":
            m = 0.5 * (p + q)
            lm = np.log(m)
            v = 0.5 * (np.where(pos, p * (lp - lm), 0).sum(-1)
                       + np.where(q > 0, q * (lq - lm), 0).sum(-1))
        elif name == "hellinger":
            v = 0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(-1)
        elif name == "total_variation":
            v = 0.5 * np.abs(p - q).sum(-1)
        else:
            raise ValueError(name)
    return v / (1.0 if base is None else np.log(base))


def nll(q32, targets, q_form="probs", normalize="validate", base=None, ignore_index=None,
        weight=None, label_smoothing=0.0):
    """(per-row losses, per-row counted weight) in float64: PyTorch's formula,
    l_i = (1-e) w_t (-ln q_t) + (e/C) sum_c w_c (-ln q_c), 0 when ignored."""
    t = np.atleast_1d(np.asarray(targets, dtype=np.int64))
    _, lq = dist(np.atleast_2d(q32), q_form, normalize)
    C = lq.shape[1]
    lq = np.broadcast_to(lq, (t.shape[0], C))
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    out, counted = np.zeros(t.shape[0]), np.zeros(t.shape[0])
    with np.errstate(invalid="ignore", over="ignore"):
        for i, ti in enumerate(t):
            if ignore_index is not None and ti == ignore_index:
                continue
            nl = -lq[i]
            loss = (1.0 - label_smoothing) * w[ti] * nl[ti]
            if label_smoothing > 0:
                loss += label_smoothing / C * np.where(w > 0, w * nl, 0.0).sum()
            out[i], counted[i] = loss, w[ti]
    return out / (1.0 if base is None else np.log(base)), counted


def reduce(rows, reduction, counted=None):
    """The reference total and its tolerance (n·abs + rel·Σ|v|, as the Rust tests)."""
    rows = np.asarray(rows, dtype=np.float64)
    n = rows.size
    s = rows.sum()
    mag = np.abs(rows[np.isfinite(rows)]).sum()
    tol = n * ABS + REL * mag
    if reduction == "sum":
        return s, tol
    c = float(n if counted is None else np.sum(counted))
    return (np.nan, 0.0) if c == 0 else (s / c, tol / c)


def close(got, want, abs_tol=ABS, rel_tol=REL):
    """Elementwise: equal infinities and NaNs, else |got - want| <= abs + rel·|want|."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    with np.errstate(invalid="ignore"):
        near = np.abs(got - want) <= abs_tol + rel_tol * np.abs(want)
    return np.all(same | (np.isfinite(want) & near))


def assert_close(got, want, abs_tol=ABS, rel_tol=REL, what=""):
    assert np.shape(got) == np.shape(want), (what, np.shape(got), np.shape(want))
    if not close(got, want, abs_tol, rel_tol):
        g = np.atleast_1d(np.asarray(got, dtype=np.float64))
        w = np.atleast_1d(np.asarray(want, dtype=np.float64))
        bad = [i for i in range(g.size) if not close(g[i], w[i], abs_tol, rel_tol)]
        raise AssertionError("%s: %d values off, first at %d: got %r, want %r" % (
            what, len(bad), bad[0], g[bad[0]], w[bad[0]]))
