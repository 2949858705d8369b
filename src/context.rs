//! [`Context`]: backend choice and the public calls.

use std::sync::Arc;

use crate::batch::{Batch, Targets};
use crate::call::Call;
use crate::cost::{AdapterClass, CostModel, Work, prefer_gpu};
use crate::error::{Error, Result, Setting};
use crate::gpu::Gpu;
use crate::job::Job;
use crate::measure::{Measure, NllOptions, Options, Reduction};
use crate::record::{self, Record};

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
            Ok(v) if !v.trim().is_empty() => {
                Backend::parse(&v).ok_or_else(|| Error::InvalidOption {
                    option: Setting::BackendEnv,
                    message: format!("KULLBACK_BACKEND={v}: expected auto, gpu or cpu"),
                })
            }
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
    /// Whether the GPU reductions use subgroup operations where the device
    /// has `wgpu::Features::SUBGROUP` (the results are the same bits either
    /// way). `None`: yes, unless the environment variable
    /// `KULLBACK_SUBGROUPS=off` (or `on`, the default) says otherwise.
    pub subgroups: Option<bool>,
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
    /// Uses subgroup operations in the GPU reductions where the device has
    /// them (`true`, the default), or never (`false`).
    pub fn subgroups(mut self, on: bool) -> Self {
        self.subgroups = Some(on);
        self
    }
    /// `subgroups`, or `KULLBACK_SUBGROUPS=on|off` where it is `None`.
    fn use_subgroups(&self) -> Result<bool> {
        if let Some(on) = self.subgroups {
            return Ok(on);
        }
        match std::env::var("KULLBACK_SUBGROUPS") {
            Ok(v) if !v.trim().is_empty() => match v.trim() {
                "on" => Ok(true),
                "off" => Ok(false),
                _ => Err(Error::InvalidOption {
                    option: Setting::SubgroupsEnv,
                    message: format!("KULLBACK_SUBGROUPS={v}: expected on or off"),
                }),
            },
            _ => Ok(true),
        }
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
                    opts.use_subgroups()?,
                )?)),
                auto: None,
                cpu: Arc::default(),
            },
            Backend::Auto => match Gpu::create(
                false,
                opts.max_binding_bytes,
                opts.pool(),
                opts.use_subgroups()?,
            ) {
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

    /// [`Context::from_device`] with options (`max_binding_bytes`, `pool_bytes`
    /// and `subgroups` apply; subgroups only where the device was created with
    /// `wgpu::Features::SUBGROUP`).
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
                opts.use_subgroups()?,
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

    /// Whether this context's GPU reductions use subgroup operations (the
    /// device has `wgpu::Features::SUBGROUP` and
    /// [`ContextOptions::subgroups`] allows them). The bits of every result
    /// are the same either way.
    pub fn uses_subgroups(&self) -> bool {
        self.gpu.as_ref().is_some_and(|g| g.pipelines.subgroups)
    }

    /// Evaluates `measure` for each row of `p` (and `q`). A `p` or `q` with one
    /// row is compared with every row of the other. The named methods
    /// ([`Context::entropy`], [`Context::cross_entropy`], [`Context::kl`],
    /// [`Context::js`], [`Context::hellinger`], [`Context::total_variation`])
    /// give each measure's formula, zero rules and an example.
    ///
    /// # Errors
    ///
    /// Every measure returns the same errors for the same kind of bad input,
    /// before or instead of any value:
    /// * [`Error::Empty`], [`Error::Length`] (a slice that is not rows × cols),
    ///   [`Error::ShapeMismatch`] (p and q neither the same shape nor one of
    ///   them a single row), [`Error::MissingArg`] (a measure that reads q,
    ///   called without it);
    /// * [`Error::BadValue`] naming the argument, row and column: NaN, a
    ///   negative or infinite probability, a log-probability or logit of +inf,
    ///   a log-probability above 0 (except under `Renormalize`), an f64 value
    ///   that would change in f32;
    /// * [`Error::NotNormalized`] (under [`Normalization::Validate`](crate::Normalization::Validate), a row
    ///   whose sum is off 1 by more than the tolerance), [`Error::CannotNormalize`]
    ///   (a row with no non-zero probability to renormalise, or logits all −inf);
    /// * [`Error::InvalidOption`] (a base ≤ 0, = 1 or not finite; a negative
    ///   or NaN tolerance; a base other than e for Hellinger or total
    ///   variation, which are not logarithmic), [`Error::TooLarge`] (rows or columns of 2³¹ or more;
    ///   scratch beyond one GPU binding), [`Error::OutOfMemory`],
    ///   [`Error::Device`] (the GPU reported an error).
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

    /// Entropy of each row, H(p) = −Σᵢ pᵢ ln pᵢ (in nats; divided by
    /// ln(base) for another [`Base`](crate::Base)).
    ///
    /// Zero rule: a term with pᵢ = 0 is 0 (0 · ln 0 = 0); the entropy of a
    /// row is never infinite. Logits and log-probabilities are turned into
    /// probabilities first (a stable log-sum-exp); a masked (−inf) class is
    /// pᵢ = 0. Errors: see [`Context::evaluate`].
    ///
    /// ```
    /// # use kullback::{Backend, Batch, Context, Form, Options};
    /// # fn main() -> kullback::Result<()> {
    /// let ctx = Context::with_backend(Backend::Cpu)?;
    /// let p = [0.5f32, 0.5, 0.0, 1.0, 0.0, 0.0];
    /// let h = ctx.entropy(&Batch::new(&p, 2, 3), &Options::default())?;
    /// assert!((h.values[0] - std::f32::consts::LN_2).abs() < 1e-6);
    /// assert_eq!(h.values[1], 0.0); // a one-hot row
    /// let logits = [0.0f32, 0.0, f32::NEG_INFINITY]; // the first row, as logits
    /// let h = ctx.entropy(&Batch::new(&logits, 1, 3).form(Form::Logits), &Options::default())?;
    /// assert!((h.values[0] - std::f32::consts::LN_2).abs() < 1e-6);
    /// # Ok(()) }
    /// ```
    pub fn entropy(&self, p: &Batch<'_>, opts: &Options) -> Result<Output> {
        self.evaluate(Measure::Entropy, p, None, opts)
    }

    /// Cross-entropy of each row pair, H(p, q) = −Σᵢ pᵢ ln qᵢ.
    ///
    /// Zero rules: a term with pᵢ = 0 is 0 whatever qᵢ is (even ln qᵢ = −inf);
    /// pᵢ > 0 with qᵢ = 0 makes the row +inf (no epsilon is added). With q in
    /// log form, ln q is used as given (q = 0 only where it is −inf). Errors:
    /// see [`Context::evaluate`]. For class targets instead of p, see
    /// [`Context::nll`].
    ///
    /// ```
    /// # use kullback::{Backend, Batch, Context, Options};
    /// # fn main() -> kullback::Result<()> {
    /// let ctx = Context::with_backend(Backend::Cpu)?;
    /// let p = [1.0f32, 0.0, 0.5, 0.5];
    /// let q = [0.5f32, 0.5, 1.0, 0.0];
    /// let h = ctx.cross_entropy(&Batch::new(&p, 2, 2), &Batch::new(&q, 2, 2), &Options::default())?;
    /// assert!((h.values[0] - std::f32::consts::LN_2).abs() < 1e-6);
    /// assert_eq!(h.values[1], f32::INFINITY); // p > 0 where q = 0
    /// # Ok(()) }
    /// ```
    pub fn cross_entropy(&self, p: &Batch<'_>, q: &Batch<'_>, opts: &Options) -> Result<Output> {
        self.evaluate(Measure::CrossEntropy, p, Some(q), opts)
    }

    /// Kullback-Leibler divergence of each row pair, D(P‖Q) = Σᵢ pᵢ (ln pᵢ − ln qᵢ)
    /// = H(p, q) − H(p) ≥ 0, summed per element so that the logs cancel there
    /// (not as a difference of two large sums).
    ///
    /// Zero rules: a term with pᵢ = 0 is 0 whatever qᵢ is; pᵢ > 0 with
    /// qᵢ = 0 makes the row +inf. Logits are compared relative to their row
    /// maxima, so logits of magnitude 10⁴ keep full accuracy. Errors: see
    /// [`Context::evaluate`].
    ///
    /// ```
    /// # use kullback::{Backend, Base, Batch, Context, Options, Reduction};
    /// # fn main() -> kullback::Result<()> {
    /// let ctx = Context::with_backend(Backend::Cpu)?;
    /// let p = [0.5f32, 0.5, 0.0];
    /// let q = [0.25f32, 0.25, 0.5];
    /// let d = ctx.kl(&Batch::new(&p, 1, 3), &Batch::new(&q, 1, 3), &Options::default().base(Base::Two))?;
    /// assert!((d.values[0] - 1.0).abs() < 1e-6); // one bit
    /// let back = ctx.kl(&Batch::new(&q, 1, 3), &Batch::new(&p, 1, 3), &Options::default())?;
    /// assert_eq!(back.values[0], f32::INFINITY); // q puts mass where p has none
    /// # Ok(()) }
    /// ```
    pub fn kl(&self, p: &Batch<'_>, q: &Batch<'_>, opts: &Options) -> Result<Output> {
        self.evaluate(Measure::Kl, p, Some(q), opts)
    }

    /// Jensen-Shannon divergence of each row pair,
    /// JS(P, Q) = ½ D(P‖M) + ½ D(Q‖M) with M = ½ (P + Q), between 0 and ln 2
    /// nats (1 bit). Its square root is SciPy's `jensenshannon` distance.
    ///
    /// Zero rules: each half follows the KL rule (a term with pᵢ = 0, or
    /// qᵢ = 0, is 0); JS is never infinite. The mixture needs both rows
    /// normalised, so logits and renormalised inputs take a first pass for
    /// the row normalisers. Errors: see [`Context::evaluate`].
    ///
    /// ```
    /// # use kullback::{Backend, Base, Batch, Context, Options};
    /// # fn main() -> kullback::Result<()> {
    /// let ctx = Context::with_backend(Backend::Cpu)?;
    /// let p = [1.0f32, 0.0];
    /// let q = [0.0f32, 1.0];
    /// let js = ctx.js(&Batch::new(&p, 1, 2), &Batch::new(&q, 1, 2), &Options::default().base(Base::Two))?;
    /// assert!((js.values[0] - 1.0).abs() < 1e-6); // disjoint supports: 1 bit, not inf
    /// # Ok(()) }
    /// ```
    pub fn js(&self, p: &Batch<'_>, q: &Batch<'_>, opts: &Options) -> Result<Output> {
        self.evaluate(Measure::Js, p, Some(q), opts)
    }

    /// Squared Hellinger distance of each row pair, computed as
    /// H²(P, Q) = ½ Σᵢ (√pᵢ − √qᵢ)², between 0 and 1. For rows that sum to 1
    /// this is 1 − Σᵢ √(pᵢ qᵢ), which cancels for close rows; the form
    /// computed does not. The same form as [`Context::pairwise`]'s.
    ///
    /// Zero rules: a term with pᵢ = 0 is ½ qᵢ, with qᵢ = 0 ½ pᵢ; H² is never
    /// infinite (disjoint supports give 1). √ of a subnormal is taken from
    /// its bits. Not logarithmic: a [`Base`](crate::Base) other than e is
    /// [`Error::InvalidOption`]. Like JS it needs normalised rows, so logits
    /// and renormalised inputs take a first pass. Other errors: see
    /// [`Context::evaluate`].
    ///
    /// ```
    /// # use kullback::{Backend, Base, Batch, Context, Error, Options};
    /// # fn main() -> kullback::Result<()> {
    /// let ctx = Context::with_backend(Backend::Cpu)?;
    /// let p = [1.0f32, 0.0, 0.25, 0.75];
    /// let q = [0.0f32, 1.0, 0.25, 0.75];
    /// let h = ctx.hellinger(&Batch::new(&p, 2, 2), &Batch::new(&q, 2, 2), &Options::default())?;
    /// assert_eq!(h.values, [1.0, 0.0]); // disjoint supports: 1, not inf; equal rows: 0
    /// let bits = Options::default().base(Base::Two);
    /// let e = ctx.hellinger(&Batch::new(&p, 2, 2), &Batch::new(&q, 2, 2), &bits);
    /// assert!(matches!(e, Err(Error::InvalidOption { .. }))); // not logarithmic
    /// # Ok(()) }
    /// ```
    pub fn hellinger(&self, p: &Batch<'_>, q: &Batch<'_>, opts: &Options) -> Result<Output> {
        self.evaluate(Measure::Hellinger, p, Some(q), opts)
    }

    /// Total variation distance of each row pair, ½ Σᵢ |pᵢ − qᵢ|, between 0
    /// and 1.
    ///
    /// Zero rules: a term with pᵢ = 0 is ½ qᵢ, with qᵢ = 0 ½ pᵢ; never
    /// infinite (disjoint supports give 1). Not logarithmic: a
    /// [`Base`](crate::Base) other than e is [`Error::InvalidOption`]. Like JS
    /// it needs normalised rows, so logits and renormalised inputs take a
    /// first pass. Other errors: see [`Context::evaluate`].
    ///
    /// ```
    /// # use kullback::{Backend, Batch, Context, Options};
    /// # fn main() -> kullback::Result<()> {
    /// let ctx = Context::with_backend(Backend::Cpu)?;
    /// let p = [1.0f32, 0.0, 0.5, 0.5];
    /// let q = [0.0f32, 1.0, 0.75, 0.25];
    /// let tv = ctx.total_variation(&Batch::new(&p, 2, 2), &Batch::new(&q, 2, 2), &Options::default())?;
    /// assert_eq!(tv.values, [1.0, 0.25]);
    /// # Ok(()) }
    /// ```
    pub fn total_variation(&self, p: &Batch<'_>, q: &Batch<'_>, opts: &Options) -> Result<Output> {
        self.evaluate(Measure::TotalVariation, p, Some(q), opts)
    }

    /// Negative log-likelihood of class targets, lᵢ = −ln q[i, tᵢ]: the
    /// cross-entropy of each row of `q` against the one-hot of its target (or,
    /// with label smoothing ε and class weights w, against
    /// pᵢ = (1 − ε)·w_t·onehot(t) + ε·w / C, PyTorch's `F.cross_entropy`). A `q`
    /// with one row is shared by every target.
    ///
    /// Zero rule: q[i, tᵢ] = 0 gives +inf. A target equal to
    /// [`NllOptions::ignore_index`] has value 0 and is not counted; the mean
    /// is Σ w_t·lᵢ / Σ w_t over counted rows (NaN when none is counted), and
    /// [`Output::perplexity`] is exp(mean in nats).
    ///
    /// # Errors
    ///
    /// Those of [`Context::evaluate`] for `q`, and [`Error::TargetOutOfRange`]
    /// (a target outside [0, classes) that is not the ignore index),
    /// [`Error::TargetCount`] (targets neither one per row of q nor any number
    /// for a single row), [`Error::BadValue`] / [`Error::Length`] for class
    /// weights (negative, NaN, infinite; not one per class),
    /// [`Error::InvalidOption`] for a label smoothing outside [0, 1].
    ///
    /// ```
    /// # use kullback::{Backend, Batch, Context, Form, NllOptions, Reduction};
    /// # fn main() -> kullback::Result<()> {
    /// let ctx = Context::with_backend(Backend::Cpu)?;
    /// let logits = [2.0f32, 0.0, 0.0, 0.0, 0.0, 3.0];
    /// let opts = NllOptions::default().ignore_index(-100).reduction(Reduction::Mean);
    /// let out = ctx.nll(&Batch::new(&logits, 2, 3).form(Form::Logits), &[0i64, -100], &opts)?;
    /// let want = (1.0f32 + 2.0 * (-2.0f32).exp()).ln(); // row 0 only: ln Σ e^(x - 2)
    /// assert!((out.values[0] - want).abs() < 1e-6);
    /// assert_eq!(out.counted, 1.0);
    /// # Ok(()) }
    /// ```
    pub fn nll<'t>(
        &self,
        q: &Batch<'_>,
        targets: impl Into<Targets<'t>>,
        opts: &NllOptions<'_>,
    ) -> Result<Output> {
        let job = Job::nll(q, targets.into(), opts)?;
        self.run(&job)
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
                Started::Gpu(pending, call, adapter) => {
                    let recs = pending.resolve().await?;
                    output(&call, &recs, Ran::Gpu, Some(adapter))
                }
            }
        }
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

    /// Where a call over `rows` rows reading `bytes` bytes of input would run:
    /// the cost model's choice under `Backend::Auto` with a hardware GPU, the
    /// context's backend otherwise. `inputs` says whether the call takes
    /// logits (an online softmax: an exp per element) or not.
    ///
    /// The model's rates are this machine's where it has measured them: the
    /// CPU backend's (a probe of ~10 ms once per process) and the adapter's
    /// upload rate (8 MiB, once per device), both at the first placement
    /// that needs them and only under `Auto` with a hardware GPU; a rate
    /// set in the [`CostModel`] is kept.
    pub fn placement(&self, bytes: u64, rows: u64, inputs: InputKind) -> Ran {
        let threads = rayon_core::current_num_threads();
        let work = Work::new(bytes, rows, inputs == InputKind::Logits, threads);
        self.placed(work, |_| None)
    }

    /// [`Context::placement`] of `work`, refined by `plan_cost` (pipelines to
    /// build, passes) when the model is consulted.
    fn placed(&self, mut work: Work, plan_cost: impl FnOnce(&Gpu) -> Option<(u32, u32)>) -> Ran {
        match (&self.gpu, self.auto) {
            (None, _) => Ran::Cpu,
            (Some(_), None) => Ran::Gpu,
            (Some(g), Some((class, model))) => {
                if let Some((new, passes)) = plan_cost(g) {
                    work.new_pipelines = new;
                    work.passes = passes;
                }
                if prefer_gpu(class, &work, &self.measured(g, model)) {
                    Ran::Gpu
                } else {
                    Ran::Cpu
                }
            }
        }
    }

    /// Where a loss and gradient (src/train) of `rows` rows of logits
    /// reading `bytes` bytes runs: the GPU of a GPU context; under
    /// `Backend::Auto` with a hardware GPU, the cost model's choice for a
    /// logits call of that size (as [`Context::placement`]); else the CPU.
    pub(crate) fn train_gpu(&self, bytes: u64, rows: u64) -> Option<&Gpu> {
        let threads = rayon_core::current_num_threads();
        match self.placed(Work::new(bytes, rows, true, threads), |_| None) {
            Ran::Gpu => self.gpu.as_deref(),
            Ran::Cpu => None,
        }
    }

    /// `model` with the rates it leaves open measured on this machine.
    fn measured(&self, g: &Gpu, mut model: CostModel) -> CostModel {
        if model.cpu_measured.is_none() {
            model.cpu_measured = crate::probe::cpu_rates(&|m, p, q| {
                let cpu = Context {
                    gpu: None,
                    auto: None,
                    cpu: self.cpu.clone(),
                };
                cpu.evaluate(m, p, q, &Options::default()).is_ok()
            });
        }
        if model.upload_measured.is_none() {
            model.upload_measured = g.upload_rate();
        }
        model
    }

    /// The GPU for this job (with its plan if the cost model made it, so
    /// that a call is planned once), or None for the CPU.
    fn place(&self, job: &Job<'_>) -> Option<(&Gpu, Option<crate::gpu::GpuPlan>)> {
        let threads = rayon_core::current_num_threads();
        let work = Work::new(
            job.input_bytes(),
            job.call.rows as u64,
            job.call.any_online(),
            threads,
        );
        let mut planned = None;
        let ran = self.placed(work, |g| {
            let plan = g.plan(job).ok()?;
            let cost = g.plan_cost(&job.call, &plan);
            planned = Some(plan);
            Some(cost)
        });
        match ran {
            Ran::Gpu => self.gpu.as_deref().map(|g| (g, planned)),
            Ran::Cpu => None,
        }
    }

    fn start(&self, job: &Job<'_>) -> Result<Started> {
        match self.place(job) {
            Some((g, plan)) => Ok(Started::Gpu(
                g.submit(job, plan)?,
                job.call,
                g.adapter_name().to_string(),
            )),
            None => Ok(Started::Done(self.run_cpu(job)?)),
        }
    }

    fn run(&self, job: &Job<'_>) -> Result<Output> {
        match self.place(job) {
            Some((g, plan)) => output(
                &job.call,
                &g.run(job, plan)?,
                Ran::Gpu,
                Some(g.adapter_name().to_string()),
            ),
            None => self.run_cpu(job),
        }
    }

    /// `job` on the CPU (records, where it needs them, in the context's kept
    /// buffer).
    fn run_cpu(&self, job: &Job<'_>) -> Result<Output> {
        let d = crate::cpu::decoded(job, &self.cpu)?;
        Ok(output_of(&job.call, d, Ran::Cpu, None))
    }
}

enum Started {
    Done(Output),
    Gpu(crate::gpu::Pending, Call, String),
}

/// The [`Output`] of a call's output records (either backend's: the same
/// layout, the same decoder).
fn output(
    call: &Call,
    records: &[Record],
    backend: Ran,
    adapter: Option<String>,
) -> Result<Output> {
    let d = record::decode_output(records, &call.output_desc())?;
    Ok(output_of(call, d, backend, adapter))
}

/// The [`Output`] of a call's decoded values.
fn output_of(call: &Call, d: record::Decoded, backend: Ran, adapter: Option<String>) -> Output {
    let perplexity = (call.is_nll() && call.reduction == Reduction::Mean)
        .then(|| (d.values[0] as f64 * call.ln_base).exp());
    Output {
        values: d.values,
        rows: call.rows,
        cols: call.cols,
        reduction: call.reduction,
        counted: d.counted,
        perplexity,
        backend,
        adapter,
    }
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
        use crate::test_support::random::{Rng, rand_probs};
        let dist = |rows, cols, seed| rand_probs(&mut Rng::new(seed), rows, cols, 0.0);
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
