"""The SciPy/NumPy/PyTorch reference corpus of the Rust tests
(tests/data/manifest.json and its .npy files, made by
tests/data/make_reference.py) through the binding, on the CPU and the GPU,
under every reduction: 'none' against the stored per-row values, sum and mean
against the stored totals, each within the case's tolerance (as
tests/conformance.rs and tests/cli_scipy.rs do in Rust)."""

import json
import math
import pathlib

import numpy as np
import pytest

import kullback
import refs

DATA = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
CASES = MANIFEST["cases"]


def load(case, key):
    f = case["files"].get(key)
    return None if f is None else np.load(DATA / f)


def base_of(case):
    b = case["base"]
    return None if b == "e" else float(b)


def test_the_corpus_is_there():
    assert len(CASES) >= 90
    assert {c["measure"] for c in CASES} == {"entropy", "cross_entropy", "kl", "js", "nll"}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_stored_case(backend, case):
    expected = load(case, "expected")
    reduced = load(case, "reduced")  # [sum, mean, counted]
    abs_tol, rel_tol = case["abs_tol"], case["rel_tol"]
    norm = case["normalization"]
    base = base_of(case)
    ctx = kullback.Context(backend) if backend == "cpu" else None
    for reduction in ("none", "sum", "mean"):
        if case["measure"] == "nll":
            q = load(case, "q").reshape(case["q_rows"], case["cols"])
            t = load(case, "targets")
            # each reduction passes the targets as another integer type, as in Rust
            if reduction == "sum":
                t = t.astype(np.int32)
            elif reduction == "mean" and case["ignore_index"] is None and (t >= 0).all():
                t = t.astype(np.uint32)
            w = load(case, "weights")
            got = kullback.nll(q, t, reduction=reduction, base=base, normalize=norm,
                               q_form=case["q_form"], ignore_index=case["ignore_index"],
                               weight=w, label_smoothing=case["label_smoothing"],
                               backend=backend)
        else:
            p = load(case, "p").reshape(case["p_rows"], case["cols"])
            q = load(case, "q")
            args = [p]
            opts = dict(reduction=reduction, base=base, normalize=norm, p_form=case["p_form"])
            if q is not None:
                args.append(q.reshape(case["q_rows"], case["cols"]))
                opts["q_form"] = case["q_form"]
            fn = getattr(kullback, case["measure"])
            got = fn(*args, context=ctx, **opts) if ctx else fn(*args, backend=backend, **opts)
        what = "%s [%s, %s]" % (case["name"], backend, reduction)
        if reduction == "none":
            refs.assert_close(got, expected, abs_tol, rel_tol, what)
            continue
        total, tol = refs.reduce(expected, reduction, reduced[2] if case["measure"] == "nll"
                                 else None)
        # the stored totals are those of the stored rows (sanity of the data)
        stored = reduced[0 if reduction == "sum" else 1]
        assert (math.isnan(stored) and math.isnan(total)) or math.isclose(
            stored, total, rel_tol=1e-9, abs_tol=1e-12) or stored == total, what
        tol = case["abs_tol"] * expected.size + case["rel_tol"] * np.abs(
            expected[np.isfinite(expected)]).sum()
        if reduction == "mean":
            tol = tol / reduced[2] if reduced[2] else 0.0
        refs.assert_close(got, stored, abs_tol=tol, rel_tol=0.0, what=what)
