#!/usr/bin/env python3
"""Reference data for tests/conformance.rs: seeded inputs and their expected values.

Every input is rounded to float32 FIRST; every expected value is then computed
in float64 from exactly those float32 values (the values the library receives),
with SciPy / NumPy / PyTorch:

  entropy        scipy.special.entr            (probabilities; -p ln p in log forms)
  cross-entropy  scipy.special.xlogy           (-Σ xlogy(p, q); -Σ p·ln q in log forms)
  KL             scipy.special.rel_entr        (Σ p (ln p − ln q) in log forms)
  JS             explicit ½KL(P‖M) + ½KL(Q‖M), checked against
                 scipy.spatial.distance.jensenshannon(p, q)**2
  renormalise    p / Σp, checked against scipy.stats.entropy (which renormalises)
  base           divide by ln(base), checked against scipy.stats.entropy(..., base=)
  log-probs      as given (Validate) or lp − scipy.special.logsumexp(lp) (Renormalize)
  logits         scipy.special.log_softmax in float64
  NLL            torch.nn.functional.cross_entropy / nll_loss in float64 (ignore_index,
                 weight, label_smoothing), and always the NumPy formula below, which
                 must agree with PyTorch to 1e-12 when PyTorch is installed:
                   row i (t = target, w = weights or 1, ε = smoothing, C = classes):
                   l_i = (1−ε)·w_t·(−ln q_t) + (ε/C)·Σ_c w_c·(−ln q_c)   (0 if ignored)
                   sum = Σ l_i, mean = Σ l_i / Σ_{i not ignored} w_{t_i} (NaN over none)

Outputs (in this folder): <case>.p.npy / .q.npy / .weights.npy (float32 inputs),
<case>.targets.npy (int64), <case>.expected.npy (float64, one value per row, in
the case's base), <case>.reduced.npy (float64 [sum, mean, counted]), and
manifest.json listing the cases.

Regenerate (numpy, scipy; torch optional, CPU is enough):
    python3 tests/data/make_reference.py
The output is deterministic (seeded); commit the script and its outputs together.
"""

import json
import math
import os
import sys

import numpy as np
import scipy
from scipy.special import entr, log_softmax, logsumexp, rel_entr, xlogy
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

try:  # PyTorch is optional: the NumPy formula is always computed and checked against it.
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None

HERE = os.path.dirname(os.path.abspath(__file__))
RNG = np.random.default_rng(20240607)
CASES = []
IGNORE = -100

np.seterr(divide="ignore", invalid="ignore", over="ignore")


def f32(a):
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64).astype(np.float32))


def ln_base(base):
    return {"e": 1.0, "2": math.log(2.0), "10": math.log(10.0)}.get(base) or math.log(float(base))


def scipy_base(base):
    return None if base == "e" else float(base)


def dist(x32, form, norm):
    """(p, ln p) in float64 from the float32 values, per form and normalisation."""
    x = x32.astype(np.float64)
    if form == "probs":
        p = x / x.sum(axis=1, keepdims=True) if norm == "renormalize" else x
        return p, np.log(p)
    if form == "log_probs":
        lp = x - logsumexp(x, axis=1, keepdims=True) if norm == "renormalize" else x
        return np.exp(lp), lp
    if form == "logits":
        lp = log_softmax(x, axis=1)
        return np.exp(lp), lp
    raise ValueError(form)


