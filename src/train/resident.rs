//! The GPU-resident loss and gradient: logits (and a teacher, or class
//! targets) in the caller's buffers, the work recorded into the caller's
//! encoder, the gradient written into the caller's buffer at an offset and
//! one [`Record`] per row (the row's loss and status) into the caller's
//! output buffer. Nothing is submitted, waited for or read back here.
//!
//! ## Layout
//!
//! * gradient: `rows × cols` values, row-major, at byte `grad.offset`
//!   (usage `STORAGE`, offset a multiple of
//!   `min_storage_buffer_offset_alignment`, not a buffer the call reads):
//!   f32, or with [`GpuGrad::dtype`] f16 / bf16 packed two per u32 (an odd
//!   count's last word is whole: its upper half is not written, and is left
//!   as it was). Each half is set by integer atomics on its own 16 bits of
//!   the word, so rows that share a word never collide and any order gives
//!   the same bits. It is the gradient of the *sum* of the
//!   row losses times [`GpuDistill::grad_scale`] (or
//!   [`GpuNllGrad::grad_scale`]): for a mean, pass 1 / (counted rows). Rows
//!   that are ignored, masked or bad get a zero gradient.
//! * output: `rows` [`Record`]s ([`RECORD_SIZE`] bytes each) at byte
//!   `output.offset` (usage `COPY_DST`, offset a multiple of 4): `value` the
//!   row's loss (T²·divergence, or the NLL in the call's base; 0 for an
//!   ignored row, NaN for a bad one), `aux_p` the row's weight (wₜ for the
//!   NLL, 1 for a counted distillation row, 0 for an ignored one), and the
//!   status (`code`, `column`, `index`) the host path turns into its error:
//!   read the records back and pass them to [`GpuDistill::decode`] or
//!   [`GpuNllGrad::decode`].
//! * row mask (distillation, optional): one u32 per row (0 ignores the row)
//!   at byte `mask.offset` (usage `COPY_SRC`, offset a multiple of 4).
//! * teacher gradient (distillation, optional: [`GpuDistill::teacher_grad`]):
//!   `rows × cols` f32 with the student gradient's scaling. In the
//!   *gradient's buffer* at a byte offset (a multiple of 4) at or after the
//!   end of the student's gradient, with both within one storage binding,
//!   the kernel binds the two gradients as one window (four storage
//!   buffers: any device). Anywhere else (another buffer, or the same one
//!   before the student's gradient; offset a multiple of
//!   `min_storage_buffer_offset_alignment`, usage `STORAGE`, not over the
//!   student's gradient or an input) it takes a binding of its own, which
//!   needs a device that binds five storage buffers per shader stage
//!   (`Limits::max_storage_buffers_per_shader_stage`; downlevel devices
//!   bind four, and get [`Error::Unsupported`]).
//!
//! * student and teacher: [`GpuBatch`]es of logits (the teacher's may be
//!   log-probabilities) stored as their [`GpuBatch::dtype`] says: f32, or
//!   f16 / bf16 packed two per u32 (value 2k in the low half of word k),
//!   widened exactly where the kernel reads them, so that a half input reads
//!   half the bytes and gives the bits of the same values widened to f32.
//! * a sparse teacher ([`GpuSparseDistill`]): `rows × k` indices (i32 or
//!   u32) and `rows × k` log-probabilities (a [`GpuBatch`] of
//!   [`Form::LogProbs`], any dtype), row-major, each at an offset that is a
//!   multiple of 4 of a buffer with usage `COPY_SRC`: both are copied into
//!   the call's scratch (a row's pairs are sorted on the GPU: in workgroup
//!   memory for k ≤ 512, above that in the call's scratch, which then holds
//!   12 bytes per pair, k rounded up to a power of two).
//!
//! Each input and the gradient must fit one storage binding of the device.

use crate::call::Call;
use crate::context::Context;
use crate::error::{Arg, BufferProblem, Error, Result, Setting};
use crate::gpu::train::{
    Bindings, Entry, SPARSE_KMAX, TrainParams, Window, flag, record, rows_bytes, sort_words,
};
use crate::gpu::{Gpu, Scratch};
use crate::measure::{Form, NllOptions, Reduction};
use crate::record::{self, DecodeCtx, RECORD_SIZE, Record};
use crate::resident::{GpuBatch, GpuOutput, GpuTargets, check_buffer};
use crate::widen::Dtype;

