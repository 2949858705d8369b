"""Inputs: zero-copy reads, the conversion table, shapes of results."""

import tracemalloc

import numpy as np
import pytest

import kullback
from kullback import _kullback

rng = np.random.default_rng(7)


def rows(r, c, dtype=np.float32):
    a = rng.random((r, c)) + 1e-3
    return (a / a.sum(1, keepdims=True)).astype(dtype)


def bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_c_contiguous_floats_are_read_where_they_lie(dtype):
    a = rows(64, 300, dtype)
    assert _kullback._address(a) == a.ctypes.data
    assert _kullback._address(a[10:20]) == a[10:20].ctypes.data  # a C-contiguous view
    assert _kullback._address(a[3]) == a[3].ctypes.data          # one row
    ro = a.copy()
    ro.flags.writeable = False                                   # read-only is fine
    assert _kullback._address(ro) == ro.ctypes.data
    # not C-contiguous: converted (once) into a copy
    f, s = np.asfortranarray(a), a[:, ::2]
    assert _kullback._address(f) != f.ctypes.data
    assert _kullback._address(s) != s.ctypes.data


def test_an_f32_call_allocates_no_input_sized_buffer():
    """tracemalloc sees NumPy's allocations (and Python's): a call on two 32 MiB
    float32 arrays allocates far less than one of them (the 8 KiB result, and
    whatever the interpreter allocates on the way), a Fortran-ordered input
    its copy (the positive control: the measurement sees a copy when there is
    one)."""
    p, q = rows(2048, 4096), rows(2048, 4096)
    kullback.kl(p, q, backend="cpu")  # warm: contexts, pools, threads
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        kullback.kl(p, q, backend="cpu")
        _, peak = tracemalloc.get_traced_memory()
        assert peak < 1 << 20, peak
        pf = np.asfortranarray(p)
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        kullback.kl(pf, q, backend="cpu")
        _, peak = tracemalloc.get_traced_memory()
        assert peak - base >= p.nbytes, (peak, base)
    finally:
        tracemalloc.stop()


def test_float64_gives_the_float32_results_bit_for_bit(backend):
    p, q = rows(33, 257, np.float64), rows(33, 257, np.float64)
    p32, q32 = p.astype(np.float32), q.astype(np.float32)
    assert np.array_equal(bits(kullback.js(p, q, backend=backend)),
                          bits(kullback.js(p32, q32, backend=backend)))
    # mixed: float64 p, float32 q
    assert np.array_equal(bits(kullback.kl(p, q32, backend=backend)),
                          bits(kullback.kl(p32, q32, backend=backend)))


def test_half_precision_is_widened_exactly(backend):
    p16 = rows(20, 64).astype(np.float16)
    q16 = rows(20, 64).astype(np.float16)
    p32, q32 = p16.astype(np.float32), q16.astype(np.float32)
    assert np.array_equal(bits(kullback.kl(p16, q16, normalize="renormalize", backend=backend)),
                          bits(kullback.kl(p32, q32, normalize="renormalize", backend=backend)))
    ml_dtypes = pytest.importorskip("ml_dtypes")
    pb = rows(20, 64).astype(ml_dtypes.bfloat16)
    assert np.array_equal(bits(kullback.entropy(pb, normalize="renormalize", backend=backend)),
                          bits(kullback.entropy(pb.astype(np.float32), normalize="renormalize",
                                                backend=backend)))


def test_other_inputs_are_converted(backend):
    p = rows(5, 7)
    want = kullback.entropy(p.astype(np.float64), backend=backend)
    assert np.array_equal(bits(kullback.entropy(p.tolist(), backend=backend)), bits(want))
    assert np.array_equal(bits(kullback.entropy(np.asfortranarray(p), backend=backend)),
                          bits(kullback.entropy(p, backend=backend)))
    swapped = p.astype(">f4")
    assert np.array_equal(bits(kullback.entropy(swapped, backend=backend)),
                          bits(kullback.entropy(p, backend=backend)))
    counts = np.array([[3, 1, 0], [10, 5, 5]], np.int64)
    assert np.array_equal(
        bits(kullback.entropy(counts, normalize="renormalize", backend=backend)),
        bits(kullback.entropy(counts.astype(np.float32), normalize="renormalize",
                              backend=backend)))
    # an unaligned float32 array (as unpickled from a network frame) is copied, not misread
    buf = np.zeros(p.nbytes + 1, np.uint8)
    unaligned = np.frombuffer(buf.data, dtype=np.float32, count=p.size, offset=1).reshape(p.shape)
    unaligned[...] = p
    assert not unaligned.flags.aligned
    assert np.array_equal(bits(kullback.entropy(unaligned, backend=backend)),
                          bits(kullback.entropy(p, backend=backend)))


def test_targets_of_every_integer_type(backend):
    q = rows(6, 5)
    t = np.array([0, 4, 2, 1, 3, 0])
    want = kullback.nll(q, t, backend=backend)
    for dt in (np.int64, np.int32, np.uint32, np.int8, np.uint16, np.uint64):
        assert np.array_equal(bits(kullback.nll(q, t.astype(dt), backend=backend)), bits(want))
    assert np.array_equal(bits(kullback.nll(q, t.tolist(), backend=backend)), bits(want))
    assert kullback.nll(q[2], 2, backend=backend) == float(want[2])  # one target: a float


def test_result_shapes_and_types():
    p, q = rows(4, 3), rows(4, 3)
    assert kullback.kl(p, q).shape == (4,)
    assert kullback.kl(p, q).dtype == np.float32
    assert isinstance(kullback.kl(p[0], q[0]), float)
    assert isinstance(kullback.kl(p, q, reduction="sum"), float)
    assert isinstance(kullback.kl(p, q, reduction="batchmean"), float)
    assert kullback.kl(p, q, reduction="batchmean") == kullback.kl(p, q, reduction="mean")
    # one row against many (1-D or (1, n)), either side
    assert kullback.kl(p[0], q).shape == (4,)
    assert kullback.kl(p, q[:1]).shape == (4,)
    assert np.array_equal(kullback.kl(p[0], q), kullback.kl(np.tile(p[0], (4, 1)), q))
    # 1 x n 2-D: an array of one value
    assert kullback.kl(p[:1], q[:1]).shape == (1,)
    # nll: q of one row shared by every target
    assert kullback.nll(q[0], [0, 1, 2]).shape == (3,)
    # forms and bases accept their spellings
    assert kullback.kl(p, q, p_form="probs", q_form="Probs").shape == (4,)
    lq = np.log(q)
    assert np.allclose(kullback.kl(p, lq, q_form="log-probs"), kullback.kl(p, q), atol=1e-6)
    assert kullback.entropy(p, base=np.e).tolist() == kullback.entropy(p).tolist()
    assert kullback.entropy(p, normalize=True).shape == (4,)
    assert kullback.DEFAULT_TOLERANCE == 1e-3


def test_half_arrays_are_read_where_they_lie():
    p16 = rows(4, 8).astype(np.float16)
    assert _kullback._address(p16) == p16.ctypes.data
    ml_dtypes = pytest.importorskip("ml_dtypes")
    pb = rows(4, 8).astype(ml_dtypes.bfloat16)
    assert _kullback._address(pb) == pb.ctypes.data
    # not C-contiguous: one copy, of the same dtype (still read as halves)
    pf = np.asfortranarray(rows(4, 8).astype(np.float16))
    assert np.array_equal(bits(kullback.entropy(pf, normalize="renormalize", backend="cpu")),
                          bits(kullback.entropy(np.ascontiguousarray(pf), normalize="renormalize",
                                                backend="cpu")))
