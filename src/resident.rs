//! The GPU-resident path: batches that live in the caller's buffers, work
//! recorded into the caller's encoder, outputs left in the caller's buffer.
//!
//! Everything the device would reject is checked here, before anything is
//! recorded: wgpu reports most encoding errors only at the caller's
//! `CommandEncoder::finish`, where no error scope of ours can catch them.

use crate::error::{Arg, Error, Result};
use crate::gpu::{GpuShape, Operands, TOTAL_OUTPUT_SIZE};
use crate::job::{self, IGNORED, Kind};
use crate::measure::{Form, Measure, NllOptions, Options, Reduction};
use crate::record::{self, DecodeCtx, RECORD_SIZE, Record};

/// A batch of `rows` × `cols` f32 values (row-major) at byte `offset` of a
/// caller's buffer (usage `STORAGE`, offset a multiple of the device's
/// `min_storage_buffer_offset_alignment`).
#[derive(Clone, Copy, Debug)]
pub struct GpuBatch<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of the first value.
    pub offset: u64,
    /// Number of distributions.
    pub rows: usize,
    /// Outcomes per distribution.
    pub cols: usize,
    /// How the values are given.
    pub form: Form,
}

impl<'a> GpuBatch<'a> {
    /// Probabilities at offset 0 of `buffer`.
    pub fn new(buffer: &'a wgpu::Buffer, rows: usize, cols: usize) -> Self {
        GpuBatch {
            buffer,
            offset: 0,
            rows,
            cols,
            form: Form::Probs,
        }
    }
    /// Sets the byte offset.
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }
    /// Sets the form.
    pub fn form(mut self, form: Form) -> Self {
        self.form = form;
        self
    }
}

/// Class targets (i32 or u32, 4 bytes each) at byte `offset` of a caller's
/// buffer (usage `COPY_SRC`, offset a multiple of 4): they are copied next to
/// the class weights in a buffer of ours, inside the caller's encoder.
#[derive(Clone, Copy, Debug)]
pub struct GpuTargets<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of the first target.
    pub offset: u64,
    /// Number of targets.
    pub len: usize,
    /// i32 targets (`true`) or u32 (`false`): an out-of-range target is
    /// reported with its value as the caller's type (-1, or 3000000000).
    pub signed: bool,
}

impl<'a> GpuTargets<'a> {
    /// `len` i32 targets at offset 0 of `buffer`.
    pub fn i32(buffer: &'a wgpu::Buffer, len: usize) -> Self {
        GpuTargets {
            buffer,
            offset: 0,
            len,
            signed: true,
        }
    }
    /// `len` u32 targets at offset 0 of `buffer`.
    pub fn u32(buffer: &'a wgpu::Buffer, len: usize) -> Self {
        GpuTargets {
            buffer,
            offset: 0,
            len,
            signed: false,
        }
    }
    /// Sets the byte offset.
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }
}

/// Where the output goes: byte `offset` (aligned like a storage binding) of a
/// caller's buffer with usage `STORAGE`. See [`output_bytes`] for its size and
/// [`Record`] for its layout.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct GpuOutput<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset.
    pub offset: u64,
    /// Where the call's scratch buffers come from: `None` allocates fresh
    /// ones on every call (freed once the submission is done); a
    /// [`Workspace`] reuses its own.
    pub workspace: Option<&'a Workspace>,
}

impl<'a> GpuOutput<'a> {
    /// The output at offset 0 of `buffer`, with fresh scratch.
    pub fn new(buffer: &'a wgpu::Buffer) -> Self {
        GpuOutput {
            buffer,
            offset: 0,
            workspace: None,
        }
    }
    /// Sets the byte offset.
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }
    /// Takes the call's scratch buffers from `workspace`.
    pub fn workspace(mut self, workspace: &'a Workspace) -> Self {
        self.workspace = Some(workspace);
        self
    }
}

