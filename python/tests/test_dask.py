"""kullback.dask on a real distributed.LocalCluster (2 worker processes):
reduction 'none' equals the in-memory call bit for bit (backend 'cpu' and
'gpu'), sum and mean within the crate's bound, with uneven row chunks,
differently chunked arguments, broadcast rows, NLL options, and errors that
name the row of the whole array."""

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import kullback  # noqa: E402
import kullback.dask as kd  # noqa: E402
import refs  # noqa: E402

rng = np.random.default_rng(2024)
ROWS, COLS = 4003, 301
UNEVEN = (1, 700, 13, 1500, 0, 989, 800)  # 4003 rows in 7 chunks, one of them empty


def dist(r, c, zeros):
    a = rng.random((r, c), dtype=np.float32) + np.float32(1e-4)
    if zeros:
        a[rng.random((r, c)) < 0.05] = 0
    a[:, 0] += 1
    return a / a.sum(1, keepdims=True, dtype=np.float64).astype(np.float32)


P, Q = dist(ROWS, COLS, True), dist(ROWS, COLS, False)  # zeros in p only: finite KL
P[5, 7], Q[5, 7] = 0.25, 0.0  # row 5: p > 0 against q = 0, KL and CE +inf
P[5] /= P[5].sum(dtype=np.float64).astype(np.float32)
Q[5] /= Q[5].sum(dtype=np.float64).astype(np.float32)
T = rng.integers(0, COLS, ROWS)
T[rng.random(ROWS) < 0.1] = -100
W = (rng.random(COLS) * 2).astype(np.float32)


def bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def test_none_is_bit_for_bit(dask_client, backend):
    p = da.from_array(P, chunks=(UNEVEN, COLS))
    q = da.from_array(Q, chunks=((2000, 2003), (150, 151)))  # other rows, split columns
    for name in ("entropy", "cross_entropy", "kl", "js"):
        args_d, args_m = ((p,), (P,)) if name == "entropy" else ((p, q), (P, Q))
        got = getattr(kd, name)(*args_d, backend=backend)
        assert isinstance(got, da.Array) and got.shape == (ROWS,)
        got = got.compute()
        want = getattr(kullback, name)(*args_m, backend=backend)
        assert got.dtype == np.float32
        assert np.array_equal(bits(got), bits(want)), name
    t = da.from_array(T, chunks=((1000,) * 4 + (3,),))
    opts = dict(q_form="probs", ignore_index=-100, weight=W, label_smoothing=0.1,
                backend=backend)
    got = kd.nll(p, t, **opts).compute()
    assert np.array_equal(bits(got), bits(kullback.nll(P, T, **opts)))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_sum_and_mean_are_combined_exactly(dask_client, reduction):
    p = da.from_array(P, chunks=(UNEVEN, COLS))
    q = da.from_array(Q, chunks=(UNEVEN, COLS))
    mask = np.isfinite(refs.measure("kl", P, Q))
    pf, qf = P[mask], Q[mask]
    pd, qd = da.from_array(pf, chunks=(UNEVEN[:-1] + (UNEVEN[-1] - (~mask).sum(),), COLS)), \
        da.from_array(qf, chunks=(997, COLS))
    for name, dargs, margs in (("entropy", (p,), (P,)), ("js", (p, q), (P, Q)),
                               ("kl", (pd, qd), (pf, qf))):
        got = getattr(kd, name)(*dargs, reduction=reduction).compute()
        assert got.shape == () and got.dtype == np.float32
        per_row = refs.measure(name, *margs)
        want, tol = refs.reduce(per_row, reduction)
        refs.assert_close(float(got), want, abs_tol=tol, rel_tol=0.0, what=name)
        in_memory = getattr(kullback, name)(*margs, reduction=reduction)
        refs.assert_close(float(got), in_memory, abs_tol=2 * tol, rel_tol=0.0, what=name)
    # +inf rows make an infinite total, as in memory
    assert np.isposinf(kd.kl(p, q, reduction=reduction).compute())
    assert (~mask).sum() == 1
    # NLL: the weighted mean is sum(w l) / sum(w), over the targets not ignored
    t = da.from_array(T, chunks=(UNEVEN,))
    opts = dict(ignore_index=-100, weight=W, label_smoothing=0.2)
    got = float(kd.nll(p, t, reduction=reduction, **opts).compute())
    per_row, counted = refs.nll(P, T, ignore_index=-100, weight=W, label_smoothing=0.2)
    want, tol = refs.reduce(per_row, reduction, counted)
    refs.assert_close(got, want, abs_tol=tol, rel_tol=0.0, what="nll")
    refs.assert_close(got, kullback.nll(P, T, reduction=reduction, **opts), abs_tol=2 * tol,
                      rel_tol=0.0, what="nll in memory")