use super::options::{DistillOptions, Tail};

/// Where a GPU-resident gradient goes: byte `offset` of `buffer`, stored as
/// `dtype` says (see the [module docs](self) for the layout).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct GpuGrad<'a> {
    /// The buffer (usage `STORAGE`).
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of row 0's first value.
    pub offset: u64,
    /// How the student's gradient is stored: f32 (the default), or f16 /
    /// bf16 packed two per u32 (value 2k in the low half of word k), each
    /// rounded to nearest even from the f32 value: the bits of the host
    /// path's half gradients ([`GradMut`](crate::GradMut)). A teacher
    /// gradient is f32 whatever this says.
    pub dtype: Dtype,
}

impl<'a> GpuGrad<'a> {
    /// The gradient at offset 0 of `buffer`, f32.
    pub fn new(buffer: &'a wgpu::Buffer) -> Self {
        GpuGrad {
            buffer,
            offset: 0,
            dtype: Dtype::F32,
        }
    }
    /// Sets the byte offset.
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }
    /// Sets how the gradient is stored.
    pub fn dtype(mut self, dtype: Dtype) -> Self {
        self.dtype = dtype;
        self
    }
}

/// A row mask in a caller's buffer: one u32 per row, 0 ignores the row.
#[derive(Clone, Copy, Debug)]
pub struct GpuRowMask<'a> {
    /// The buffer (usage `COPY_SRC`).
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset (a multiple of 4).
    pub offset: u64,
}

/// Distillation from a dense teacher over the caller's buffers: what
/// [`Context::encode_distill`] records.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct GpuDistill<'a> {
    /// The student's logits ([`Form::Logits`]).
    pub student: GpuBatch<'a>,
    /// The teacher, logits or log-probabilities, of the student's shape.
    pub teacher: GpuBatch<'a>,
    /// Divergence, β, temperature (`mask` must be `None` and the reduction
    /// `None` or `Sum`: see [`GpuDistill::grad_scale`]).
    pub options: DistillOptions<'a>,
    /// Rows that count (default: all).
    pub mask: Option<GpuRowMask<'a>>,
    /// The gradient's factor (default 1: the gradient of the sum of rows),
    /// times the options' own `grad_scale`.
    pub grad_scale: f32,
    /// Where the gradient goes.
    pub grad: GpuGrad<'a>,
    /// Where the gradient with respect to the teacher's values goes
    /// (default: not computed); in `grad`'s buffer, after the student's (see
    /// the [module docs](self)). The formulas are
    /// [`Context::distill_with_teacher_grad`]'s.
    pub teacher_grad: Option<GpuGrad<'a>>,
    /// Where the per-row records go (and the scratch they need).
    pub output: GpuOutput<'a>,
}

impl<'a> GpuDistill<'a> {
    /// Distillation of `student` from `teacher` with the default options.
    pub fn new(
        student: GpuBatch<'a>,
        teacher: GpuBatch<'a>,
        grad: GpuGrad<'a>,
        output: GpuOutput<'a>,
    ) -> Self {
        GpuDistill {
            student,
            teacher,
            options: DistillOptions::default(),
            mask: None,
            grad_scale: 1.0,
            grad,
            teacher_grad: None,
            output,
        }
    }
    /// Sets the options.
    pub fn options(mut self, options: DistillOptions<'a>) -> Self {
        self.options = options;
        self
    }
    /// Also writes the gradient with respect to the teacher, at `grad` (in
    /// the student gradient's buffer, after it).
    pub fn teacher_grad(mut self, grad: GpuGrad<'a>) -> Self {
        self.teacher_grad = Some(grad);
        self
    }
    /// Sets the row mask.
    pub fn mask(mut self, mask: GpuRowMask<'a>) -> Self {
        self.mask = Some(mask);
        self
    }
    /// Sets the gradient's factor (1 / counted rows for a mean).
    pub fn grad_scale(mut self, scale: f32) -> Self {
        self.grad_scale = scale;
        self
    }
    /// The per-row losses of the records read back, or the error the host
    /// path returns for the same input.
    pub fn decode(&self, records: &[Record]) -> Result<Vec<f32>> {
        decode_rows(records, self.student.cols, 0.0)
    }
}

