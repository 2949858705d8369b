//! The crate's one error type.

use std::fmt;

/// Which argument of a call a problem was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Arg {
    /// The first distribution `p` (the "true" or teacher distribution).
    P,
    /// The second distribution `q` (the model or student distribution).
    Q,
    /// The class targets of a negative log-likelihood.
    Targets,
    /// The class weights of a negative log-likelihood.
    Weights,
    /// The row mask of a distillation loss.
    Mask,
    /// The column indices of a sparse (top-k) teacher.
    Indices,
    /// The caller's gradient buffer of a training loss.
    Gradient,
    /// The caller's buffer for the gradient with respect to a
    /// distillation's teacher.
    TeacherGradient,
}

impl fmt::Display for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arg::P => "p",
            Arg::Q => "q",
            Arg::Targets => "targets",
            Arg::Weights => "weights",
            Arg::Mask => "mask",
            Arg::Indices => "teacher indices",
            Arg::Gradient => "gradient",
            Arg::TeacherGradient => "teacher gradient",
        })
    }
}

/// What is wrong with one input value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BadValue {
    /// The value is NaN.
    Nan,
    /// A probability below zero.
    Negative,
    /// An infinite probability, a log-probability or logit of +inf.
    Infinite,
    /// A log-probability above zero (a probability above one).
    PositiveLog,
    /// A non-zero f64 probability that underflows to 0 in f32.
    Underflow,
    /// A finite f64 value that overflows to ±inf in f32.
    Overflow,
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadValue::Nan => "NaN",
            BadValue::Negative => "a negative probability",
            BadValue::Infinite => "an infinite value",
            BadValue::PositiveLog => "a log-probability above 0",
            BadValue::Underflow => "a non-zero f64 value that underflows to 0 in f32",
            BadValue::Overflow => "a finite f64 value that overflows in f32",
        })
    }
}

/// Everything that can go wrong in this crate.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A batch has zero rows or zero columns.
    #[error("{arg} is empty: {rows} rows x {cols} columns (both must be at least 1)")]
    Empty {
        /// The argument.
        arg: Arg,
        /// Its rows.
        rows: usize,
        /// Its columns.
        cols: usize,
    },
    /// A slice's length is not rows × cols.
    #[error("{arg} holds {len} values, but its shape {rows} x {cols} needs {expected}")]
    Length {
        /// The argument.
        arg: Arg,
        /// The slice's length.
        len: usize,
        /// The stated rows.
        rows: usize,
        /// The stated columns.
        cols: usize,
        /// rows × cols.
        expected: usize,
    },
    /// Two arguments' shapes cannot be paired.
    #[error(
        "shape mismatch: p is {p_rows} x {p_cols}, q is {q_rows} x {q_cols} \
         (same shape, or one of them a single row with the same columns)"
    )]
    ShapeMismatch {
        /// Rows of p.
        p_rows: usize,
        /// Columns of p.
        p_cols: usize,
        /// Rows of q.
        q_rows: usize,
        /// Columns of q.
        q_cols: usize,
    },
    /// A negative log-likelihood with a target count that matches neither
    /// the rows of q nor a single row.
    #[error(
        "{targets} targets, but q (the probabilities or logits) has {q_rows} rows of {q_cols} \
         classes (one target per row of q, or q a single row)"
    )]
    TargetCount {
        /// Number of targets.
        targets: usize,
        /// Rows of q.
        q_rows: usize,
        /// Columns (classes) of q.
        q_cols: usize,
    },
    /// An input value that is not allowed (NaN, a negative probability, ...).
    #[error("{arg} row {row}{}: {what}", column_text(.col))]
    BadValue {
        /// The argument.
        arg: Arg,
        /// The row (0-based).
        row: usize,
        /// The column (0-based); `None` where the device did not keep it.
        col: Option<usize>,
        /// What is wrong.
        what: BadValue,
    },
    /// A row whose probabilities do not sum to 1 within the tolerance.
    #[error(
        "{arg} row {row} sums to {sum} (probabilities must sum to 1 within {tolerance}; \
         choose Normalization::Renormalize to divide each row by its sum)"
    )]
    NotNormalized {
        /// The argument.
        arg: Arg,
        /// The row.
        row: usize,
        /// Its sum (Σ p, or Σ exp(lp) for log-probabilities).
        sum: f32,
        /// The tolerance in force.
        tolerance: f32,
    },
    /// A row that cannot be renormalised: every value is 0 (or -inf, for log
    /// forms and logits).
    #[error("{arg} row {row} cannot be normalised: {why}")]
    CannotNormalize {
        /// The argument.
        arg: Arg,
        /// The row.
        row: usize,
        /// Why not.
        why: &'static str,
    },
    /// A class target outside `[0, classes)` that is not the ignore index.
    #[error("targets row {row}: class {target} is outside [0, {classes})")]
    TargetOutOfRange {
        /// The row.
        row: usize,
        /// The target as given.
        target: i64,
        /// The number of classes (columns of q).
        classes: usize,
    },
    /// An option that is out of its domain (a log base of 1, a negative tolerance, ...).
    #[error("invalid option: {message}")]
    InvalidOption {
        /// Which option.
        option: Setting,
        /// What is wrong with it.
        message: String,
    },
    /// A measure called without an argument it needs (KL without `q`).
    #[error("{measure} needs {arg}")]
    MissingArg {
        /// The missing argument.
        arg: Arg,
        /// The measure's name.
        measure: &'static str,
    },
    /// A combination this crate does not evaluate.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The GPU backend was asked for but no adapter exists.
    #[error(
        "no GPU adapter found (wgpu: {0}); install a Vulkan driver, e.g. `apt-get install mesa-vulkan-drivers`, or use Backend::Cpu"
    )]
    NoAdapter(String),
    /// wgpu could not create a device.
    #[error("could not create a GPU device: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),
    /// Something of the call is beyond what the kernels index or the device
    /// holds in one buffer or binding, even when the work is split into chunks:
    /// split the batch.
    #[error("too large for this device: {what}: {size} > {limit}")]
    TooLarge {
        /// What, and in which unit.
        what: String,
        /// Its size.
        size: u64,
        /// The largest size allowed.
        limit: u64,
    },
    /// A caller's GPU buffer that does not fit the call (usage, size, offset, aliasing).
    #[error("GPU buffer {name}: {problem}")]
    Buffer {
        /// Which buffer.
        name: &'static str,
        /// What is wrong.
        problem: BufferProblem,
    },
    /// Memory could not be allocated: a host buffer sized by the input, or a
    /// device buffer (wgpu reported that the device is out of memory).
    #[error("out of memory: {what} needs {bytes} bytes, which could not be allocated")]
    OutOfMemory {
        /// What the memory was for, and where (host or device).
        what: String,
        /// The bytes asked for.
        bytes: u64,
    },
    /// A training loss that is truly infinite on a row, so that it has no
    /// gradient: the target distribution puts mass on a column the model
    /// gives probability 0 (a −inf logit), or for a reverse KL the model on a
    /// column the teacher gives 0.
    #[error("row {row}, column {col}: the loss is infinite: {why}")]
    InfiniteLoss {
        /// The row.
        row: usize,
        /// The column (of the student or logits; for a sparse teacher's tail
        /// bucket, its first column).
        col: usize,
        /// Which side has probability 0 where the other has mass.
        why: &'static str,
    },
    /// A sparse teacher's column index that is out of range or repeated.
    #[error("teacher indices row {row}, position {position}: index {index} {why}")]
    TeacherIndex {
        /// The row.
        row: usize,
        /// The position within the row's k indices.
        position: usize,
        /// The index as given.
        index: i64,
        /// What is wrong with it.
        why: String,
    },
    /// The device reported an error while running our work.
    #[error("GPU error: {0}")]
    Device(String),
}