def test_mean_over_no_counted_weight_is_nan(dask_client):
    t = da.full((ROWS,), -100, chunks=(UNEVEN,))
    got = kd.nll(da.from_array(P, chunks=(UNEVEN, COLS)), t, ignore_index=-100,
                 reduction="mean").compute()
    assert np.isnan(got)


def test_single_rows_and_1d(dask_client, backend):
    q = da.from_array(Q, chunks=(UNEVEN, COLS))
    got = kd.kl(P[3], q, backend=backend).compute()  # one p row against every q row
    assert np.array_equal(bits(got), bits(kullback.kl(P[3], Q, backend=backend)))
    got = kd.js(q, da.from_array(P[:1]), backend=backend).compute()
    assert np.array_equal(bits(got), bits(kullback.js(Q, P[:1], backend=backend)))
    one = kd.kl(P[0], Q[1], backend=backend)
    assert one.shape == ()
    assert float(one.compute()) == kullback.kl(P[0], Q[1], backend=backend)
    got = kd.nll(Q[0], da.from_array(np.abs(T) % COLS, chunks=(UNEVEN,)), backend=backend)
    assert np.array_equal(bits(got.compute()),
                          bits(kullback.nll(Q[0], np.abs(T) % COLS, backend=backend)))


def test_errors_name_the_row_of_the_whole_array(dask_client):
    bad = P.copy()
    bad[2500, 17] = np.nan
    with pytest.raises(ValueError, match=r"p row 2500, column 17: NaN"):
        kd.kl(da.from_array(bad, chunks=(UNEVEN, COLS)), Q).compute()
    with pytest.raises(ValueError, match=r"q row 1701 sums to"):
        qq = Q.copy()
        qq[1701] *= 2
        kd.js(P, da.from_array(qq, chunks=(UNEVEN, COLS)), reduction="mean").compute()
    tt = np.abs(T) % COLS
    tt[3999] = COLS + 5
    with pytest.raises(ValueError, match=r"targets row 3999: class 306 is outside \[0, 301\)"):
        kd.nll(da.from_array(P, chunks=(UNEVEN, COLS)), da.from_array(tt, chunks=(UNEVEN,)),
               reduction="sum").compute()
    # a bad value in a single row given to every block keeps its own row 0
    one = P[:1].copy()
    one[0, 3] = -1.0
    with pytest.raises(ValueError, match=r"p row 0, column 3: a negative probability"):
        kd.kl(one, da.from_array(Q, chunks=(UNEVEN, COLS))).compute()


def test_shapes_and_options_fail_when_the_graph_is_built():
    p = da.from_array(P, chunks=(UNEVEN, COLS))
    with pytest.raises(ValueError, match="shape mismatch: p is 4003 x 301, q is 4002 x 301"):
        kd.kl(p, Q[:-1])
    with pytest.raises(ValueError, match="reduction must be"):
        kd.kl(p, Q, reduction="avg")
    with pytest.raises(ValueError, match="log base must be"):
        kd.entropy(p, base=1)
    with pytest.raises(ValueError, match="q_form must be"):
        kd.nll(p, T, q_form="odds")
    with pytest.raises(ValueError, match="label smoothing"):
        kd.nll(p, T, label_smoothing=3)
    with pytest.raises(ValueError, match="weights row 0, column 2: a negative"):
        kd.nll(p, T, weight=np.array([1, 1, -1] + [1] * (COLS - 3), np.float32))
    with pytest.raises(ValueError, match="4002 targets, but q"):
        kd.nll(p, T[:-1])
    with pytest.raises(ValueError, match="backend must be"):
        kd.kl(p, Q, backend="tpu")
    with pytest.raises(ValueError, match="must be 1-D or 2-D"):
        kd.entropy(da.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="p is empty: 0 rows x 301 columns"):
        kd.entropy(p[:0])
    with pytest.raises(ValueError, match="q is empty: 4003 rows x 0 columns"):
        kd.kl(p, p[:, :0])