/// Distillation from a sparse (top-k) teacher over the caller's buffers:
/// what [`Context::encode_sparse_distill`] records. The loss, both tail
/// policies and the errors are [`Context::distill`]'s with a
/// [`Teacher::Sparse`](super::Teacher::Sparse); the buckets are summed on
/// the GPU in f32 (the tail bucket's mass 1 − Σ exp(l) in 64-bit fixed
/// point) where the host path sums them in f64, so results agree with it
/// within the crate's accuracy bound rather than bit for bit.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct GpuSparseDistill<'a> {
    /// The student's logits ([`Form::Logits`]).
    pub student: GpuBatch<'a>,
    /// `rows × k` column indices, row-major, i32 or u32 (usage `COPY_SRC`,
    /// offset a multiple of 4). Any k ≤ the columns: above 512 each row's
    /// pairs are sorted in the call's scratch (12 · k rounded up to a power
    /// of two bytes per row) rather than in workgroup memory.
    pub indices: GpuTargets<'a>,
    /// The teacher's log-probabilities at those indices, `rows × k`
    /// ([`Form::LogProbs`], the temperature already applied; f32, f16 or
    /// bf16; usage `COPY_SRC`, offset a multiple of 4).
    pub logprobs: GpuBatch<'a>,
    /// Divergence, β, temperature, tail policy, tolerance (`mask` must be
    /// `None` and the reduction `None` or `Sum`: see `grad_scale`).
    pub options: DistillOptions<'a>,
    /// Rows that count (default: all).
    pub mask: Option<GpuRowMask<'a>>,
    /// The gradient's factor (default 1: the gradient of the sum of rows),
    /// times the options' own `grad_scale`.
    pub grad_scale: f32,
    /// Where the gradient goes.
    pub grad: GpuGrad<'a>,
    /// Where the per-row records go (and the scratch they need).
    pub output: GpuOutput<'a>,
}

impl<'a> GpuSparseDistill<'a> {
    /// Distillation of `student` from the sparse teacher (`indices`,
    /// `logprobs`) with the default options.
    pub fn new(
        student: GpuBatch<'a>,
        indices: GpuTargets<'a>,
        logprobs: GpuBatch<'a>,
        grad: GpuGrad<'a>,
        output: GpuOutput<'a>,
    ) -> Self {
        GpuSparseDistill {
            student,
            indices,
            logprobs,
            options: DistillOptions::default(),
            mask: None,
            grad_scale: 1.0,
            grad,
            output,
        }
    }
    /// Sets the options.
    pub fn options(mut self, options: DistillOptions<'a>) -> Self {
        self.options = options;
        self
    }
    /// Sets the row mask.
    pub fn mask(mut self, mask: GpuRowMask<'a>) -> Self {
        self.mask = Some(mask);
        self
    }
    /// Sets the gradient's factor (1 / counted rows for a mean).
    pub fn grad_scale(mut self, scale: f32) -> Self {
        self.grad_scale = scale;
        self
    }
    /// The per-row losses of the records read back, or the error the host
    /// path returns for the same input.
    pub fn decode(&self, records: &[Record]) -> Result<Vec<f32>> {
        decode_rows(records, self.student.cols, self.options.tolerance)
    }
}

/// The NLL of class targets and its gradient over the caller's buffers:
/// what [`Context::encode_nll_grad`] records.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct GpuNllGrad<'a> {
    /// The logits ([`Form::Logits`]), one row per target.
    pub logits: GpuBatch<'a>,
    /// One target per row (usage `COPY_SRC`).
    pub targets: GpuTargets<'a>,
    /// Ignore index, class weights, label smoothing, base (the reduction
    /// `None` or `Sum`: see [`GpuNllGrad::grad_scale`]).
    pub options: NllOptions<'a>,
    /// The gradient's factor (default 1: the gradient of the sum of rows),
    /// times the options' own `grad_scale`.
    pub grad_scale: f32,
    /// Where the gradient goes.
    pub grad: GpuGrad<'a>,
    /// Where the per-row records go (and the scratch they need).
    pub output: GpuOutput<'a>,
}

impl<'a> GpuNllGrad<'a> {
    /// The NLL of `targets` under `logits`, with the default options.
    pub fn new(
        logits: GpuBatch<'a>,
        targets: GpuTargets<'a>,
        grad: GpuGrad<'a>,
        output: GpuOutput<'a>,
    ) -> Self {
        GpuNllGrad {
            logits,
            targets,
            options: NllOptions::default(),
            grad_scale: 1.0,
            grad,
            output,
        }
    }
    /// Sets the options.
    pub fn options(mut self, options: NllOptions<'a>) -> Self {
        self.options = options;
        self
    }
    /// Sets the gradient's factor (1 / Σ wₜ over counted rows for a mean).
    pub fn grad_scale(mut self, scale: f32) -> Self {
        self.grad_scale = scale;
        self
    }
    /// The per-row losses of the records read back, or the error the host
    /// path returns for the same input.
    pub fn decode(&self, records: &[Record]) -> Result<Vec<f32>> {
        decode_rows(records, self.logits.cols, 0.0)
    }
}