/// Scratch buffers of GPU-resident calls, owned by the caller and reused from
/// one call to the next (an application that encodes every frame allocates
/// nothing after the first frames). A buffer is sized on first use and
/// reused while it fits; what the workspace keeps between calls is capped
/// ([`Workspace::with_cap`], default 256 MiB), the rest is freed.
///
/// **One workspace per submission**: the calls recorded with a workspace
/// must be submitted before the workspace is used again (their parameters
/// are written by `Queue::write_buffer`, which lands before the next
/// submission), and two calls that go into the same submission need two
/// workspaces. Submissions that overlap on the GPU are fine: the queue orders
/// them. A workspace belongs to the device of the context it is first used
/// with.
#[derive(Debug)]
pub struct Workspace {
    pub(crate) pool: std::sync::Arc<crate::gpu::Pool>,
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace::new()
    }
}

impl Workspace {
    /// A workspace that keeps up to 256 MiB between calls.
    pub fn new() -> Workspace {
        Workspace::with_cap(crate::gpu::DEFAULT_POOL_BYTES)
    }
    /// A workspace that keeps up to `bytes` bytes between calls.
    pub fn with_cap(bytes: u64) -> Workspace {
        Workspace {
            pool: std::sync::Arc::new(crate::gpu::Pool::new(bytes)),
        }
    }
    /// Frees every buffer kept.
    pub fn trim(&self) {
        self.pool.trim();
    }
    /// Bytes of the buffers kept now.
    pub fn kept_bytes(&self) -> u64 {
        self.pool.kept_bytes()
    }
}

/// Bytes of the output of a call over `rows` rows: one [`Record`] per row, or
/// for a sum or mean two records (the batch record, then a copy of the first
/// bad row's record).
pub fn output_bytes(rows: usize, reduction: Reduction) -> u64 {
    match reduction {
        Reduction::None => rows as u64 * RECORD_SIZE,
        Reduction::Sum | Reduction::Mean => TOTAL_OUTPUT_SIZE,
    }
}

/// Turns an output read back from the GPU-resident path into the values, or
/// into the same [`Error`] the host path returns for the same input.
/// `opts` are the options the call was encoded with: their reduction says
/// how the records are laid out; `opts.tolerance` and `cols` only shape the
/// error message.
pub fn decode_output(records: &[Record], opts: &Options, cols: usize) -> Result<Vec<f32>> {
    let reduction = opts.reduction;
    let ctx = DecodeCtx {
        tolerance: opts.tolerance,
        classes: cols,
    };
    match reduction {
        Reduction::None => match record::first_error(records, 0, &ctx) {
            Some(e) => Err(e),
            None => Ok(records.iter().map(|r| r.value).collect()),
        },
        Reduction::Sum | Reduction::Mean => {
            let [total, bad, ..] = records else {
                return Err(Error::InvalidOption(format!(
                    "a {} output has 2 records, got {}",
                    reduction.name(),
                    records.len()
                )));
            };
            if !total.is_ok() {
                return Err(record::decode(total.index as usize, bad, &ctx));
            }
            Ok(vec![total.value])
        }
    }
}

