//! All pairs: the M × N matrix D[i, j] = measure(P_i, Q_j), its rows'
//! nearest k, and the same matrix handed out tile by tile. See
//! [`Context::pairwise`].

use crate::batch::Batch;
use crate::context::{Context, Ran};
use crate::error::{BufferProblem, Error, Result};
use crate::measure::Measure;
use crate::pairs::{self, PairJob, PairwiseOptions, Tile, TileShape};
use crate::resident::{GpuBatch, Workspace};

/// The matrix of an all-pairs call.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PairwiseOutput {
    /// D[i, j] at `values[i * cols + j]` (row-major, `rows` × `cols`).
    pub values: Vec<f32>,
    /// Rows of p.
    pub rows: usize,
    /// Rows of q (rows of p when q was omitted).
    pub cols: usize,
    /// The backend that ran.
    pub backend: Ran,
    /// The GPU adapter's name, when a GPU ran.
    pub adapter: Option<String>,
}

/// The nearest rows of an all-pairs call.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TopK {
    /// For row i of p, the `k` smallest values D[i, j] ascending, at
    /// `values[i * k ..][..k]` (ties: the lower j first; +inf last).
    pub values: Vec<f32>,
    /// The j of each value (rows of q), at the same places.
    pub indices: Vec<u32>,
    /// Rows of p.
    pub rows: usize,
    /// Entries per row.
    pub k: usize,
    /// The backend that ran.
    pub backend: Ran,
    /// The GPU adapter's name, when a GPU ran.
    pub adapter: Option<String>,
}

/// Pair-elements (M·N·K) from which `Backend::Auto` with a hardware GPU runs
/// an all-pairs call on the GPU: below, the upload and launch cost more
/// than the CPU's work.
const AUTO_GPU_WORK: u64 = 1 << 24;

impl Context {
    /// The GPU for an all-pairs call of `work` pair-elements, or None for the CPU.
    fn pairs_gpu(&self, work: u64) -> Option<&crate::gpu::Gpu> {
        let g = self.gpu.as_deref()?;
        if self.is_auto() && work < AUTO_GPU_WORK {
            return None;
        }
        Some(g)
    }

    /// D[i, j] = `measure`(P_i, Q_j) for every row i of `p` and j of `q`: an
    /// M × N matrix, row-major. With `q` omitted, p against itself: JS,
    /// Hellinger and total variation are then symmetric with a zero
    /// diagonal (D[i, j] and D[j, i] are the same bits), KL has a zero
    /// diagonal, cross-entropy's diagonal is the entropy H(P_i).
    ///
    /// Measures: [`Measure::Kl`], [`Measure::CrossEntropy`], [`Measure::Js`],
    /// [`Measure::Hellinger`], [`Measure::TotalVariation`]. Inputs are read
    /// as by the per-row measures (forms, normalisation, tolerance, f64
    /// values), and bad input is the same [`Error`], naming the argument,
    /// row and column; the first bad row of p is reported before any of q.
    ///
    /// ```
    /// use kullback::{Backend, Batch, Context, Measure, PairwiseOptions};
    /// # fn main() -> kullback::Result<()> {
    /// let p = [0.5f32, 0.5, 0.0, 0.9, 0.1, 0.0]; // 2 rows x 3
    /// let q = [0.25f32, 0.25, 0.5];              // 1 row x 3
    /// let ctx = Context::with_backend(Backend::Cpu)?;
    /// let d = ctx.pairwise(Measure::Js, &Batch::new(&p, 2, 3), Some(&Batch::new(&q, 1, 3)),
    ///                      &PairwiseOptions::default())?;
    /// assert_eq!((d.rows, d.cols, d.values.len()), (2, 1, 2));
    /// # Ok(()) }
    /// ```
    pub fn pairwise(
        &self,
        measure: Measure,
        p: &Batch<'_>,
        q: Option<&Batch<'_>>,
        opts: &PairwiseOptions,
    ) -> Result<PairwiseOutput> {
        let job = PairJob::new(measure, p, q, opts)?;
        let (m, n) = (job.m(), job.n());
        let len = m.checked_mul(n).ok_or(Error::TooLarge {
            what: "values of an all-pairs matrix".into(),
            size: m as u64 * n as u64,
            limit: usize::MAX as u64,
        })?;
        let mut values = crate::error::try_vec(len, "an all-pairs matrix")?;
        values.resize(len, 0.0f32);
        let work = len as u64 * job.cols as u64;
        let (backend, adapter) = match self.pairs_gpu(work) {
            Some(g) => {
                crate::gpu::pairwise::full(g, &job, &mut values)?;
                (Ran::Gpu, Some(g.adapter_name().to_string()))
            }
            None => {
                crate::cpu::pairwise::full(&job, &mut values)?;
                (Ran::Cpu, None)
            }
        };
        Ok(PairwiseOutput {
            values,
            rows: m,
            cols: n,
            backend,
            adapter,
        })
    }

