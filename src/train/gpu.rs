//! The GPU path of [`Context::nll_grad`](crate::Context::nll_grad) and
//! [`Context::distill`](crate::Context::distill) with a dense teacher: the
//! kernel's parameters from the call's, the per-row records it writes
//! decoded by `record::decode` (the first bad row's error, as on the CPU),
//! the row losses returned for the host's reduction in row order.

use super::options::{Divergence, RowMask};
use crate::batch::Data;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::gpu::train::{Aux, TrainParams, flag, mode};
use crate::grad::GradMut;
use crate::measure::Form;
use crate::record::{self, DecodeCtx, Record};

/// The losses of `records`, or the error of the first bad row.
fn losses(records: &[Record], cols: usize) -> Result<Vec<f64>> {
    let ctx = DecodeCtx {
        tolerance: 0.0,
        classes: cols,
    };
    let mut out = crate::error::try_vec(records.len(), "the per-row losses")?;
    for (row, r) in records.iter().enumerate() {
        if !r.is_ok() {
            return Err(record::decode(row, r, &ctx));
        }
        out.push(r.value as f64);
    }
    Ok(out)
}

/// The NLL's parameters (see `dense::Nll` for their meaning).
pub(super) struct Nll<'a> {
    pub(super) q: Data<'a>,
    pub(super) cols: usize,
    pub(super) targets: &'a [u32],
    pub(super) weights: Option<&'a [f32]>,
    pub(super) eps: f32,
    pub(super) sum_w: f64,
    /// The gradient's factor.
    pub(super) g: f64,
    /// 1 / ln(base).
    pub(super) inv_ln: f64,
}

/// The per-row NLL (in the call's base) and its gradient on `gpu`.
pub(super) fn nll(gpu: &Gpu, n: &Nll<'_>, grad: GradMut<'_>) -> Result<Vec<f64>> {
    let params = TrainParams {
        cols: n.cols as u32,
        mode: mode::NLL,
        t_form: Form::Logits.code(),
        k: 1.0,
        g: n.g as f32,
        t2: n.inv_ln as f32,
        eps: n.eps,
        sum_w: n.sum_w as f32,
        flags: flag::IGNORE,
        ignore: crate::call::IGNORED,
        ..TrainParams::default()
    };
    let aux = Aux::Targets(n.targets, n.weights);
    let records = gpu.train_rows(n.q, &aux, params, grad, None)?;
    losses(&records, n.cols)
}

/// Dense distillation's parameters (see `dense::Dense`).
pub(super) struct Dense<'a> {
    pub(super) s: Data<'a>,
    pub(super) t: Data<'a>,
    pub(super) t_form: Form,
    pub(super) cols: usize,
    pub(super) div: Divergence,
    pub(super) beta: f32,
    pub(super) k: f32,
    pub(super) t2: f64,
    pub(super) g: f64,
    pub(super) mask: Option<RowMask<'a>>,
}

/// The kernel's mode for a divergence.
pub(crate) fn divergence_mode(div: Divergence) -> u32 {
    match div {
        Divergence::ForwardKl => mode::FORWARD_KL,
        Divergence::ReverseKl => mode::REVERSE_KL,
        Divergence::Jsd => mode::JSD,
    }
}

/// The parameters of a dense distillation (rows and flags set by the caller).
pub(crate) fn distill_params(
    div: Divergence,
    t_form: Form,
    cols: usize,
    beta: f32,
    k: f32,
    t2: f64,
    g: f64,
) -> TrainParams {
    let b = beta as f64;
    TrainParams {
        cols: cols as u32,
        mode: divergence_mode(div),
        t_form: t_form.code(),
        k,
        g: g as f32,
        t2: t2 as f32,
        beta,
        ln_b: b.ln() as f32,
        ln_1b: (1.0 - b).ln() as f32,
        ..TrainParams::default()
    }
}

/// The per-row distillation losses and their gradient on `gpu` (and the
/// teacher's into `tgrad` where given).
pub(super) fn dense(
    gpu: &Gpu,
    d: &Dense<'_>,
    grad: GradMut<'_>,
    tgrad: Option<GradMut<'_>>,
) -> Result<Vec<f64>> {
    let params = distill_params(d.div, d.t_form, d.cols, d.beta, d.k, d.t2, d.g);
    let rows = grad.len() / d.cols.max(1);
    let words: Option<Vec<u32>> = match d.mask {
        Some(m) => {
            let mut w = crate::error::try_vec(rows, "the row mask")?;
            w.extend((0..rows).map(|r| m.counts(r) as u32));
            Some(w)
        }
        None => None,
    };
    let aux = Aux::Teacher(d.t, words.as_deref());
    let records = gpu.train_rows(d.s, &aux, params, grad, tgrad)?;
    losses(&records, d.cols)
}
