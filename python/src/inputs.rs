//! Python objects → the crate's inputs, read without a copy where possible.
//!
//! A C-contiguous NumPy array of float32 (float64) is borrowed as it is and
//! handed to the crate as `Values::F32` (`Values::F64`, whose values the crate
//! checks and converts where it reads them); float16 and ml_dtypes' bfloat16
//! likewise, as `Values::F16` / `Values::BF16`, which the crate's kernels
//! read as half (half the bytes). Anything else goes once through
//! `kullback._inputs` (the conversion table lives there), and the converted
//! array is borrowed the same way. Targets: int32, int64 and uint32 arrays are
//! borrowed; class weights are small and taken as f32 (f64 through the crate's
//! checked conversion).

use kullback::half::{bf16, f16};
use kullback::{Arg, Batch, Form, Targets, Values};
use numpy::{
    PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// `kullback._inputs`' functions, looked up once.
fn helper<'py>(py: Python<'py>, name: &'static str) -> PyResult<Bound<'py, PyAny>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let m = MODULE.get_or_try_init(py, || py.import("kullback._inputs").map(Bound::unbind))?;
    m.bind(py).getattr(name)
}

fn dims(a: &Bound<'_, PyUntypedArray>, arg: &str) -> PyResult<(usize, usize, usize)> {
    let s = a.shape();
    match *s {
        [cols] => Ok((1, 1, cols)),
        [rows, cols] => Ok((2, rows, cols)),
        _ => Err(PyValueError::new_err(format!(
            "{arg} must be 1-D (one distribution) or 2-D (rows of distributions, one per row), \
             got shape {s:?}"
        ))),
    }
}

enum FloatArray<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
    F16(PyReadonlyArrayDyn<'py, f16>),
    BF16(PyReadonlyArrayDyn<'py, bf16>),
}

/// A borrowed float array of one or two dimensions (1-D: one row).
pub(crate) struct Floats<'py> {
    array: FloatArray<'py>,
    pub(crate) ndim: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

/// Whether the array can be read as a slice where it lies: C order and
/// aligned (an array unpickled from a network frame may not be).
fn readable(a: &Bound<'_, PyUntypedArray>) -> bool {
    a.is_c_contiguous() && a.is_aligned()
}

/// The array itself when it is a C-contiguous, aligned f32 or f64 ndarray.
fn borrow_floats<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Option<FloatArray<'py>>> {
    if let Ok(a) = obj.cast::<PyArrayDyn<f32>>()
        && readable(a.as_untyped())
    {
        return Ok(Some(FloatArray::F32(a.try_readonly()?)));
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<f64>>()
        && readable(a.as_untyped())
    {
        return Ok(Some(FloatArray::F64(a.try_readonly()?)));
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<f16>>()
        && readable(a.as_untyped())
    {
        return Ok(Some(FloatArray::F16(a.try_readonly()?)));
    }
    // bfloat16 only where the array already holds it: looking its dtype up
    // needs the package that registers it (ml_dtypes)
    if let Ok(u) = obj.cast::<PyUntypedArray>()
        && is_bfloat16(u)?
        && let Ok(a) = obj.cast::<PyArrayDyn<bf16>>()
        && readable(a.as_untyped())
    {
        return Ok(Some(FloatArray::BF16(a.try_readonly()?)));
    }
    Ok(None)
}

/// Whether `a`'s dtype is ml_dtypes' bfloat16.
fn is_bfloat16(a: &Bound<'_, PyUntypedArray>) -> PyResult<bool> {
    Ok(a.dtype().getattr("name")?.extract::<String>()? == "bfloat16")
}

impl<'py> Floats<'py> {
    /// `obj` as a batch argument named `arg` ("p", "q").
    pub(crate) fn new(obj: &Bound<'py, PyAny>, arg: &str) -> PyResult<Floats<'py>> {
        let array = match borrow_floats(obj)? {
            Some(a) => a,
            None => {
                let converted = helper(obj.py(), "floats")?.call1((obj, arg))?;
                borrow_floats(&converted)?.ok_or_else(|| {
                    PyValueError::new_err(format!("{arg}: conversion gave no float array"))
                })?
            }
        };
        let untyped: &Bound<'py, PyUntypedArray> = match &array {
            FloatArray::F32(a) => a.as_untyped(),
            FloatArray::F64(a) => a.as_untyped(),
            FloatArray::F16(a) => a.as_untyped(),
            FloatArray::BF16(a) => a.as_untyped(),
        };
        let (ndim, rows, cols) = dims(untyped, arg)?;
        Ok(Floats {
            array,
            ndim,
            rows,
            cols,
        })
    }

    /// The values, borrowed from the array.
    pub(crate) fn values(&self) -> PyResult<Values<'_>> {
        // `Floats::new` took only C-contiguous, aligned arrays
        let e = |_| PyValueError::new_err("array is not contiguous and aligned");
        Ok(match &self.array {
            FloatArray::F32(a) => Values::F32(a.as_slice().map_err(e)?),
            FloatArray::F64(a) => Values::F64(a.as_slice().map_err(e)?),
            FloatArray::F16(a) => Values::F16(a.as_slice().map_err(e)?),
            FloatArray::BF16(a) => Values::BF16(a.as_slice().map_err(e)?),
        })
    }

    /// The crate's batch over the borrowed values.
    pub(crate) fn batch(&self, form: Form) -> PyResult<Batch<'_>> {
        Ok(Batch::new(self.values()?, self.rows, self.cols).form(form))
    }

    /// The address of the first value (the zero-copy test compares it with
    /// the caller's array).
    pub(crate) fn address(&self) -> usize {
        match &self.array {
            FloatArray::F32(a) => a.data() as usize,
            FloatArray::F64(a) => a.data() as usize,
            FloatArray::F16(a) => a.data() as usize,
            FloatArray::BF16(a) => a.data() as usize,
        }
    }
}