    /// For each row of `p`, the `k` rows of `q` (or of `p`, when `q` is
    /// omitted) with the smallest `measure`, ascending, ties broken by the
    /// lower index, +inf last; the M × N matrix is never held (memory is a
    /// band of rows at a time). Each backend's lists equal a stable sort (by
    /// value, then index) of its own [`Context::pairwise`] matrix.
    ///
    /// `1 ≤ k ≤` [`MAX_TOP_K`](crate::MAX_TOP_K), and at most the number of
    /// candidates (N, or N − 1 with [`PairwiseOptions::exclude_self`], which
    /// leaves each row's own index out when `q` is omitted).
    pub fn pairwise_top_k(
        &self,
        measure: Measure,
        p: &Batch<'_>,
        q: Option<&Batch<'_>>,
        k: usize,
        opts: &PairwiseOptions,
    ) -> Result<TopK> {
        let job = PairJob::new(measure, p, q, opts)?;
        pairs::check_k(k, job.n(), opts.exclude_self, q.is_none())?;
        let m = job.m();
        let len = m.checked_mul(k).ok_or(Error::TooLarge {
            what: "nearest-k values".into(),
            size: m as u64 * k as u64,
            limit: usize::MAX as u64,
        })?;
        let mut values = crate::error::try_vec(len, "the nearest-k values")?;
        values.resize(len, 0.0f32);
        let mut indices = crate::error::try_vec(len, "the nearest-k indices")?;
        indices.resize(len, 0u32);
        let work = m as u64 * job.n() as u64 * job.cols as u64;
        let (backend, adapter) = match self.pairs_gpu(work) {
            Some(g) => {
                crate::gpu::pairwise::top_k(
                    g,
                    &job,
                    k,
                    opts.exclude_self,
                    &mut values,
                    &mut indices,
                )?;
                (Ran::Gpu, Some(g.adapter_name().to_string()))
            }
            None => {
                crate::cpu::pairwise::top_k(&job, k, opts.exclude_self, &mut values, &mut indices)?;
                (Ran::Cpu, None)
            }
        };
        Ok(TopK {
            values,
            indices,
            rows: m,
            k,
            backend,
            adapter,
        })
    }