/// Bytes of the output of a GPU-resident loss and gradient over `rows` rows.
pub fn grad_output_bytes(rows: usize) -> u64 {
    rows as u64 * RECORD_SIZE
}

fn decode_rows(records: &[Record], cols: usize, tolerance: f32) -> Result<Vec<f32>> {
    let ctx = DecodeCtx {
        tolerance,
        classes: cols,
    };
    let mut out = crate::error::try_vec(records.len(), "the per-row losses")?;
    for (row, r) in records.iter().enumerate() {
        if !r.is_ok() {
            return Err(record::decode(row, r, &ctx));
        }
        out.push(r.value);
    }
    Ok(out)
}

fn per_row_only(reduction: Reduction) -> Result<()> {
    match reduction {
        Reduction::None | Reduction::Sum => Ok(()),
        _ => Err(Error::Unsupported(
            "a GPU-resident loss gradient writes per-row losses and the gradient of their sum: \
             use Reduction::None or Sum, and grad_scale(1 / count) for a mean"
                .into(),
        )),
    }
}

fn logits_only(b: &GpuBatch<'_>, what: &str) -> Result<()> {
    if b.form != Form::Logits {
        return Err(Error::Unsupported(format!(
            "the {what} of a loss with a gradient must be logits (Form::Logits), got {:?}",
            b.form
        )));
    }
    Ok(())
}

fn finite_scale(s: f32) -> Result<()> {
    if !s.is_finite() {
        return Err(Error::InvalidOption {
            option: Setting::Reduction,
            message: format!("grad_scale must be finite, got {s}"),
        });
    }
    Ok(())
}

/// What the kernel reads besides the logits.
enum Side<'a> {
    Teacher(&'a GpuBatch<'a>, Option<&'a GpuRowMask<'a>>),
    /// A sparse teacher: its indices and log-probabilities, k of each per
    /// row, and the mask.
    Sparse(
        &'a GpuTargets<'a>,
        &'a GpuBatch<'a>,
        Option<&'a GpuRowMask<'a>>,
    ),
    Targets(&'a GpuTargets<'a>, Option<&'a [f32]>),
}

/// Bytes of a sparse teacher's indices (u32 words) and log-probabilities
/// (as stored), `lp`'s rows × k values each.
fn sparse_bytes(lp: &GpuBatch<'_>) -> (u64, u64) {
    let n = lp.rows as u64 * lp.cols as u64;
    (n * 4, lp.dtype.stored_bytes(n))
}

