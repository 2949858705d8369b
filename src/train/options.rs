//! What a distillation loss is asked for: the divergence, the temperature,
//! the teacher's form, the row mask and the reduction.

use crate::batch::{Batch, Targets};
use crate::error::{Error, Result, Setting};
use crate::measure::{DEFAULT_TOLERANCE, Reduction};

/// The divergence a distillation loss minimises; p_T is the teacher's and q_S
/// the student's distribution at the temperature T.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Divergence {
    /// T² · KL(p_T ‖ q_S) (mass-covering; Hinton et al.'s distillation loss).
    #[default]
    ForwardKl,
    /// T² · KL(q_S ‖ p_T) (mode-seeking).
    ReverseKl,
    /// T² · (β KL(p_T ‖ M) + (1 − β) KL(q_S ‖ M)), M = β p_T + (1 − β) q_S,
    /// with β ∈ (0, 1) from [`DistillOptions::beta`]; β = ½ is the ordinary
    /// Jensen-Shannon divergence. The endpoints are errors: libraries
    /// disagree on what they mean (loss/β → T²·KL(p_T‖q_S) as β → 0, and
    /// loss/(1 − β) → T²·KL(q_S‖p_T) as β → 1): use the KL divergences.
    Jsd,
}

impl Divergence {
    /// The name used by the CLI and in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Divergence::ForwardKl => "forward-kl",
            Divergence::ReverseKl => "reverse-kl",
            Divergence::Jsd => "jsd",
        }
    }

    /// The divergence named `name` (as [`Divergence::name`] gives it).
    pub fn parse(name: &str) -> Option<Divergence> {
        [
            Divergence::ForwardKl,
            Divergence::ReverseKl,
            Divergence::Jsd,
        ]
        .into_iter()
        .find(|d| d.name() == name)
    }
}

/// What a sparse teacher's distribution is compared on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tail {
    /// k + 1 buckets: the k indexed columns and one bucket for the rest, of
    /// mass r = 1 − Σₖ exp(lₖ) for the teacher and the mass of the columns
    /// outside the indices for the student. A true KL (of the coarsened
    /// distributions, a lower bound of the full one); the gradient reaches
    /// every student column through the tail.
    #[default]
    Bucket,
    /// Both distributions restricted to the k indices and renormalised: a KL
    /// between the conditionals. Columns outside the indices get a zero
    /// gradient (and are not read).
    Renormalize,
}

impl Tail {
    /// The name used by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Tail::Bucket => "bucket",
            Tail::Renormalize => "renormalize",
        }
    }
}

/// A teacher stored as its top-k columns: per row, `k` column indices and
/// their log-probabilities, the temperature already applied (ln p_T at
/// those columns). Row-major, `rows × k` each.
#[derive(Clone, Copy, Debug)]
pub struct SparseTeacher<'a> {
    /// Column indices (i32, i64 or u32), distinct within a row, in [0, C).
    pub indices: Targets<'a>,
    /// ln p_T at those columns: ≤ 0, or −inf; Σₖ exp(lₖ) ≤ 1 + tolerance.
    pub logprobs: &'a [f32],
    /// Columns per row.
    pub k: usize,
}

impl<'a> SparseTeacher<'a> {
    /// A sparse teacher of `k` columns per row.
    pub fn new(indices: impl Into<Targets<'a>>, logprobs: &'a [f32], k: usize) -> Self {
        SparseTeacher {
            indices: indices.into(),
            logprobs,
            k,
        }
    }
}

/// The teacher of a distillation loss.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Teacher<'a> {
    /// Dense rows of the student's shape, as logits ([`Form::Logits`](crate::Form::Logits))
    /// or log-probabilities ([`Form::LogProbs`](crate::Form::LogProbs)); the
    /// temperature is applied to both: p_T = softmax(t / T).
    Dense(Batch<'a>),
    /// The top-k columns of each row ([`SparseTeacher`]).
    Sparse(SparseTeacher<'a>),
}

/// Which rows of a distillation count: 1 (or `true`) counts, 0 is ignored
/// (zero loss, zero gradient, not counted in the mean).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum RowMask<'a> {
    /// One bool per row.
    Bool(&'a [bool]),
    /// One byte per row: 0 ignores the row, anything else counts it.
    U8(&'a [u8]),
}

impl<'a> From<&'a [bool]> for RowMask<'a> {
    fn from(v: &'a [bool]) -> Self {
        RowMask::Bool(v)
    }
}
impl<'a> From<&'a Vec<bool>> for RowMask<'a> {
    fn from(v: &'a Vec<bool>) -> Self {
        RowMask::Bool(v)
    }
}
impl<'a> From<&'a [u8]> for RowMask<'a> {
    fn from(v: &'a [u8]) -> Self {
        RowMask::U8(v)
    }
}
impl<'a> From<&'a Vec<u8>> for RowMask<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        RowMask::U8(v)
    }
}