def per_row(measure, p32, pf, q32, qf, norm):
    """Per-row values in nats. p = 0 exactly where ln p = -inf (a zero probability,
    a -inf log-probability or logit); a finite logit far below the row maximum is
    p > 0 even where exp(ln p) underflows in float64."""
    p, lp = dist(p32, pf, norm)
    pz = lp == -np.inf
    if measure == "entropy":
        if pf == "probs":
            return entr(p).sum(axis=1)
        return np.where(pz, 0.0, -p * lp).sum(axis=1)
    q, lq = dist(q32, qf, norm)
    p, lp, q, lq, pz = np.broadcast_arrays(p, lp, q, lq, pz)
    qz = lq == -np.inf
    both = pf == "probs" and qf == "probs"
    if measure == "cross_entropy":
        if both:
            return -xlogy(p, q).sum(axis=1)
        return np.where(pz, 0.0, np.where(qz, np.inf, -p * lq)).sum(axis=1)
    if measure == "kl":
        if both:
            return rel_entr(p, q).sum(axis=1)
        return np.where(pz, 0.0, np.where(qz, np.inf, p * (lp - lq))).sum(axis=1)
    if measure == "js":
        if both:
            m = 0.5 * (p + q)
            return 0.5 * rel_entr(p, m).sum(axis=1) + 0.5 * rel_entr(q, m).sum(axis=1)
        lm = np.logaddexp(lp, lq) - math.log(2.0)
        a = np.where(pz, 0.0, p * (lp - lm)).sum(axis=1)
        b = np.where(qz, 0.0, q * (lq - lm)).sum(axis=1)
        return 0.5 * a + 0.5 * b
    raise ValueError(measure)


def cross_check(measure, p32, pf, q32, qf, norm, base, got):
    """Independent SciPy routes for the probability forms."""
    if pf != "probs" or (q32 is not None and qf != "probs"):
        return
    p = p32.astype(np.float64)
    q = None if q32 is None else np.broadcast_to(q32.astype(np.float64), np.broadcast_shapes(p32.shape, q32.shape))
    p = np.broadcast_to(p, got.shape + (p32.shape[1],))
    if norm != "as_given" and measure in ("entropy", "kl"):
        # scipy.stats.entropy always renormalises; Validate rows sum to 1 within ~1e-7.
        ref = scipy_entropy(p, q, base=scipy_base(base), axis=1) if measure == "kl" else scipy_entropy(
            p, base=scipy_base(base), axis=1)
        assert np.allclose(ref, got, rtol=1e-5, atol=1e-9, equal_nan=False), (measure, ref, got)
    if norm != "as_given" and measure == "js":
        ref = jensenshannon(p, q, axis=1) ** 2 / ln_base(base)
        assert np.allclose(ref, got, rtol=1e-5, atol=1e-9), (ref, got)


def save(name, suffix, arr):
    fn = f"{name}.{suffix}.npy"
    np.save(os.path.join(HERE, fn), arr)
    return fn


def add_measure(name, measure, p32, q32=None, pf="probs", qf="probs", norm="validate", base="e", tol=None,
                note=""):
    assert p32.dtype == np.float32 and (q32 is None or q32.dtype == np.float32)
    vals = per_row(measure, p32, pf, q32, qf, norm) / ln_base(base)
    cross_check(measure, p32, pf, q32, qf, norm, base, vals)
    assert not np.isnan(vals).any(), name
    rows = vals.shape[0]
    files = {"p": save(name, "p", p32)}
    if q32 is not None:
        files["q"] = save(name, "q", q32)
    reduced = np.array([vals.sum(), vals.sum() / rows, float(rows)], dtype=np.float64)
    files["expected"] = save(name, "expected", vals.astype(np.float64))
    files["reduced"] = save(name, "reduced", reduced)
    CASES.append({
        "name": name, "measure": measure, "p_form": pf, "q_form": qf if q32 is not None else None,
        "normalization": norm, "base": base, "rows": rows, "cols": int(p32.shape[1]),
        "p_rows": int(p32.shape[0]), "q_rows": None if q32 is None else int(q32.shape[0]),
        "ignore_index": None, "label_smoothing": 0.0, "files": files,
        "abs_tol": (tol or (2e-6, 2e-5))[0], "rel_tol": (tol or (2e-6, 2e-5))[1],
        "reference": "scipy " + scipy.__version__ + " / numpy " + np.__version__ + " float64",
        "note": note,
    })


