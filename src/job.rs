//! The host path's call: a [`Call`] with the caller's values (never copied)
//! and the class targets converted for the kernels.

use crate::batch::{Batch, Data, Targets};
use crate::call::{Call, IGNORED, Input, Shape};
use crate::error::{Arg, Error, Result};
use crate::measure::{Measure, NllOptions, Options};

impl<'a> Input for Batch<'a> {
    type Checked = Data<'a>;
    fn check(&self, arg: Arg) -> Result<(Shape, Data<'a>)> {
        let data = self.checked(arg)?;
        let shape = Shape {
            rows: self.rows,
            cols: self.cols,
            form: self.form,
            roundoff: roundoff(data.roundoff(), self.form, self.cols),
        };
        Ok((shape, data))
    }
}

/// What rounding a valid row to a format of unit roundoff `u` may move its
/// checked sum by: Σ p·u for probabilities; for log-probabilities
/// Σ p·|ln p|·u ≤ u·ln(cols) on top (the entropy bounds the weighted
/// logs). 0 for f32 and f64.
pub(crate) fn roundoff(u: f32, form: crate::measure::Form, cols: usize) -> f32 {
    match form {
        crate::measure::Form::LogProbs => u * (1.0 + (cols.max(1) as f32).ln()),
        _ => u,
    }
}

/// Class targets of a negative log-likelihood, as the kernels read them.
#[derive(Clone, Debug)]
pub(crate) struct NllData {
    /// Targets in [0, cols), or [`IGNORED`].
    pub targets: Vec<u32>,
    pub weights: Option<Vec<f32>>,
}

impl NllData {
    /// Weight of class `c` (1 without weights).
    pub(crate) fn weight(&self, c: usize) -> f32 {
        self.weights.as_ref().map_or(1.0, |w| w[c])
    }
}

/// A call with its host data.
#[derive(Clone, Debug)]
pub(crate) struct Job<'a> {
    pub call: Call,
    /// The values of p (`None` for a negative log-likelihood).
    pub p: Option<Data<'a>>,
    /// The values of q (`None` for entropy).
    pub q: Option<Data<'a>>,
    pub nll: Option<NllData>,
}

impl<'a> Job<'a> {
    pub(crate) fn measure(
        measure: Measure,
        p: &Batch<'a>,
        q: Option<&Batch<'a>>,
        opts: &Options,
    ) -> Result<Self> {
        let (call, p, q) = Call::measure(measure, p, q, opts)?;
        Ok(Job {
            call,
            p: Some(p),
            q,
            nll: None,
        })
    }

    pub(crate) fn nll(q: &Batch<'a>, targets: Targets<'_>, opts: &NllOptions<'_>) -> Result<Self> {
        let ignore = || Ok(opts.ignore_index.map(|_| IGNORED));
        let (call, q) = Call::nll(q, targets.len(), opts, ignore, false)?;
        let (rows, classes) = (call.rows, call.cols);
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
        Ok(Job {
            call,
            p: None,
            q: Some(q),
            nll: Some(NllData {
                targets: t32,
                weights: opts.weights.map(<[f32]>::to_vec),
            }),
        })
    }

    /// Bytes of the values of p and q.
    pub(crate) fn input_bytes(&self) -> u64 {
        [self.p, self.q]
            .iter()
            .flatten()
            .map(|d| d.len() as u64 * d.dtype().bytes())
            .sum()
    }
}
