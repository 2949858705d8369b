//! [`Context`]: backend choice and the public calls.

use std::sync::Arc;

use crate::batch::{Batch, Targets};
use crate::cost::{AdapterClass, CostModel, Work, prefer_gpu};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Operands};
use crate::job::{Job, Kind};
use crate::measure::{Measure, NllOptions, Options, Reduction};
use crate::record::{self, Record, Records};
use crate::resident::{self, GpuBatch, GpuOutput, GpuTargets};

/// Which backend evaluates a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// A hardware GPU adapter (discrete, integrated or virtual) when there is one,
    /// else the CPU. Software adapters (llvmpipe/lavapipe) are slower than the
    /// native CPU path and are not picked. `KULLBACK_BACKEND=auto|gpu|cpu`
    /// replaces `Auto` (and only `Auto`).
    #[default]
    Auto,
    /// Any GPU adapter, software ones included; an error when there is none.
    Gpu,
    /// The CPU path; never touches wgpu.
    Cpu,
}

impl Backend {
    /// Parses `auto`, `gpu` or `cpu`.
    pub fn parse(s: &str) -> Option<Backend> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Backend::Auto),
            "gpu" => Some(Backend::Gpu),
            "cpu" => Some(Backend::Cpu),
            _ => None,
        }
    }

    /// `Auto` replaced by `KULLBACK_BACKEND` when that is set; explicit choices stay.
    pub fn resolve_env(self) -> Result<Backend> {
        if self != Backend::Auto {
            return Ok(self);
        }
        match std::env::var("KULLBACK_BACKEND") {
            Ok(v) if !v.trim().is_empty() => Backend::parse(&v).ok_or_else(|| {
                Error::InvalidOption(format!("KULLBACK_BACKEND={v}: expected auto, gpu or cpu"))
            }),
            _ => Ok(Backend::Auto),
        }
    }
}

/// How [`Context::poll`] polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PollMode {
    /// Block until the submitted work is done.
    Wait,
    /// Run the callbacks that are ready, and return.
    Ready,
}

/// What a call reads, for [`Context::placement`]'s cost model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputKind {
    /// Probabilities or log-probabilities (a log per element at most).
    Probabilities,
    /// Logits of either argument (an online softmax: an exp per element).
    Logits,
}

/// The backend that ran a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ran {
    /// The WGSL kernels on a GPU adapter.
    Gpu,
    /// The CPU kernels.
    Cpu,
}

impl Ran {
    /// `"gpu"` or `"cpu"`.
    pub fn name(self) -> &'static str {
        match self {
            Ran::Gpu => "gpu",
            Ran::Cpu => "cpu",
        }
    }
}

/// The result of a call.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Output {
    /// One value per row (`Reduction::None`), or one value (sum, mean).
    pub values: Vec<f32>,
    /// Rows evaluated (for a negative log-likelihood with one row of `q`, the number of targets).
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// The reduction applied.
    pub reduction: Reduction,
    /// Rows counted by the reduction: `rows`, or Σ wₜ over the rows not ignored
    /// for a negative log-likelihood.
    pub counted: f64,
    /// For a negative log-likelihood with `Reduction::Mean`: exp(mean in nats),
    /// the same number as base^(mean in that base).
    pub perplexity: Option<f64>,
    /// The backend that ran.
    pub backend: Ran,
    /// The GPU adapter's name when the GPU ran.
    pub adapter: Option<String>,
}

/// Options of a [`Context`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ContextOptions {
    /// Which backend to use.
    pub backend: Backend,
    /// Caps the bytes of one storage binding below the device's limit, so that
    /// inputs are split into chunks sooner (used to test the chunked path on
    /// small data; at least 64 KiB). `None`: the device's limit.
    pub max_binding_bytes: Option<u64>,
    /// Constants of the cost model `Backend::Auto` places calls with.
    pub cost_model: CostModel,
    /// Bytes of GPU buffers the context keeps between host-path calls
    /// (default 256 MiB): a call that needs more allocates the rest and
    /// frees it when it is done. [`Context::trim`] frees what is kept.
    pub pool_bytes: Option<u64>,
}