/// The option an [`Error::InvalidOption`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Setting {
    /// The log base ([`Options::base`](crate::Options::base)).
    Base,
    /// The row-sum tolerance.
    Tolerance,
    /// The label smoothing of a negative log-likelihood.
    LabelSmoothing,
    /// The ignore index of a negative log-likelihood.
    IgnoreIndex,
    /// The reduction (an output read back with another reduction's layout).
    Reduction,
    /// `ContextOptions::max_binding_bytes`.
    MaxBindingBytes,
    /// The environment variable `KULLBACK_BACKEND`.
    BackendEnv,
    /// The environment variable `KULLBACK_SUBGROUPS`.
    SubgroupsEnv,
    /// The temperature of a distillation loss.
    Temperature,
    /// The β of a generalized Jensen-Shannon divergence.
    Beta,
    /// The k of a sparse teacher, or of a nearest-k call
    /// ([`Context::pairwise_top_k`](crate::Context::pairwise_top_k)).
    TopK,
    /// [`PairwiseOptions::exclude_self`](crate::PairwiseOptions::exclude_self).
    ExcludeSelf,
    /// The gradient's factor of a loss-and-gradient call
    /// ([`DistillOptions::grad_scale`](crate::DistillOptions::grad_scale)).
    GradScale,
}

/// What is wrong with a caller's GPU buffer ([`Error::Buffer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BufferProblem {
    /// It lacks a usage the call needs.
    Usage {
        /// The usages the call needs.
        needs: wgpu::BufferUsages,
        /// Its usages.
        has: wgpu::BufferUsages,
    },
    /// Its offset is not a multiple of the alignment the device requires.
    Offset {
        /// The offset given.
        offset: u64,
        /// The alignment required.
        align: u64,
    },
    /// The call's bytes do not fit it.
    Size {
        /// The bytes the call reads or writes.
        bytes: u64,
        /// At this offset.
        offset: u64,
        /// Its size.
        size: u64,
    },
    /// The output is also an input buffer (wgpu tracks usage per buffer).
    AliasesInput,
    /// The output is also the targets buffer.
    AliasesTargets,
    /// It is also another buffer of the call (an all-pairs call's outputs and
    /// status each need a buffer of their own).
    AliasesOther,
}

impl fmt::Display for BufferProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BufferProblem::Usage { needs, has } => write!(f, "needs usage {needs:?}, has {has:?}"),
            BufferProblem::Offset { offset, align } => {
                write!(f, "offset {offset} is not a multiple of {align}")
            }
            BufferProblem::Size {
                bytes,
                offset,
                size,
            } => write!(
                f,
                "{bytes} bytes at offset {offset} do not fit its {size} bytes"
            ),
            BufferProblem::AliasesInput => {
                f.write_str("is also an input buffer; use a buffer of its own")
            }
            BufferProblem::AliasesTargets => {
                f.write_str("is also the targets buffer; use a buffer of its own")
            }
            BufferProblem::AliasesOther => {
                f.write_str("is also another buffer of the call; use a buffer of its own")
            }
        }
    }
}

fn column_text(col: &Option<usize>) -> String {
    col.map_or(String::new(), |c| format!(", column {c}"))
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An empty vector with room for `n` values, or [`Error::OutOfMemory`] naming
/// `what` (host buffers sized by user input never abort the process).
pub(crate) fn try_vec<T>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
        what: format!("{what} (host memory)"),
        bytes: (n as u64).saturating_mul(std::mem::size_of::<T>() as u64),
    })?;
    Ok(v)
}
