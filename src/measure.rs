//! What is computed: measures, input forms, reductions, log bases, normalisation policy.
//!
//! Each measure is described once, in [`Measure::def`]: its name, what it
//! reads, and the properties the planner and both executors act on. Its
//! arithmetic is one `Term` in `src/cpu/terms.rs` and one pair of functions in
//! `shaders/measures.wgsl` (`add_<ident>`, `value_<ident>`), selected by a code
//! that `src/gpu/wgsl.rs` generates from the table below.

use crate::error::{Error, Result, Setting};

/// A measure over pairs of distributions (or one distribution, for entropy).
/// Each has a method on [`Context`](crate::Context) whose docs give its
/// formula, zero rules, errors and an example.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Measure {
    /// Entropy H(p) = −Σ p ln p of each row of `p`; a term with p = 0 is 0
    /// ([`Context::entropy`](crate::Context::entropy)).
    Entropy,
    /// Cross-entropy H(p, q) = −Σ p ln q; p = 0 gives 0 whatever q is, p > 0
    /// with q = 0 gives +inf ([`Context::cross_entropy`](crate::Context::cross_entropy)).
    CrossEntropy,
    /// Kullback-Leibler divergence D(P‖Q) = Σ p ln(p / q); zero rules as
    /// cross-entropy ([`Context::kl`](crate::Context::kl)).
    Kl,
    /// Jensen-Shannon divergence ½ D(P‖M) + ½ D(Q‖M), M = ½ (P + Q); never
    /// infinite, at most ln 2 ([`Context::js`](crate::Context::js)).
    Js,
    /// Squared Hellinger distance H²(P, Q) = ½ Σ (√p − √q)², computed in this
    /// form (equal to 1 − Σ √(p q) for rows that sum to 1, but without its
    /// cancellation for close rows); a term with p = 0 is ½ q, with q = 0
    /// ½ p; in [0, 1], never infinite. Not logarithmic: a log base other than
    /// e is an error ([`Context::hellinger`](crate::Context::hellinger)).
    Hellinger,
    /// Total variation distance ½ Σ |p − q|; a term with p = 0 is ½ q, with
    /// q = 0 ½ p; in [0, 1], never infinite. Not logarithmic: a log base
    /// other than e is an error
    /// ([`Context::total_variation`](crate::Context::total_variation)).
    TotalVariation,
}

/// A measure's description: everything but its per-element arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Def {
    /// The name of its CLI subcommand and in JSON output.
    pub name: &'static str,
    /// Its name in code: the WGSL functions `add_<ident>` and `value_<ident>`
    /// and the generated constant `M_<IDENT>`.
    pub ident: &'static str,
    /// It reads a second distribution `q`.
    pub needs_q: bool,
    /// Its terms can be accumulated relative to running maxima (online), so
    /// logits are read in one pass; otherwise every online form is
    /// normalised by a first pass (its terms need the normalised values).
    pub online: bool,
    /// A term with p > 0 and q = 0 makes the value +inf.
    pub q_zero_inf: bool,
    /// Its accumulator `t` is Σ w (ln p − ln q), rescaled with the running
    /// maxima of online forms.
    pub t_log_ratio: bool,
    /// Its values are logarithms, so they take a log base (a base other
    /// than e is an error for the others).
    pub logarithmic: bool,
}

impl Measure {
    /// Every measure, in the order of their codes (the number the shaders see).
    pub(crate) const ALL: [Measure; 6] = [
        Measure::Entropy,
        Measure::CrossEntropy,
        Measure::Kl,
        Measure::Js,
        Measure::Hellinger,
        Measure::TotalVariation,
    ];

