//! Training: a loss and its gradient with respect to the logits, in one call.
//!
//! [`Context::nll_grad`] is the negative log-likelihood (cross-entropy) of
//! class targets with everything [`Context::nll`] has, and
//! [`Context::distill`] a distillation loss from a dense or sparse (top-k)
//! teacher. Both write the gradient into the caller's `rows × cols` f32
//! slice and return the loss as an [`Output`] (per row, or the sum or mean).
//!
//! ## Formulas
//!
//! **NLL.** With ε the label smoothing and w the class weights (1 without),
//! the target distribution of a row with target t is
//! p_c = (1 − ε)·w_t·[c = t] + ε·w_c / C (PyTorch's semantics, as `nll`
//! defines it); the row loss is Σ_c p_c (−ln softmax(z)_c) and its gradient
//! (Σ_c p_c)·softmax(z) − p. The mean divides by Σ w_t over the counted rows;
//! an ignored row has loss 0 and gradient 0. A log base other than e divides
//! loss and gradient by ln(base).
//!
//! **Distillation.** With temperature T, q_S = softmax(s / T) and
//! p_T = softmax(t / T) (for teacher logits and log-probabilities alike):
//!
//! | divergence | loss | ∂loss/∂s |
//! |---|---|---|
//! | forward KL | T²·KL(p_T ‖ q_S) | T·(q_S − p_T) |
//! | reverse KL | T²·KL(q_S ‖ p_T) | T·q_S ⊙ (ln q_S − ln p_T − KL(q_S ‖ p_T)) |
//! | generalized JSD, β ∈ (0, 1) | T²·(β KL(p_T ‖ M) + (1 − β) KL(q_S ‖ M)), M = β p_T + (1 − β) q_S | T(1 − β)·q_S ⊙ (ln q_S − ln M − KL(q_S ‖ M)) |
//!
//! β = ½ is the ordinary Jensen-Shannon divergence. As β → 0, loss/β →
//! T²·KL(p_T ‖ q_S) and as β → 1, loss/(1 − β) → T²·KL(q_S ‖ p_T); libraries
//! disagree about the endpoints, so β = 0 and β = 1 are errors that name the
//! KL to use.
//!
//! **Sparse teacher** ([`SparseTeacher`]): per row k column indices and
//! their log-probabilities lₖ (the temperature already applied). Under
//! [`Tail::Bucket`] the teacher's remaining mass r = 1 − Σₖ exp(lₖ) (≥ 0
//! within [`DistillOptions::tolerance`], else an error naming the row) forms
//! one more bucket, and the loss is the divergence between the (k + 1)-bucket
//! coarsenings of p_T and q_S, the student's tail being the mass of the
//! columns outside the indices, whose log is a log-sum-exp over those
//! columns (never ln(1 − Σ q), which cancels in f32). This is a true
//! divergence, a lower bound of the full one; its gradient reaches every
//! student column through the tail. Under [`Tail::Renormalize`] both are
//! restricted to the k indices and renormalised (a divergence between the
//! conditionals; the other columns get gradient 0).
//!
//! **Rows and reductions.** A [`RowMask`] row of 0 has loss 0 and gradient 0
//! and is not counted (its values are not read). `Reduction::None` returns
//! one loss per row and the gradient of their sum; `Sum` the sum; `Mean` the
//! mean over counted rows (PyTorch's `batchmean`; NaN when no row counts, as
//! PyTorch) and its gradient.
//!
//! ## Numerics
//!
//! Row statistics are a blocked online log-sum-exp relative to the row
//! maximum (logits of magnitude 10⁴ are fine); a −inf logit is a masked
//! column with probability 0 and gradient 0, never NaN. From finite logits
//! every loss is finite. A loss that is truly infinite — the target (or
//! label smoothing, or the teacher under a forward KL) puts mass on a column
//! the student masks with −inf, or under a reverse KL the student on one the
//! teacher masks — is [`Error::InfiniteLoss`] naming the row and column. NaN
//! and +inf inputs are [`Error::BadValue`]. Losses are accumulated in f64 per
//! row; results are deterministic and independent of the thread count.
//!
//! ## Gradient formats
//!
//! A host-path gradient ([`GradMut`]) is f32, or f16 / bf16 on request:
//! pass `&mut [half::f16]` or `&mut [half::bf16]`. The kernels compute in
//! f32; a half gradient is each value rounded to nearest (ties to even),
//! a row at a time from a worker's f32 row on the CPU and as the values come
//! back on the GPU host path, so it is the f32 gradient rounded, bit for
//! bit, with no f32 copy of the batch's size. On the CPU the rounding is
//! vectorised (F16C for f16, integer operations for bf16) and a half
//! gradient of 64 MiB or more goes out with streaming stores, as a large f32
//! one does, so a half gradient costs no more time than an f32 one.
//! GPU-resident gradients ([`resident`]) are f32, or halves on request
//! ([`GpuGrad::dtype`](crate::GpuGrad::dtype)).
//!
//! ## Memory and passes
//!
//! No temporary of the batch's size besides the caller's gradient: per
//! worker a row of conversion buffer (f64 and half inputs only), k sorted
//! indices, and on the CPU a row of pass 1's exponentials per input (the
//! NLL and dense distillation keep them, so the gradient pass scales them
//! by a factor per block instead of taking them again).
//! (The GPU host path uploads the inputs and reads the gradient back
//! through device buffers of their size, as every GPU call does; f16 and
//! bf16 inputs go up and are read as they are, two per u32, widened in the
//! kernel to the bits the CPU widens them to.)
//! The NLL, the forward KL and sparse teachers read the logits twice (row
//! statistics, then gradient and loss) and write the gradient once; so does
//! the reverse KL, whose row KL is summed in the first pass relative to the
//! running argmax (rebased as it moves: per block on the CPU, per thread
//! and at each step of the workgroup's tree on the GPU), and so does the
//! forward KL with the teacher's gradient (the same sum, roles swapped).
//! The JSD needs its row's KL(q_S ‖ M) before the gradient, and M needs
//! both rows' normalisers, so it reads the rows three times on both
//! backends (on the CPU the later passes find the row in L2). On the CPU,
//! gradients of 64 MiB and more are written with streaming stores, past the
//! caches they would not fit.
//!
//! ## Backends
//!
//! [`Context::nll_grad`] and [`Context::distill`] run on the context's
//! backend: the GPU of a GPU context; under `Backend::Auto` with a hardware
//! GPU, where the cost model places a logits call of the same input bytes
//! and rows ([`Context::placement`]); else the CPU (all cores, the kernels
//! built for AVX-512 or AVX2 where the CPU has them: the same Rust source,
//! so the same bits). The [`Output`]'s `backend` says which ran.
//!
//! On the GPU (shaders/train.wgsl) one workgroup streams each row: pass 1
//! takes both online log-sum-exps, the reverse KL's rebased row sum and
//! every check, pass 2 writes the gradient and sums the loss (the JSD sums
//! first and writes in a pass 3), each a tree in workgroup memory with no
//! atomics. Each
//! row's loss and status (the per-row [`Record`](crate::Record)) comes back
//! with the gradient; the status gives the host path's error (the first bad
//! row; within a row the first bad column), and the losses are reduced on
//! the host in row order, so results are bit-identical from run to run.
//! Rows are split over several dispatches only where a binding would
//! exceed the device's limit.
//!
//! A sparse teacher on the GPU (host slices): the host checks each row's
//! indices and log-probabilities, sorts the indices and takes the student's
//! values at them; the GPU takes the log-sum-exp of the columns outside the
//! indices (each thread walks the sorted indices with a cursor as its
//! columns rise), the host does the k + 1 buckets' arithmetic in f64 (the
//! CPU's own code), and a second GPU pass writes every column's tail
//! gradient from the row's constants; the host writes the k indexed
//! columns' values over them as the gradient comes back. The student goes
//! up once; errors are the CPU's, from the first bad row. [`resident`] records the dense kernel over the
//! caller's buffers.
//!
//! A sparse teacher on the GPU-resident path
//! ([`Context::encode_sparse_distill`]): one dispatch, one
//! workgroup per row, which checks the row's indices and log-probabilities,
//! sorts the (index, position) pairs (bitonic; in workgroup memory for
//! k ≤ 512, above that in the call's scratch, 12 bytes per pair), takes
//! the tail's log-sum-exp between them, sums the k + 1 buckets in f32 (the
//! reverse KL's factors relative to the student's largest indexed value, as
//! the dense kernel does) and writes every column's gradient once; each
//! row's record decodes to the host path's error. The tail bucket's mass
//! r = 1 − Σ exp(l) cancels where the indices hold nearly all the mass, so
//! its exponentials are taken and summed in 64-bit fixed point (2⁻⁵⁶) with
//! u32 operations: a float-float sum needs error-free transformations that
//! a WGSL compiler may reassociate away (lavapipe's does), integers no
//! compiler may reorder.
//!
//! **Teacher gradient.** [`Context::distill_with_teacher_grad`] also
//! writes the gradient with respect to a dense teacher's values t (logits
//! or log-probabilities; p_T = softmax(t / T) either way), with the same
//! mask and reduction scaling:
//!
//! | divergence | ∂loss/∂t |
//! |---|---|
//! | forward KL | T·p_T ⊙ (ln p_T − ln q_S − KL(p_T ‖ q_S)) |
//! | reverse KL | T·(p_T − q_S) |
//! | generalized JSD | Tβ·p_T ⊙ (ln p_T − ln M − KL(p_T ‖ M)) |
//!
//! (the mirror images of the student's: the reverse KL's is the forward
//! KL's student gradient negated, and so on). It is written in the
//! gradient pass, next to the student's, with no other temporary; the
//! forward KL then takes its row KL in pass 1 relative to the teacher's
//! running argmax (the reverse KL's device, roles swapped), so that the
//! teacher's factor keeps its digits for logits of 10⁴. A sparse teacher
//! has none ([`Error::Unsupported`]).