enum IntArray<'py> {
    I32(PyReadonlyArrayDyn<'py, i32>),
    I64(PyReadonlyArrayDyn<'py, i64>),
    U32(PyReadonlyArrayDyn<'py, u32>),
}

fn borrow_ints<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Option<IntArray<'py>>> {
    macro_rules! try_int {
        ($t:ty, $v:ident) => {
            if let Ok(a) = obj.cast::<PyArrayDyn<$t>>()
                && readable(a.as_untyped())
            {
                return Ok(Some(IntArray::$v(a.try_readonly()?)));
            }
        };
    }
    try_int!(i64, I64);
    try_int!(i32, I32);
    try_int!(u32, U32);
    Ok(None)
}

/// Class targets: a scalar (one target) or a 1-D array.
pub(crate) struct TargetArray<'py> {
    array: IntArray<'py>,
    /// A 0-d array or a Python int: one target, and a float result.
    pub(crate) scalar: bool,
}

impl<'py> TargetArray<'py> {
    pub(crate) fn new(obj: &Bound<'py, PyAny>) -> PyResult<TargetArray<'py>> {
        let array = match borrow_ints(obj)? {
            Some(a) => a,
            None => {
                let converted = helper(obj.py(), "targets")?.call1((obj,))?;
                borrow_ints(&converted)?.ok_or_else(|| {
                    PyValueError::new_err("targets: conversion gave no integer array")
                })?
            }
        };
        let untyped: &Bound<'py, PyUntypedArray> = match &array {
            IntArray::I32(a) => a.as_untyped(),
            IntArray::I64(a) => a.as_untyped(),
            IntArray::U32(a) => a.as_untyped(),
        };
        let scalar = match untyped.ndim() {
            0 => true,
            1 => false,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "targets must be an integer or a 1-D array of class indices, got shape {:?}",
                    untyped.shape()
                )));
            }
        };
        Ok(TargetArray { array, scalar })
    }

    pub(crate) fn targets(&self) -> PyResult<Targets<'_>> {
        let e = |_| PyValueError::new_err("targets are not contiguous and aligned");
        Ok(match &self.array {
            IntArray::I32(a) => Targets::I32(a.as_slice().map_err(e)?),
            IntArray::I64(a) => Targets::I64(a.as_slice().map_err(e)?),
            IntArray::U32(a) => Targets::U32(a.as_slice().map_err(e)?),
        })
    }
}

/// Class weights (length = classes) as f32: float32 as given, float64 through
/// the crate's checked conversion (an error names the class), anything else
/// converted to float64 first.
pub(crate) fn weights(obj: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
    let floats = Floats::new(obj, "weight")?;
    if floats.ndim != 1 {
        return Err(PyValueError::new_err(format!(
            "weight must be 1-D (one weight per class), got {} x {}",
            floats.rows, floats.cols
        )));
    }
    match floats.values()? {
        Values::F32(v) => Ok(v.to_vec()),
        Values::F64(v) => kullback::f32_from_f64(v, Arg::Weights)
            .map_err(|e| crate::errors::to_py(e, Default::default())),
        Values::F16(v) => Ok(v.iter().map(|x| x.to_f32()).collect()),
        Values::BF16(v) => Ok(v.iter().map(|x| x.to_f32()).collect()),
        _ => Err(PyValueError::new_err(
            "weight must be float16, bfloat16, float32 or float64",
        )),
    }
}

