//! One call, described without its data: what is computed, over which shape,
//! and how each operand is read. [`Call::measure`] and [`Call::nll`] are the
//! only constructors; the host path ([`crate::job::Job`]), the GPU-resident
//! path ([`crate::resident`]) and both executors read what they decide.
//!
//! Every per-operand decision (online or not, normalised by a first pass or
//! not, sum checked or not) and the number of passes are made here, once.

use crate::error::{Arg, BadValue, Error, Result, Setting};
use crate::measure::{Form, Measure, NllOptions, Normalization, Options, Reduction};
use crate::record::{DecodeCtx, OutputDesc};

/// The target value the kernels treat as "ignored" (host path: targets are
/// converted to u32 with this for the ignore index).
pub(crate) const IGNORED: u32 = u32::MAX;

/// Rows and columns of one argument as given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Shape {
    pub rows: usize,
    pub cols: usize,
    pub form: Form,
    /// The unit roundoff of a storage format coarser than f32 (f16, bf16),
    /// else 0: the row-sum check allows it on top of the tolerance.
    pub roundoff: f32,
}

/// An argument of a call as its entry path holds it: checked into its shape
/// (and whatever the path keeps of it: host values, a GPU buffer).
pub(crate) trait Input {
    /// What the path keeps of a checked argument.
    type Checked;
    /// Checks the argument on its own (shape, and values where the path sees
    /// them); errors name `arg`.
    fn check(&self, arg: Arg) -> Result<(Shape, Self::Checked)>;
}

/// How one distribution argument is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Operand {
    pub form: Form,
    /// The call's rows, or 1 for a row compared with every row of the other.
    pub rows: usize,
    /// Accumulated relative to a running maximum in the term pass (one-pass
    /// plan: logits, or log-probabilities being renormalised).
    pub online: bool,
    /// Divided by (probabilities) or shifted by (log forms) a row normaliser
    /// that a first pass computes (two-pass plan).
    pub normalized: bool,
    /// Its row sum is checked against 1 (`Normalization::Validate`, neither
    /// online nor normalised).
    pub check_sum: bool,
    /// A log form whose values may be above 0 (logits, renormalised log-probabilities).
    pub pos_ok: bool,
}

impl Operand {
    /// Probabilities (or log-probabilities, or logits) given as logarithms.
    pub(crate) fn log_form(&self) -> bool {
        self.form != Form::Probs
    }
}

/// Class targets of a negative log-likelihood: p is the (smoothed, weighted)
/// one-hot of the target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct NllPlan {
    /// Targets equal to these bits are ignored.
    pub ignore: Option<u32>,
    /// Class weights are given (after the targets, in the targets binding).
    pub weighted: bool,
    /// Label smoothing ε.
    pub smoothing: f32,
    /// The targets are i32 (a negative one is reported as such; GPU-resident path).
    pub signed: bool,
}

/// A call: measure, shape, operands, options. No data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Call {
    /// The measure; a negative log-likelihood is the cross-entropy of the
    /// targets' one-hot (`nll` is set).
    pub measure: Measure,
    pub rows: usize,
    pub cols: usize,
    /// `None` for a negative log-likelihood (the targets take its place).
    pub p: Option<Operand>,
    /// `None` for entropy.
    pub q: Option<Operand>,
    pub nll: Option<NllPlan>,
    /// Row normalisers are computed in a first pass.
    pub two_pass: bool,
    pub normalization: Normalization,
    pub tolerance: f32,
    /// ln(base): results are divided by it.
    pub ln_base: f64,
    pub reduction: Reduction,
}

/// Whether an operand of `form` is accumulated in the online (running max)
/// form: logits, and log-probabilities being renormalised.
fn online(form: Form, norm: Normalization) -> bool {
    form == Form::Logits || (form == Form::LogProbs && norm == Normalization::Renormalize)
}

