//! The GPU-resident path: batches that live in the caller's buffers, work
//! recorded into the caller's encoder, outputs left in the caller's buffer.
//! This module is its façade: the [`Context::encode`] family, the call
//! descriptions they take, the checks of the caller's buffers, and the
//! decoding of what the caller reads back. The work itself is the shared
//! [`Call`], planned and recorded by `gpu` as on the host path.
//!
//! Everything the device would reject is checked here, before anything is
//! recorded: wgpu reports most encoding errors only at the caller's
//! `CommandEncoder::finish`, where no error scope of ours can catch them.

use crate::call::{Call, Input, Shape};
use crate::context::Context;
use crate::error::{Arg, BufferProblem, Error, Result, Setting};
use crate::gpu::{Gpu, Operands, Scratch, TOTAL_OUTPUT_SIZE};
use crate::measure::{Form, Measure, NllOptions, Options, Reduction};
use crate::record::{self, DecodeCtx, OutputDesc, RECORD_SIZE, Record};
use crate::widen::Dtype;

/// A batch of `rows` × `cols` values (row-major; f32, or f16 / bf16 packed
/// two per u32: see [`GpuBatch::dtype`]) at byte `offset` of a caller's
/// buffer (usage `STORAGE`, offset a multiple of the device's
/// `min_storage_buffer_offset_alignment`). Half values occupy
/// `rows * cols * 2` bytes rounded up to a multiple of 4 (the binding is
/// whole u32s).
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
    /// How the values are stored: f32 (the default), or f16 / bf16 packed
    /// two per u32, widened exactly where the kernels read them (per-row
    /// measures, the NLL, the all-pairs calls' preparation, and the loss
    /// gradients of [`Context::encode_distill`](crate::Context::encode_distill)
    /// and [`Context::encode_nll_grad`](crate::Context::encode_nll_grad)).
    pub dtype: Dtype,
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
            dtype: Dtype::F32,
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
    /// Sets how the values are stored.
    pub fn dtype(mut self, dtype: Dtype) -> Self {
        self.dtype = dtype;
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
    /// Timestamps of the compute pass that runs the call (profiling); `None`
    /// records none.
    pub timestamps: Option<GpuTimestamps<'a>>,
}

/// Where the one compute pass of a GPU-resident call writes its timestamps
/// (`wgpu::ComputePassTimestampWrites`): its beginning at index `begin` and
/// its end at index `end` of a `QueryType::Timestamp` set, on a device with
/// `wgpu::Features::TIMESTAMP_QUERY`. The pass holds the call's term, merge
/// and total dispatches; the copy of NLL targets and wgpu's zero-fill of
/// fresh scratch buffers are recorded before it, outside the two stamps.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct GpuTimestamps<'a> {
    /// The query set.
    pub query_set: &'a wgpu::QuerySet,
    /// The index written at the beginning of the pass.
    pub begin: u32,
    /// The index written at its end.
    pub end: u32,
}

impl<'a> GpuTimestamps<'a> {
    /// Stamps at `begin` and `end` of `query_set`.
    pub fn new(query_set: &'a wgpu::QuerySet, begin: u32, end: u32) -> Self {
        GpuTimestamps {
            query_set,
            begin,
            end,
        }
    }

    /// An error unless wgpu would accept these writes on `device`.
    fn check(&self, device: &wgpu::Device) -> Result<()> {
        let qs = self.query_set;
        let problem = if !device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            Some("the device was created without TIMESTAMP_QUERY".to_string())
        } else if !matches!(qs.ty(), wgpu::QueryType::Timestamp) {
            Some("the query set is not a timestamp set".to_string())
        } else if self.begin >= qs.count() || self.end >= qs.count() || self.begin == self.end {
            Some(format!(
                "indices {} and {} in a set of {}: two distinct indices below its count",
                self.begin,
                self.end,
                qs.count()
            ))
        } else {
            None
        };
        problem.map_or(Ok(()), |p| {
            Err(Error::Unsupported(format!("GPU timestamps: {p}")))
        })
    }
}

