//! `kullback::Error` → Python exceptions: the one mapping.
//!
//! Bad input (values, shapes, options) is `ValueError`, memory that could not
//! be had is `MemoryError`, the device (no adapter, a failed device) is
//! `RuntimeError`; the message is the crate's, naming argument, row and column.

use kullback::{Arg, Error};
use pyo3::PyErr;
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyValueError};

/// Rows of the arguments in `args` are reported `offset` further down: a Dask
/// block reports rows of the whole array, not of the block.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RowOffset {
    pub(crate) offset: usize,
    pub(crate) p: bool,
    pub(crate) q: bool,
    pub(crate) targets: bool,
}

impl RowOffset {
    fn applies(&self, arg: Arg) -> bool {
        match arg {
            Arg::P => self.p,
            Arg::Q => self.q,
            Arg::Targets => self.targets,
            // per-class or per-call arguments, never split by rows
            _ => false,
        }
    }

    fn rebase(&self, mut e: Error) -> Error {
        if self.offset == 0 {
            return e;
        }
        match &mut e {
            Error::BadValue { arg, row, .. }
            | Error::NotNormalized { arg, row, .. }
            | Error::CannotNormalize { arg, row, .. }
                if self.applies(*arg) =>
            {
                *row += self.offset;
            }
            Error::TargetOutOfRange { row, .. } if self.targets => *row += self.offset,
            _ => {}
        }
        e
    }
}

/// The crate's hints name its Rust API; in Python the same choice is a keyword.
const PYTHON_SPELLING: [(&str, &str); 4] = [
    ("Normalization::Renormalize", "normalize='renormalize'"),
    ("Backend::Cpu", "backend='cpu'"),
    ("Backend::Gpu", "backend='gpu'"),
    ("Backend::Auto", "backend='auto'"),
];

/// The Python exception for `e`, rows rebased by `offset`: the crate's
/// message, with its hints in Python's spelling.
pub(crate) fn to_py(e: Error, offset: RowOffset) -> PyErr {
    let e = offset.rebase(e);
    let msg = PYTHON_SPELLING
        .iter()
        .fold(e.to_string(), |m, (rust, py)| m.replace(rust, py));
    match e {
        Error::Empty { .. }
        | Error::Length { .. }
        | Error::ShapeMismatch { .. }
        | Error::TargetCount { .. }
        | Error::BadValue { .. }
        | Error::NotNormalized { .. }
        | Error::CannotNormalize { .. }
        | Error::TargetOutOfRange { .. }
        | Error::InvalidOption { .. }
        | Error::MissingArg { .. }
        | Error::Unsupported(_)
        | Error::TooLarge { .. } => PyValueError::new_err(msg),
        Error::OutOfMemory { .. } => PyMemoryError::new_err(msg),
        // NoAdapter, RequestDevice, Device, Buffer, and whatever comes later
        _ => PyRuntimeError::new_err(msg),
    }
}

/// A panic inside the library (a bug: it promises errors, never panics) as a
/// `RuntimeError`, so that no Python caller sees a `BaseException`.
pub(crate) fn panicked(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    PyRuntimeError::new_err(format!(
        "internal error in kullback (a bug, please report it): {what}"
    ))
}