/// Checks the caller's buffers, then records the copies in, the dispatch
/// and the copy of the records out.
#[expect(
    clippy::too_many_arguments,
    reason = "one call's buffers and parameters"
)]
fn encode(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    s: &GpuBatch<'_>,
    side: Side<'_>,
    grad: &GpuGrad<'_>,
    tgrad: Option<&GpuGrad<'_>>,
    out: &GpuOutput<'_>,
    mut params: TrainParams,
) -> Result<()> {
    let (rows, cols) = (s.rows, s.cols);
    let limits = gpu.plan_limits();
    let align = limits.align;
    // the gradient's bytes (f32), and each input's as it is stored
    // the teacher's gradient (f32), the student's as its dtype says
    let bytes = rows as u64 * cols as u64 * 4;
    let g_bytes = grad.dtype.stored_bytes(rows as u64 * cols as u64);
    params.g_fmt = grad.dtype.code();
    let s_bytes = s.dtype.stored_bytes(rows as u64 * cols as u64);
    params.s_fmt = s.dtype.code();
    if g_bytes > limits.max_binding {
        return Err(Error::TooLarge {
            what: "bytes of a GPU-resident loss gradient's binding".into(),
            size: g_bytes,
            limit: limits.max_binding,
        });
    }
    let storage = wgpu::BufferUsages::STORAGE;
    let copy_src = wgpu::BufferUsages::COPY_SRC;
    check_buffer("student", s.buffer, s.offset, s_bytes, storage, align)?;
    check_buffer(
        "gradient",
        grad.buffer,
        grad.offset,
        g_bytes,
        storage,
        align,
    )?;
    // the window of the gradient binding: the student's gradient, and the
    // teacher's after it in the same buffer
    // the window of the gradient binding: the student's gradient, and the
    // teacher's after it in the same buffer, unless the device binds five
    // storage buffers and the teacher's goes elsewhere (a binding of its own)
    let mut grad_window = g_bytes;
    let mut tg_window = None;
    if let Some(tg) = tgrad {
        params.flags |= flag::TGRAD;
        let after = tg.buffer == grad.buffer
            && tg.offset >= grad.offset + g_bytes
            && tg.offset + bytes - grad.offset <= limits.max_binding;
        if after {
            check_buffer("teacher gradient", tg.buffer, tg.offset, bytes, storage, 4)?;
            grad_window = tg.offset + bytes - grad.offset;
            params.tg_at =
                u32::try_from((tg.offset - grad.offset) / 4).map_err(|_| Error::TooLarge {
                    what: "words between the student's and the teacher's gradients".into(),
                    size: (tg.offset - grad.offset) / 4,
                    limit: u32::MAX as u64,
                })?;
        } else if gpu.limits.max_storage_buffers_per_shader_stage >= 5 {
            check_buffer(
                "teacher gradient",
                tg.buffer,
                tg.offset,
                bytes,
                storage,
                align,
            )?;
            let overlaps = tg.buffer == grad.buffer
                && tg.offset < grad.offset + g_bytes
                && grad.offset < tg.offset + bytes;
            if overlaps {
                return Err(Error::Buffer {
                    name: "teacher gradient",
                    problem: BufferProblem::AliasesOther,
                });
            }
            tg_window = Some(Window {
                buffer: tg.buffer,
                offset: tg.offset,
                size: bytes,
            });
        } else {
            return Err(Error::Unsupported(
                "this device binds at most four storage buffers per shader stage: a GPU-resident \
                 teacher gradient goes in the gradient's buffer, at or after the end of the \
                 student's gradient and within one storage binding of its start (both share one \
                 binding)"
                    .into(),
            ));
        }
    }
    let rec_bytes = grad_output_bytes(rows);
    let copy_dst = wgpu::BufferUsages::COPY_DST;
    check_buffer("output", out.buffer, out.offset, rec_bytes, copy_dst, 4)?;
    let mut reads = vec![s.buffer];
    let has_mask = matches!(
        side,
        Side::Teacher(_, Some(_)) | Side::Sparse(_, _, Some(_))
    );
    match &side {
        Side::Teacher(t, mask) => {
            let t_bytes = t.dtype.stored_bytes(rows as u64 * cols as u64);
            check_buffer("teacher", t.buffer, t.offset, t_bytes, storage, align)?;
            reads.push(t.buffer);
            if let Some(m) = mask {
                check_buffer("mask", m.buffer, m.offset, rows as u64 * 4, copy_src, 4)?;
            }
        }
        Side::Targets(t, _) => {
            check_buffer("targets", t.buffer, t.offset, rows as u64 * 4, copy_src, 4)?;
        }
        Side::Sparse(ix, lp, mask) => {
            let (ix_bytes, lp_bytes) = sparse_bytes(lp);
            check_buffer("indices", ix.buffer, ix.offset, ix_bytes, copy_src, 4)?;
            check_buffer(
                "log-probabilities",
                lp.buffer,
                lp.offset,
                lp_bytes,
                copy_src,
                4,
            )?;
            if let Some(m) = mask {
                check_buffer("mask", m.buffer, m.offset, rows as u64 * 4, copy_src, 4)?;
            }
            let t_bytes = ix_bytes + lp_bytes;
            if t_bytes > limits.max_binding {
                return Err(Error::TooLarge {
                    what: "bytes of a sparse teacher's indices and log-probabilities".into(),
                    size: t_bytes,
                    limit: limits.max_binding,
                });
            }
        }
    }
    if reads.contains(&grad.buffer) {
        return Err(Error::Buffer {
            name: "gradient",
            problem: BufferProblem::AliasesInput,
        });
    }
    if tgrad.is_some_and(|t| reads.contains(&t.buffer)) {
        return Err(Error::Buffer {
            name: "teacher gradient",
            problem: BufferProblem::AliasesInput,
        });
    }
    let entry = match &side {
        Side::Sparse(_, lp, _) if lp.cols > SPARSE_KMAX => Entry::SparseFusedGlobal,
        Side::Sparse(..) => Entry::SparseFused,
        _ => Entry::Train,
    };
    let mut sc = match out.workspace {
        Some(w) => Scratch::pooled(&w.pool),
        None => Scratch::fresh(),
    };
    params.rows = rows as u32;
    let mut rows_len = rows_bytes(rows, has_mask);
    if entry == Entry::SparseFusedGlobal {
        // each row's pairs are sorted in its region after the records and mask
        let top = params.top as usize;
        let sort_bytes = rows as u64 * sort_words(top) * 4;
        params.sort_at = (rows_len / 4) as u32;
        rows_len += sort_bytes;
        if rows_len > limits.max_binding {
            return Err(Error::TooLarge {
                what: format!(
                    "bytes of the records and sort scratch of a GPU-resident sparse teacher with \
                     k = {top} over {rows} rows (fewer rows per call fit)"
                ),
                size: rows_len,
                limit: limits.max_binding,
            });
        }
    }
    let what = "the scratch of a GPU-resident loss gradient";
    let side_bytes = match &side {
        Side::Sparse(_, lp, _) => {
            let (ix_bytes, lp_bytes) = sparse_bytes(lp);
            ix_bytes + lp_bytes
        }
        _ => (rows + cols) as u64 * 4,
    };
    gpu.scoped(what, rows_len + side_bytes, || {
        let sc = &mut sc;
        let usage = storage | copy_src | copy_dst;
        let rows_buf = sc.buffer(&gpu.device, "kullback.train.rows", rows_len, usage)?;
        let (t_win, holder);
        let mask = match side {
            Side::Teacher(_, m) | Side::Sparse(_, _, m) => m,
            Side::Targets(..) => None,
        };
        if let Some(m) = mask {
            enc.copy_buffer_to_buffer(m.buffer, m.offset, &rows_buf, rec_bytes, rows as u64 * 4);
            params.flags |= flag::MASK;
            params.mask_at = (rows as u64 * RECORD_SIZE / 4) as u32;
        }
        match side {
            Side::Teacher(t, _) => {
                params.t_fmt = t.dtype.code();
                t_win = Window {
                    buffer: t.buffer,
                    offset: t.offset,
                    size: t.dtype.stored_bytes(rows as u64 * cols as u64),
                };
                holder = None;
            }
            Side::Targets(t, weights) => {
                let w_len = weights.map_or(0, |w| w.len());
                let t_bytes = (rows + w_len) as u64 * 4;
                let h = sc.buffer(&gpu.device, "kullback.targets", t_bytes, storage | copy_dst)?;
                if let Some(w) = weights {
                    gpu.queue
                        .write_buffer(&h, rows as u64 * 4, bytemuck::cast_slice(w));
                    params.flags |= flag::WEIGHTS;
                }
                enc.copy_buffer_to_buffer(t.buffer, t.offset, &h, 0, rows as u64 * 4);
                holder = Some((h, t_bytes));
                t_win = Window {
                    buffer: s.buffer,
                    offset: 0,
                    size: 4,
                };
            }
            Side::Sparse(ix, lp, _) => {
                // indices then log-probabilities, copied into one binding
                let (ix_bytes, lp_bytes) = sparse_bytes(lp);
                let h = sc.buffer(
                    &gpu.device,
                    "kullback.sparse.teacher",
                    ix_bytes + lp_bytes,
                    storage | copy_dst,
                )?;
                enc.copy_buffer_to_buffer(ix.buffer, ix.offset, &h, 0, ix_bytes);
                enc.copy_buffer_to_buffer(lp.buffer, lp.offset, &h, ix_bytes, lp_bytes);
                params.lp_at = (ix_bytes / 4) as u32;
                params.t_fmt = lp.dtype.code();
                if ix.signed {
                    params.flags |= flag::SIGNED;
                }
                holder = Some((h, ix_bytes + lp_bytes));
                t_win = Window {
                    buffer: s.buffer,
                    offset: 0,
                    size: 4,
                };
            }
        }
        let t_win = match &holder {
            Some((h, n)) => Window::whole(h, *n),
            None => t_win,
        };
        let b = Bindings {
            s: Window {
                buffer: s.buffer,
                offset: s.offset,
                size: s_bytes,
            },
            t: t_win,
            grad: Window {
                buffer: grad.buffer,
                offset: grad.offset,
                size: grad_window,
            },
            rows: Window::whole(&rows_buf, rows_len),
            tg: tg_window,
        };
        record(gpu, sc, enc, &b, &params, entry)?;
        enc.copy_buffer_to_buffer(&rows_buf, 0, out.buffer, out.offset, rec_bytes);
        Ok(())
    })
}

