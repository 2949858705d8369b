//! All pairs: the M × N matrix D[i, j] = measure(P_i, Q_j), its rows'
//! nearest k, and the same matrix handed out tile by tile. See
//! [`Context::pairwise`].

use crate::batch::Batch;
use crate::context::{Context, Ran};
use crate::error::{Error, Result};
use crate::measure::Measure;
use crate::pairs::{self, PairJob, PairwiseOptions, Tile, TileShape};

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
        let len = m
            .checked_mul(n)
            .ok_or_else(|| Error::TooLarge(format!("a {m} x {n} matrix")))?;
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
        let len = m
            .checked_mul(k)
            .ok_or_else(|| Error::TooLarge(format!("{m} rows of {k}")))?;
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