def nll_numpy(lq, t, ignore, w, eps):
    rows, C = t.shape[0], lq.shape[1]
    lq = np.broadcast_to(lq, (rows, C))
    wv = np.ones(C) if w is None else w.astype(np.float64)
    out, wt = np.zeros(rows), np.zeros(rows)
    for i in range(rows):
        if ignore is not None and t[i] == ignore:
            continue
        nl = -lq[i]
        loss = (1.0 - eps) * wv[t[i]] * nl[t[i]]
        if eps > 0:
            loss += eps / C * np.where(wv > 0, wv * nl, 0.0).sum()
        out[i], wt[i] = loss, wv[t[i]]
    return out, wt


def nll_torch(x64, qf, t, ignore, w, eps):
    rows = t.shape[0]
    x = torch.from_numpy(np.array(np.broadcast_to(x64, (rows, x64.shape[1]))))
    tt = torch.from_numpy(t.astype(np.int64))
    wt = None if w is None else torch.from_numpy(w.astype(np.float64))
    ii = IGNORE if ignore is None else ignore
    out = {}
    for red in ("none", "sum", "mean"):
        if qf == "logits" or eps > 0:
            # For probs / log-probs with smoothing, F.cross_entropy renormalises ln q
            # (log_softmax), which the library does not do under Validate: ~1e-7 apart.
            v = F.cross_entropy(x, tt, weight=wt, ignore_index=ii, label_smoothing=eps, reduction=red)
        else:
            v = F.nll_loss(x, tt, weight=wt, ignore_index=ii, reduction=red)
        out[red] = v.numpy()
    return out


def add_nll(name, q32, t, qf="probs", norm="validate", base="e", ignore=None, w32=None, eps=0.0, tol=None,
            note=""):
    t = np.asarray(t, dtype=np.int64)
    q, lq = dist(q32, qf, norm)
    vals, wt = nll_numpy(lq, t, ignore, w32, eps)
    counted = wt.sum()
    red_np = np.array([vals.sum(), vals.sum() / counted if counted > 0 else np.nan, counted])
    reference = "numpy formula (PyTorch F.cross_entropy semantics) float64"
    if torch is not None:
        # torch gets the float64 log-probabilities for probs/log-probs, the logits for logits.
        src = q32.astype(np.float64) if qf == "logits" else lq
        tv = nll_torch(src, qf, t, ignore, w32, eps)
        exact = qf == "logits" or eps == 0.0
        rt, at = (1e-12, 1e-12) if exact else (1e-6, 1e-6)
        assert np.allclose(tv["none"], vals, rtol=rt, atol=at, equal_nan=True), (name, tv["none"], vals)
        assert np.allclose(tv["sum"], red_np[0], rtol=rt, atol=at, equal_nan=True), name
        assert np.allclose(tv["mean"], red_np[1], rtol=rt, atol=at, equal_nan=True), (name, tv["mean"], red_np)
        if exact:
            vals = tv["none"].astype(np.float64)
            red_np = np.array([float(tv["sum"]), float(tv["mean"]), counted])
            fn = "cross_entropy" if qf == "logits" else "nll_loss"
            reference = f"torch {torch.__version__} F.{fn} float64 (= numpy formula to 1e-12)"
        else:
            reference += f"; torch {torch.__version__} F.cross_entropy agrees to 1e-6"
    lb = ln_base(base)
    vals = vals / lb
    red = np.array([red_np[0] / lb, red_np[1] / lb, counted])
    files = {"q": save(name, "q", q32), "targets": save(name, "targets", t)}
    if w32 is not None:
        files["weights"] = save(name, "weights", w32)
    files["expected"] = save(name, "expected", vals.astype(np.float64))
    files["reduced"] = save(name, "reduced", red)
    CASES.append({
        "name": name, "measure": "nll", "p_form": None, "q_form": qf, "normalization": norm, "base": base,
        "rows": int(t.shape[0]), "cols": int(q32.shape[1]), "p_rows": None, "q_rows": int(q32.shape[0]),
        "ignore_index": ignore, "label_smoothing": float(eps), "files": files,
        "abs_tol": (tol or (2e-6, 2e-5))[0], "rel_tol": (tol or (2e-6, 2e-5))[1],
        "reference": reference, "note": note,
    })