/// A sparse teacher's column indices: a 1-D (one row) or 2-D `rows × k`
/// array of int32, int64 or uint32, borrowed (other integers converted to
/// int64 once).
pub(crate) struct IndexArray<'py> {
    array: IntArray<'py>,
    pub(crate) shape: Vec<usize>,
}

impl<'py> IndexArray<'py> {
    pub(crate) fn new(obj: &Bound<'py, PyAny>) -> PyResult<IndexArray<'py>> {
        let array = match borrow_ints(obj)? {
            Some(a) => a,
            None => {
                let converted = helper(obj.py(), "targets")?.call1((obj, "teacher_indices"))?;
                borrow_ints(&converted)?.ok_or_else(|| {
                    PyValueError::new_err("teacher_indices: conversion gave no integer array")
                })?
            }
        };
        let untyped: &Bound<'py, PyUntypedArray> = match &array {
            IntArray::I32(a) => a.as_untyped(),
            IntArray::I64(a) => a.as_untyped(),
            IntArray::U32(a) => a.as_untyped(),
        };
        let shape = untyped.shape().to_vec();
        if !matches!(shape.len(), 1 | 2) {
            return Err(PyValueError::new_err(format!(
                "teacher_indices must be 1-D (k indices of one row) or 2-D (rows x k), got shape \
                 {shape:?}"
            )));
        }
        Ok(IndexArray { array, shape })
    }

    /// Indices per row (the last axis).
    pub(crate) fn k(&self) -> usize {
        self.shape.last().copied().unwrap_or(0)
    }

    pub(crate) fn targets(&self) -> PyResult<Targets<'_>> {
        let e = |_| PyValueError::new_err("teacher_indices are not contiguous and aligned");
        Ok(match &self.array {
            IntArray::I32(a) => Targets::I32(a.as_slice().map_err(e)?),
            IntArray::I64(a) => Targets::I64(a.as_slice().map_err(e)?),
            IntArray::U32(a) => Targets::U32(a.as_slice().map_err(e)?),
        })
    }
}

/// A row mask: 1-D bool or uint8, borrowed (other integers and bools
/// converted once by `kullback._inputs.mask`).
pub(crate) enum MaskArray<'py> {
    Bool(PyReadonlyArrayDyn<'py, bool>),
    U8(PyReadonlyArrayDyn<'py, u8>),
}

fn borrow_mask<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Option<MaskArray<'py>>> {
    if let Ok(a) = obj.cast::<PyArrayDyn<bool>>()
        && readable(a.as_untyped())
    {
        return Ok(Some(MaskArray::Bool(a.try_readonly()?)));
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<u8>>()
        && readable(a.as_untyped())
    {
        return Ok(Some(MaskArray::U8(a.try_readonly()?)));
    }
    Ok(None)
}

impl<'py> MaskArray<'py> {
    pub(crate) fn new(obj: &Bound<'py, PyAny>) -> PyResult<MaskArray<'py>> {
        let mask = match borrow_mask(obj)? {
            Some(m) => m,
            None => {
                let converted = helper(obj.py(), "mask")?.call1((obj,))?;
                borrow_mask(&converted)?
                    .ok_or_else(|| PyValueError::new_err("mask: conversion gave no bool array"))?
            }
        };
        let untyped: &Bound<'py, PyUntypedArray> = match &mask {
            MaskArray::Bool(a) => a.as_untyped(),
            MaskArray::U8(a) => a.as_untyped(),
        };
        if untyped.ndim() != 1 {
            return Err(PyValueError::new_err(format!(
                "mask must be 1-D (one flag per row), got shape {:?}",
                untyped.shape()
            )));
        }
        Ok(mask)
    }

    pub(crate) fn row_mask(&self) -> PyResult<kullback::RowMask<'_>> {
        let e = |_| PyValueError::new_err("mask is not contiguous and aligned");
        Ok(match self {
            MaskArray::Bool(a) => kullback::RowMask::Bool(a.as_slice().map_err(e)?),
            MaskArray::U8(a) => kullback::RowMask::U8(a.as_slice().map_err(e)?),
        })
    }
}
