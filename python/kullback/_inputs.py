"""How inputs are converted: the one table, used by the native module.

A C-contiguous NumPy array of float32 or float64 never comes here: the native
module reads it where it lies (float32 as it is; float64 through the library's
checked conversion, value by value where it is read). Everything else is
converted once, here, into a C-contiguous array the native module then reads
the same way:

=====================================  ==========================================
input                                  converted to
=====================================  ==========================================
float32/float64, not C-contiguous      a C-contiguous, aligned copy of the same
or not aligned                         dtype
float16, bfloat16 (ml_dtypes), not     a C-contiguous, aligned copy of the same
C-contiguous or not aligned            dtype (read by the library's half kernels)
byte-swapped float32 (float16)         native float32 (float16; exact)
longdouble                             float64 (rounded), then as float64
integers, bools                        float64 (exact below 2**53), then as
                                       float64
lists, tuples, other sequences         ``numpy.asarray`` first, then as above
anything else (complex, object, ...)   ``TypeError``
=====================================  ==========================================

C-contiguous float16 and bfloat16 arrays never come here either: the native
module reads them where they lie, as halves.

Targets (and a sparse teacher's indices): int32, int64 and uint32 arrays are
read as they are; other integer arrays are converted to int64; a Python int is
one target. A row mask: bool and uint8 arrays are read as they are; other
integer arrays become ``mask != 0``.
"""

import numpy as np

_I64_MAX = np.iinfo(np.int64).max

# ml_dtypes' float types (kind 'V' to NumPy) whose every value is a float32.
_NARROW_FLOATS = ("bfloat16",)


def floats(obj, arg):
    """``obj`` as a C-contiguous float32 or float64 array (see the module docs)."""
    a = np.asarray(obj)
    dt = a.dtype
    if dt.kind == "f":
        target = {2: np.float16, 4: np.float32}.get(dt.itemsize, np.float64)
    elif dt.kind in "iub":
        target = np.float64
    elif dt.name in _NARROW_FLOATS:
        target = dt
    else:
        raise TypeError(
            "%s: cannot read dtype %s as distributions (use a float or integer array)" % (arg, dt)
        )
    return _readable(a, target)


def _readable(a, dtype):
    # C order and aligned (an array unpickled from a network frame may not
    # be): a copy only where needed
    return np.require(a, dtype=dtype, requirements=["C_CONTIGUOUS", "ALIGNED"])


def targets(obj, arg="targets"):
    """``obj`` as a C-contiguous int32, int64 or uint32 array (0-d: one target)."""
    a = np.asarray(obj)
    dt = a.dtype
    if dt.kind not in "iu":
        raise TypeError("%s must be integer class indices, got dtype %s" % (arg, dt))
    if dt.kind == "u" and dt.itemsize >= 8 and a.size:
        big = np.flatnonzero(a.reshape(-1) > _I64_MAX)
        if big.size:
            i = int(big[0])
            raise ValueError(
                "%s row %d: class %d is outside the range of int64" % (arg, i, int(a.reshape(-1)[i]))
            )
    return _readable(a, np.int64)


def mask(obj):
    """A row mask as a C-contiguous bool array: bool as it is, integers as
    ``!= 0`` (uint8 arrays are read as they are and never come here)."""
    a = np.asarray(obj)
    dt = a.dtype
    if dt.kind == "b":
        return _readable(a, np.bool_)
    if dt.kind in "iu":
        return _readable(a != 0, np.bool_)
    raise TypeError("mask must be bool or integer (0: the row is ignored), got dtype %s" % dt)