/// The operands' plans: whether row normalisers are computed in a first pass
/// — probabilities being renormalised (divide first: the one-pass correction
/// cancels), and online forms of a measure whose terms need normalised values
/// (Jensen-Shannon: its mixture needs both normalised rows) — and how each
/// operand is then read.
fn operands(
    measure: Measure,
    p: Option<(Form, usize)>,
    q: Option<(Form, usize)>,
    norm: Normalization,
) -> (Option<Operand>, Option<Operand>, bool) {
    let renorm = norm == Normalization::Renormalize;
    let forms = [p, q];
    let renorm_probs = renorm && forms.iter().any(|o| o.is_some_and(|o| o.0 == Form::Probs));
    let any_online = forms.iter().any(|o| o.is_some_and(|o| online(o.0, norm)));
    let two_pass = renorm_probs || (!measure.def().online && any_online);
    let plan = |o: Option<(Form, usize)>| {
        o.map(|(form, rows)| {
            let on = online(form, norm);
            let normalized = two_pass && (on || (form == Form::Probs && renorm));
            Operand {
                form,
                rows,
                online: on && !two_pass,
                normalized,
                check_sum: norm == Normalization::Validate && !on && !normalized,
                pos_ok: form == Form::Logits || (form == Form::LogProbs && renorm),
            }
        })
    };
    (plan(p), plan(q), two_pass)
}

impl Call {
    /// `measure` of `p` (and `q`), each checked on its own in this order:
    /// the options, p, whether q is there, q, the pairing of their shapes.
    pub(crate) fn measure<I: Input>(
        measure: Measure,
        p: &I,
        q: Option<&I>,
        opts: &Options,
    ) -> Result<(Call, I::Checked, Option<I::Checked>)> {
        opts.check()?;
        let ln_base = measure.ln_base(opts.base)?;
        let (ps, pd) = p.check(Arg::P)?;
        let (rows, q) = match (measure.needs_q(), q) {
            (false, _) => (ps.rows, None),
            (true, None) => {
                return Err(Error::MissingArg {
                    arg: Arg::Q,
                    measure: measure.name(),
                });
            }
            (true, Some(q)) => {
                let (qs, qd) = q.check(Arg::Q)?;
                (paired_rows(&ps, &qs)?, Some((qs, qd)))
            }
        };
        check_u32(rows, ps.cols)?;
        let (po, qo, two_pass) = operands(
            measure,
            Some((ps.form, ps.rows)),
            q.as_ref().map(|(s, _)| (s.form, s.rows)),
            opts.normalization,
        );
        let call = Call {
            measure,
            rows,
            cols: ps.cols,
            p: po,
            q: qo,
            nll: None,
            two_pass,
            normalization: opts.normalization,
            tolerance: opts.tolerance
                + ps.roundoff.max(q.as_ref().map_or(0.0, |(s, _)| s.roundoff)),
            ln_base,
            reduction: opts.reduction,
        };
        Ok((call, pd, q.map(|(_, d)| d)))
    }

    /// The negative log-likelihood of `targets` targets under `q`, checked
    /// in this order: the options, q, the targets' count and the NLL options,
    /// then `ignore`, which gives the bits of an ignored target as the
    /// executors will see them.
    pub(crate) fn nll<I: Input>(
        q: &I,
        targets: usize,
        opts: &NllOptions<'_>,
        ignore: impl FnOnce() -> Result<Option<u32>>,
        signed: bool,
    ) -> Result<(Call, I::Checked)> {
        let ln_base = opts.common.check()?;
        let (qs, qd) = q.check(Arg::Q)?;
        check_nll(targets, (qs.rows, qs.cols), opts)?;
        check_u32(targets, qs.cols)?;
        let ignore = ignore()?;
        let norm = opts.common.normalization;
        let (_, qo, two_pass) =
            operands(Measure::CrossEntropy, None, Some((qs.form, qs.rows)), norm);
        let call = Call {
            measure: Measure::CrossEntropy,
            rows: targets,
            cols: qs.cols,
            p: None,
            q: qo,
            nll: Some(NllPlan {
                ignore,
                weighted: opts.weights.is_some(),
                smoothing: opts.label_smoothing,
                signed,
            }),
            two_pass,
            normalization: norm,
            tolerance: opts.common.tolerance + qs.roundoff,
            ln_base,
            reduction: opts.common.reduction,
        };
        Ok((call, qd))
    }

    /// A negative log-likelihood (its mean gives a perplexity).
    pub(crate) fn is_nll(&self) -> bool {
        self.nll.is_some()
    }

    /// Rows weigh by their record's `aux_p` in a sum or mean (a negative
    /// log-likelihood's wₜ, 0 for an ignored row); other rows weigh 1.
    pub(crate) fn rows_weighted(&self) -> bool {
        self.is_nll()
    }

    /// How the call's output records are laid out and decoded.
    pub(crate) fn output_desc(&self) -> OutputDesc {
        OutputDesc {
            reduction: self.reduction,
            weighted: self.rows_weighted(),
            ctx: DecodeCtx {
                tolerance: self.tolerance,
                classes: self.cols,
            },
        }
    }

