"""Every call against SciPy/NumPy float64 from the same float32 inputs,
within the crate's bound, over random shapes, forms, bases, normalisations,
broadcast rows and zeros (hypothesis), on the CPU and the GPU."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import kullback
import refs

MEASURES = ["entropy", "cross_entropy", "kl", "js"]
FORMS = ["probs", "log_probs", "logits"]
BASES = [None, 2, 10, 0.5, 3.7]


def make(rng, rows, cols, form, normalize, zeros):
    """float32 rows in ``form`` fit for ``normalize``; some exact zeros (or -inf)."""
    if form == "logits":
        x = (rng.standard_normal((rows, cols)) * 3).astype(np.float32)
        if zeros and cols > 1:
            x[rng.random((rows, cols)) < 0.2] = -np.inf
            x[:, 0] = np.where(np.isinf(x).all(1), 0.0, x[:, 0])
        return x
    a = rng.random((rows, cols)) + 1e-3
    if zeros and cols > 1:
        a[rng.random((rows, cols)) < 0.3] = 0.0
        a[:, 0] += np.where(a.sum(1) == 0, 1.0, 0.0)
    if normalize == "renormalize":
        a = a * rng.choice([1e-30, 1.0, 100.0, 1e30])  # counts at any scale
    elif normalize == "validate":
        a = a / a.sum(1, keepdims=True)
    else:  # as_given: probabilities that need not sum to 1
        a = a / a.sum(1, keepdims=True) * rng.uniform(0.5, 1.0)
    a = a.astype(np.float32)
    if form == "log_probs":
        with np.errstate(divide="ignore"):
            a = np.log(a.astype(np.float64)).astype(np.float32)
    return a


case = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "rows": st.integers(1, 24),
    "cols": st.sampled_from([1, 2, 3, 7, 64, 255, 256, 257, 1000, 4099]),
    "p_form": st.sampled_from(FORMS),
    "q_form": st.sampled_from(FORMS),
    "normalize": st.sampled_from(["validate", "renormalize", "as_given"]),
    "base": st.sampled_from(BASES),
    "zeros": st.booleans(),
    "one_row": st.sampled_from([None, "p", "q"]),
    "dtype": st.sampled_from([np.float32, np.float64]),
})


@pytest.mark.parametrize("name", MEASURES)
@given(c=case)
def test_measures_match_scipy(backend, name, c):
    rng = np.random.default_rng(c["seed"])
    norm = c["normalize"]
    # logits are always normalised; 'as_given' log-probabilities are fine as they are
    pr = 1 if c["one_row"] == "p" else c["rows"]
    qr = 1 if c["one_row"] == "q" else c["rows"]
    p = make(rng, pr, c["cols"], c["p_form"], norm, c["zeros"])
    q = make(rng, qr, c["cols"], c["q_form"], norm, c["zeros"])
    if name == "entropy":
        q = None
    args = (p,) if q is None else (p, q)
    opts = dict(base=c["base"], normalize=norm, p_form=c["p_form"], backend=backend)
    if q is not None:
        opts["q_form"] = c["q_form"]
    want = refs.measure(name, p, q, c["p_form"], c["q_form"], norm, c["base"])
    cast = [a.astype(c["dtype"]) for a in args]  # float64 inputs: the crate's checked path
    got = getattr(kullback, name)(*cast, **opts)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    refs.assert_close(got, want, what=name)
    for red in ("sum", "mean"):
        total = getattr(kullback, name)(*cast, reduction=red, **opts)
        assert isinstance(total, float)
        w, tol = refs.reduce(want, red)
        refs.assert_close(total, w, abs_tol=tol, rel_tol=0.0, what=name + " " + red)


@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 24),
    cols=st.sampled_from([1, 2, 5, 64, 257, 3000]),
    q_form=st.sampled_from(FORMS),
    normalize=st.sampled_from(["validate", "renormalize"]),
    base=st.sampled_from(BASES[:3]),
    ignore=st.booleans(),
    weighted=st.booleans(),
    smoothing=st.sampled_from([0.0, 0.1, 0.5]),
    one_row=st.booleans(),
    tdtype=st.sampled_from([np.int64, np.int32, np.uint32, np.int16]),
)
def test_nll_matches_the_formula(backend, seed, rows, cols, q_form, normalize, base, ignore,
                                 weighted, smoothing, one_row, tdtype):
    rng = np.random.default_rng(seed)
    q = make(rng, 1 if one_row else rows, cols, q_form, normalize, zeros=False)
    t = rng.integers(0, cols, rows)
    ignore_index = None
    if ignore and tdtype != np.uint32:
        ignore_index = -100
        t[rng.random(rows) < 0.3] = -100
    t = t.astype(tdtype)
    w = (rng.random(cols) * 2).astype(np.float32) if weighted else None
    opts = dict(q_form=q_form, normalize=normalize, base=base, ignore_index=ignore_index,
                weight=w, label_smoothing=smoothing, backend=backend)
    want, counted = refs.nll(q, t, q_form, normalize, base, ignore_index, w, smoothing)
    got = kullback.nll(q, t, **opts)
    refs.assert_close(got, want, what="nll")
    for red in ("sum", "mean"):
        w_, tol = refs.reduce(want, red, counted)
        refs.assert_close(kullback.nll(q, t, reduction=red, **opts), w_, abs_tol=tol,
                          rel_tol=0.0, what="nll " + red)


def test_the_zero_conventions(backend):
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], np.float32)
    q = np.array([[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]], np.float32)
    kl = kullback.kl(p, q, backend=backend)
    ce = kullback.cross_entropy(p, q, backend=backend)
    assert np.isposinf(kl).all() and np.isposinf(ce).all()  # p > 0, q = 0
    # p = 0 against q = 0: the term is 0, not NaN
    assert kullback.kl([0.5, 0.5, 0.0], [0.5, 0.5, 0.0], backend=backend) == 0.0
    assert kullback.entropy([1.0, 0.0], backend=backend) == 0.0
    js = kullback.js(p, q, backend=backend, base=2)
    assert np.all(np.isfinite(js)) and np.all(js <= 1.0 + 1e-6)
    # a base below 1 turns +inf into -inf
    assert np.isneginf(kullback.kl(p, q, base=0.5, backend=backend)).all()
    # zeros are +0.0
    z = kullback.kl(p, p, backend=backend)
    assert np.all(np.signbit(z) == False)  # noqa: E712
    # a subnormal probability is valid and not zero
    tiny = np.float32(1e-40)
    s = kullback.entropy(np.array([1 - tiny, tiny], np.float32), backend=backend)
    assert s > 0
    # nll: +inf when q_t = 0; NaN mean over no counted weight
    assert np.isposinf(kullback.nll([[1.0, 0.0]], [1], backend=backend)[0])
    assert np.isnan(kullback.nll([[0.5, 0.5]], [-100], ignore_index=-100, reduction="mean",
                                 backend=backend))


def test_scipy_entropy_axis_note():
    """kullback.entropy(p) is scipy.stats.entropy(p, axis=-1), not its default axis 0."""
    stats = pytest.importorskip("scipy.stats")
    p = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], np.float32)
    refs.assert_close(kullback.entropy(p, backend="cpu"), stats.entropy(p, axis=-1))
    refs.assert_close(kullback.kl(p, p[::-1].copy(), backend="cpu"),
                      stats.entropy(p, p[::-1], axis=-1))
