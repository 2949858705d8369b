//! # kullback
//!
//! Entropy, cross-entropy, Kullback-Leibler and Jensen-Shannon divergence, and
//! the negative log-likelihood of class targets, for batches of discrete
//! distributions: WGSL compute shaders through wgpu, with a CPU backend that
//! gives the same answers when no GPU is present.
//!
//! ## Quick start (host slices)
//!
//! ```
//! use kullback::{Backend, Batch, Context, Options, Reduction};
//!
//! # fn main() -> kullback::Result<()> {
//! let p = [0.5f32, 0.5, 0.0, 0.9, 0.1, 0.0];   // 2 rows x 3 columns
//! let q = [0.25f32, 0.25, 0.5, 0.5, 0.25, 0.25];
//! let ctx = Context::with_backend(Backend::Cpu)?; // or Context::new(): a GPU when there is one
//! let kl = ctx.kl(&Batch::new(&p, 2, 3), &Batch::new(&q, 2, 3), &Options::default())?;
//! assert_eq!(kl.values.len(), 2);                 // one value per row, in nats
//! let mean = ctx.kl(
//!     &Batch::new(&p, 2, 3),
//!     &Batch::new(&q, 2, 3),
//!     &Options::default().reduction(Reduction::Mean),
//! )?;
//! println!("{} on {} ({:?})", mean.values[0], mean.backend.name(), mean.adapter);
//! # Ok(()) }
//! ```
//!
//! Other input forms ([`Form::LogProbs`], [`Form::Logits`]) are set per
//! argument with [`Batch::form`]; class targets go through [`Context::nll`].
//! A `p` or `q` with a single row is compared with every row of the other.
//!
//! ## Measures
//!
//! Each has its method, whose docs give the formula, the zero rules, the
//! errors and an example: [`Context::entropy`], [`Context::cross_entropy`],
//! [`Context::kl`], [`Context::js`], [`Context::hellinger`],
//! [`Context::total_variation`], [`Context::nll`] (class targets);
//! [`Context::evaluate`] takes a [`Measure`] and lists the errors every
//! measure shares.
//!
//! ## Training
//!
//! [`Context::nll_grad`] (cross-entropy of class targets) and
//! [`Context::distill`] (forward/reverse KL, generalized JSD, dense or
//! sparse top-k teacher, temperature) return a loss and write its gradient
//! with respect to the logits; formulas and conventions in [`train`].
//!
//! ## Conventions (identical on the GPU and the CPU)
//!
//! Per-element terms, natural log; results are divided by ln(base) at the end
//! ([`Base`]: e, 2, 10 or any base > 0, ≠ 1; a base below 1 makes ln(base) < 0,
//! so +inf becomes −inf, per row and in sums and means, as SciPy gives).
//!
//! | measure | term for (p, q) | p = 0 | p > 0, q = 0 |
//! |---|---|---|---|
//! | entropy H(p) | −p ln p | 0 | – |
//! | cross-entropy H(p, q) | −p ln q | 0 (whatever q is, even ln q = −inf) | +inf |
//! | KL D(P‖Q) | p (ln p − ln q) | 0 (whatever q is) | +inf |
//! | Jensen-Shannon | ½ KL(P‖M) + ½ KL(Q‖M), M = ½(P + Q) | per the KL rule | finite (≤ ln 2 nats) |
//! | negative log-likelihood of class t | −ln q_t | – | +inf when q_t = 0 |
//! | squared Hellinger H²(P, Q) | ½ (√p − √q)² | ½ q | ½ p (finite; H² ≤ 1) |
//! | total variation | ½ \|p − q\| | ½ q | ½ p (finite; ≤ 1) |
//!
//! Hellinger is computed as ½ Σ (√p − √q)², per row and for all pairs alike,
//! which equals 1 − Σ √(p q) for rows that sum to 1 and does not cancel for
//! close rows (√ of a subnormal is taken from its bits); neither it nor
//! total variation is logarithmic, so they take no log base (a base other
//! than e is [`Error::InvalidOption`]). Both need normalised values, so
//! logits and renormalised inputs take a first pass, as JS does.
//!
//! * No silent epsilon clamping: a value that is mathematically +inf is +inf.
//! * "p = 0" means a probability whose bits are zero, a log-probability of
//!   −inf, or a logit of −inf (a masked class). Zeros are decided from the
//!   bits, never by `x == 0.0`: GPUs may flush subnormals, and a subnormal
//!   probability (1e-40) is a valid, non-zero input whose log is taken exactly
//!   from its bits (WGSL's `log` is not accurate there).
//! * Bad input is an [`Error`] naming the argument, row and column: NaN,
//!   negative or infinite probabilities, +inf logits or log-probabilities, a
//!   log-probability above 0 (except under `Renormalize`), a row of all −inf,
//!   an f64 value that would change in f32 (a non-zero probability that
//!   underflows, a finite value that overflows), a class target out of range.
//! * Inputs are f32, f64 (checked, narrowed where read) or half precision
//!   (`half::f16`, `half::bf16`, re-exported as [`half`]; read as half, half
//!   the bytes of f32, and widened to f32 exactly where read: in the CPU
//!   kernels' loads (F16C for f16 where the CPU has it, integer bit
//!   operations elsewhere; bf16 by a shift), on the GPU packed two per u32
//!   and widened by integer operations in the shader, so zeros, subnormals
//!   and infinities follow the half formats' own bits and the results are
//!   the f32 path's on the widened values, bit for bit; the all-pairs
//!   calls' preparation and the loss gradients' kernel widen them the same
//!   way). GPU-resident batches of the per-row measures, the NLL, the
//!   all-pairs calls and the loss gradients may hold f16 or bf16 the same
//!   way ([`GpuBatch::dtype`], [`Dtype`]).
//! * Row sums ([`Normalization`]): `Validate` (default) checks |Σp − 1| ≤
//!   [`Options::tolerance`] (default [`DEFAULT_TOLERANCE`]; Σ exp(lp) for
//!   log-probabilities; for half inputs plus the format's unit roundoff u,
//!   2⁻¹¹ for f16 and 2⁻⁸ for bf16, times 1 + ln(cols) for log-probabilities,
//!   since rounding a valid row moves its sum by up to that); `Renormalize` divides each row by its sum first (as
//!   `scipy.stats.entropy`), or subtracts the row's log-sum-exp for log forms;
//!   `AsGiven` sums the terms of the values as they are. Renormalised sums are
//!   formed relative to a power of two (exact), so rows of subnormal counts
//!   and rows whose f32 sum would overflow are normalised like any other: only
//!   a row with no non-zero value cannot be. Logits are always normalised, by
//!   a numerically stable online log-sum-exp kept relative to the row maxima
//!   (logits of magnitude 10⁴ are fine).
//! * The f32 range: a finite logit far below its row's maximum is a
//!   probability that underflows to 0 in f32; its term is 0 (it is still
//!   p > 0 for the zero rules), in every measure, so entropy, KL, JS and NLL
//!   of rows whose logits span more than f32::MAX (`[3e38, -3e38, 0]`) are the
//!   float64 values. What f32 cannot hold is a log-probability below
//!   −f32::MAX, which only such a spread produces: as q under a p of normal
//!   weight the cross-entropy or KL term is +inf (the true value may be a
//!   finite number near f32::MAX), under a negligible p (below
//!   `f32::MIN_POSITIVE`) 0.
//! * A value that is zero is +0.0, never −0.0, on every backend.
//! * Reductions ([`Reduction`]): `None` (one value per row), `Sum`, `Mean` (the
//!   mean of per-distribution values — PyTorch's `batchmean`, not its `mean`).
//!   For the negative log-likelihood, a row whose target is the ignore index
//!   has value 0 and is not counted; with class weights the mean is
//!   Σ wₜ·lᵢ / Σ wₜ (PyTorch's). A mean over zero counted rows (every target
//!   ignored) is NaN, as in PyTorch. [`Output::perplexity`] is exp(mean in nats).
//!
//! ## All pairs and nearest-k
//!
//! [`Context::pairwise`] gives the M × N matrix D[i, j] = measure(P_i, Q_j)
//! of every row of p against every row of q (q omitted: p against itself;
//! JS, Hellinger and total variation are then symmetric bit for bit with a
//! zero diagonal, KL has a zero diagonal, cross-entropy's diagonal is
//! H(P_i)); [`Context::pairwise_top_k`] each row's k nearest (values and
//! indices, ascending, ties by the lower index, +inf last; k ≤
//! [`MAX_TOP_K`]) without holding the matrix; [`Context::pairwise_tiles`]
//! hands the matrix out tile by tile, for matrices larger than memory.
//! Inputs are read as by the per-row measures (forms, normalisation, f64,
//! the same errors). Each row is read, checked and normalised once, and the
//! log of each element taken once; KL is summed per pair as Σ p (ln p − ln q)
//! (never −H(P) − P·log Qᵀ, which cancels for close rows), JS with one log
//! of the mixture per pair-element in exact parts, each pair in f32 runs
//! added into f64 (CPU) or compensated f32 sums (GPU). The GPU-resident
//! calls [`Context::encode_pairwise`] and [`Context::encode_pairwise_top_k`]
//! record the same work into the caller's encoder, with a per-row status
//! buffer ([`decode_pairwise_status`]).
//!
//! ```
//! use kullback::{Backend, Batch, Context, Measure, PairwiseOptions};
//! # fn main() -> kullback::Result<()> {
//! let docs = [0.7f32, 0.2, 0.1, 0.0, 0.1, 0.9, 0.3, 0.3, 0.4]; // 3 rows x 3
//! let protos = [0.6f32, 0.3, 0.1, 0.1, 0.1, 0.8];                 // 2 rows x 3
//! let ctx = Context::with_backend(Backend::Cpu)?;
//! let (p, q) = (Batch::new(&docs, 3, 3), Batch::new(&protos, 2, 3));
//! let d = ctx.pairwise(Measure::Js, &p, Some(&q), &PairwiseOptions::default())?;
//! assert_eq!(d.values.len(), 3 * 2);                              // D[i, j] at i * 2 + j
//! let near = ctx.pairwise_top_k(Measure::Js, &p, Some(&q), 1, &PairwiseOptions::default())?;
//! assert_eq!(near.indices, [0, 1, 0]);                            // each doc's nearest prototype
//! # Ok(()) }
//! ```
//!
//! ## Accuracy and determinism
//!
//! Results agree with a float64 computation from the same f32 inputs within
//! abs 2e-6 + rel 2e-5 on both backends. The GPU accumulates in f32 by tree
//! (pairwise) reductions in workgroup memory; the CPU accumulates short f32
//! blocks into f64. No float atomics: the same input on the same backend and
//! device gives bit-identical output, every run.
//!
//! ## Backends
//!
//! [`Backend::Auto`] (the default) uses a hardware GPU adapter when there is
//! one, and then places each call by a cost model ([`cost`]): a small batch
//! costs more to upload and launch than to compute on the CPU. Software
//! adapters (llvmpipe/lavapipe) are never chosen by `Auto`: they are slower
//! than the native CPU path. [`Backend::Gpu`] takes any adapter, software ones
//! included (this is how CI runs the shaders without a GPU); [`Backend::Cpu`]
//! never touches wgpu. The environment variable `KULLBACK_BACKEND=auto|gpu|cpu`
//! replaces `Auto`, never an explicit choice. Every [`Output`] says which
//! backend ran and the adapter's name. Where the device has
//! `wgpu::Features::SUBGROUP`, the GPU reductions take their first levels by
//! subgroup butterflies (the same pairing as the tree in workgroup memory, so
//! the same bits); [`ContextOptions::subgroups`] or `KULLBACK_SUBGROUPS=off`
//! turns them off ([`Context::uses_subgroups`] says which ran).
//!
//! The CPU backend runs AVX-512 (F and DQ) loops, else AVX2 + FMA loops,
//! where the CPU has them (chosen at run time; a portable path elsewhere;
//! `KULLBACK_CPU_ISA=baseline|avx2|avx512`, read once per process, caps the
//! choice: the same instruction set gives the same bits on every machine,
//! and AVX-512 gives other bits than AVX2, within the same bound) on all cores, through rayon's
//! persistent thread pool (a caller already inside rayon shares its
//! workers). Per-row calls decode each worker's rows a chunk at a time
//! straight into the result; a sum or a mean (or a call over a few long rows
//! whose blocks the workers share) goes through a per-row records buffer,
//! which a context keeps between calls (up to 64 MiB), so that a call
//! allocates only its result; a GPU
//! context keeps up to [`ContextOptions::pool_bytes`] of buffers (default
//! 256 MiB). [`Context::trim`] frees both.
//!
//! Zeros and subnormals are decided from the bits and scaled by powers of
//! two, never by subnormal arithmetic: a caller whose threads run with
//! MXCSR's flush-to-zero and denormals-are-zero modes gets the same results
//! (tests/flush.rs runs the edge cases and the SciPy corpus so).
//!
//! ### CPU instructions per element
//!
//! Counted rather than timed (timings on a shared machine move 2× within
//! minutes); `bash bench/icount.sh` reproduces them. "Before" is the code
//! before the AVX-512 loops (issue 16), "after" this version.
//!
//! | measure (shape counted) | baseline, before | baseline, after | AVX2, before | AVX2, after | AVX-512 hot loop, before | AVX-512 hot loop, after |
//! |---|---:|---:|---:|---:|---:|---:|
//! | KL (256 × 4096) | 48.76 | 50.30 | 5.84 | 5.46 | 5.25 | 2.63 |
//! | cross-entropy (256 × 4096) | 28.32 | 29.88 | 5.46 | 4.96 | 4.88 | 2.44 |
//! | entropy (256 × 4096) | 23.50 | 24.49 | 4.72 | 4.28 | 4.25 | 2.00 |
//! | NLL from logits (256 × 4096) | 25.57 | 25.56 | 4.05 | 4.05 | 3.75 | 1.50 |
//! | KL, short rows (65,536 × 16) | 103.01 | 101.16 | 11.60 | 10.50 | 5.69 (AVX2 row loop) | 2.81 (row loop) |
//! | KL, long rows (4 × 262,144) | 48.71 | 50.26 | 5.79 | 5.41 | 5.25 | 2.63 |
//!
//! Baseline (SSE2) and AVX2 (measured): `valgrind --tool=callgrind` counts
//! the instructions executed inside `Context::evaluate` / `Context::nll`
//! (the whole call: planning, kernels, finalize, records) over two calls of
//! the bench example on one core (`KULLBACK_CPU_ISA=baseline|avx2`), divided
//! by their elements. The baseline build pays about 3% for deciding zeros by
//! an integer test that flush-to-zero modes cannot change (see
//! `tests/flush.rs`); the AVX2 loops now take two vectors a trip (KL 5.06,
//! cross-entropy 4.56, entropy 3.94 instructions per element in the loop).
//! AVX-512 (static): valgrind hides AVX-512 from CPUID and cannot run EVEX
//! code, so these are the instructions of each kernel's hot loop in the
//! disassembly of the release build (`objdump -d`), divided by the elements
//! one trip of the loop handles (16 for KL, cross-entropy and entropy; for
//! the NLL the maximum sweep, 64 a trip, plus the exp sweep, 32 a trip). Before
//! this version an AVX-512 machine ran the AVX2 loops: the "before" column
//! counts those the same way. The per-call and per-row work around the
//! loops (the whole-call figures include it) is the same code on both.
//! `llvm-mca -mcpu=skylake-avx512` estimates 11–11.5 cycles per trip of 16
//! elements for the KL, cross-entropy and entropy loops. The AVX-512 loops
//! prefetch each operand's line 2 KiB ahead, as the AVX2 loops do (2–7
//! instructions a trip more): without it, on a 2-core Xeon (Emerald
//! Rapids, 12.8 GB/s of read bandwidth), KL over 4096 × 4096 reached 60–65%
//! of the bandwidth, and the prefetch made the four measures 1.5–1.9×
//! faster (medians of per-round ratios, 5 alternating rounds). Short rows of
//! at most 64 columns run AVX-512 row kernels (`cpu::short512`): a 16-column
//! row is one vector per operand, 45 instructions a row in the row loop
//! (2.81 per element, where the AVX2 row loop takes 91 for two vectors, 5.69),
//! and the lanes of 16 rows are summed side by side by one transpose-and-add
//! tree per quantity; rows of 65 to 512 columns run the AVX2 row kernels.
//! Short rows' whole-call figures also fell because per-row results no
//! longer pass through a records buffer in memory: each worker decodes its
//! rows 256 at a time into the output values (the AVX2 whole call: 11.19
//! instructions per element before, 10.50 after; callgrind, 65,536 × 16).
//!
//! Under pressure the library returns errors: an allocation that fails, on
//! the host or the device, is [`Error::OutOfMemory`]; a dropped
//! [`Context::evaluate_async`] future leaves the context usable.
//!
//! ## Embedding in a wgpu application
//!
//! An application that owns its `wgpu::Device` and keeps its distributions in
//! its own buffers makes a context on that device with [`Context::from_device`]
//! (every call then runs there) and records the work into its own encoder:
//!
//! ```no_run
//! use kullback::wgpu;
//! use kullback::{Context, GpuBatch, GpuCall, GpuOutput, Measure, Options, Reduction, Record, output_bytes};
//!
//! # fn demo(device: wgpu::Device, queue: wgpu::Queue, p: wgpu::Buffer, q: wgpu::Buffer) -> kullback::Result<()> {
//! let (rows, cols) = (512, 4096);
//! let ctx = Context::from_device(device.clone(), queue.clone())?; // build once, keep
//! let out = device.create_buffer(&wgpu::BufferDescriptor {
//!     label: Some("kl"),
//!     size: output_bytes(rows, Reduction::None),            // one 24-byte Record per row
//!     usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
//!     mapped_at_creation: false,
//! });
//! let mut encoder = device.create_command_encoder(&Default::default());
//! // ... the app's own passes that write p and q ...
//! let call = GpuCall::new(Measure::Kl, GpuBatch::new(&p, rows, cols), GpuOutput::new(&out))
//!     .q(GpuBatch::new(&q, rows, cols));
//! ctx.encode(&mut encoder, &call)?;
//! // ... the app's own passes that read `out` ...
//! queue.submit([encoder.finish()]);                         // the caller submits
//! // later, if the app wants the values on the host: copy `out` to a MAP_READ
//! // buffer, map it, poll the device, then
//! # let records: Vec<Record> = vec![];
//! let values = call.decode(&records)?;
//! # let _ = values; Ok(()) }
//! ```
//!
//! What the caller is responsible for:
//! * **Submission**: `encode` only records; nothing runs until the caller
//!   submits the encoder. Several calls may be recorded into one encoder.
//! * **Buffer usages and placement**: inputs need `STORAGE` and offsets that
//!   are multiples of the device's `min_storage_buffer_offset_alignment`; the
//!   output needs `STORAGE` (plus `COPY_SRC` to read it back) and must not be
//!   an input buffer (wgpu tracks usage per buffer, not per range); class
//!   targets ([`GpuTargets`], i32 or u32) need `COPY_SRC`. Violations are
//!   [`Error::Buffer`] before anything is recorded.
//! * **Bad values**: the library never sees the data on this path, so each
//!   output [`Record`] carries a status (a code and the first bad column, and
//!   for a bad target its value; u32 fields of their own); a bad row's value is NaN.
//!   [`decode_output`] turns a read-back output into the values or into the
//!   same [`Error`] the host path returns for the same input.
//! * **The encoder's device**: `encode` records into an encoder that must
//!   come from the context's device (wgpu cannot tell which device an
//!   encoder belongs to). [`Context::encode_commands`] records into one of
//!   its own and returns the `CommandBuffer`. A buffer of another device (on
//!   the same instance) is refused with [`Error::Device`] before anything is
//!   recorded; one of another `wgpu::Instance` cannot be recognised.
//! * **Scratch**: each call needs scratch buffers; by default they are made
//!   fresh per call. A [`Workspace`] given in [`GpuOutput::workspace`] keeps
//!   them (within a byte cap) for the next call: one workspace per
//!   submission (submit before reusing it).
//! * **Polling**: wgpu runs map callbacks only while the device is polled.
//!   [`Context::evaluate_async`] returns a future that resolves when the
//!   results are mapped; poll with [`Context::poll`] (or `device.poll`) from
//!   your event loop until it does. The blocking calls poll for you.
//!
//! The kernels bind at most four storage buffers and use no optional features,
//! so they run on devices made with `Limits::downlevel_defaults()`; inputs
//! larger than one storage binding are split into chunks. `Context` is
//! `Send + Sync` and cheap to clone; clones share the device and pipelines
//! (built once per context, on first use).