    /// Either operand is accumulated online (an exp per element: the cost model's "logits").
    pub(crate) fn any_online(&self) -> bool {
        [self.p, self.q].iter().flatten().any(|o| o.online)
    }
}

/// The rows of a call pairing p and q: the same shape, or one of them a
/// single row compared with every row of the other.
fn paired_rows(p: &Shape, q: &Shape) -> Result<usize> {
    if p.cols == q.cols && (p.rows == q.rows || p.rows == 1 || q.rows == 1) {
        return Ok(p.rows.max(q.rows));
    }
    Err(Error::ShapeMismatch {
        p_rows: p.rows,
        p_cols: p.cols,
        q_rows: q.rows,
        q_cols: q.cols,
    })
}

/// The checks of a negative log-likelihood: targets against the rows of q,
/// label smoothing, class weights.
fn check_nll(targets: usize, q: (usize, usize), opts: &NllOptions<'_>) -> Result<()> {
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
        return Err(Error::InvalidOption {
            option: Setting::LabelSmoothing,
            message: format!("label smoothing must be in [0, 1], got {eps}"),
        });
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
    let limit = u32::MAX as usize / 2;
    for (what, n) in [("rows", rows), ("columns", cols)] {
        if n > limit {
            return Err(Error::TooLarge {
                what: what.into(),
                size: n as u64,
                limit: limit as u64,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S(Shape);
    impl Input for S {
        type Checked = ();
        fn check(&self, _: Arg) -> Result<(Shape, ())> {
            Ok((self.0, ()))
        }
    }
    fn s(rows: usize, cols: usize, form: Form) -> S {
        S(Shape {
            rows,
            cols,
            form,
            roundoff: 0.0,
        })
    }

    /// The plan table: passes and per-operand decisions for each form and
    /// normalisation (what both executors read).
    #[test]
    fn operand_plans() {
        use Form::*;
        use Normalization::*;
        let call = |m, pf, qf, norm| {
            let o = Options::default().normalization(norm);
            Call::measure(m, &s(2, 3, pf), Some(&s(1, 3, qf)), &o)
                .expect("valid")
                .0
        };
        // probabilities as given: one pass, sums checked under Validate
        let c = call(Measure::Kl, Probs, Probs, Validate);
        assert!(!c.two_pass);
        let (p, q) = (c.p.expect("p"), c.q.expect("q"));
        assert!(p.check_sum && q.check_sum && !p.online && !p.normalized);
        assert_eq!((p.rows, q.rows, c.rows), (2, 1, 2));
        // logits: online in one pass, nothing checked
        let c = call(Measure::Kl, Logits, Probs, AsGiven);
        assert!(!c.two_pass);
        let p = c.p.expect("p");
        assert!(p.online && !p.check_sum && p.pos_ok);
        // renormalised probabilities: a first pass, divided in the second
        let c = call(Measure::CrossEntropy, Probs, LogProbs, Renormalize);
        assert!(c.two_pass);
        let (p, q) = (c.p.expect("p"), c.q.expect("q"));
        assert!(p.normalized && !p.online && q.normalized && q.pos_ok);
        // JS of logits: two passes even under Validate; probabilities beside
        // them are used as given and checked
        let c = call(Measure::Js, Logits, Probs, Validate);
        assert!(c.two_pass);
        let (p, q) = (c.p.expect("p"), c.q.expect("q"));
        assert!(p.normalized && !p.online && !q.normalized && q.check_sum);
        // NLL: no p, targets instead
        let (c, ()) = Call::nll(
            &s(4, 3, Logits),
            4,
            &NllOptions::default(),
            || Ok(None),
            false,
        )
        .expect("valid");
        assert!(c.is_nll() && c.p.is_none() && c.q.expect("q").online);
    }

    #[test]
    fn check_order_and_shapes() {
        let o = Options::default();
        let e = Call::measure(Measure::Kl, &s(2, 3, Form::Probs), None, &o);
        assert!(matches!(e, Err(Error::MissingArg { arg: Arg::Q, .. })));
        let e = Call::measure(
            Measure::Kl,
            &s(2, 3, Form::Probs),
            Some(&s(3, 3, Form::Probs)),
            &o,
        );
        assert!(matches!(e, Err(Error::ShapeMismatch { .. })));
        let e = Call::measure(Measure::Entropy, &s(1 << 31, 1, Form::Probs), None, &o);
        assert!(matches!(e, Err(Error::TooLarge { .. })));
    }
}