impl<'a> GpuOutput<'a> {
    /// The output at offset 0 of `buffer`, with fresh scratch.
    pub fn new(buffer: &'a wgpu::Buffer) -> Self {
        GpuOutput {
            buffer,
            offset: 0,
            workspace: None,
            timestamps: None,
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
    /// Writes the call's pass timestamps (see [`GpuTimestamps`]).
    pub fn timestamps(mut self, timestamps: GpuTimestamps<'a>) -> Self {
        self.timestamps = Some(timestamps);
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

/// A measure over batches in the caller's GPU buffers: what
/// [`Context::encode`] records.
///
/// ```no_run
/// # use kullback::{wgpu, GpuBatch, GpuCall, GpuOutput, Measure, Options, Reduction};
/// # fn demo(p: &wgpu::Buffer, q: &wgpu::Buffer, out: &wgpu::Buffer) {
/// let call = GpuCall::new(Measure::Kl, GpuBatch::new(p, 512, 4096), GpuOutput::new(out))
///     .q(GpuBatch::new(q, 512, 4096))
///     .options(Options::default().reduction(Reduction::Mean));
/// # let _ = call; }
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct GpuCall<'a> {
    /// The measure.
    pub measure: Measure,
    /// The first distribution (the only one, for entropy).
    pub p: GpuBatch<'a>,
    /// The second distribution (every measure but entropy).
    pub q: Option<GpuBatch<'a>>,
    /// Reduction, base, normalisation and tolerance.
    pub options: Options,
    /// Where the output records go (and the scratch they need).
    pub output: GpuOutput<'a>,
}

impl<'a> GpuCall<'a> {
    /// `measure` of `p`, into `output`, with the default options.
    pub fn new(measure: Measure, p: GpuBatch<'a>, output: GpuOutput<'a>) -> Self {
        GpuCall {
            measure,
            p,
            q: None,
            options: Options::default(),
            output,
        }
    }
    /// Sets the second distribution.
    pub fn q(mut self, q: GpuBatch<'a>) -> Self {
        self.q = Some(q);
        self
    }
    /// Sets the options.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }
    /// The values of this call's output, read back from the GPU, or the
    /// error the host path returns for the same input: [`decode_output`]
    /// with this call's options and columns.
    pub fn decode(&self, records: &[Record]) -> Result<Vec<f32>> {
        // the row-sum check allowed half operands' roundoff: say so
        let r = roundoff(&self.p).max(self.q.as_ref().map_or(0.0, roundoff));
        let opts = self.options.tolerance(self.options.tolerance + r);
        decode_output(records, &opts, self.p.cols)
    }
}

/// What the row-sum check of `b` allows on top of the tolerance (as the
/// host path: see `Values::F16`).
pub(crate) fn roundoff(b: &GpuBatch<'_>) -> f32 {
    crate::job::roundoff(b.dtype.roundoff(), b.form, b.cols)
}

/// The negative log-likelihood of class targets in a caller's buffer: what
/// [`Context::encode_nll`] records. Class weights come from
/// `options.weights` (a host slice, uploaded with the work);
/// `options.ignore_index` must fit an i32.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct GpuNll<'a> {
    /// The probabilities, log-probabilities or logits.
    pub q: GpuBatch<'a>,
    /// One target per row of `q` (or any number, for a `q` of one row).
    pub targets: GpuTargets<'a>,
    /// Reduction, ignore index, class weights, label smoothing, ...
    pub options: NllOptions<'a>,
    /// Where the output records go (and the scratch they need).
    pub output: GpuOutput<'a>,
}

impl<'a> GpuNll<'a> {
    /// The NLL of `targets` under `q`, into `output`, with the default options.
    pub fn new(q: GpuBatch<'a>, targets: GpuTargets<'a>, output: GpuOutput<'a>) -> Self {
        GpuNll {
            q,
            targets,
            options: NllOptions::default(),
            output,
        }
    }
    /// Sets the options.
    pub fn options(mut self, options: NllOptions<'a>) -> Self {
        self.options = options;
        self
    }
    /// The values of this call's output, read back from the GPU, or the
    /// error the host path returns for the same input.
    pub fn decode(&self, records: &[Record]) -> Result<Vec<f32>> {
        let c = &self.options.common;
        let opts = c.tolerance(c.tolerance + roundoff(&self.q));
        decode_output(records, &opts, self.q.cols)
    }
}

/// Turns an output read back from the GPU-resident path into the values, or
/// into the same [`Error`] the host path returns for the same input.
/// `opts` are the options the call was encoded with: their reduction says
/// how the records are laid out; `opts.tolerance` and `cols` only shape the
/// error message. ([`GpuCall::decode`] and [`GpuNll::decode`] pass them for you.)
pub fn decode_output(records: &[Record], opts: &Options, cols: usize) -> Result<Vec<f32>> {
    let desc = OutputDesc {
        reduction: opts.reduction,
        // the values do not depend on it (only the count of rows does)
        weighted: false,
        ctx: DecodeCtx {
            tolerance: opts.tolerance,
            classes: cols,
        },
    };
    Ok(record::decode_output(records, &desc)?.values)
}

impl Input for GpuBatch<'_> {
    type Checked = ();
    fn check(&self, arg: Arg) -> Result<(Shape, ())> {
        if self.rows == 0 || self.cols == 0 {
            return Err(Error::Empty {
                arg,
                rows: self.rows,
                cols: self.cols,
            });
        }
        crate::call::check_u32(self.rows, self.cols)?;
        let shape = Shape {
            rows: self.rows,
            cols: self.cols,
            form: self.form,
            // as the host path allows for half values
            roundoff: crate::job::roundoff(self.dtype.roundoff(), self.form, self.cols),
        };
        Ok((shape, ()))
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
        Some(BufferProblem::Usage {
            needs: usage,
            has: buffer.usage(),
        })
    } else if !offset.is_multiple_of(align) {
        Some(BufferProblem::Offset { offset, align })
    } else if offset
        .checked_add(bytes)
        .is_none_or(|end| end > buffer.size())
    {
        Some(BufferProblem::Size {
            bytes,
            offset,
            size: buffer.size(),
        })
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::Buffer { name, problem }),
        None => Ok(()),
    }
}