    /// The matrix of [`Context::pairwise`] handed to `f` one tile at a time
    /// (row-major order of tiles, each at most `shape`), for matrices larger
    /// than memory: a 100,000 × 100,000 matrix (40 GB of f32) streams to
    /// disk with one tile in memory. Values are the same bits as
    /// [`Context::pairwise`] gives on the same backend. An error of `f` stops
    /// the call and is returned; the library's errors come as `E::from`.
    /// Returns the backend that ran.
    pub fn pairwise_tiles<E: From<Error>>(
        &self,
        measure: Measure,
        p: &Batch<'_>,
        q: Option<&Batch<'_>>,
        opts: &PairwiseOptions,
        shape: TileShape,
        mut f: impl FnMut(Tile<'_>) -> Result<(), E>,
    ) -> Result<Ran, E> {
        let job = PairJob::new(measure, p, q, opts)?;
        let work = job.m() as u64 * job.n() as u64 * job.cols as u64;
        match self.pairs_gpu(work) {
            Some(g) => {
                crate::gpu::pairwise::tiles(g, &job, shape, &mut f)?;
                Ok(Ran::Gpu)
            }
            None => {
                crate::cpu::pairwise::tiles(&job, shape, &mut f)?;
                Ok(Ran::Cpu)
            }
        }
    }
}

/// Where a GPU-resident all-pairs matrix goes ([`Context::encode_pairwise`]).
///
/// * `buffer` at byte `offset` (a multiple of the device's
///   `min_storage_buffer_offset_alignment`; usage `STORAGE`, plus `COPY_SRC`
///   to read it back): the M × N matrix, f32, row-major,
///   D[i, j] at element `i * N + j`. A pair whose row of p or of q is bad is
///   NaN.
/// * `status` at byte `status_offset` (aligned the same way; `STORAGE`): one
///   [`Record`](crate::Record) per row of p, then one per row of q (none with
///   q omitted), [`pairwise_status_bytes`] in all: `code` 0 and `value` 0
///   for a good row; for a bad one the per-row measures' code and first bad
///   column, `value` NaN, and in `aux_p` (p) or `aux_q` (q) the row's sum (or
///   log-sum-exp). [`decode_pairwise_status`] turns it into the host path's
///   error.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct GpuPairwiseOutput<'a> {
    /// The matrix's buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Its byte offset.
    pub offset: u64,
    /// The statuses' buffer.
    pub status: &'a wgpu::Buffer,
    /// Their byte offset.
    pub status_offset: u64,
    /// Scratch buffers kept between calls (see [`Workspace`]); fresh ones
    /// per call when `None`.
    pub workspace: Option<&'a Workspace>,
}

impl<'a> GpuPairwiseOutput<'a> {
    /// The matrix at offset 0 of `buffer`, the statuses at offset 0 of `status`.
    pub fn new(buffer: &'a wgpu::Buffer, status: &'a wgpu::Buffer) -> Self {
        GpuPairwiseOutput {
            buffer,
            offset: 0,
            status,
            status_offset: 0,
            workspace: None,
        }
    }
    /// Sets the matrix's byte offset.
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }
    /// Sets the statuses' byte offset.
    pub fn status_offset(mut self, offset: u64) -> Self {
        self.status_offset = offset;
        self
    }
    /// Takes the call's scratch buffers from `workspace`.
    pub fn workspace(mut self, workspace: &'a Workspace) -> Self {
        self.workspace = Some(workspace);
        self
    }
}