impl ContextOptions {
    /// Sets the backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }
    /// Caps the bytes of one storage binding.
    pub fn max_binding_bytes(mut self, bytes: u64) -> Self {
        self.max_binding_bytes = Some(bytes);
        self
    }
    /// Sets the cost model of `Backend::Auto`.
    pub fn cost_model(mut self, model: CostModel) -> Self {
        self.cost_model = model;
        self
    }
    /// Caps the bytes of GPU buffers kept between calls.
    pub fn pool_bytes(mut self, bytes: u64) -> Self {
        self.pool_bytes = Some(bytes);
        self
    }
    fn pool(&self) -> u64 {
        self.pool_bytes.unwrap_or(crate::gpu::DEFAULT_POOL_BYTES)
    }
}

/// Evaluates measures on the backend chosen at creation. Cheap to share:
/// `Send + Sync`, and pipelines are built once per device.
#[derive(Clone, Debug)]
pub struct Context {
    pub(crate) gpu: Option<Arc<Gpu>>,
    /// `Backend::Auto` with a hardware adapter: each call is placed by the cost model.
    auto: Option<(AdapterClass, CostModel)>,
    /// The CPU path's records buffer, kept between calls.
    cpu: Arc<crate::cpu::Scratch>,
}

impl Context {
    /// A context with the default options (`Backend::Auto`, or `KULLBACK_BACKEND`).
    pub fn new() -> Result<Context> {
        Context::with_options(ContextOptions::default())
    }

    /// A context on the backend `backend` (see [`Backend`]).
    pub fn with_backend(backend: Backend) -> Result<Context> {
        Context::with_options(ContextOptions::default().backend(backend))
    }

    /// A context with explicit options.
    pub fn with_options(opts: ContextOptions) -> Result<Context> {
        Ok(match opts.backend.resolve_env()? {
            Backend::Cpu => Context {
                gpu: None,
                auto: None,
                cpu: Arc::default(),
            },
            Backend::Gpu => Context {
                gpu: Some(Arc::new(Gpu::create(
                    true,
                    opts.max_binding_bytes,
                    opts.pool(),
                )?)),
                auto: None,
                cpu: Arc::default(),
            },
            Backend::Auto => match Gpu::create(false, opts.max_binding_bytes, opts.pool()) {
                Ok(g) => Context {
                    auto: Some((g.class, opts.cost_model)),
                    gpu: Some(Arc::new(g)),
                    cpu: Arc::default(),
                },
                Err(e) => {
                    log::info!("kullback: no hardware GPU adapter ({e}); using the CPU");
                    Context {
                        gpu: None,
                        auto: None,
                        cpu: Arc::default(),
                    }
                }
            },
        })
    }