    /// The measure's description.
    pub(crate) const fn def(self) -> Def {
        match self {
            Measure::Entropy => Def {
                name: "entropy",
                ident: "entropy",
                needs_q: false,
                online: true,
                q_zero_inf: false,
                t_log_ratio: false,
                logarithmic: true,
            },
            Measure::CrossEntropy => Def {
                name: "cross-entropy",
                ident: "cross",
                needs_q: true,
                online: true,
                q_zero_inf: true,
                t_log_ratio: false,
                logarithmic: true,
            },
            Measure::Kl => Def {
                name: "kl",
                ident: "kl",
                needs_q: true,
                online: true,
                q_zero_inf: true,
                t_log_ratio: true,
                logarithmic: true,
            },
            Measure::Js => Def {
                name: "js",
                ident: "js",
                needs_q: true,
                online: false,
                q_zero_inf: false,
                t_log_ratio: false,
                logarithmic: true,
            },
            Measure::Hellinger => Def {
                name: "hellinger",
                ident: "hellinger",
                needs_q: true,
                online: false,
                q_zero_inf: false,
                t_log_ratio: false,
                logarithmic: false,
            },
            Measure::TotalVariation => Def {
                name: "total-variation",
                ident: "tv",
                needs_q: true,
                online: false,
                q_zero_inf: false,
                t_log_ratio: false,
                logarithmic: false,
            },
        }
    }

    /// The name used by the CLI and in JSON output.
    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// Whether results are logarithms (and so take a log base): every
    /// measure but Hellinger and total variation.
    pub fn is_logarithmic(self) -> bool {
        self.def().logarithmic
    }

    /// ln(base) for this measure's values: the base checked, and for a
    /// measure that is not logarithmic any base other than e refused.
    pub(crate) fn ln_base(self, base: Base) -> Result<f64> {
        let ln = base.ln()?;
        if !self.def().logarithmic && ln != 1.0 {
            return Err(Error::InvalidOption {
                option: Setting::Base,
                message: format!(
                    "{} is not logarithmic: it takes no log base (got {base:?})",
                    self.name()
                ),
            });
        }
        Ok(ln)
    }

    /// Whether the measure reads a second distribution `q`.
    pub fn needs_q(self) -> bool {
        self.def().needs_q
    }

    /// The measure named `name` (as [`Measure::name`] gives it).
    pub fn parse(name: &str) -> Option<Measure> {
        Measure::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// How the values of one argument are given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Form {
    /// Probabilities: finite, ≥ 0; a zero is a probability whose bits are zero.
    #[default]
    Probs,
    /// Natural-log probabilities: ≤ 0 or -inf (probability 0).
    LogProbs,
    /// Unnormalised logits: finite, or -inf for a masked class; turned into
    /// log-probabilities by a stable log-sum-exp.
    Logits,
}

impl Form {
    pub(crate) fn code(self) -> u32 {
        match self {
            Form::Probs => 0,
            Form::LogProbs => 1,
            Form::Logits => 2,
        }
    }
}

/// How per-row values are combined over the batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reduction {
    /// One value per row.
    #[default]
    None,
    /// The sum of the per-row values.
    Sum,
    /// The mean of the per-row values over the rows counted (for a negative
    /// log-likelihood: Σ wₜ·lᵢ / Σ wₜ over the rows not ignored).
    Mean,
}

impl Reduction {
    /// The name used by the CLI and in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::None => "none",
            Reduction::Sum => "sum",
            Reduction::Mean => "mean",
        }
    }
}

/// The base of the logarithm the results are expressed in.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Base {
    /// Natural log: nats.
    #[default]
    E,
    /// Base 2: bits.
    Two,
    /// Base 10: hartleys.
    Ten,
    /// Any base > 0 other than 1.
    Custom(f64),
}

impl Base {
    /// ln(base), after checking the base is > 0, finite and ≠ 1.
    pub fn ln(self) -> Result<f64> {
        let b = match self {
            Base::E => return Ok(1.0),
            Base::Two => 2.0,
            Base::Ten => 10.0,
            Base::Custom(b) => b,
        };
        if !(b.is_finite() && b > 0.0 && b != 1.0) {
            return Err(Error::InvalidOption {
                option: Setting::Base,
                message: format!("log base must be finite, > 0 and != 1, got {b}"),
            });
        }
        Ok(b.ln())
    }
}