# ---------------------------------------------------------------- generators

def rand_probs(rows, cols, zero_frac=0.0, shape=0.7):
    x = RNG.gamma(shape, size=(rows, cols))
    if zero_frac > 0:
        x[RNG.random((rows, cols)) < zero_frac] = 0.0
        for r in range(rows):
            if x[r].sum() == 0:
                x[r, RNG.integers(cols)] = 1.0
    return f32(x / x.sum(axis=1, keepdims=True))


def log_probs_of(x):
    return f32(log_softmax(np.asarray(x, dtype=np.float64), axis=1))


MEASURES2 = ("cross_entropy", "kl", "js")
ALL = ("entropy",) + MEASURES2


def pq_case(prefix, p, q, measures=ALL, **kw):
    for m in measures:
        add_measure(f"{prefix}_{m}", m, p, None if m == "entropy" else q, **kw)


# ---------------------------------------------------------------- cases

# N = 1: every row is the distribution [1]; renormalised counts too.
pq_case("n1", f32(np.ones((5, 1))), f32(np.ones((5, 1))), note="5x1")
pq_case("n1_counts", f32([[2.0], [5.0], [1e6], [3e-3], [7.0]]), f32([[9.0], [1.0], [4.0], [2e5], [1e-30]]),
        norm="renormalize", note="5x1 renormalised")

# Shapes around the 256-thread workgroup; about 10% zeros in p, q strictly positive.
for n in (255, 256, 257):
    pq_case(f"shape_6x{n}", rand_probs(6, n, zero_frac=0.1), rand_probs(6, n), note=f"6x{n}")

# Zero rules, one-hot rows and +inf (p > 0, q = 0) rows, including a subnormal p over a zero q.
e = np.float32(1e-40)
zp = f32([
    [0.5, 0.5, 0, 0, 0, 0],
    [0.2, 0.3, 0.5, 0, 0, 0],
    [1, 0, 0, 0, 0, 0],
    [1, 0, 0, 0, 0, 0],
    [1 / 6] * 6,
    [0, 0, 1, 0, 0, 0],
    [0.25, 0.25, 0.25, 0.25, 0, 0],
    [e, 1, 0, 0, 0, 0],
])
zq = f32([
    [0.25, 0.25, 0.25, 0.25, 0, 0],  # p = 0 where q = 0 and where q > 0: finite
    [0.5, 0.5, 0, 0, 0, 0],  # p > 0 where q = 0: +inf
    [1, 0, 0, 0, 0, 0],  # same one-hot: 0
    [0, 0, 0, 0, 0, 1],  # disjoint one-hots: KL inf, JS ln 2
    [0, 0, 0, 1, 0, 0],  # uniform vs one-hot: inf
    [1 / 6] * 6,  # one-hot vs uniform: ln 6
    [0, 0, 0, 0, 0.5, 0.5],  # disjoint supports: JS ln 2
    [0, 1, 0, 0, 0, 0],  # subnormal p over q = 0: +inf (p is not zero)
])
pq_case("zeros", zp, zq, note="zero rules, one-hot rows, +inf rows")

# Subnormal probabilities 1e-40 and 3e-44 in p and in q.
s1, s2 = 1e-40, 3e-44
sp = f32([
    [0.5, 0.25, 0.25, 0, 0],
    [s1, s2, 0.5, 0.5, 0],
    [s1, 0, 0.5, 0.5, 0],
    [s2, 0.25, 0.25, 0.25, 0.25],
    [0.25, 0.25, 0.25, 0.25, 0],
    [1, 0, 0, 0, 0],
])
sq = f32([
    [s1, s2, 0.5, 0.5, 0],
    [0.2, 0.2, 0.2, 0.2, 0.2],
    [0, 0.25, 0.25, 0.25, 0.25],
    [s2, 0.25, 0.25, 0.25, 0.25],
    [s1, s2, s1, 1, 0],
    [s2, 1, 0, 0, 0],
])
pq_case("subnormal", sp, sq, note="1e-40 and 3e-44 in p and q")
pq_case("subnormal_qlog", sp, f32(np.log(sq.astype(np.float64))), measures=MEASURES2, qf="log_probs",
        note="q as log-probabilities of subnormal probabilities")