impl RowMask<'_> {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            RowMask::Bool(v) => v.len(),
            RowMask::U8(v) => v.len(),
        }
    }
    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether row `i` counts.
    pub fn counts(&self, i: usize) -> bool {
        match self {
            RowMask::Bool(v) => v[i],
            RowMask::U8(v) => v[i] != 0,
        }
    }
}

/// Options of [`Context::distill`](crate::Context::distill).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct DistillOptions<'a> {
    /// The divergence (default forward KL).
    pub divergence: Divergence,
    /// β of [`Divergence::Jsd`], in (0, 1) (default ½); ignored otherwise.
    pub beta: f32,
    /// The temperature T > 0 (default 1), applied to both the student's and
    /// a dense teacher's values.
    pub temperature: f32,
    /// None (one loss per row; the gradient is that of their sum), sum, or
    /// mean over the rows that count (PyTorch's `batchmean`).
    pub reduction: Reduction,
    /// A sparse teacher's tail policy (default [`Tail::Bucket`]).
    pub tail: Tail,
    /// How far above 1 a sparse teacher's Σₖ exp(lₖ) may be (default
    /// [`DEFAULT_TOLERANCE`]); its tail mass is then taken as 0.
    pub tolerance: f32,
    /// Rows that count (default: all).
    pub mask: Option<RowMask<'a>>,
    /// A factor of the gradient (not of the loss), finite, default 1: the
    /// gradient is that of the reduced loss times it. With
    /// [`Reduction::Sum`] and 1 / N it gives, bit for bit, the gradient of
    /// a mean over N counted rows that are split over several calls (as
    /// `kullback.dask` does); or a loss scale for mixed precision.
    pub grad_scale: f64,
}

impl Default for DistillOptions<'_> {
    fn default() -> Self {
        DistillOptions {
            divergence: Divergence::ForwardKl,
            beta: 0.5,
            temperature: 1.0,
            reduction: Reduction::None,
            tail: Tail::Bucket,
            tolerance: DEFAULT_TOLERANCE,
            mask: None,
            grad_scale: 1.0,
        }
    }
}

impl<'a> DistillOptions<'a> {
    /// Sets the divergence.
    pub fn divergence(mut self, divergence: Divergence) -> Self {
        self.divergence = divergence;
        self
    }
    /// Sets β of the generalized Jensen-Shannon divergence.
    pub fn beta(mut self, beta: f32) -> Self {
        self.beta = beta;
        self
    }
    /// Sets the temperature.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = temperature;
        self
    }
    /// Sets the reduction.
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }
    /// Sets the tail policy of a sparse teacher.
    pub fn tail(mut self, tail: Tail) -> Self {
        self.tail = tail;
        self
    }
    /// Sets the tolerance on a sparse teacher's Σₖ exp(lₖ).
    pub fn tolerance(mut self, tolerance: f32) -> Self {
        self.tolerance = tolerance;
        self
    }
    /// Sets the row mask.
    pub fn mask(mut self, mask: impl Into<RowMask<'a>>) -> Self {
        self.mask = Some(mask.into());
        self
    }
    /// Sets the gradient's factor.
    pub fn grad_scale(mut self, grad_scale: f64) -> Self {
        self.grad_scale = grad_scale;
        self
    }

    /// Checks the temperature, β and the tolerance.
    pub(crate) fn check(&self) -> Result<()> {
        let t = self.temperature;
        if !(t.is_finite() && t > 0.0 && (1.0 / t).is_finite()) {
            return Err(Error::InvalidOption {
                option: Setting::Temperature,
                message: format!("the temperature must be finite and > 0, got {t}"),
            });
        }
        if self.divergence == Divergence::Jsd {
            let b = self.beta;
            let message = if b == 0.0 {
                Some("β = 0: use forward-kl (the generalized JSD needs β in (0, 1))".to_string())
            } else if b == 1.0 {
                Some("β = 1: use reverse-kl (the generalized JSD needs β in (0, 1))".to_string())
            } else if !(b > 0.0 && b < 1.0) {
                Some(format!("β must be in (0, 1), got {b}"))
            } else {
                None
            };
            if let Some(message) = message {
                return Err(Error::InvalidOption {
                    option: Setting::Beta,
                    message,
                });
            }
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(Error::InvalidOption {
                option: Setting::Tolerance,
                message: format!("tolerance must be finite and >= 0, got {}", self.tolerance),
            });
        }
        check_grad_scale(self.grad_scale)
    }
}

/// A gradient factor must be finite.
pub(crate) fn check_grad_scale(s: f64) -> Result<()> {
    if !s.is_finite() {
        return Err(Error::InvalidOption {
            option: Setting::GradScale,
            message: format!("grad_scale must be finite, got {s}"),
        });
    }
    Ok(())
}
