//! What an all-pairs call is: its options, the tiles it hands out, and the
//! checked description both backends execute ([`PairJob`]). The calls
//! themselves are [`Context::pairwise`](crate::Context::pairwise) and its
//! siblings (`src/pairwise.rs`).

use std::ops::Range;

use crate::batch::{Batch, Data};
use crate::error::{Arg, Error, Result, Setting};
use crate::measure::{Base, DEFAULT_TOLERANCE, Form, Measure, Normalization};
use crate::record::{self, DecodeCtx, Record};

/// The largest `k` of [`Context::pairwise_top_k`](crate::Context::pairwise_top_k).
///
/// The GPU keeps each row's candidates (value and index) in workgroup
/// memory while it selects them: 256 of each is 2 KiB, well inside the
/// 16 KiB that `Limits::downlevel_defaults()` allows a workgroup, next to
/// the histogram of the selection. The CPU keeps the same limit, so that a
/// call valid on one backend is valid on the other.
pub const MAX_TOP_K: usize = 256;

/// Options of the all-pairs calls.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct PairwiseOptions {
    /// Log base of the results (KL, cross-entropy, JS); Hellinger and total
    /// variation are not logarithmic and take only [`Base::E`].
    pub base: Base,
    /// Row-sum policy, as for the per-row measures.
    pub normalization: Normalization,
    /// Tolerance on |sum − 1| under [`Normalization::Validate`].
    pub tolerance: f32,
    /// Nearest-k with `q` omitted: leave each row's own index out of its list.
    pub exclude_self: bool,
}

impl Default for PairwiseOptions {
    fn default() -> Self {
        PairwiseOptions {
            base: Base::E,
            normalization: Normalization::Validate,
            tolerance: DEFAULT_TOLERANCE,
            exclude_self: false,
        }
    }
}

impl PairwiseOptions {
    /// Sets the log base.
    pub fn base(mut self, base: Base) -> Self {
        self.base = base;
        self
    }
    /// Sets the normalisation policy.
    pub fn normalization(mut self, normalization: Normalization) -> Self {
        self.normalization = normalization;
        self
    }
    /// Sets the tolerance on row sums.
    pub fn tolerance(mut self, tolerance: f32) -> Self {
        self.tolerance = tolerance;
        self
    }
    /// Leaves each row's own index out of its nearest-k list (`q` omitted).
    pub fn exclude_self(mut self, exclude: bool) -> Self {
        self.exclude_self = exclude;
        self
    }
}

/// The shape of the tiles [`Context::pairwise_tiles`](crate::Context::pairwise_tiles)
/// hands out: at most `rows` × `cols` values each (the last ones in a row or
/// column of tiles are smaller). Memory is bounded by one tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileShape {
    /// Rows of p per tile (at least 1).
    pub rows: usize,
    /// Rows of q (columns of the matrix) per tile (at least 1).
    pub cols: usize,
}

impl Default for TileShape {
    /// 512 × 8192 (16 MiB of f32).
    fn default() -> Self {
        TileShape {
            rows: 512,
            cols: 8192,
        }
    }
}

impl TileShape {
    /// Tiles of `rows` × `cols`.
    pub fn new(rows: usize, cols: usize) -> Self {
        TileShape { rows, cols }
    }
    /// Tiles of `rows` whole rows of the matrix (every column): what a
    /// writer of a row-major file wants.
    pub fn full_rows(rows: usize) -> Self {
        TileShape {
            rows,
            cols: usize::MAX,
        }
    }
}

/// One tile of an all-pairs matrix: D[i, j] for i in `rows`, j in `cols`,
/// row-major (`values[(i - rows.start) * cols.len() + (j - cols.start)]`).
#[derive(Clone, Debug)]
pub struct Tile<'a> {
    /// Rows of p (rows of the matrix).
    pub rows: Range<usize>,
    /// Rows of q (columns of the matrix).
    pub cols: Range<usize>,
    /// The values, row-major.
    pub values: &'a [f32],
}