tiny_p = f32([[2e-38, 1e-40, 3e-44], [1e-40, 2e-38, 0], [3e-38, 3e-44, 3e-44]])
tiny_q = f32([[1e-40, 2e-38, 1e-40], [2e-38, 2e-38, 1e-40], [3e-44, 3e-44, 3e-38]])
pq_case("subnormal_renorm", tiny_p, tiny_q, norm="renormalize", note="rows of tiny values, renormalised")

# Bases 2, 10 and 3.5.
bp, bq = rand_probs(4, 33, zero_frac=0.2), rand_probs(4, 33)
pq_case("base2", bp, bq, base="2")
pq_case("base10", bp, bq, base="10")
add_measure("base3_5_kl", "kl", bp, bq, base="3.5")
add_measure("base2_zeros_kl", "kl", zp, zq, base="2", note="+inf stays +inf in base 2")

# Renormalisation with counts in the millions and near-one-hot rows.
cp = f32([
    [5e6, 3, 1, 0, 2, 100],
    [1e7, 1, 0, 0, 0, 0],
    [1.6e7, 1, 1, 1, 1, 1],
    [3e6, 2.5e6, 4e6, 1e6, 5e5, 7],
])
cq = f32([
    [4e6, 10, 7, 1, 1e5, 3],
    [1e7 - 5, 2, 1, 1, 1, 0],
    [1.6e7, 2, 1, 3, 1, 1],
    [2e6, 2e6, 2e6, 2e6, 2e6, 2e6],
])
pq_case("counts", cp, cq, norm="renormalize", note="counts in the millions, near-one-hot rows")
pq_case("counts_base10", cp, cq, norm="renormalize", base="10")
mc_p = f32(RNG.multinomial(10_000_000, RNG.dirichlet(np.full(300, 0.3)), size=3))
mc_q = f32(RNG.multinomial(20_000_000, RNG.dirichlet(np.full(300, 0.3)), size=3) + 1)
pq_case("multinomial_counts", mc_p, mc_q, norm="renormalize", note="3x300 counts of 1e7 draws")

# q (and p) as log-probabilities, with -inf entries.
lp_p = rand_probs(8, 40, zero_frac=0.3)
lq_raw = RNG.normal(0, 3, size=(8, 40))
lq_raw[lp_p.astype(np.float64) == 0] = -np.inf  # q = 0 where p = 0 ...
lq_raw[7, np.argmax(lp_p[7])] = -np.inf  # ... and once where p > 0: +inf
lq = log_probs_of(lq_raw)
for m in ("kl", "cross_entropy", "js"):
    add_measure(f"qlog_{m}", m, lp_p, lq, qf="log_probs", note="q as log-probabilities with -inf")
lp_plog = f32(np.log(lp_p.astype(np.float64)))
add_measure("plog_kl", "kl", lp_plog, rand_probs(8, 40), pf="log_probs", note="p as log-probabilities with -inf")
add_measure("plog_entropy", "entropy", lp_plog, pf="log_probs")
add_measure("bothlog_kl", "kl", lp_plog, lq, pf="log_probs", qf="log_probs")
shift = f32(lq.astype(np.float64) + RNG.uniform(-3, 3, size=(8, 1)))
add_measure("qlog_renorm_kl", "kl", lp_p, shift, qf="log_probs", norm="renormalize",
            note="unnormalised log-probabilities, renormalised")