impl Context {
    /// Records a distillation loss and its gradient over the caller's GPU
    /// buffers into `encoder` (layout in the [module docs](crate::train::resident)):
    /// the same kernel as [`Context::distill`] on a GPU context. Errors:
    /// those of the options ([`Context::distill`]), [`Error::Unsupported`]
    /// for a host-slice mask, a mean, or forms other than logits (student)
    /// and logits or log-probabilities (teacher); [`Error::ShapeMismatch`];
    /// [`Error::Buffer`] for a buffer that does not fit (usage, offset,
    /// size, a gradient that is also an input, a teacher gradient over the
    /// student's); [`Error::Unsupported`] for a teacher gradient outside the
    /// gradient's buffer's window on a device that binds four storage buffers
    /// (see the [module docs](crate::train::resident)); [`Error::TooLarge`]
    /// past one binding. Bad values and infinite losses are reported per row
    /// in the records (see [`GpuDistill::decode`]).
    pub fn encode_distill(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        call: &GpuDistill<'_>,
    ) -> Result<()> {
        let gpu = self.gpu_or_err()?;
        let o = &call.options;
        o.check()?;
        if o.mask.is_some() {
            return Err(Error::Unsupported(
                "a GPU-resident distillation takes its row mask as a GpuRowMask".into(),
            ));
        }
        per_row_only(o.reduction)?;
        finite_scale(call.grad_scale)?;
        let (s, t) = (&call.student, &call.teacher);
        logits_only(s, "student")?;
        if !matches!(t.form, Form::Logits | Form::LogProbs) {
            return Err(Error::Unsupported(format!(
                "a dense teacher must be logits or log-probabilities, got {:?}",
                t.form
            )));
        }
        crate::call::Input::check(s, Arg::Q)?;
        if (t.rows, t.cols) != (s.rows, s.cols) {
            return Err(Error::ShapeMismatch {
                p_rows: t.rows,
                p_cols: t.cols,
                q_rows: s.rows,
                q_cols: s.cols,
            });
        }
        let temp = o.temperature as f64;
        let params = super::gpu::distill_params(
            o.divergence,
            t.form,
            s.cols,
            o.beta,
            1.0 / o.temperature,
            temp * temp,
            temp * call.grad_scale as f64 * o.grad_scale,
        );
        let side = Side::Teacher(t, call.mask.as_ref());
        let tg = call.teacher_grad.as_ref();
        encode(gpu, encoder, s, side, &call.grad, tg, &call.output, params)
    }