/// How one row of an argument is read before the tiles: the per-row
/// measures' rules, decided here once for both backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowMode {
    /// Probabilities used as given (Validate checks the sum).
    Probs,
    /// Probabilities divided by their row sum.
    ProbsDiv,
    /// Log-probabilities used as given (Validate checks Σ exp).
    Log,
    /// Log values normalised by the row's (max, ln Σ exp(x − max)): logits,
    /// renormalised log-probabilities. Values above 0 are allowed.
    LogNorm,
}

impl RowMode {
    pub(crate) fn of(form: Form, norm: Normalization) -> RowMode {
        match (form, norm) {
            (Form::Probs, Normalization::Renormalize) => RowMode::ProbsDiv,
            (Form::Probs, _) => RowMode::Probs,
            (Form::LogProbs, Normalization::Renormalize) | (Form::Logits, _) => RowMode::LogNorm,
            (Form::LogProbs, _) => RowMode::Log,
        }
    }
    /// Whether the values are log-probabilities or logits.
    pub(crate) fn is_log(self) -> bool {
        matches!(self, RowMode::Log | RowMode::LogNorm)
    }
}

/// One argument of an all-pairs call, checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Side<'a> {
    pub data: Data<'a>,
    pub rows: usize,
    pub mode: RowMode,
    pub arg: Arg,
    /// The row-sum check's tolerance for this argument: the caller's, plus
    /// what rounding valid rows to a half format moves their sums by (as
    /// the per-row measures allow, `job::roundoff`).
    pub tolerance: f32,
}

/// An all-pairs call, checked: both backends execute this.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PairJob<'a> {
    pub measure: Measure,
    pub p: Side<'a>,
    /// `None`: p against itself.
    pub q: Option<Side<'a>>,
    pub cols: usize,
    pub check_sums: bool,
    /// ln(base): results are divided by it.
    pub ln_base: f64,
}

/// The checks of the options and the measure, shared by the host and
/// GPU-resident calls; returns ln(base).
pub(crate) fn check_options(measure: Measure, opts: &PairwiseOptions) -> Result<f64> {
    if matches!(measure, Measure::Entropy) {
        return Err(Error::Unsupported(
            "entropy is not a measure between two distributions; all pairs take kl, \
             cross-entropy, js, hellinger or total-variation"
                .into(),
        ));
    }
    if !(opts.tolerance.is_finite() && opts.tolerance >= 0.0) {
        return Err(Error::InvalidOption {
            option: Setting::Tolerance,
            message: format!("tolerance must be finite and >= 0, got {}", opts.tolerance),
        });
    }
    measure.ln_base(opts.base)
}

/// The shapes of p and q (rows, cols), checked: the same columns, sizes
/// within the kernels' u32 indices.
pub(crate) fn check_shapes(p: (usize, usize), q: Option<(usize, usize)>) -> Result<()> {
    for (arg, (rows, cols)) in [(Arg::P, Some(p)), (Arg::Q, q)]
        .into_iter()
        .filter_map(|(a, s)| s.map(|s| (a, s)))
    {
        if rows == 0 || cols == 0 {
            return Err(Error::Empty { arg, rows, cols });
        }
    }
    if let Some(q) = q {
        if q.1 != p.1 {
            return Err(Error::ShapeMismatch {
                p_rows: p.0,
                p_cols: p.1,
                q_rows: q.0,
                q_cols: q.1,
            });
        }
    }
    let n = q.map_or(p.0, |q| q.0);
    crate::call::check_u32(p.0.max(n), p.1)
}