#![warn(missing_docs)]

/// The `half` crate, whose `f16` and `bf16` slices are inputs too ([`Values::F16`], [`Values::BF16`]).
pub use half;
pub use wgpu;

mod batch;
mod call;
mod context;
pub mod cost;
mod cpu;
mod error;
mod gpu;
mod grad;
mod job;
mod measure;
mod pairs;
mod pairwise;
mod probe;
mod record;
mod resident;
pub mod train;
mod widen;
// The tests' one generator and f64 oracle (tests/common) serve the unit tests
// too: included, not copied; they name this crate `kullback`, as the
// integration tests do.
#[cfg(test)]
extern crate self as kullback;
#[cfg(test)]
mod test_support;

pub use batch::{Batch, Targets, Values, f32_from_f64};
pub use context::{Backend, Context, ContextOptions, InputKind, Output, PollMode, Ran};
pub use error::{Arg, BadValue, BufferProblem, Error, Result, Setting};
pub use measure::{
    Base, DEFAULT_TOLERANCE, Form, Measure, NllOptions, Normalization, Options, Reduction,
};
pub use pairs::{MAX_TOP_K, PairwiseOptions, Tile, TileShape};
pub use pairwise::{
    GpuPairwiseOutput, GpuTopKOutput, PairwiseOutput, TopK, decode_pairwise_status,
    pairwise_status_bytes,
};
pub use record::{RECORD_SIZE, Record, Status};
pub use resident::{
    GpuBatch, GpuCall, GpuNll, GpuOutput, GpuTargets, GpuTimestamps, Workspace, decode_output,
    output_bytes,
};
pub use train::{
    DistillOptions, Divergence, GpuDistill, GpuGrad, GpuNllGrad, GpuRowMask, GpuSparseDistill,
    GradMut, RowMask, SparseTeacher, Tail, Teacher, grad_output_bytes,
};
pub use widen::Dtype;