add_measure("plog_renorm_entropy", "entropy", f32(lp_plog.astype(np.float64) + 2.5), pf="log_probs",
            norm="renormalize")

# Two logit rows with magnitudes of thousands (teacher a, student b).
la = np.concatenate([
    3000 + RNG.normal(0, 4, size=(3, 64)),
    -7000 + RNG.normal(0, 4, size=(2, 64)),
    RNG.uniform(-3000, 3000, size=(1, 64)),
    7000 + RNG.normal(0, 2, size=(2, 64)),
])
lb = np.concatenate([
    -7000 + RNG.normal(0, 4, size=(3, 64)),
    3000 + RNG.normal(0, 4, size=(2, 64)),
    RNG.uniform(-7000, 7000, size=(1, 64)),
    7000 + RNG.normal(0, 2, size=(2, 64)),
])
la[6, :8] = -np.inf  # masked classes in both
lb[6, :8] = -np.inf
la[7, 5] = -np.inf  # masked in a only: p = 0 there
la_32, lb_32 = f32(la), f32(lb)
for m in ALL:
    add_measure(f"logits_big_{m}", m, la_32, None if m == "entropy" else lb_32, pf="logits", qf="logits",
                note="logits of magnitude 3000-7000, masked -inf classes")
lb_inf = lb.copy()
lb_inf[2, 3] = -np.inf  # q masked where p > 0: +inf
add_measure("logits_masked_q_kl", "kl", la_32, f32(lb_inf), pf="logits", qf="logits")
add_measure("probs_vs_logits_kl", "kl", rand_probs(8, 64, zero_frac=0.2), lb_32, qf="logits")
add_measure("logits_vs_logprobs_ce", "cross_entropy", la_32, log_probs_of(lb), pf="logits", qf="log_probs",
            base="2")

# A finite logit far below the row maximum is p > 0 even where exp underflows
# (in f32 and in f64): over a masked q class, KL and CE are +inf; JS stays finite.
ua = f32([[0, -2000, 1], [0, -100, 1], [5, 5, -3000]])
ub = f32([[0, -np.inf, 1], [0, -np.inf, 1], [5, 5, -np.inf]])
for m in MEASURES2:
    add_measure(f"logits_underflow_{m}", m, ua, ub, pf="logits", qf="logits",
                note="finite logits far below the maximum over masked q classes")

# Jensen-Shannon on rows with zeros.
jp, jq = rand_probs(10, 12, zero_frac=0.4), rand_probs(10, 12, zero_frac=0.4)
add_measure("js_zeros", "js", jp, jq, note="independent zeros in p and q")
add_measure("js_zeros_base2", "js", jp, jq, base="2")
add_measure("js_zeros_logprobs", "js", f32(np.log(jp.astype(np.float64))), f32(np.log(jq.astype(np.float64))),
            pf="log_probs", qf="log_probs")
add_measure("js_zeros_renorm", "js", f32(jp * 17.0), f32(jq * 0.03), norm="renormalize")

# One reference row against many.
rp, rq1 = rand_probs(20, 30, zero_frac=0.2), rand_probs(1, 30)
for m in MEASURES2:
    add_measure(f"q_one_row_{m}", m, rp, rq1, note="q has one row")
add_measure("p_one_row_kl", "kl", rand_probs(1, 30, zero_frac=0.2), rand_probs(20, 30, zero_frac=0.1),
            note="p has one row")
add_measure("p_one_row_js", "js", rand_probs(1, 30, zero_frac=0.2), rand_probs(20, 30, zero_frac=0.1))
add_measure("q_one_row_logits_kl", "kl", f32(RNG.normal(0, 3, (12, 30))), f32(RNG.normal(0, 3, (1, 30))),
            pf="logits", qf="logits")