/// Bytes of a batch's values (half ones rounded up to whole u32s).
fn bytes(b: &GpuBatch<'_>) -> u64 {
    b.dtype.stored_bytes(b.rows as u64 * b.cols as u64)
}

/// Checks the input batches (`p` absent for a negative log-likelihood) and
/// the output against the call and the device, and that the output aliases
/// no input.
fn check_io(
    gpu: &Gpu,
    call: &Call,
    p: Option<&GpuBatch<'_>>,
    q: Option<&GpuBatch<'_>>,
    out: &GpuOutput<'_>,
) -> Result<()> {
    let align = gpu.plan_limits().align;
    let storage = wgpu::BufferUsages::STORAGE;
    if let Some(p) = p {
        check_buffer("p", p.buffer, p.offset, bytes(p), storage, align)?;
    }
    if let Some(q) = q {
        check_buffer("q", q.buffer, q.offset, bytes(q), storage, align)?;
    }
    let out_bytes = output_bytes(call.rows, call.reduction);
    check_buffer("output", out.buffer, out.offset, out_bytes, storage, align)?;
    // wgpu tracks usage per buffer, not per range: a read-only and a
    // read-write binding of one buffer conflict even on disjoint ranges
    if [p, q].iter().flatten().any(|b| b.buffer == out.buffer) {
        return Err(Error::Buffer {
            name: "output",
            problem: BufferProblem::AliasesInput,
        });
    }
    Ok(())
}