pub(crate) fn check_buffer(
    name: &'static str,
    buffer: &wgpu::Buffer,
    offset: u64,
    bytes: u64,
    usage: wgpu::BufferUsages,
    align: u64,
) -> Result<()> {
    let problem = if !buffer.usage().contains(usage) {
        Some(format!("needs usage {usage:?}, has {:?}", buffer.usage()))
    } else if !offset.is_multiple_of(align) {
        Some(format!("offset {offset} is not a multiple of {align}"))
    } else if offset
        .checked_add(bytes)
        .is_none_or(|end| end > buffer.size())
    {
        Some(format!(
            "{bytes} bytes at offset {offset} do not fit its {} bytes",
            buffer.size()
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::Buffer { name, problem }),
        None => Ok(()),
    }
}

fn check_shape(arg: Arg, b: &GpuBatch<'_>) -> Result<u64> {
    if b.rows == 0 || b.cols == 0 {
        return Err(Error::Empty {
            arg,
            rows: b.rows,
            cols: b.cols,
        });
    }
    job::check_u32(b.rows, b.cols)?;
    Ok(b.rows as u64 * b.cols as u64 * 4)
}

/// The shape of a GPU-resident measure, checked.
pub(crate) fn measure_shape(
    measure: Measure,
    p: &GpuBatch<'_>,
    q: Option<&GpuBatch<'_>>,
    opts: &Options,
) -> Result<GpuShape> {
    let ln_base = opts.check()?;
    check_shape(Arg::P, p)?;
    let kind = Kind::from_measure(measure)?;
    let (rows, q) = match (measure.needs_q(), q) {
        (false, _) => (p.rows, None),
        (true, None) => return Err(Error::InvalidOption(format!("{} needs q", measure.name()))),
        (true, Some(q)) => {
            check_shape(Arg::Q, q)?;
            (
                job::paired_rows((p.rows, p.cols), (q.rows, q.cols))?,
                Some(q),
            )
        }
    };
    let norm = opts.normalization;
    let (pf, qf) = (Some(p.form), q.map(|q| q.form));
    Ok(GpuShape {
        kind,
        rows: rows as u32,
        cols: p.cols as u32,
        p_form: pf,
        q_form: qf,
        p_rows: p.rows as u32,
        q_rows: q.map_or(p.rows, |q| q.rows) as u32,
        normalization: norm,
        tolerance: opts.tolerance,
        ln_base,
        reduction: opts.reduction,
        p_online: job::online(p.form, norm),
        q_online: qf.is_some_and(|f| job::online(f, norm)),
        two_pass: job::two_pass(kind, pf, qf, norm),
        ignore_bits: IGNORED,
        has_ignore: false,
        has_weights: false,
        smoothing: 0.0,
        targets_signed: false,
    })
}

/// The shape of a GPU-resident negative log-likelihood, checked.
pub(crate) fn nll_shape(
    q: &GpuBatch<'_>,
    targets: &GpuTargets<'_>,
    opts: &NllOptions<'_>,
) -> Result<GpuShape> {
    let ln_base = opts.common.check()?;
    check_shape(Arg::Q, q)?;
    job::check_nll(targets.len, (q.rows, q.cols), opts)?;
    job::check_u32(targets.len, q.cols)?;
    let eps = opts.label_smoothing;
    let ignore_bits = match opts.ignore_index {
        None => IGNORED,
        Some(i) => i32::try_from(i).map_err(|_| {
            Error::InvalidOption(format!(
                "ignore index {i} does not fit the i32 targets of the GPU path"
            ))
        })? as u32,
    };
    let norm = opts.common.normalization;
    Ok(GpuShape {
        kind: Kind::Nll,
        rows: targets.len as u32,
        cols: q.cols as u32,
        p_form: None,
        q_form: Some(q.form),
        p_rows: targets.len as u32,
        q_rows: q.rows as u32,
        normalization: norm,
        tolerance: opts.common.tolerance,
        ln_base,
        reduction: opts.common.reduction,
        p_online: false,
        q_online: job::online(q.form, norm),
        two_pass: job::two_pass(Kind::Nll, None, Some(q.form), norm),
        ignore_bits,
        has_ignore: opts.ignore_index.is_some(),
        has_weights: opts.weights.is_some(),
        smoothing: eps,
        targets_signed: targets.signed,
    })
}

/// Checks the operands and the output against the shape and the device, and
/// that the output aliases no input.
pub(crate) fn check_io(
    limits: &wgpu::Limits,
    s: &GpuShape,
    ops: &Operands<'_>,
    p_bytes: u64,
    q_bytes: u64,
    out: &GpuOutput<'_>,
) -> Result<()> {
    let align = limits.min_storage_buffer_offset_alignment.max(4) as u64;
    let storage = wgpu::BufferUsages::STORAGE;
    if s.kind != Kind::Nll {
        check_buffer("p", ops.p, ops.p_offset, p_bytes, storage, align)?;
    }
    if s.q_form.is_some() {
        check_buffer("q", ops.q, ops.q_offset, q_bytes, storage, align)?;
    }
    let out_bytes = output_bytes(s.rows as usize, s.reduction);
    check_buffer("output", out.buffer, out.offset, out_bytes, storage, align)?;
    // wgpu tracks usage per buffer, not per range: a read-only and a
    // read-write binding of one buffer conflict even on disjoint ranges
    let aliases =
        (s.kind != Kind::Nll && out.buffer == ops.p) || (s.q_form.is_some() && out.buffer == ops.q);
    if aliases {
        return Err(Error::Buffer {
            name: "output",
            problem: "is also an input buffer; use a buffer of its own".into(),
        });
    }
    Ok(())
}