    /// A context that runs every call on the caller's device and queue.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Context> {
        Context::from_device_with_options(device, queue, ContextOptions::default())
    }

    /// [`Context::from_device`] with options (`max_binding_bytes` and `pool_bytes` apply).
    pub fn from_device_with_options(
        device: wgpu::Device,
        queue: wgpu::Queue,
        opts: ContextOptions,
    ) -> Result<Context> {
        Ok(Context {
            gpu: Some(Arc::new(Gpu::from_device(
                device,
                queue,
                opts.max_binding_bytes,
                opts.pool(),
            )?)),
            auto: None,
            cpu: Arc::default(),
        })
    }

    /// `Backend::Auto` with a hardware GPU: calls are placed one by one.
    pub(crate) fn is_auto(&self) -> bool {
        self.auto.is_some()
    }

    /// The backend this context runs on (with `Backend::Auto` and a hardware
    /// GPU, each call may still run on the CPU: see [`Context::placement`]).
    pub fn backend(&self) -> Ran {
        if self.gpu.is_some() {
            Ran::Gpu
        } else {
            Ran::Cpu
        }
    }

    /// The GPU adapter's name, when this context runs on a GPU.
    pub fn adapter_name(&self) -> Option<&str> {
        self.gpu.as_ref().map(|g| g.adapter_name())
    }

    /// Evaluates `measure` for each row of `p` (and `q`). A `p` or `q` with one
    /// row is compared with every row of the other.
    pub fn evaluate(
        &self,
        measure: Measure,
        p: &Batch<'_>,
        q: Option<&Batch<'_>>,
        opts: &Options,
    ) -> Result<Output> {
        let job = Job::measure(measure, p, q, opts)?;
        self.run(&job)
    }

    /// Entropy H(p) = -Σ p ln p of each row.
    pub fn entropy(&self, p: &Batch<'_>, opts: &Options) -> Result<Output> {
        self.evaluate(Measure::Entropy, p, None, opts)
    }

    /// Cross-entropy H(p, q) = -Σ p ln q of each row pair.
    pub fn cross_entropy(&self, p: &Batch<'_>, q: &Batch<'_>, opts: &Options) -> Result<Output> {
        self.evaluate(Measure::CrossEntropy, p, Some(q), opts)
    }

    /// Kullback-Leibler divergence D(P‖Q) = Σ p ln(p / q) of each row pair.
    pub fn kl(&self, p: &Batch<'_>, q: &Batch<'_>, opts: &Options) -> Result<Output> {
        self.evaluate(Measure::Kl, p, Some(q), opts)
    }

    /// Jensen-Shannon divergence of each row pair (≤ ln 2 nats).
    pub fn js(&self, p: &Batch<'_>, q: &Batch<'_>, opts: &Options) -> Result<Output> {
        self.evaluate(Measure::Js, p, Some(q), opts)
    }

    /// Negative log-likelihood -log q_t of class targets (cross-entropy with
    /// one-hot targets). A `q` with one row is shared by every target.
    pub fn nll<'t>(
        &self,
        q: &Batch<'_>,
        targets: impl Into<Targets<'t>>,
        opts: &NllOptions<'_>,
    ) -> Result<Output> {
        let job = Job::nll(q, targets.into(), opts)?;
        self.run(&job)
    }

    /// Records `measure` over batches in the caller's GPU buffers into the
    /// caller's `encoder`; the caller submits. The output (per-row [`Record`]s,
    /// or two records for a sum or mean: see [`output_bytes`](crate::output_bytes)) is written to
    /// `out`; read it back and pass it to [`decode_output`](crate::decode_output) to get the values
    /// or the error the host path would return. Nothing is submitted, waited
    /// for or read back here. Everything wgpu would reject (usages, sizes,
    /// offsets, an output that is also an input, a buffer of another device)
    /// is an [`Error`] before anything is recorded.
    ///
    /// `encoder` must come from this context's device: wgpu cannot tell which
    /// device an encoder belongs to, and one of another device fails inside
    /// wgpu (at the latest at its `finish`). Where that cannot be promised,
    /// use [`Context::encode_commands`], which records into an encoder of its
    /// own. Buffers must come from this device too; one of another device on
    /// the same instance is refused with [`Error::Device`], one of another
    /// `wgpu::Instance` cannot be recognised at all.
    pub fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        measure: Measure,
        p: &GpuBatch<'_>,
        q: Option<&GpuBatch<'_>>,
        opts: &Options,
        out: &GpuOutput<'_>,
    ) -> Result<()> {
        let gpu = self.gpu_or_err()?;
        let shape = resident::measure_shape(measure, p, q, opts)?;
        let q = q.unwrap_or(p);
        let ops = Operands {
            p: p.buffer,
            p_offset: p.offset,
            q: q.buffer,
            q_offset: q.offset,
        };
        let p_bytes = p.rows as u64 * p.cols as u64 * 4;
        let q_bytes = q.rows as u64 * q.cols as u64 * 4;
        resident::check_io(&gpu.limits, &shape, &ops, p_bytes, q_bytes, out)?;
        let ws = out.workspace.map(|w| &w.pool);
        gpu.encode_resident(encoder, &shape, &ops, (out.buffer, out.offset), None, ws)
    }

    /// [`Context::encode`] for the negative log-likelihood of class targets in a
    /// caller's buffer (i32 or u32). Class weights come from `opts.weights` (a
    /// host slice, uploaded with the work); `opts.ignore_index` must fit an i32.
    pub fn encode_nll(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        q: &GpuBatch<'_>,
        targets: &GpuTargets<'_>,
        opts: &NllOptions<'_>,
        out: &GpuOutput<'_>,
    ) -> Result<()> {
        let gpu = self.gpu_or_err()?;
        let shape = resident::nll_shape(q, targets, opts)?;
        let ops = Operands {
            p: targets.buffer,
            p_offset: 0,
            q: q.buffer,
            q_offset: q.offset,
        };
        let q_bytes = q.rows as u64 * q.cols as u64 * 4;
        resident::check_io(&gpu.limits, &shape, &ops, 0, q_bytes, out)?;
        if out.buffer == targets.buffer {
            return Err(Error::Buffer {
                name: "output",
                problem: "is also the targets buffer; use a buffer of its own".into(),
            });
        }
        resident::check_buffer(
            "targets",
            targets.buffer,
            targets.offset,
            targets.len as u64 * 4,
            wgpu::BufferUsages::COPY_SRC,
            4,
        )?;
        let t = crate::gpu::Targets {
            buffer: targets.buffer,
            offset: targets.offset,
            len: targets.len,
        };
        gpu.encode_resident(
            encoder,
            &shape,
            &ops,
            (out.buffer, out.offset),
            Some((&t, opts.weights)),
            out.workspace.map(|w| &w.pool),
        )
    }

    /// Like [`Context::evaluate`], but returns a future that resolves when the
    /// results are mapped, without blocking the caller's thread. The work is
    /// uploaded and submitted before this returns. wgpu delivers map callbacks
    /// only while the device is polled: call [`Context::poll`] (or
    /// `device.poll` on your own device) from your event loop until the future
    /// resolves. On the CPU backend the work is done here and the future is
    /// ready at once.
    pub fn evaluate_async(
        &self,
        measure: Measure,
        p: &Batch<'_>,
        q: Option<&Batch<'_>>,
        opts: &Options,
    ) -> impl Future<Output = Result<Output>> + Send + 'static {
        let started = Job::measure(measure, p, q, opts).and_then(|job| self.start(&job));
        async move {
            match started? {
                Started::Done(out) => Ok(out),
                Started::Gpu(pending, meta, adapter) => {
                    let recs = pending.resolve().await?;
                    finish(&meta, recs, Ran::Gpu, Some(adapter))
                }
            }
        }
    }

    /// [`Context::encode`] into an encoder made on this context's device;
    /// returns the finished commands for the caller to submit on the
    /// context's queue.
    pub fn encode_commands(
        &self,
        measure: Measure,
        p: &GpuBatch<'_>,
        q: Option<&GpuBatch<'_>>,
        opts: &Options,
        out: &GpuOutput<'_>,
    ) -> Result<wgpu::CommandBuffer> {
        let mut enc = self.own_encoder()?;
        self.encode(&mut enc, measure, p, q, opts, out)?;
        Ok(enc.finish())
    }

    /// [`Context::encode_nll`] into an encoder made on this context's
    /// device; returns the finished commands.
    pub fn encode_nll_commands(
        &self,
        q: &GpuBatch<'_>,
        targets: &GpuTargets<'_>,
        opts: &NllOptions<'_>,
        out: &GpuOutput<'_>,
    ) -> Result<wgpu::CommandBuffer> {
        let mut enc = self.own_encoder()?;
        self.encode_nll(&mut enc, q, targets, opts, out)?;
        Ok(enc.finish())
    }

    fn own_encoder(&self) -> Result<wgpu::CommandEncoder> {
        let gpu = self.gpu_or_err()?;
        Ok(gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("kullback"),
            }))
    }

    /// Frees the buffers the context keeps between calls (the GPU pool, the
    /// CPU path's records buffer). The next call allocates again.
    pub fn trim(&self) {
        if let Some(g) = &self.gpu {
            g.trim();
        }
        self.cpu.trim();
    }

    /// Bytes of GPU buffers the context keeps between calls now (at most
    /// `ContextOptions::pool_bytes`).
    pub fn kept_bytes(&self) -> u64 {
        self.gpu.as_ref().map_or(0, |g| g.kept_bytes())
    }

    /// Polls the device of a GPU context: [`PollMode::Wait`] blocks until
    /// submitted work is done, [`PollMode::Ready`] only runs the callbacks
    /// that are ready. Returns whether the queue is empty. A no-op on the CPU
    /// backend.
    pub fn poll(&self, mode: PollMode) -> Result<bool> {
        let Some(g) = &self.gpu else { return Ok(true) };
        let kind = if mode == PollMode::Wait {
            wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            }
        } else {
            wgpu::PollType::Poll
        };
        g.device
            .poll(kind)
            .map(|s| s.is_queue_empty())
            .map_err(|e| Error::Device(format!("polling: {e}")))
    }

    fn gpu_or_err(&self) -> Result<&Gpu> {
        self.gpu
            .as_deref()
            .ok_or_else(|| Error::Unsupported("GPU-resident batches need a GPU context".into()))
    }

    /// Where a call over `rows` rows reading `bytes` bytes of input would run:
    /// the cost model's choice under `Backend::Auto` with a hardware GPU, the
    /// context's backend otherwise. `inputs` says whether the call takes
    /// logits (an online softmax: an exp per element) or not.
    pub fn placement(&self, bytes: u64, rows: u64, inputs: InputKind) -> Ran {
        let logits = inputs == InputKind::Logits;
        match (&self.gpu, self.auto) {
            (None, _) => Ran::Cpu,
            (Some(_), None) => Ran::Gpu,
            (Some(_), Some((class, model))) => {
                let work = Work {
                    bytes,
                    rows,
                    logits,
                    threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
                };
                if prefer_gpu(class, &work, &model) {
                    Ran::Gpu
                } else {
                    Ran::Cpu
                }
            }
        }
    }

    /// The GPU for this job, or None for the CPU.
    fn place(&self, job: &Job<'_>) -> Option<&Gpu> {
        let bytes: u64 = [&job.p, &job.q]
            .iter()
            .filter_map(|o| o.as_ref())
            .map(|o| o.data.len() as u64 * 4)
            .sum();
        let logits = job.p_online() || job.q_online();
        let inputs = if logits {
            InputKind::Logits
        } else {
            InputKind::Probabilities
        };
        match self.placement(bytes, job.rows as u64, inputs) {
            Ran::Gpu => self.gpu.as_deref(),
            Ran::Cpu => None,
        }
    }

    fn start(&self, job: &Job<'_>) -> Result<Started> {
        let meta = Meta::of(job);
        match self.place(job) {
            Some(g) => Ok(Started::Gpu(
                g.submit(job)?,
                meta,
                g.adapter_name().to_string(),
            )),
            None => Ok(Started::Done(self.run_cpu(job)?)),
        }
    }

    fn run(&self, job: &Job<'_>) -> Result<Output> {
        match self.place(job) {
            Some(g) => finish(
                &Meta::of(job),
                g.run(job)?,
                Ran::Gpu,
                Some(g.adapter_name().to_string()),
            ),
            None => self.run_cpu(job),
        }
    }

    /// `job` on the CPU, its records in the context's kept buffer.
    fn run_cpu(&self, job: &Job<'_>) -> Result<Output> {
        let meta = Meta::of(job);
        self.cpu.with(|rows| {
            crate::cpu::run_into(job, rows)?;
            if job.reduction == Reduction::None {
                return rows_output(&meta, rows, Ran::Cpu, None);
            }
            if let Some(e) = record::first_error(rows, 0, &job.decode_ctx()) {
                return Err(e);
            }
            let total = record::reduce_records(
                rows,
                job.reduction == Reduction::Mean,
                job.kind == Kind::Nll,
            );
            finish(&meta, Records::Total(total), Ran::Cpu, None)
        })
    }
}