    /// Records a distillation loss from a sparse (top-k) teacher and its
    /// gradient over the caller's GPU buffers into `encoder` (layout in the
    /// [module docs](crate::train::resident); the indices and
    /// log-probabilities are copied into the call's scratch): one dispatch,
    /// one workgroup per row, which checks and sorts the row's k indices (in
    /// workgroup memory for k ≤ 512, else in the call's scratch). Errors:
    /// those of the options ([`Context::distill`]); [`Error::InvalidOption`]
    /// for a k of 0 or above the columns; [`Error::Unsupported`] for a
    /// host-slice mask, a mean, a student that is not logits or log-probabilities that
    /// are not [`Form::LogProbs`]; [`Error::ShapeMismatch`] for
    /// log-probabilities with other rows than the student, [`Error::Length`]
    /// for indices of another count; [`Error::Buffer`]; [`Error::TooLarge`]
    /// (also for records and sort scratch past one binding).
    /// Bad indices and values, rows of −inf, sums and infinite losses are reported per row
    /// in the records (see [`GpuSparseDistill::decode`]), as the host path
    /// reports them.
    pub fn encode_sparse_distill(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        call: &GpuSparseDistill<'_>,
    ) -> Result<()> {
        let gpu = self.gpu_or_err()?;
        let o = &call.options;
        o.check()?;
        if o.mask.is_some() {
            return Err(Error::Unsupported(
                "a GPU-resident distillation takes its row mask as a GpuRowMask".into(),
            ));
        }
        per_row_only(o.reduction)?;
        finite_scale(call.grad_scale)?;
        let (s, lp) = (&call.student, &call.logprobs);
        logits_only(s, "student")?;
        crate::call::Input::check(s, Arg::Q)?;
        let top = lp.cols;
        if top == 0 || top > s.cols {
            return Err(Error::InvalidOption {
                option: Setting::TopK,
                message: format!(
                    "a sparse teacher needs 1 <= k <= {} (the student's columns), got {top}",
                    s.cols
                ),
            });
        }
        if lp.form != Form::LogProbs {
            return Err(Error::Unsupported(format!(
                "a sparse teacher's values must be log-probabilities (Form::LogProbs), got {:?}",
                lp.form
            )));
        }
        if lp.rows != s.rows {
            return Err(Error::ShapeMismatch {
                p_rows: lp.rows,
                p_cols: lp.cols,
                q_rows: s.rows,
                q_cols: s.cols,
            });
        }
        let expected = s.rows * top;
        if call.indices.len != expected {
            return Err(Error::Length {
                arg: Arg::Indices,
                len: call.indices.len,
                rows: s.rows,
                cols: top,
                expected,
            });
        }
        let temp = o.temperature as f64;
        let mut params = super::gpu::distill_params(
            o.divergence,
            Form::LogProbs,
            s.cols,
            o.beta,
            1.0 / o.temperature,
            temp * temp,
            temp * call.grad_scale as f64 * o.grad_scale,
        );
        params.top = top as u32;
        params.tol = o.tolerance;
        if o.tail == Tail::Renormalize {
            params.flags |= flag::RENORM;
        }
        let side = Side::Sparse(&call.indices, lp, call.mask.as_ref());
        encode(
            gpu,
            encoder,
            s,
            side,
            &call.grad,
            None,
            &call.output,
            params,
        )
    }