mod dense;
mod drive;
mod gpu;
mod lse;
mod options;
pub mod resident;
mod sparse;

pub use crate::grad::GradMut;
pub use options::{DistillOptions, Divergence, RowMask, SparseTeacher, Tail, Teacher};
pub use resident::{
    GpuDistill, GpuGrad, GpuNllGrad, GpuRowMask, GpuSparseDistill, grad_output_bytes,
};

use crate::batch::{Batch, Targets};
use crate::context::{Context, Output, Ran};
use crate::error::{Arg, Error, Result, Setting};
use crate::job::Job;
use crate::measure::{Form, NllOptions, Reduction};

// the wording of Error::InfiniteLoss, shared with the GPU records' decoder
use crate::record::{WHY_SMOOTHING, WHY_STUDENT_MASS, WHY_TARGET, WHY_TEACHER_MASS};

/// The gradient slice `arg` must hold rows × cols values.
fn check_grad(grad: &GradMut<'_>, arg: Arg, rows: usize, cols: usize) -> Result<()> {
    if grad.len() != rows * cols {
        return Err(Error::Length {
            arg,
            len: grad.len(),
            rows,
            cols,
            expected: rows * cols,
        });
    }
    Ok(())
}

/// A loss needs logits.
fn check_logits(b: &Batch<'_>, what: &str) -> Result<()> {
    if b.form != Form::Logits {
        return Err(Error::Unsupported(format!(
            "the {what} of a loss with a gradient must be logits (Form::Logits), got {:?}",
            b.form
        )));
    }
    Ok(())
}