enum Started {
    Done(Output),
    Gpu(crate::gpu::Pending, Meta, String),
}

/// What turning records into an [`Output`] needs of a job.
struct Meta {
    kind: Kind,
    rows: usize,
    cols: usize,
    reduction: Reduction,
    ln_base: f64,
    ctx: record::DecodeCtx,
}

impl Meta {
    fn of(job: &Job<'_>) -> Meta {
        Meta {
            kind: job.kind,
            rows: job.rows,
            cols: job.cols,
            reduction: job.reduction,
            ln_base: job.ln_base,
            ctx: job.decode_ctx(),
        }
    }
}

fn finish(job: &Meta, records: Records, backend: Ran, adapter: Option<String>) -> Result<Output> {
    let ctx = job.ctx;
    let (values, counted) = match records {
        Records::Rows(r) => return rows_output(job, &r, backend, adapter),
        Records::Total(t) => {
            if !t.is_ok() {
                return Err(record::decode(t.index as usize, &t, &ctx));
            }
            (vec![t.value], t.aux_p as f64)
        }
        Records::BadRow(row, r) => return Err(record::decode(row, &r, &ctx)),
    };
    output(job, values, counted, backend, adapter)
}

/// The output of per-row records (the first bad row's error, if any).
fn rows_output(job: &Meta, r: &[Record], backend: Ran, adapter: Option<String>) -> Result<Output> {
    // one pass: values out, the first bad row's error as soon as it is met
    let mut values = crate::error::try_vec(r.len(), "the output values")?;
    for (i, x) in r.iter().enumerate() {
        if !x.is_ok() {
            return Err(record::decode(i, x, &job.ctx));
        }
        values.push(x.value);
    }
    let counted = if job.kind == Kind::Nll {
        r.iter().map(|x| x.aux_p as f64).sum()
    } else {
        job.rows as f64
    };
    output(job, values, counted, backend, adapter)
}