# ---------------------------------------------------------------------------
# Training calls: loss and gradient by blocks of rows.

S = (rng.standard_normal((ROWS, 40)) * 3).astype(np.float32)
TT = (rng.standard_normal((ROWS, 40)) * 3).astype(np.float32)
MASK = rng.random(ROWS) < 0.9
Y = rng.integers(0, 40, ROWS)
Y[rng.random(ROWS) < 0.1] = -100


def test_training_by_blocks(dask_client, backend):
    import dask
    s = da.from_array(S, chunks=(UNEVEN, 40))
    t = da.from_array(TT, chunks=((2000, 2003), (20, 20)))  # other rows, split columns
    m = da.from_array(MASK, chunks=1000)
    opts = dict(divergence="jsd", beta=0.3, temperature=2.0, teacher_grad=True, backend=backend)
    for red in ("none", "sum", "mean"):
        got = dask.compute(*kd.distill(s, t, mask=m, reduction=red, **opts))
        want = kullback.distill(S, TT, mask=MASK, reduction=red, **opts)
        if red == "none":  # rows are independent: the very same bits
            assert np.array_equal(bits(got[0]), bits(want[0]))
        else:
            assert abs(float(got[0]) - want[0]) <= 2e-5 * abs(want[0]) + 2e-6
        for g, w in zip(got[1:], want[1:]):
            # a mean's too: the blocks scale by the whole call's count
            assert g.shape == w.shape and g.dtype == np.float32
            assert np.array_equal(bits(g), bits(w)), red
    # a sparse teacher (indices and log-probabilities split by the same rows), half gradients
    x = TT.astype(np.float64)
    lp = x - x.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    idx = np.argsort(-lp, axis=1)[:, :5].astype(np.int64)
    lk = np.take_along_axis(lp, idx, 1).astype(np.float32)
    for gd, red in (("float32", "none"), ("float16", "none"), ("bfloat16", "mean")):
        if gd == "bfloat16":
            pytest.importorskip("ml_dtypes")
        loss, g = dask.compute(*kd.distill(s, teacher_indices=da.from_array(idx, chunks=500),
                                           teacher_logprobs=lk, grad_dtype=gd, reduction=red,
                                           backend=backend))
        wl, wg = kullback.distill(S, teacher_indices=idx, teacher_logprobs=lk, grad_dtype=gd,
                                  reduction=red, backend=backend)
        if red == "none":
            assert np.array_equal(bits(loss), bits(wl))
        else:
            assert abs(float(loss) - wl) <= 2e-5 * abs(wl) + 2e-6
        view = np.uint32 if gd == "float32" else np.uint16
        assert g.dtype == wg.dtype and np.array_equal(g.view(view), wg.view(view)), gd
    # the NLL with its options
    y = da.from_array(Y, chunks=((1000,) * 4 + (3,),))
    nopts = dict(ignore_index=-100, weight=W[:40], label_smoothing=0.1, backend=backend)
    for red in ("none", "sum", "mean"):  # the weighted mean's count added in row order
        loss, g = dask.compute(*kd.nll_grad(s, y, reduction=red, **nopts))
        wl, wg = kullback.nll_grad(S, Y, reduction=red, **nopts)
        assert np.array_equal(bits(g), bits(wg)), red
        if red == "none":
            assert np.array_equal(bits(loss), bits(wl))


def test_training_errors_name_the_whole_arrays_row(dask_client):
    bad = S.copy()
    bad[2500, 3] = np.nan
    s = da.from_array(bad, chunks=(UNEVEN, 40))
    with pytest.raises(ValueError, match="row 2500"):
        kd.distill(s, TT, backend="cpu")[0].compute()
    with pytest.raises(ValueError, match="row 2500"):
        kd.nll_grad(s, Y, ignore_index=-100, backend="cpu")[1].compute()
    # options and shapes fail when the graph is built
    with pytest.raises(ValueError, match="use forward-kl"):
        kd.distill(S, TT, divergence="jsd", beta=0.0)
    with pytest.raises(ValueError, match="rows"):
        kd.distill(S, TT[:10])