impl<'a> PairJob<'a> {
    pub(crate) fn new(
        measure: Measure,
        p: &Batch<'a>,
        q: Option<&Batch<'a>>,
        opts: &PairwiseOptions,
    ) -> Result<Self> {
        let ln_base = check_options(measure, opts)?;
        check_shapes((p.rows, p.cols), q.map(|q| (q.rows, q.cols)))?;
        let side = |b: &Batch<'a>, arg: Arg| -> Result<Side<'a>> {
            let data = b.checked(arg)?;
            Ok(Side {
                data,
                rows: b.rows,
                mode: RowMode::of(b.form, opts.normalization),
                arg,
                tolerance: opts.tolerance + crate::job::roundoff(data.roundoff(), b.form, b.cols),
            })
        };
        Ok(PairJob {
            measure,
            p: side(p, Arg::P)?,
            q: q.map(|q| side(q, Arg::Q)).transpose()?,
            cols: p.cols,
            check_sums: opts.normalization == Normalization::Validate,
            ln_base,
        })
    }

    /// Rows of the matrix.
    pub(crate) fn m(&self) -> usize {
        self.p.rows
    }

    /// Columns of the matrix (rows of q, or of p against itself).
    pub(crate) fn n(&self) -> usize {
        self.q.map_or(self.p.rows, |q| q.rows)
    }

    /// p against itself, with a symmetric measure: D[i, j] = D[j, i]
    /// exactly, and a zero diagonal.
    pub(crate) fn symmetric(&self) -> bool {
        self.q.is_none() && self.measure_symmetric()
    }

    /// JS, Hellinger and total variation are symmetric in P and Q.
    pub(crate) fn measure_symmetric(&self) -> bool {
        matches!(
            self.measure,
            Measure::Js | Measure::Hellinger | Measure::TotalVariation
        )
    }

    /// The diagonal of p against itself is exactly 0 (every measure but
    /// cross-entropy, whose diagonal is the entropy H(P_i)).
    pub(crate) fn zero_diagonal(&self) -> bool {
        self.q.is_none() && self.measure != Measure::CrossEntropy
    }

    /// How the statuses of `side`'s rows decode (its tolerance).
    pub(crate) fn decode_ctx(&self, side: &Side<'_>) -> DecodeCtx {
        DecodeCtx {
            tolerance: side.tolerance,
            classes: self.cols,
        }
    }
}

/// Checks `k` of a nearest-k call against the columns of the matrix.
pub(crate) fn check_k(k: usize, n: usize, exclude_self: bool, self_mode: bool) -> Result<()> {
    if exclude_self && !self_mode {
        return Err(Error::InvalidOption {
            option: Setting::ExcludeSelf,
            message: "exclude_self applies when q is omitted (p against itself)".into(),
        });
    }
    let avail = if exclude_self { n - 1 } else { n };
    if k == 0 || k > MAX_TOP_K {
        return Err(Error::InvalidOption {
            option: Setting::TopK,
            message: format!("k must be in [1, {MAX_TOP_K}], got {k}"),
        });
    }
    if k > avail {
        return Err(Error::InvalidOption {
            option: Setting::TopK,
            message: format!(
                "k = {k} is more than the {avail} candidates of each row{}",
                if exclude_self {
                    " (its own index excluded)"
                } else {
                    ""
                }
            ),
        });
    }
    Ok(())
}

/// Whether `(a, i)` sorts before `(b, j)` in a nearest-k list: by value
/// (−inf first, +inf last), then by the lower index. Values are never NaN.
#[inline]
pub(crate) fn before(a: f32, i: u32, b: f32, j: u32) -> bool {
    a < b || (a == b && i < j)
}

/// The first bad row of statuses (`p_rows` of p, then those of q) as the
/// error the host path returns; see [`Record`] for the fields.
pub(crate) fn first_error(status: &[Record], p_rows: usize, ctx: &DecodeCtx) -> Option<Error> {
    let i = status.iter().position(|r| !r.is_ok())?;
    let row = if i < p_rows { i } else { i - p_rows };
    Some(record::decode(row, &status[i], ctx))
}