# Negative log-likelihood of class targets.
C = 50
nq = f32(RNG.normal(0, 4, size=(40, C)))
nt = RNG.integers(0, C, size=40)
nt[[3, 7, 11, 19, 20, 33, 38, 39]] = IGNORE
add_nll("nll_logits_ignore", nq, nt, qf="logits", ignore=IGNORE, note="8 of 40 rows ignored")
add_nll("nll_logits_ignore_base2", nq, nt, qf="logits", ignore=IGNORE, base="2")
nq_m = nq.copy()
nq_m[5, nt[5]] = -np.inf  # masked target class: +inf
nq_m[6, (nt[6] + 1) % C] = -np.inf  # masked other class: finite
add_nll("nll_logits_masked", nq_m, nt, qf="logits", ignore=IGNORE, note="a masked target gives +inf")
pq_ = rand_probs(12, 7, zero_frac=0.3)
pt = np.array([int(np.argmax(r)) for r in pq_])
pt[4] = int(np.argmin(pq_[4]))  # a zero probability: +inf
if pq_[4, pt[4]] != 0:
    pq_[4, pt[4]] = 0.0
    pq_[4] = f32(pq_[4].astype(np.float64) / pq_[4].astype(np.float64).sum())
pt[8] = (pt[8] + 3) % 7
add_nll("nll_probs_rows", pq_, pt, note="per-row NLL from probabilities; row 4 is +inf")
add_nll("nll_probs_renorm", f32(pq_.astype(np.float64) * 3.0), pt, norm="renormalize")
add_nll("nll_logprobs", log_probs_of(RNG.normal(0, 2, (15, 9))), RNG.integers(0, 9, 15), qf="log_probs",
        base="10")
ws = f32(RNG.uniform(0.2, 3.0, size=20))
ws[4] = 0.0
wq = f32(RNG.normal(0, 3, size=(30, 20)))
wt = RNG.integers(0, 20, size=30)
wt[[2, 9]] = IGNORE
wt[12] = 4  # a zero-weight target
add_nll("nll_weights_smoothing", wq, wt, qf="logits", ignore=IGNORE, w32=ws, eps=0.1,
        note="class weights (one 0), label smoothing 0.1, 2 rows ignored")
add_nll("nll_weights", wq, wt, qf="logits", ignore=IGNORE, w32=ws)
add_nll("nll_smoothing", wq, wt, qf="logits", ignore=IGNORE, eps=0.25)
add_nll("nll_smoothing_probs", rand_probs(10, 6), RNG.integers(0, 6, 10), qf="probs", eps=0.2,
        note="label smoothing on probabilities: the NumPy formula (PyTorch agrees to 1e-6: it renormalises)")
add_nll("nll_q_one_row", rand_probs(1, 30), RNG.integers(0, 30, size=50), note="one q row, 50 targets")
add_nll("nll_q_one_row_logits", f32(RNG.normal(0, 2, (1, 30))), RNG.integers(0, 30, size=50), qf="logits",
        ignore=IGNORE)
add_nll("nll_all_ignored", nq[:4], np.full(4, IGNORE), qf="logits", ignore=IGNORE,
        note="every row ignored: per-row 0, sum 0, mean NaN")
bigq = f32(RNG.normal(0, 2, size=(3, 50_000)))
add_nll("nll_vocab_50000", bigq, np.array([123, IGNORE, 49_999]), qf="logits", ignore=IGNORE, tol=(1e-4, 1e-5),
        note="rows of 50,000 logits (issue 8's tolerance abs 1e-4 + rel 1e-5)")

with open(os.path.join(HERE, "manifest.json"), "w") as f:
    json.dump({
        "generator": "tests/data/make_reference.py",
        "python": sys.version.split()[0], "numpy": np.__version__, "scipy": scipy.__version__,
        "torch": None if torch is None else torch.__version__,
        "tolerance": "|got - expected| <= abs_tol + rel_tol * |expected|; inf must equal inf",
        "cases": CASES,
    }, f, indent=1)
total = sum(os.path.getsize(os.path.join(HERE, fn)) for fn in os.listdir(HERE))
print(f"{len(CASES)} cases, {total / 1e6:.2f} MB in {HERE}")