/// What to do with row sums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Normalization {
    /// Check that each row sums to 1 (Σ p, or Σ exp(lp) for log-probabilities)
    /// within [`Options::tolerance`]; a row that does not is an error.
    #[default]
    Validate,
    /// Divide each row by its sum (subtract its log-sum-exp for log-probabilities),
    /// as `scipy.stats.entropy` does. Sums are formed relative to a power of two,
    /// so subnormal counts and counts whose f32 sum overflows are fine; only a
    /// row with no non-zero value is an error.
    Renormalize,
    /// Use the values as given: terms are summed with no check and no scaling.
    AsGiven,
}

/// The default tolerance on |Σ p − 1| under [`Normalization::Validate`].
///
/// f32 rows of a million entries that were normalised in f32 drift by up to
/// about 1e-4 from 1, so the default is generous; tighten it if you need to.
pub const DEFAULT_TOLERANCE: f32 = 1e-3;

/// Options shared by every measure.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Options {
    /// How per-row values are combined.
    pub reduction: Reduction,
    /// Log base of the results.
    pub base: Base,
    /// Row-sum policy.
    pub normalization: Normalization,
    /// Tolerance on |sum − 1| under [`Normalization::Validate`].
    pub tolerance: f32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reduction: Reduction::None,
            base: Base::E,
            normalization: Normalization::Validate,
            tolerance: DEFAULT_TOLERANCE,
        }
    }
}

impl Options {
    /// Sets the reduction.
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }
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

    pub(crate) fn check(&self) -> Result<f64> {
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(Error::InvalidOption {
                option: Setting::Tolerance,
                message: format!("tolerance must be finite and >= 0, got {}", self.tolerance),
            });
        }
        self.base.ln()
    }
}

/// Options of the negative log-likelihood of class targets.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct NllOptions<'a> {
    /// Reduction, base, normalisation of `q` and tolerance.
    pub common: Options,
    /// A target equal to this is ignored: its row's value is 0 and it is not
    /// counted in the mean (PyTorch's `ignore_index`).
    pub ignore_index: Option<i64>,
    /// Per-class weights (length = classes, finite and ≥ 0): row i's loss is
    /// scaled by `weights[t_i]` and the mean is Σ w·l / Σ w (PyTorch's).
    pub weights: Option<&'a [f32]>,
    /// Label smoothing ε in [0, 1]: the target distribution is
    /// (1 − ε)·onehot(t) + ε / C, as PyTorch's `F.cross_entropy`.
    pub label_smoothing: f32,
    /// [`Context::nll_grad`](crate::Context::nll_grad) only: a factor of the
    /// gradient (not of the loss), finite, default 1. See
    /// [`DistillOptions::grad_scale`](crate::DistillOptions::grad_scale).
    pub grad_scale: f64,
}

impl Default for NllOptions<'_> {
    fn default() -> Self {
        NllOptions {
            common: Options::default(),
            ignore_index: None,
            weights: None,
            label_smoothing: 0.0,
            grad_scale: 1.0,
        }
    }
}

impl<'a> NllOptions<'a> {
    /// Sets the common options.
    pub fn common(mut self, common: Options) -> Self {
        self.common = common;
        self
    }
    /// Sets the reduction.
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.common.reduction = reduction;
        self
    }
    /// Sets the log base.
    pub fn base(mut self, base: Base) -> Self {
        self.common.base = base;
        self
    }
    /// Sets the normalisation of `q`.
    pub fn normalization(mut self, normalization: Normalization) -> Self {
        self.common.normalization = normalization;
        self
    }
    /// Sets the tolerance on |Σ q − 1| under [`Normalization::Validate`].
    pub fn tolerance(mut self, tolerance: f32) -> Self {
        self.common.tolerance = tolerance;
        self
    }
    /// Sets the ignore index.
    pub fn ignore_index(mut self, ignore_index: i64) -> Self {
        self.ignore_index = Some(ignore_index);
        self
    }
    /// Sets the class weights.
    pub fn weights(mut self, weights: &'a [f32]) -> Self {
        self.weights = Some(weights);
        self
    }
    /// Sets the label smoothing.
    pub fn label_smoothing(mut self, label_smoothing: f32) -> Self {
        self.label_smoothing = label_smoothing;
        self
    }
    /// Sets the gradient's factor (gradient calls only).
    pub fn grad_scale(mut self, grad_scale: f64) -> Self {
        self.grad_scale = grad_scale;
        self
    }
}
