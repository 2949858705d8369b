//! One call, checked and lowered into what both backends execute.

use std::ops::Range;

use crate::batch::{Batch, Data, Targets};
use crate::error::{Arg, BadValue, Error, Result};
use crate::measure::{Form, Measure, NllOptions, Normalization, Options, Reduction};

/// What a job computes per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Entropy,
    Cross,
    Kl,
    Js,
    Nll,
}

impl Kind {
    /// The per-row kind of `m`; Hellinger and total variation are all-pairs
    /// measures only for now (an [`Error::Unsupported`] here).
    pub(crate) fn from_measure(m: Measure) -> Result<Kind> {
        Ok(match m {
            Measure::Entropy => Kind::Entropy,
            Measure::CrossEntropy => Kind::Cross,
            Measure::Kl => Kind::Kl,
            Measure::Js => Kind::Js,
            Measure::Hellinger | Measure::TotalVariation => {
                return Err(Error::Unsupported(format!(
                    "{} is not a per-row measure yet; Context::pairwise computes it for all pairs",
                    m.name()
                )));
            }
        })
    }
}

/// One distribution argument: `rows` is the job's rows, or 1 for a row
/// compared with every row of the other argument.
#[derive(Clone, Debug)]
pub(crate) struct Operand<'a> {
    pub data: Data<'a>,
    pub rows: usize,
    pub form: Form,
}

impl Operand<'_> {
    /// The element range of row `r` of the job (the broadcast row for a
    /// one-row operand).
    pub(crate) fn row_range(&self, r: usize, cols: usize) -> Range<usize> {
        let r = if self.rows == 1 { 0 } else { r };
        r * cols..(r + 1) * cols
    }
}

/// The target value the kernels treat as "ignored".
pub(crate) const IGNORED: u32 = u32::MAX;

/// Negative log-likelihood data: p is the (smoothed, weighted) one-hot of the target.
#[derive(Clone, Debug)]
pub(crate) struct NllData {
    /// Targets in [0, cols), or [`IGNORED`].
    pub targets: Vec<u32>,
    pub weights: Option<Vec<f32>>,
    pub smoothing: f32,
}

impl NllData {
    /// Weight of class `c` (1 without weights).
    pub(crate) fn weight(&self, c: usize) -> f32 {
        self.weights.as_ref().map_or(1.0, |w| w[c])
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Job<'a> {
    pub kind: Kind,
    pub rows: usize,
    pub cols: usize,
    pub p: Option<Operand<'a>>,
    pub q: Option<Operand<'a>>,
    pub nll: Option<NllData>,
    pub normalization: Normalization,
    pub tolerance: f32,
    /// ln(base): results are divided by it.
    pub ln_base: f64,
    pub reduction: Reduction,
}

/// Whether an operand of `form` is accumulated in the online (running max)
/// form in a single pass: logits, and log-probabilities being renormalised.
pub(crate) fn online(form: Form, norm: Normalization) -> bool {
    form == Form::Logits || (form == Form::LogProbs && norm == Normalization::Renormalize)
}

/// Whether the row normalisers are computed in a first pass: probabilities
/// being renormalised (divide first: the one-pass correction cancels), and
/// Jensen-Shannon of any online form (its mixture needs both normalised rows).
pub(crate) fn two_pass(kind: Kind, p: Option<Form>, q: Option<Form>, norm: Normalization) -> bool {
    let renorm_probs =
        norm == Normalization::Renormalize && (p == Some(Form::Probs) || q == Some(Form::Probs));
    let any_online = [p, q].iter().any(|f| f.is_some_and(|f| online(f, norm)));
    renorm_probs || (kind == Kind::Js && any_online)
}

impl<'a> Job<'a> {
    pub(crate) fn measure(
        measure: Measure,
        p: &Batch<'a>,
        q: Option<&Batch<'a>>,
        opts: &Options,
    ) -> Result<Self> {
        let ln_base = opts.check()?;
        let kind = Kind::from_measure(measure)?;
        let pd = p.checked(Arg::P)?;
        let (rows, qop) = match (measure.needs_q(), q) {
            (false, _) => (p.rows, None),
            (true, None) => {
                return Err(Error::InvalidOption(format!("{} needs q", measure.name())));
            }
            (true, Some(q)) => {
                let qd = q.checked(Arg::Q)?;
                let rows = paired_rows((p.rows, p.cols), (q.rows, q.cols))?;
                (
                    rows,
                    Some(Operand {
                        data: qd,
                        rows: q.rows,
                        form: q.form,
                    }),
                )
            }
        };
        check_u32(rows, p.cols)?;
        Ok(Job {
            kind,
            rows,
            cols: p.cols,
            p: Some(Operand {
                data: pd,
                rows: p.rows,
                form: p.form,
            }),
            q: qop,
            nll: None,
            normalization: opts.normalization,
            tolerance: opts.tolerance,
            ln_base,
            reduction: opts.reduction,
        })
    }

