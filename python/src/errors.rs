//! `kullback::Error` → Python exceptions: the one mapping.
//!
//! Bad input (values, shapes, options) is `ValueError`, memory that could not
//! be had is `MemoryError`, the device (no adapter, a failed device) is
//! `RuntimeError`; the message is the crate's, naming argument, row and column.

use kullback::{Arg, Error, Setting};
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

/// `e` with its row moved down by `offset`: an error of a block of rows of a
/// training call, whose every argument is split by the same rows.
pub(crate) fn shift_rows(mut e: Error, offset: usize) -> Error {
    match &mut e {
        Error::BadValue { row, .. }
        | Error::NotNormalized { row, .. }
        | Error::CannotNormalize { row, .. }
        | Error::TargetOutOfRange { row, .. }
        | Error::InfiniteLoss { row, .. }
        | Error::TeacherIndex { row, .. } => *row += offset,
        _ => {}
    }
    e
}

/// The crate's hints name its Rust API; in Python the same choice is a keyword.
const PYTHON_SPELLING: [(&str, &str); 5] = [
    ("Normalization::Renormalize", "normalize='renormalize'"),
    ("Teacher::Dense", "teacher=..."),
    ("Backend::Cpu", "backend='cpu'"),
    ("Backend::Gpu", "backend='gpu'"),
    ("Backend::Auto", "backend='auto'"),
];

/// The Python exception for `e`, rows rebased by `offset`: the crate's
/// message, with its hints in Python's spelling.
pub(crate) fn to_py(e: Error, offset: RowOffset) -> PyErr {
    let e = offset.rebase(e);
    let msg = python_spelling(e.to_string());
    exception(&e, msg)
}

fn python_spelling(msg: String) -> String {
    PYTHON_SPELLING
        .iter()
        .fold(msg, |m, (rust, py)| m.replace(rust, py))
}

/// The Python keyword argument each of the crate's arguments and options is,
/// for a call whose keywords are not the crate's names (the training calls:
/// the crate's `p` is the teacher, its `q` the student or the logits).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Names {
    pub(crate) p: &'static str,
    pub(crate) q: &'static str,
}

impl Names {
    fn arg(&self, arg: Arg) -> Option<&'static str> {
        Some(match arg {
            Arg::P => self.p,
            Arg::Q => self.q,
            Arg::Targets => "targets",
            Arg::Weights => "weight",
            Arg::Mask => "mask",
            Arg::Indices => "teacher_indices",
            _ => return None,
        })
    }

    /// The keywords an error is about, as a prefix ("student: ", "teacher, student: ").
    fn prefix(&self, e: &Error) -> Option<String> {
        let one = |a: Arg| self.arg(a).map(str::to_string);
        match e {
            Error::BadValue { arg, .. }
            | Error::Empty { arg, .. }
            | Error::Length { arg, .. }
            | Error::NotNormalized { arg, .. }
            | Error::CannotNormalize { arg, .. } => one(*arg),
            Error::TargetOutOfRange { .. } => one(Arg::Targets),
            Error::TeacherIndex { .. } => one(Arg::Indices),
            Error::TargetCount { .. } => Some(format!("{}, targets", self.q)),
            Error::ShapeMismatch { .. } => Some(format!("{}, {}", self.p, self.q)),
            Error::InvalidOption { option, .. } => Some(
                match option {
                    Setting::Temperature => "temperature",
                    Setting::Beta => "beta",
                    Setting::TopK => "teacher_indices",
                    Setting::Tolerance => "tolerance",
                    Setting::LabelSmoothing => "label_smoothing",
                    Setting::IgnoreIndex => "ignore_index",
                    Setting::Base => "base",
                    Setting::GradScale => "grad_scale",
                    _ => return None,
                }
                .to_string(),
            ),
            _ => None,
        }
    }
}

/// The Python exception for `e` from a call whose arguments are `names`:
/// the crate's message, prefixed with the keyword argument it is about
/// (as the CLI prefixes the file).
pub(crate) fn to_py_named(e: Error, names: Names) -> PyErr {
    let msg = python_spelling(e.to_string());
    let msg = match names.prefix(&e) {
        Some(p) => format!("{p}: {msg}"),
        None => msg,
    };
    exception(&e, msg)
}

fn exception(e: &Error, msg: String) -> PyErr {
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
        | Error::InfiniteLoss { .. }
        | Error::TeacherIndex { .. }
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