fn output(
    job: &Meta,
    values: Vec<f32>,
    counted: f64,
    backend: Ran,
    adapter: Option<String>,
) -> Result<Output> {
    let perplexity = (job.kind == Kind::Nll && job.reduction == Reduction::Mean)
        .then(|| (values[0] as f64 * job.ln_base).exp());
    Ok(Output {
        values,
        rows: job.rows,
        cols: job.cols,
        reduction: job.reduction,
        counted,
        perplexity,
        backend,
        adapter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Context>();
        check::<Output>();
    }

    /// The CPU records buffer kept between calls: growing, shrinking, an
    /// error in between and calls from two threads at once give what a fresh
    /// context gives, bit for bit.
    #[test]
    fn kept_records_buffer_changes_nothing() {
        let dist = |rows: usize, cols: usize, seed: u32| -> Vec<f32> {
            let mut v: Vec<f32> = (0..rows * cols)
                .map(|i| 1.0 + ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / 4e9)
                .collect();
            for r in v.chunks_mut(cols) {
                let s: f32 = r.iter().sum();
                r.iter_mut().for_each(|x| *x /= s);
            }
            v
        };
        let kept = Context::with_backend(Backend::Cpu).expect("cpu");
        for (rows, cols) in [(300, 7), (20, 5000), (1000, 3), (1, 1), (300, 7)] {
            let (p, q) = (dist(rows, cols, 1), dist(rows, cols, 2));
            let (pb, qb) = (Batch::new(&p, rows, cols), Batch::new(&q, rows, cols));
            let fresh = Context::with_backend(Backend::Cpu).expect("cpu");
            let want = fresh.kl(&pb, &qb, &Options::default()).expect("kl");
            let got = kept.kl(&pb, &qb, &Options::default()).expect("kl");
            let bits = |o: &Output| o.values.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{rows} x {cols}");
            // a bad row in a call, then the same call again clean
            let mut bad = p.clone();
            bad[(rows - 1) * cols] = -1.0;
            let e = kept.kl(&Batch::new(&bad, rows, cols), &qb, &Options::default());
            assert!(e.is_err(), "{rows} x {cols}");
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        let got = kept.kl(&pb, &qb, &Options::default()).expect("kl");
                        assert_eq!(bits(&got), bits(&want), "{rows} x {cols}");
                    });
                }
            });
        }
    }

    #[test]
    fn backend_parse() {
        assert_eq!(Backend::parse("GPU"), Some(Backend::Gpu));
        assert_eq!(Backend::parse("cpu"), Some(Backend::Cpu));
        assert_eq!(Backend::parse("auto"), Some(Backend::Auto));
        assert_eq!(Backend::parse("tpu"), None);
    }
}