/// The gradient's factor for a reduction over `count` counted rows.
fn reduction_scale(reduction: Reduction, count: f64) -> f64 {
    match reduction {
        Reduction::Mean if count > 0.0 => 1.0 / count,
        Reduction::Mean => 0.0,
        _ => 1.0,
    }
}

/// The output of per-row losses `losses` (already in the result's unit),
/// reduced in row order in f64 (the same bits whatever ran them), from the
/// GPU `gpu` or the CPU.
fn output(
    losses: &[f64],
    reduction: Reduction,
    count: f64,
    cols: usize,
    gpu: Option<&crate::gpu::Gpu>,
) -> Output {
    let sum = || losses.iter().sum::<f64>();
    let values = match reduction {
        Reduction::Sum => vec![sum() as f32],
        Reduction::Mean => vec![(sum() / count) as f32],
        _ => losses.iter().map(|&v| v as f32).collect(),
    };
    Output {
        values,
        rows: losses.len(),
        cols,
        reduction,
        counted: count,
        perplexity: None,
        backend: if gpu.is_some() { Ran::Gpu } else { Ran::Cpu },
        adapter: gpu.map(|g| g.adapter_name().to_string()),
    }
}

impl Context {
    /// The negative log-likelihood (cross-entropy) of class `targets` under
    /// `logits` (a [`Form::Logits`] batch, one row per target) and its
    /// gradient with respect to the logits, written into `grad`
    /// (`rows × cols`, row-major). Every option of [`Context::nll`] applies
    /// (ignore index, class weights, label smoothing, reduction, log base);
    /// formulas in the [module docs](crate::train).
    ///
    /// Errors: those of [`Context::nll`]; [`Error::Unsupported`] for inputs
    /// that are not logits or one row of logits shared by several targets;
    /// [`Error::Length`] for a `grad` of another size;
    /// [`Error::InfiniteLoss`] where the target, or label smoothing, puts
    /// mass on a class whose logit is −inf.
    ///
    /// ```
    /// use kullback::{Backend, Batch, Context, Form, NllOptions, Reduction};
    /// # fn main() -> kullback::Result<()> {
    /// let ctx = Context::with_backend(Backend::Cpu)?;
    /// let logits = [2.0f32, 0.5, -1.0, 0.0, 0.0, 3.0];
    /// let mut grad = [0f32; 6];
    /// let opts = NllOptions::default().reduction(Reduction::Mean).label_smoothing(0.1);
    /// let out = ctx.nll_grad(&Batch::new(&logits, 2, 3).form(Form::Logits), &[0i64, 2], &opts, &mut grad)?;
    /// assert!(out.values[0] > 0.0);
    /// assert!(grad[..3].iter().sum::<f32>().abs() < 1e-6); // Σ p = 1: the row's gradient sums to 0
    /// # Ok(()) }
    /// ```
    pub fn nll_grad<'t, 'g>(
        &self,
        logits: &Batch<'_>,
        targets: impl Into<Targets<'t>>,
        opts: &NllOptions<'_>,
        grad: impl Into<GradMut<'g>>,
    ) -> Result<Output> {
        let grad = grad.into();
        let job = Job::nll(logits, targets.into(), opts)?;
        options::check_grad_scale(opts.grad_scale)?;
        check_logits(logits, "logits")?;
        let (rows, cols) = (job.call.rows, job.call.cols);
        if logits.rows != rows {
            return Err(Error::Unsupported(format!(
                "a loss gradient needs one row of logits per target: {rows} targets, {} row(s) of logits",
                logits.rows
            )));
        }
        check_grad(&grad, Arg::Gradient, rows, cols)?;
        let (Some(q), Some(nll)) = (job.q, job.nll.as_ref()) else {
            return Err(Error::MissingArg {
                arg: Arg::Q,
                measure: "nll",
            });
        };
        let count: f64 = nll
            .targets
            .iter()
            .filter(|&&t| t != crate::call::IGNORED)
            .map(|&t| nll.weight(t as usize) as f64)
            .sum();
        let inv_ln = 1.0 / job.call.ln_base;
        let reduction = job.call.reduction;
        let sum_w = nll
            .weights
            .as_ref()
            .map_or(cols as f64, |w| w.iter().map(|&v| v as f64).sum());
        let g = inv_ln * reduction_scale(reduction, count) * opts.grad_scale;
        let on = self.train_gpu(job.input_bytes(), rows as u64);
        let losses = match on {
            Some(gpu_) => {
                let n = gpu::Nll {
                    q,
                    cols,
                    targets: &nll.targets,
                    weights: nll.weights.as_deref(),
                    eps: opts.label_smoothing,
                    sum_w,
                    g,
                    inv_ln,
                };
                gpu::nll(gpu_, &n, grad)?
            }
            None => {
                let kernel = dense::Nll {
                    q,
                    cols,
                    targets: &nll.targets,
                    weights: nll.weights.as_deref(),
                    eps: opts.label_smoothing,
                    sum_w,
                    g,
                    stream: drive::streams(rows, cols, &grad),
                };
                let mut losses = drive::run(&kernel, rows, cols, grad, None)?;
                losses.iter_mut().for_each(|v| *v *= inv_ln);
                losses
            }
        };
        let mut out = output(&losses, reduction, count, cols, on);
        if reduction == Reduction::Mean {
            out.perplexity = Some((out.values[0] as f64 / inv_ln).exp());
        }
        Ok(out)
    }