    /// Records the NLL of class targets and its gradient over the caller's
    /// GPU buffers into `encoder` (layout in the [module docs](crate::train::resident)):
    /// the same kernel as [`Context::nll_grad`] on a GPU context. Errors:
    /// those of the options ([`Context::nll`]), [`Error::Unsupported`] for a
    /// mean or inputs other than logits, [`Error::Buffer`],
    /// [`Error::TooLarge`]. Targets out of range, bad values and infinite
    /// losses are reported per row in the records (see
    /// [`GpuNllGrad::decode`]).
    pub fn encode_nll_grad(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        call: &GpuNllGrad<'_>,
    ) -> Result<()> {
        let gpu = self.gpu_or_err()?;
        let opts = &call.options;
        per_row_only(opts.common.reduction)?;
        finite_scale(call.grad_scale)?;
        super::options::check_grad_scale(opts.grad_scale)?;
        logits_only(&call.logits, "logits")?;
        let t = &call.targets;
        let ignore = || match opts.ignore_index {
            None => Ok(None),
            Some(i) => Ok(Some(i32::try_from(i).map_err(|_| Error::InvalidOption {
                option: Setting::IgnoreIndex,
                message: format!("ignore index {i} does not fit the i32 targets of the GPU path"),
            })? as u32)),
        };
        let (c, ()) = Call::nll(&call.logits, t.len, opts, ignore, t.signed)?;
        if c.rows != call.logits.rows {
            return Err(Error::Unsupported(format!(
                "a loss gradient needs one row of logits per target: {} targets, {} row(s) of logits",
                c.rows, call.logits.rows
            )));
        }
        let cols = call.logits.cols;
        let inv_ln = 1.0 / c.ln_base;
        let mut params = TrainParams {
            cols: cols as u32,
            mode: crate::gpu::train::mode::NLL,
            t_form: Form::Logits.code(),
            k: 1.0,
            g: (inv_ln * call.grad_scale as f64 * opts.grad_scale) as f32,
            t2: inv_ln as f32,
            eps: opts.label_smoothing,
            sum_w: opts
                .weights
                .map_or(cols as f64, |w| w.iter().map(|&v| v as f64).sum())
                as f32,
            ..TrainParams::default()
        };
        if t.signed {
            params.flags |= flag::SIGNED;
        }
        if let Some(i) = ignore()? {
            params.flags |= flag::IGNORE;
            params.ignore = i;
        }
        let side = Side::Targets(t, opts.weights);
        encode(
            gpu,
            encoder,
            &call.logits,
            side,
            &call.grad,
            None,
            &call.output,
            params,
        )
    }
}