/// Class targets of a GPU-resident NLL: the caller's buffer, copied next to
/// the class weights in a buffer of ours inside the caller's encoder.
struct TargetsCopy<'a> {
    targets: &'a GpuTargets<'a>,
    weights: Option<&'a [f32]>,
}

/// Records `call` over the caller's buffers into `enc`. Everything that can
/// fail is checked and made before the first command is recorded: a buffer
/// of another device is refused by the bind group made over it, inside our
/// error scopes.
#[expect(
    clippy::too_many_arguments,
    reason = "the one recording path of both resident calls"
)]
fn record_call(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    call: &Call,
    ops: Operands<'_>,
    offsets: (u64, u64),
    out: &GpuOutput<'_>,
    nll: Option<TargetsCopy<'_>>,
    dtypes: (Dtype, Dtype),
) -> Result<()> {
    let plan = crate::gpu::plan_stored(call, &gpu.plan_limits(), offsets, dtypes)?;
    if let Some(ts) = &out.timestamps {
        ts.check(&gpu.device)?;
    }
    let mut sc = match out.workspace {
        Some(w) => Scratch::pooled(&w.pool),
        None => Scratch::fresh(),
    };
    let t_bytes = nll.as_ref().map_or(0, |n| n.targets.len as u64 * 4);
    let w_bytes = nll
        .as_ref()
        .and_then(|n| n.weights)
        .map_or(0, |w| w.len() as u64 * 4);
    let records_bytes = match call.reduction {
        Reduction::None => 0,
        _ => plan.records_bytes,
    };
    let what = "the scratch of a GPU-resident call";
    let (recording, holder) = gpu.scoped(what, t_bytes + w_bytes + records_bytes, || {
        let sc = &mut sc;
        let mut ops = ops;
        let mut holder = None;
        if let Some(n) = &nll {
            let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
            // the targets, the weights, and the binding's padding
            let padded =
                crate::gpu::targets_words(call.rows as u32, call.cols as u32, n.weights.is_some());
            let h = sc.buffer(&gpu.device, "kullback.targets", padded * 4, usage)?;
            if let Some(w) = n.weights {
                gpu.queue.write_buffer(&h, t_bytes, bytemuck::cast_slice(w));
            }
            holder = Some(h);
        }
        if let Some(h) = &holder {
            ops.p = h;
        }
        let target = (out.buffer, out.offset);
        let recording = if call.reduction == Reduction::None {
            crate::gpu::prepare(gpu, sc, &plan, ops, target, None)?
        } else {
            let usage = wgpu::BufferUsages::STORAGE;
            let records = sc.buffer(&gpu.device, "kullback.records", records_bytes, usage)?;
            crate::gpu::prepare(gpu, sc, &plan, ops, (&records, 0), Some(target))?
        };
        Ok((recording, holder))
    })?;
    if let (Some(n), Some(h)) = (&nll, &holder) {
        enc.copy_buffer_to_buffer(n.targets.buffer, n.targets.offset, h, 0, t_bytes);
    }
    let stamps = out.timestamps.map(|t| wgpu::ComputePassTimestampWrites {
        query_set: t.query_set,
        beginning_of_pass_write_index: Some(t.begin),
        end_of_pass_write_index: Some(t.end),
    });
    recording.record(gpu, enc, stamps);
    Ok(())
}

impl Context {
    pub(crate) fn gpu_or_err(&self) -> Result<&Gpu> {
        self.gpu
            .as_deref()
            .ok_or_else(|| Error::Unsupported("GPU-resident batches need a GPU context".into()))
    }