    pub(crate) fn nll(q: &Batch<'a>, targets: Targets<'_>, opts: &NllOptions<'_>) -> Result<Self> {
        let ln_base = opts.common.check()?;
        let qd = q.checked(Arg::Q)?;
        let classes = q.cols;
        check_nll(targets.len(), (q.rows, q.cols), opts)?;
        let weights = opts.weights.map(<[f32]>::to_vec);
        let eps = opts.label_smoothing;
        let rows = targets.len();
        let mut t32 = crate::error::try_vec(rows, "the NLL targets")?;
        for row in 0..rows {
            let t = targets.get(row);
            if opts.ignore_index == Some(t) {
                t32.push(IGNORED);
            } else if t >= 0 && (t as u64) < classes as u64 {
                t32.push(t as u32);
            } else {
                return Err(Error::TargetOutOfRange {
                    row,
                    target: t,
                    classes,
                });
            }
        }
        check_u32(rows, classes)?;
        Ok(Job {
            kind: Kind::Nll,
            rows,
            cols: classes,
            p: None,
            q: Some(Operand {
                data: qd,
                rows: q.rows,
                form: q.form,
            }),
            nll: Some(NllData {
                targets: t32,
                weights,
                smoothing: eps,
            }),
            normalization: opts.common.normalization,
            tolerance: opts.common.tolerance,
            ln_base,
            reduction: opts.common.reduction,
        })
    }

    /// p is accumulated in the online (running max) form in a single pass.
    pub(crate) fn p_online(&self) -> bool {
        self.p
            .as_ref()
            .is_some_and(|p| online(p.form, self.normalization))
    }

    /// q is accumulated in the online (running max) form in a single pass.
    pub(crate) fn q_online(&self) -> bool {
        self.q
            .as_ref()
            .is_some_and(|q| online(q.form, self.normalization))
    }

    /// See [`two_pass`].
    pub(crate) fn two_pass(&self) -> bool {
        two_pass(
            self.kind,
            self.p.as_ref().map(|p| p.form),
            self.q.as_ref().map(|q| q.form),
            self.normalization,
        )
    }

    /// Whether row sums are checked against 1.
    pub(crate) fn check_sums(&self) -> bool {
        self.normalization == Normalization::Validate
    }

    pub(crate) fn decode_ctx(&self) -> crate::record::DecodeCtx {
        crate::record::DecodeCtx {
            tolerance: self.tolerance,
            classes: self.cols,
        }
    }
}

/// The rows of a call pairing p and q: the same shape, or one of them a
/// single row compared with every row of the other.
pub(crate) fn paired_rows(p: (usize, usize), q: (usize, usize)) -> Result<usize> {
    if p.1 == q.1 && (p.0 == q.0 || p.0 == 1 || q.0 == 1) {
        return Ok(p.0.max(q.0));
    }
    Err(Error::ShapeMismatch {
        p_rows: p.0,
        p_cols: p.1,
        q_rows: q.0,
        q_cols: q.1,
    })
}

/// The checks of a negative log-likelihood shared by the host and GPU-resident
/// paths: targets against the rows of q, label smoothing, class weights.
pub(crate) fn check_nll(targets: usize, q: (usize, usize), opts: &NllOptions<'_>) -> Result<()> {
    if targets == 0 {
        return Err(Error::Empty {
            arg: Arg::Targets,
            rows: 0,
            cols: 1,
        });
    }
    if q.0 != 1 && targets != q.0 {
        return Err(Error::TargetCount {
            targets,
            q_rows: q.0,
            q_cols: q.1,
        });
    }
    let eps = opts.label_smoothing;
    if !(0.0..=1.0).contains(&eps) {
        return Err(Error::InvalidOption(format!(
            "label smoothing must be in [0, 1], got {eps}"
        )));
    }
    if let Some(w) = opts.weights {
        if w.len() != q.1 {
            return Err(Error::Length {
                arg: Arg::Weights,
                len: w.len(),
                rows: 1,
                cols: q.1,
                expected: q.1,
            });
        }
        if let Some(c) = w.iter().position(|x| !(x.is_finite() && *x >= 0.0)) {
            let what = if w[c].is_nan() {
                BadValue::Nan
            } else if w[c] < 0.0 {
                BadValue::Negative
            } else {
                BadValue::Infinite
            };
            return Err(Error::BadValue {
                arg: Arg::Weights,
                row: 0,
                col: Some(c),
                what,
            });
        }
    }
    Ok(())
}

/// Row and column counts must fit the kernels' u32 indices.
pub(crate) fn check_u32(rows: usize, cols: usize) -> Result<()> {
    if rows > u32::MAX as usize / 2 || cols > u32::MAX as usize / 2 {
        return Err(Error::TooLarge(format!(
            "{rows} rows x {cols} columns: each must be below 2^31"
        )));
    }
    Ok(())
}