/// Where GPU-resident nearest-k lists go ([`Context::encode_pairwise_top_k`]):
/// `values` (f32) and `indices` (u32), each M × k row-major (row i's list at
/// elements `i * k .. i * k + k`, ascending), in two distinct buffers
/// (`STORAGE`, aligned offsets); `status` as in [`GpuPairwiseOutput`]. A bad
/// row's list holds NaN values.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct GpuTopKOutput<'a> {
    /// The values' buffer and byte offset.
    pub values: (&'a wgpu::Buffer, u64),
    /// The indices' buffer and byte offset.
    pub indices: (&'a wgpu::Buffer, u64),
    /// The statuses' buffer and byte offset.
    pub status: (&'a wgpu::Buffer, u64),
    /// Scratch buffers kept between calls; fresh ones per call when `None`.
    pub workspace: Option<&'a Workspace>,
}

impl<'a> GpuTopKOutput<'a> {
    /// Values, indices and statuses each at offset 0 of their buffer.
    pub fn new(
        values: &'a wgpu::Buffer,
        indices: &'a wgpu::Buffer,
        status: &'a wgpu::Buffer,
    ) -> Self {
        GpuTopKOutput {
            values: (values, 0),
            indices: (indices, 0),
            status: (status, 0),
            workspace: None,
        }
    }
    /// Takes the call's scratch buffers from `workspace`.
    pub fn workspace(mut self, workspace: &'a Workspace) -> Self {
        self.workspace = Some(workspace);
        self
    }
}

/// Bytes of a GPU-resident all-pairs call's statuses: one
/// [`Record`](crate::Record) per row of p and of q (`None`: q omitted).
pub fn pairwise_status_bytes(p_rows: usize, q_rows: Option<usize>) -> u64 {
    crate::gpu::pairwise::status_bytes(p_rows, q_rows)
}

/// Turns the statuses of a GPU-resident all-pairs call (read back) into
/// `Ok(())`, or the [`Error`] the host path returns for the same input:
/// the first bad row of p, else of q. `p_rows` rows of p come first; `opts`
/// and `cols` only shape the message.
pub fn decode_pairwise_status(
    status: &[crate::Record],
    p_rows: usize,
    opts: &PairwiseOptions,
    cols: usize,
) -> Result<()> {
    let ctx = crate::record::DecodeCtx {
        tolerance: opts.tolerance,
        classes: cols,
    };
    let p = &status[..p_rows.min(status.len())];
    if let Some(e) = pairs::first_error(p, p_rows, &ctx) {
        return Err(e);
    }
    let q = &status[p.len()..];
    match pairs::first_error(q, q.len(), &ctx) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A caller's batch as the GPU-resident all-pairs code reads it, checked.
fn resident_side<'a>(
    b: &GpuBatch<'a>,
    arg: crate::Arg,
    opts: &PairwiseOptions,
    align: u64,
) -> Result<crate::gpu::pairwise::ResidentSide<'a>> {
    let name = if arg == crate::Arg::P { "p" } else { "q" };
    // f16 and bf16 packed two per u32 (the prep kernel widens them): whole words
    let bytes = (b.rows as u64 * b.cols as u64 * b.dtype.bytes()).next_multiple_of(4);
    crate::resident::check_buffer(
        name,
        b.buffer,
        b.offset,
        bytes,
        wgpu::BufferUsages::STORAGE,
        align,
    )?;
    Ok(crate::gpu::pairwise::ResidentSide {
        buffer: b.buffer,
        offset: b.offset,
        rows: b.rows as u32,
        dtype: b.dtype,
        mode: pairs::RowMode::of(b.form, opts.normalization),
        tolerance: opts.tolerance + crate::resident::roundoff(b),
    })
}

impl Context {
    /// Records the all-pairs matrix of batches in the caller's GPU buffers
    /// into the caller's `encoder` (see [`Context::encode`] for what the
    /// caller is responsible for: submission, usages, the encoder's device).
    /// The matrix and the per-row statuses go where `out` says (layouts
    /// there); bad input is not an error here (the library never sees the
    /// data): read back the statuses and pass them to
    /// [`decode_pairwise_status`]. Everything wgpu would reject is an
    /// [`Error`] before anything is recorded.
    pub fn encode_pairwise(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        measure: Measure,
        p: &GpuBatch<'_>,
        q: Option<&GpuBatch<'_>>,
        opts: &PairwiseOptions,
        out: &GpuPairwiseOutput<'_>,
    ) -> Result<()> {
        let (gpu, call) =
            self.resident_call(measure, p, q, opts, (out.status, out.status_offset))?;
        let (m, n) = (p.rows, q.map_or(p.rows, |q| q.rows));
        let align = gpu.limits.min_storage_buffer_offset_alignment.max(4) as u64;
        let bytes = (m as u64).saturating_mul(n as u64).saturating_mul(4);
        crate::resident::check_buffer(
            "output",
            out.buffer,
            out.offset,
            bytes,
            wgpu::BufferUsages::STORAGE,
            align,
        )?;
        distinct(
            "output",
            out.buffer,
            &[Some(p.buffer), q.map(|q| q.buffer), Some(out.status)],
        )?;
        let call = crate::gpu::pairwise::ResidentCall {
            out: crate::gpu::pairwise::ResidentOut::Matrix {
                buffer: out.buffer,
                offset: out.offset,
            },
            ..call
        };
        crate::gpu::pairwise::encode(gpu, encoder, &call, out.workspace.map(|w| &w.pool))
    }

    /// [`Context::encode_pairwise`] for the nearest `k` of each row: values
    /// and indices as [`GpuTopKOutput`] says, each backend's lists equal to
    /// a stable sort of its own matrix (as [`Context::pairwise_top_k`]).
    #[allow(
        clippy::too_many_arguments,
        reason = "the host call's arguments, plus the encoder"
    )]
    pub fn encode_pairwise_top_k(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        measure: Measure,
        p: &GpuBatch<'_>,
        q: Option<&GpuBatch<'_>>,
        k: usize,
        opts: &PairwiseOptions,
        out: &GpuTopKOutput<'_>,
    ) -> Result<()> {
        let (gpu, call) = self.resident_call(measure, p, q, opts, out.status)?;
        let (m, n) = (p.rows, q.map_or(p.rows, |q| q.rows));
        pairs::check_k(k, n, opts.exclude_self, q.is_none())?;
        let align = gpu.limits.min_storage_buffer_offset_alignment.max(4) as u64;
        let bytes = (m as u64).saturating_mul(k as u64).saturating_mul(4);
        let storage = wgpu::BufferUsages::STORAGE;
        crate::resident::check_buffer("values", out.values.0, out.values.1, bytes, storage, align)?;
        crate::resident::check_buffer(
            "indices",
            out.indices.0,
            out.indices.1,
            bytes,
            storage,
            align,
        )?;
        let others = [Some(p.buffer), q.map(|q| q.buffer), Some(out.status.0)];
        distinct("values", out.values.0, &others)?;
        distinct("indices", out.indices.0, &others)?;
        distinct("indices", out.indices.0, &[Some(out.values.0)])?;
        let call = crate::gpu::pairwise::ResidentCall {
            out: crate::gpu::pairwise::ResidentOut::TopK {
                values: out.values,
                indices: out.indices,
                k: k as u32,
                exclude_self: opts.exclude_self,
            },
            ..call
        };
        crate::gpu::pairwise::encode(gpu, encoder, &call, out.workspace.map(|w| &w.pool))
    }

    /// The checks both GPU-resident calls share: a GPU context, the
    /// measure, options, shapes, inputs and statuses.
    fn resident_call<'a>(
        &'a self,
        measure: Measure,
        p: &GpuBatch<'a>,
        q: Option<&GpuBatch<'a>>,
        opts: &PairwiseOptions,
        status: (&'a wgpu::Buffer, u64),
    ) -> Result<(&'a crate::gpu::Gpu, crate::gpu::pairwise::ResidentCall<'a>)> {
        let gpu = self
            .gpu
            .as_deref()
            .ok_or_else(|| Error::Unsupported("GPU-resident batches need a GPU context".into()))?;
        let ln_base = pairs::check_options(measure, opts)?;
        pairs::check_shapes((p.rows, p.cols), q.map(|q| (q.rows, q.cols)))?;
        let align = gpu.limits.min_storage_buffer_offset_alignment.max(4) as u64;
        let ps = resident_side(p, crate::Arg::P, opts, align)?;
        let qs = match q {
            Some(q) => Some(resident_side(q, crate::Arg::Q, opts, align)?),
            None => None,
        };
        let s_bytes = pairwise_status_bytes(p.rows, q.map(|q| q.rows));
        crate::resident::check_buffer(
            "status",
            status.0,
            status.1,
            s_bytes,
            wgpu::BufferUsages::STORAGE,
            align,
        )?;
        distinct("status", status.0, &[Some(p.buffer), q.map(|q| q.buffer)])?;
        Ok((
            gpu,
            crate::gpu::pairwise::ResidentCall {
                measure,
                p: ps,
                q: qs,
                cols: p.cols as u32,
                check_sums: opts.normalization == crate::Normalization::Validate,
                ln_base,
                status,
                out: crate::gpu::pairwise::ResidentOut::Matrix {
                    buffer: status.0,
                    offset: 0,
                },
            },
        ))
    }
}

/// An output buffer must be none of `others` (wgpu tracks usage per buffer,
/// not per range: a writable and another binding of one buffer conflict).
fn distinct(
    name: &'static str,
    buffer: &wgpu::Buffer,
    others: &[Option<&wgpu::Buffer>],
) -> Result<()> {
    if others.iter().flatten().any(|o| *o == buffer) {
        return Err(Error::Buffer {
            name,
            problem: BufferProblem::AliasesOther,
        });
    }
    Ok(())
}