    /// A distillation loss of `student` logits (a [`Form::Logits`] batch)
    /// against `teacher`, and its gradient with respect to the student's
    /// logits, written into `grad` (the student's `rows × cols`, row-major).
    /// The divergence, temperature, tail policy, row mask and reduction come
    /// from `opts`; formulas in the [module docs](crate::train).
    ///
    /// Errors: [`Error::InvalidOption`] for a temperature ≤ 0 or not finite,
    /// β outside (0, 1) under [`Divergence::Jsd`] ("β = 0: use forward-kl",
    /// "β = 1: use reverse-kl"), a k of 0 or above the columns;
    /// [`Error::Unsupported`] for a student that is not logits or a dense
    /// teacher that is not logits or log-probabilities; [`Error::Empty`],
    /// [`Error::Length`] and [`Error::ShapeMismatch`] for shapes (the mask,
    /// the indices, the gradient); [`Error::BadValue`] for NaN or +inf values
    /// and teacher log-probabilities above 0; [`Error::CannotNormalize`] for
    /// a row of −inf; [`Error::TeacherIndex`] for an index out of range or
    /// repeated in its row; [`Error::NotNormalized`] for a sparse row whose
    /// Σₖ exp(lₖ) exceeds 1 + tolerance; [`Error::InfiniteLoss`] for a row
    /// whose loss is infinite. The first failing row is reported.
    ///
    /// ```
    /// use kullback::{Backend, Batch, Context, DistillOptions, Divergence, Form, Teacher};
    /// # fn main() -> kullback::Result<()> {
    /// let ctx = Context::with_backend(Backend::Cpu)?;
    /// let s = [1.0f32, 0.0, -1.0];
    /// let t = [0.0f32, 1.0, 0.5];
    /// let mut grad = [0f32; 3];
    /// let opts = DistillOptions::default().divergence(Divergence::Jsd).beta(0.5).temperature(2.0);
    /// let teacher = Teacher::Dense(Batch::new(&t, 1, 3).form(Form::Logits));
    /// let out = ctx.distill(&Batch::new(&s, 1, 3).form(Form::Logits), &teacher, &opts, &mut grad)?;
    /// assert!(out.values[0] > 0.0);
    /// # Ok(()) }
    /// ```
    pub fn distill<'g>(
        &self,
        student: &Batch<'_>,
        teacher: &Teacher<'_>,
        opts: &DistillOptions<'_>,
        grad: impl Into<GradMut<'g>>,
    ) -> Result<Output> {
        self.distill_impl(student, teacher, opts, grad.into(), None)
    }

    /// [`Context::distill`] that also writes the gradient of the same loss
    /// with respect to the teacher's values into `teacher_grad` (the
    /// teacher's `rows × cols`, row-major), for a divergence between two
    /// models that both learn. The loss and the student's gradient are
    /// `distill`'s, bit for bit.
    ///
    /// The teacher must be dense ([`Teacher::Dense`]), logits or
    /// log-probabilities: either way p_T = softmax(t / T) and the gradient
    /// is with respect to the given values t. With the row mask and the
    /// reduction's scale of the student's gradient (a masked row gets 0):
    ///
    /// | divergence | ∂loss/∂t |
    /// |---|---|
    /// | forward KL | T·p_T ⊙ (ln p_T − ln q_S − KL(p_T ‖ q_S)) |
    /// | reverse KL | T·(p_T − q_S) |
    /// | generalized JSD | Tβ·p_T ⊙ (ln p_T − ln M − KL(p_T ‖ M)) |
    ///
    /// A −inf teacher value (a masked column) gets 0. It runs where
    /// `distill` runs a dense teacher (the context's backend).
    ///
    /// Errors: those of [`Context::distill`]; [`Error::Unsupported`] for a
    /// sparse teacher (its top-k log-probabilities are not a function of
    /// teacher values this call sees); [`Error::Length`] naming
    /// [`Arg::TeacherGradient`] for a `teacher_grad` of another size.
    ///
    /// ```
    /// use kullback::{Backend, Batch, Context, DistillOptions, Divergence, Form, Teacher};
    /// # fn main() -> kullback::Result<()> {
    /// let ctx = Context::with_backend(Backend::Cpu)?;
    /// let s = [1.0f32, 0.0, -1.0];
    /// let t = [0.0f32, 1.0, 0.5];
    /// let (mut gs, mut gt) = ([0f32; 3], [0f32; 3]);
    /// let opts = DistillOptions::default().divergence(Divergence::Jsd).beta(0.5);
    /// let teacher = Teacher::Dense(Batch::new(&t, 1, 3).form(Form::Logits));
    /// let student = Batch::new(&s, 1, 3).form(Form::Logits);
    /// let out = ctx.distill_with_teacher_grad(&student, &teacher, &opts, &mut gs, &mut gt)?;
    /// assert!(out.values[0] > 0.0);
    /// // softmax's gradients sum to 0 over a row
    /// assert!(gt.iter().sum::<f32>().abs() < 1e-6);
    /// // the JSD is symmetric at β = ½: swapping the roles swaps the gradients
    /// let (mut hs, mut ht) = ([0f32; 3], [0f32; 3]);
    /// let swapped = Teacher::Dense(Batch::new(&s, 1, 3).form(Form::Logits));
    /// let student2 = Batch::new(&t, 1, 3).form(Form::Logits);
    /// ctx.distill_with_teacher_grad(&student2, &swapped, &opts, &mut hs, &mut ht)?;
    /// assert!(gt.iter().zip(&hs).all(|(a, b)| (a - b).abs() < 1e-6));
    /// # Ok(()) }
    /// ```
    pub fn distill_with_teacher_grad<'g, 'h>(
        &self,
        student: &Batch<'_>,
        teacher: &Teacher<'_>,
        opts: &DistillOptions<'_>,
        grad: impl Into<GradMut<'g>>,
        teacher_grad: impl Into<GradMut<'h>>,
    ) -> Result<Output> {
        self.distill_impl(
            student,
            teacher,
            opts,
            grad.into(),
            Some(teacher_grad.into()),
        )
    }

    fn distill_impl(
        &self,
        student: &Batch<'_>,
        teacher: &Teacher<'_>,
        opts: &DistillOptions<'_>,
        grad: GradMut<'_>,
        teacher_grad: Option<GradMut<'_>>,
    ) -> Result<Output> {
        opts.check()?;
        let s = student.checked(Arg::Q)?;
        check_logits(student, "student")?;
        let (rows, cols) = (student.rows, student.cols);
        crate::call::check_u32(rows, cols)?;
        if let Some(m) = &opts.mask {
            if m.len() != rows {
                return Err(Error::Length {
                    arg: Arg::Mask,
                    len: m.len(),
                    rows,
                    cols: 1,
                    expected: rows,
                });
            }
        }
        check_grad(&grad, Arg::Gradient, rows, cols)?;
        if let Some(tg) = teacher_grad.as_ref() {
            if !matches!(teacher, Teacher::Dense(_)) {
                return Err(Error::Unsupported(
                    "a gradient with respect to the teacher needs a dense teacher (Teacher::Dense, \
                     logits or log-probabilities): a sparse top-k teacher's log-probabilities \
                     are not a function of values this call sees"
                        .into(),
                ));
            }
            check_grad(tg, Arg::TeacherGradient, rows, cols)?;
        }
        let count = match &opts.mask {
            Some(m) => (0..rows).filter(|&i| m.counts(i)).count(),
            None => rows,
        } as f64;
        let tf = opts.temperature as f64;
        let k = 1.0 / opts.temperature;
        let g = tf * reduction_scale(opts.reduction, count) * opts.grad_scale;
        let on;
        let losses = match teacher {
            Teacher::Dense(tb) => {
                if !matches!(tb.form, Form::Logits | Form::LogProbs) {
                    return Err(Error::Unsupported(format!(
                        "a dense teacher must be logits or log-probabilities, got {:?}",
                        tb.form
                    )));
                }
                let t = tb.checked(Arg::P)?;
                if (tb.rows, tb.cols) != (rows, cols) {
                    return Err(Error::ShapeMismatch {
                        p_rows: tb.rows,
                        p_cols: tb.cols,
                        q_rows: rows,
                        q_cols: cols,
                    });
                }
                let n = (rows * cols) as u64;
                let bytes = s.dtype().stored_bytes(n) + t.dtype().stored_bytes(n);
                on = self.train_gpu(bytes, rows as u64);
                match on {
                    Some(gpu_) => {
                        let d = gpu::Dense {
                            s,
                            t,
                            t_form: tb.form,
                            cols,
                            div: opts.divergence,
                            beta: opts.beta,
                            k,
                            t2: tf * tf,
                            g,
                            mask: opts.mask,
                        };
                        gpu::dense(gpu_, &d, grad, teacher_grad)?
                    }
                    None => {
                        let kernel = dense::Dense {
                            s,
                            t,
                            t_form: tb.form,
                            cols,
                            div: opts.divergence,
                            beta: opts.beta,
                            k,
                            t2: tf * tf,
                            g,
                            mask: opts.mask,
                            stream: drive::streams(rows, cols, &grad),
                        };
                        drive::run(&kernel, rows, cols, grad, teacher_grad)?
                    }
                }
            }
            Teacher::Sparse(sp) => {
                if sp.k == 0 || sp.k > cols {
                    return Err(Error::InvalidOption {
                        option: Setting::TopK,
                        message: format!(
                            "a sparse teacher needs 1 <= k <= {cols} (the student's columns), got {}",
                            sp.k
                        ),
                    });
                }
                let expected = rows * sp.k;
                for (arg, len) in [
                    (Arg::Indices, sp.indices.len()),
                    (Arg::P, sp.logprobs.len()),
                ] {
                    if len != expected {
                        return Err(Error::Length {
                            arg,
                            len,
                            rows,
                            cols: sp.k,
                            expected,
                        });
                    }
                }
                let kernel = sparse::Sparse {
                    s,
                    cols,
                    indices: sp.indices,
                    logprobs: sp.logprobs,
                    top: sp.k,
                    tail: opts.tail,
                    div: opts.divergence,
                    beta: opts.beta,
                    k,
                    t2: tf * tf,
                    g,
                    tolerance: opts.tolerance,
                    mask: opts.mask,
                };
                let n = (rows * cols) as u64;
                on = self.train_gpu(s.dtype().stored_bytes(n), rows as u64);
                match on {
                    Some(gpu_) => kernel.on_gpu(gpu_, grad)?,
                    None => drive::run(&kernel, rows, cols, grad, None)?,
                }
            }
        };
        Ok(output(&losses, opts.reduction, count, cols, on))
    }
}
