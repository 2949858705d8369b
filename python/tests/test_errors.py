"""The error contract: ValueError for bad values, shapes and options (the
crate's message, naming argument, row and column), TypeError for dtypes that
are not distributions or class indices, MemoryError when memory cannot be
had, RuntimeError for the device; and no input crashes the interpreter."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, strategies as st

import kullback

P = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], np.float32)


def raises(exc, match, fn, *args, **kw):
    with pytest.raises(exc) as e:
        fn(*args, **kw)
    assert match in str(e.value), str(e.value)
    return str(e.value)


def test_bad_values_name_argument_row_and_column(backend):
    bad = P.copy()
    bad[1, 2] = np.nan
    raises(ValueError, "p row 1, column 2: NaN", kullback.entropy, bad, backend=backend)
    raises(ValueError, "q row 1, column 2: NaN", kullback.kl, P, bad, backend=backend)
    neg = P.copy()
    neg[0, 1] = -0.5
    raises(ValueError, "p row 0, column 1: a negative probability", kullback.js, neg, P,
           backend=backend)
    inf = P.copy()
    inf[1, 0] = np.inf
    raises(ValueError, "q row 1, column 0: an infinite value", kullback.cross_entropy, P, inf,
           backend=backend)
    msg = raises(ValueError, "p row 1 sums to 1.5", kullback.entropy, P * [[1.0], [1.5]],
                 backend=backend)
    assert "normalize='renormalize'" in msg  # the crate's hint in Python's spelling
    raises(ValueError, "p row 0 cannot be normalised", kullback.entropy, np.zeros((1, 3)),
           normalize="renormalize", backend=backend)
    raises(ValueError, "p row 0, column 0", kullback.entropy, [[np.inf, 0.0]], p_form="logits",
           backend=backend)


def test_float64_values_that_change_in_float32():
    raises(ValueError, "p row 0, column 1: a non-zero f64 value that underflows to 0 in f32",
           kullback.entropy, np.array([[1.0, 1e-50]]), normalize="as_given")
    raises(ValueError, "q row 1, column 0: a finite f64 value that overflows in f32",
           kullback.kl, np.full((2, 2), 0.5), np.array([[0.0, 0.0], [1e300, 0.0]]),
           q_form="logits")
    raises(ValueError, "weights row 0, column 1", kullback.nll, [[0.5, 0.5]], [0],
           weight=np.array([1.0, 1e300]))


def test_shapes():
    raises(ValueError, "shape mismatch: p is 2 x 3, q is 3 x 3", kullback.kl, P,
           np.full((3, 3), 1 / 3, np.float32))
    raises(ValueError, "must be 1-D (one distribution) or 2-D", kullback.kl,
           np.zeros((2, 2, 2)), P)
    raises(ValueError, "must be 1-D", kullback.entropy, np.float32(1.0))
    raises(ValueError, "p is empty: 0 rows x 3 columns", kullback.entropy, np.zeros((0, 3)))
    raises(ValueError, "p is empty", kullback.entropy, [])
    raises(ValueError, "3 targets, but q", kullback.nll, P, [0, 1, 2])
    raises(ValueError, "targets row 1: class 3 is outside [0, 3)", kullback.nll, P, [0, 3])
    raises(ValueError, "targets row 0: class -100 is outside [0, 3)", kullback.nll, P,
           [-100, 0])
    raises(ValueError, "targets must be an integer or a 1-D array", kullback.nll, P,
           [[0, 1]])
    raises(ValueError, "weight must be 1-D", kullback.nll, P, [0, 1], weight=[[1.0]])
    raises(ValueError, "targets row 1: class 18446744073709551615 is outside the range",
           kullback.nll, P, np.array([0, 2**64 - 1], np.uint64))


def test_options():
    raises(ValueError, "reduction must be 'none', 'sum' or 'mean', got 'avg'", kullback.kl,
           P, P, reduction="avg")
    raises(ValueError, "log base must be finite, > 0 and != 1, got 1", kullback.kl, P, P,
           base=1)
    raises(ValueError, "log base", kullback.kl, P, P, base=-2.0)
    raises(TypeError, "base must be None or a number", kullback.kl, P, P, base="two")
    raises(ValueError, "normalize must be", kullback.kl, P, P, normalize="sometimes")
    raises(ValueError, "p_form must be 'probs', 'log_probs' or 'logits', got 'odds'",
           kullback.kl, P, P, p_form="odds")
    raises(ValueError, "q_form must be", kullback.kl, P, P, q_form=3)
    raises(ValueError, "tolerance must be finite and >= 0", kullback.kl, P, P, tolerance=-1)
    raises(ValueError, "backend must be 'auto', 'gpu' or 'cpu', got 'tpu'", kullback.kl, P,
           P, backend="tpu")
    raises(ValueError, "label smoothing", kullback.nll, P, [0, 1], label_smoothing=1.5)
    raises(ValueError, "weights", kullback.nll, P, [0, 1], weight=[1.0, -1.0, 1.0])
    raises(ValueError, "give backend or context, not both", kullback.kl, P, P,
           backend="cpu", context=kullback.Context("cpu"))
    raises(TypeError, "context must be a kullback.Context", kullback.kl, P, P,
           context="cpu")


def test_dtypes():
    raises(TypeError, "p: cannot read dtype complex128", kullback.entropy,
           np.array([[0.5 + 0j, 0.5]]))
    raises(TypeError, "q: cannot read dtype <U1", kullback.kl, P, [["a", "b", "c"]] * 2)
    raises(TypeError, "cannot read dtype object", kullback.entropy, [[0.5, None]])
    raises(TypeError, "targets must be integer class indices, got dtype float64",
           kullback.nll, P, [0.0, 1.0])
    raises(TypeError, "targets must be integer class indices, got dtype bool", kullback.nll,
           P, [True, False])


def _run(code, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=e, timeout=300)


def test_no_adapter_is_a_runtime_error():
    """backend='gpu' on a machine with no adapter (here: Vulkan pointed at no
    driver, GL off): RuntimeError with the crate's message and Python hint."""
    r = _run("""
        import kullback
        assert kullback.backends()["gpu"] is None, kullback.backends()
        assert kullback.backends()["available"] == ["cpu"]
        try:
            kullback.kl([0.5, 0.5], [0.5, 0.5], backend="gpu")
        except RuntimeError as e:
            assert "no GPU adapter" in str(e) and "backend='cpu'" in str(e), str(e)
            print("ok")
        """, env={"VK_ICD_FILENAMES": "/nonexistent.json", "VK_DRIVER_FILES": "/nonexistent.json",
                  "WGPU_BACKEND": "vulkan"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_out_of_memory_is_a_memory_error():
    """An allocation sized by the input that fails (address space capped
    below what the result needs) is MemoryError naming what and how many
    bytes: the process lives on and the next call works."""
    r = _run("""
        import resource
        import numpy as np
        import kullback
        rows = 24_000_000
        p = np.full((rows, 2), 0.5, np.float32)        # 192 MB, allocated before the cap
        kullback.entropy(p[:1000], backend="cpu")     # threads and buffers made
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vm + 48 * 2**20, hard))
        try:
            kullback.entropy(p, backend="cpu")         # 96 MB of results do not fit
        except MemoryError as e:
            print("MemoryError:", e)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        assert kullback.entropy(p[:4], backend="cpu").shape == (4,)
        print("alive")
        """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MemoryError: out of memory:" in r.stdout and "bytes" in r.stdout, r.stdout
    assert r.stdout.strip().endswith("alive")


hostile_values = st.sampled_from(
    [0.0, -0.0, 1.0, 0.5, -1.0, np.nan, np.inf, -np.inf, 1e-45, 1e-40, 3.4e38, 1e300, -1e300,
     1e-320])
hostile = st.fixed_dictionaries({
    "shape": st.sampled_from([(0,), (3,), (1, 1), (2, 3), (0, 4), (4, 0), (2, 2, 2), (5, 1),
                              (1, 6)]),
    "values": st.lists(hostile_values, min_size=1, max_size=8),
    "dtype": st.sampled_from(["float32", "float64", "float16", "int32", "bool", "complex64"]),
    "order": st.sampled_from(["C", "F", "strided"]),
})


def build(h):
    n = int(np.prod(h["shape"]))
    vals = (h["values"] * (n // len(h["values"]) + 1))[:n]
    with np.errstate(all="ignore"):
        a = np.array(vals, dtype=np.float64).astype(h["dtype"]).reshape(h["shape"])
    if h["order"] == "F":
        a = np.asfortranarray(a)
    elif h["order"] == "strided" and a.ndim >= 1 and a.shape[-1] > 0:
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    return a


@given(p=hostile, q=hostile, measure=st.sampled_from(["entropy", "cross_entropy", "kl", "js"]),
       reduction=st.sampled_from(["none", "sum", "mean", "bogus"]),
       base=st.sampled_from([None, 2, 0.5, 1, -1.0, np.nan]),
       normalize=st.sampled_from(["validate", "renormalize", "as_given", True]),
       forms=st.tuples(st.sampled_from(["probs", "log_probs", "logits"]),
                       st.sampled_from(["probs", "log_probs", "logits"])))
def test_hostile_inputs_raise_or_answer(backend, p, q, measure, reduction, base, normalize,
                                        forms):
    """Whatever comes in, a result or one of the documented exceptions."""
    args = [build(p)] if measure == "entropy" else [build(p), build(q)]
    opts = dict(reduction=reduction, base=base, normalize=normalize, p_form=forms[0],
                backend=backend)
    if measure != "entropy":
        opts["q_form"] = forms[1]
    try:
        out = getattr(kullback, measure)(*args, **opts)
    except (ValueError, TypeError):
        return
    assert isinstance(out, (float, np.ndarray))


@given(q=hostile, targets=st.lists(st.integers(-2**40, 2**40), min_size=0, max_size=6),
       ignore=st.sampled_from([None, -1, 0]), smoothing=st.sampled_from([0.0, 0.3, -1.0, 2.0]),
       weight=st.sampled_from([None, "ones", "negative", "nan"]))
def test_hostile_nll_raises_or_answers(backend, q, targets, ignore, smoothing, weight):
    qa = build(q)
    cols = qa.shape[-1] if qa.ndim else 1
    w = {None: None, "ones": np.ones(cols), "negative": -np.ones(cols),
         "nan": np.full(cols, np.nan)}[weight]
    try:
        out = kullback.nll(qa, np.array(targets, np.int64), ignore_index=ignore,
                           label_smoothing=smoothing, weight=w, backend=backend)
    except (ValueError, TypeError):
        return
    assert isinstance(out, (float, np.ndarray))