    fn own_encoder(&self) -> Result<wgpu::CommandEncoder> {
        let gpu = self.gpu_or_err()?;
        Ok(gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("kullback"),
            }))
    }

    /// Records `call` — a measure over batches in the caller's GPU buffers —
    /// into the caller's `encoder`; the caller submits. The output (per-row
    /// [`Record`]s, or two records for a sum or mean: see [`output_bytes`])
    /// is written to `call.output`; read it back and pass it to
    /// [`GpuCall::decode`] to get the values or the error the host path would
    /// return. Nothing is submitted, waited for or read back here. Everything
    /// wgpu would reject (usages, sizes, offsets, an output that is also an
    /// input, a buffer of another device) is an [`Error`] before anything is
    /// recorded.
    ///
    /// `encoder` must come from this context's device: wgpu cannot tell which
    /// device an encoder belongs to, and one of another device fails inside
    /// wgpu (at the latest at its `finish`). Where that cannot be promised,
    /// use [`Context::encode_commands`], which records into an encoder of its
    /// own. Buffers must come from this device too; one of another device on
    /// the same instance is refused with [`Error::Device`], one of another
    /// `wgpu::Instance` cannot be recognised at all.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder, call: &GpuCall<'_>) -> Result<()> {
        let gpu = self.gpu_or_err()?;
        let (plan_call, (), _) =
            Call::measure(call.measure, &call.p, call.q.as_ref(), &call.options)?;
        let q = call.q.as_ref().filter(|_| plan_call.q.is_some());
        check_io(gpu, &plan_call, Some(&call.p), q, &call.output)?;
        // entropy: q is never read; p is bound in its place
        let q = q.unwrap_or(&call.p);
        let ops = Operands {
            p: call.p.buffer,
            q: q.buffer,
        };
        let offsets = (call.p.offset, q.offset);
        let dtypes = (call.p.dtype, q.dtype);
        record_call(
            gpu,
            encoder,
            &plan_call,
            ops,
            offsets,
            &call.output,
            None,
            dtypes,
        )
    }

    /// [`Context::encode`] for the negative log-likelihood of class targets
    /// in a caller's buffer (i32 or u32).
    pub fn encode_nll(&self, encoder: &mut wgpu::CommandEncoder, call: &GpuNll<'_>) -> Result<()> {
        let gpu = self.gpu_or_err()?;
        let opts = &call.options;
        let ignore = || match opts.ignore_index {
            None => Ok(None),
            Some(i) => Ok(Some(i32::try_from(i).map_err(|_| Error::InvalidOption {
                option: Setting::IgnoreIndex,
                message: format!("ignore index {i} does not fit the i32 targets of the GPU path"),
            })? as u32)),
        };
        let t = &call.targets;
        let (plan_call, ()) = Call::nll(&call.q, t.len, opts, ignore, t.signed)?;
        check_io(gpu, &plan_call, None, Some(&call.q), &call.output)?;
        if call.output.buffer == t.buffer {
            return Err(Error::Buffer {
                name: "output",
                problem: BufferProblem::AliasesTargets,
            });
        }
        let usage = wgpu::BufferUsages::COPY_SRC;
        check_buffer("targets", t.buffer, t.offset, t.len as u64 * 4, usage, 4)?;
        let ops = Operands {
            p: t.buffer,
            q: call.q.buffer,
        };
        let copy = TargetsCopy {
            targets: t,
            weights: opts.weights,
        };
        let offsets = (0, call.q.offset);
        record_call(
            gpu,
            encoder,
            &plan_call,
            ops,
            offsets,
            &call.output,
            Some(copy),
            (Dtype::F32, call.q.dtype),
        )
    }

    /// [`Context::encode`] into an encoder made on this context's device;
    /// returns the finished commands for the caller to submit on the
    /// context's queue.
    pub fn encode_commands(&self, call: &GpuCall<'_>) -> Result<wgpu::CommandBuffer> {
        let mut enc = self.own_encoder()?;
        self.encode(&mut enc, call)?;
        Ok(enc.finish())
    }

    /// [`Context::encode_nll`] into an encoder made on this context's
    /// device; returns the finished commands.
    pub fn encode_nll_commands(&self, call: &GpuNll<'_>) -> Result<wgpu::CommandBuffer> {
        let mut enc = self.own_encoder()?;
        self.encode_nll(&mut enc, call)?;
        Ok(enc.finish())
    }
}
