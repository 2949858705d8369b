//! All pairs on the CPU: every row of p against every row of q, blocked
//! for cache and vectorised ([`kernel`]), over rows read once ([`prep`]).
//!
//! Work is split into bands of rows (tasks taken in turn by the workers);
//! each pair's value is the same left fold of the same column runs
//! whichever band, tile or thread computes it, so results are
//! bit-identical whatever the thread count, the tile shape of
//! [`tiles`], or the call ([`full`], [`tiles`], [`top_k`]).

#[cfg(target_arch = "x86_64")]
mod avx2;
mod kernel;
mod prep;

use std::sync::Mutex;

use kernel::{MR, NR, Variant};
use prep::{F_FAR, F_ZERO, Prepared, Recipe, RowInfo};

use super::block::Isa;
use crate::error::{Error, Result};
use crate::measure::Measure;
use crate::pairs::{self, PairJob, Side, Tile, TileShape};

/// Rows of a band (a task).
const BAND: usize = 64;
/// Columns of q computed into one f64 scratch block (`BAND` × `BLOCK_COLS`).
const BLOCK_COLS: usize = 256;
/// Pair-elements per extra worker below which fewer workers are started.
const MIN_WORK: u64 = 1 << 20;

/// Runs `f` on every task, on up to `threads` workers (the calling thread
/// one of them), tasks taken in order as workers free up. Which worker runs
/// a task never changes what it computes. The first error (in task order
/// among those that failed) is returned.
pub(super) fn run_tasks<T: Send>(
    tasks: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> Result<()> + Sync,
) -> Result<()> {
    let n = tasks.len();
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return tasks.into_iter().try_for_each(f);
    }
    let queue = Mutex::new(tasks.into_iter().enumerate());
    let errors = Mutex::new(Vec::new());
    let work = || {
        loop {
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
            let Some((i, t)) = next else { break };
            if let Err(e) = f(t) {
                errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((i, e));
            }
        }
    };
    rayon_core::in_place_scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| work());
        }
        work();
    });
    let mut errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    errors.sort_by_key(|(i, _)| *i);
    match errors.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

fn variant(isa: Isa) -> Variant {
    match isa {
        Isa::Base => Variant::Base,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => Variant::Avx2,
    }
}

/// A prepared call: p packed for the p side (and, against itself, for the
/// q side too), q packed for the q side.
struct Ops<'a> {
    job: &'a PairJob<'a>,
    p: Prepared,
    q: Option<Prepared>,
    variant: Variant,
}

impl Ops<'_> {
    fn q_pack(&self) -> &prep::Packed {
        match &self.q {
            Some(q) => &q.packs[0],
            None => &self.p.packs[1],
        }
    }
    fn q_info(&self) -> &[RowInfo] {
        match &self.q {
            Some(q) => &q.info,
            None => &self.p.info,
        }
    }
}

/// Reads, checks and packs p and q; the first bad row (of p, then of q) is
/// the error.
fn prepare<'a>(job: &'a PairJob<'a>, threads: usize, isa: Isa) -> Result<Ops<'a>> {
    let fused = isa != Isa::Base;
    let cols = job.cols;
    let run = |side: &Side<'_>, groups: &[usize]| -> Result<Prepared> {
        let recipe = Recipe {
            measure: job.measure,
            check_sums: job.check_sums,
            tolerance: side.tolerance,
        };
        let prepared = prep::prepare(side, &recipe, cols, groups, threads, fused)?;
        if let Some(e) = pairs::first_error(&prepared.status, side.rows, &job.decode_ctx(side)) {
            // statuses name the argument by their codes; rows are its own
            return Err(e);
        }
        Ok(prepared)
    };
    let p = if job.q.is_none() {
        run(&job.p, &[MR, NR])?
    } else {
        run(&job.p, &[MR])?
    };
    let q = match &job.q {
        Some(q) => Some(run(q, &[NR])?),
        None => None,
    };
    Ok(Ops {
        job,
        p,
        q,
        variant: variant(isa),
    })
}

/// The workers for `work` pair-elements.
fn workers(work: u64) -> usize {
    let avail = super::threads::available();
    ((work / MIN_WORK) as usize).clamp(1, avail)
}

/// +inf, or −inf for a base below 1 (the value divided by ln base).
fn signed_inf(ln_base: f64) -> f32 {
    if ln_base < 0.0 {
        f32::NEG_INFINITY
    } else {
        f32::INFINITY
    }
}

impl Ops<'_> {
    /// The factor from a pair's sum to its value: the sign or ½ of the
    /// measure, divided by ln(base).
    fn scale(&self) -> f64 {
        let s = match self.job.measure {
            Measure::Kl => 1.0,
            Measure::CrossEntropy => -1.0,
            _ => 0.5,
        };
        s / self.job.ln_base
    }

    /// Row `i` of D from its sums: `src[j - j0]` for j in `j0..j1` into
    /// `dst[j - j0]`; then the zero rules and the zero diagonal.
    #[inline]
    fn finish_row(
        &self,
        i: usize,
        (j0, j1): (usize, usize),
        src: &[f64],
        dst: &mut [f32],
        flagged: bool,
    ) {
        let scale = self.scale();
        for (d, &s) in dst[..j1 - j0].iter_mut().zip(src) {
            // + 0.0 turns −0 into +0 and leaves every other value alone
            *d = (s * scale) as f32 + 0.0;
        }
        if flagged {
            let (pi, qi) = (&self.p.info[i], self.q_info());
            for j in j0..j1 {
                if qi[j].flags & (F_ZERO | F_FAR) != 0 && prep::violates(pi, &qi[j]) {
                    dst[j - j0] = signed_inf(self.job.ln_base);
                }
            }
        }
        if self.job.zero_diagonal() && (j0..j1).contains(&i) {
            dst[i - j0] = 0.0;
        }
    }

    /// D[r0..r1, c0..c1] into `dst` (row-major, leading dimension `ld`), on
    /// this thread; `scratch` holds a block of f64 sums.
    fn region(
        &self,
        (r0, r1): (usize, usize),
        (c0, c1): (usize, usize),
        dst: &mut [f32],
        ld: usize,
        scratch: &mut Vec<f64>,
    ) {
        let (pp, qp) = (&self.p.packs[0], self.q_pack());
        let mut i0 = r0;
        while i0 < r1 {
            let g0 = i0 / MR;
            let g1 = ((i0 / MR) * MR + BAND).min(r1).div_ceil(MR);
            let i1 = (g1 * MR).min(r1);
            let mut j0 = c0;
            while j0 < c1 {
                let h0 = j0 / NR;
                let h1 = ((j0 / NR) * NR + BLOCK_COLS).min(c1).div_ceil(NR);
                let j1 = (h1 * NR).min(c1);
                let ld64 = (h1 - h0) * NR;
                scratch.clear();
                scratch.resize((g1 - g0) * MR * ld64, 0.0);
                kernel::run_block(
                    self.job.measure,
                    self.variant,
                    pp,
                    (g0, g1),
                    qp,
                    (h0, h1),
                    scratch,
                );
                let flagged = matches!(self.job.measure, Measure::Kl | Measure::CrossEntropy)
                    && self.q_info()[j0..j1]
                        .iter()
                        .any(|q| q.flags & (F_ZERO | F_FAR) != 0);
                for i in i0..i1 {
                    let srow = &scratch[(i - g0 * MR) * ld64 + (j0 - h0 * NR)..][..j1 - j0];
                    let drow = &mut dst[(i - r0) * ld + (j0 - c0)..][..j1 - j0];
                    self.finish_row(i, (j0, j1), srow, drow, flagged);
                }
                j0 = j1;
            }
            i0 = i1;
        }
    }
}

/// The M × N matrix of `job` into `out` (row-major, M·N values).
pub(crate) fn full(job: &PairJob<'_>, out: &mut [f32]) -> Result<()> {
    full_with(job, out, None, Isa::chosen())
}

fn full_with(job: &PairJob<'_>, out: &mut [f32], threads: Option<usize>, isa: Isa) -> Result<()> {
    let (m, n) = (job.m(), job.n());
    let work = m as u64 * n as u64 * job.cols as u64;
    let threads = threads.unwrap_or_else(|| workers(work));
    let ops = prepare(job, threads, isa)?;
    let sym = job.symmetric();
    let tasks: Vec<(usize, &mut [f32])> = out.chunks_mut(BAND * n).enumerate().collect();
    run_tasks(tasks, threads, |(b, rows)| {
        let r0 = b * BAND;
        let r1 = r0 + rows.len() / n;
        // against itself, a symmetric measure: the upper triangle, mirrored below
        let c0 = if sym { r0 } else { 0 };
        let mut scratch = Vec::new();
        ops.region((r0, r1), (c0, n), &mut rows[c0..], n, &mut scratch);
        Ok(())
    })?;
    if sym {
        mirror(out, n);
    }
    Ok(())
}

/// D[i, j] = D[j, i] for j < i, from the upper triangle (blocked transpose).
fn mirror(d: &mut [f32], n: usize) {
    const B: usize = 64;
    for ib in (0..n).step_by(B) {
        for jb in (0..=ib).step_by(B) {
            for i in ib..(ib + B).min(n) {
                for j in jb..(jb + B).min(i) {
                    d[i * n + j] = d[j * n + i];
                }
            }
        }
    }
}

/// Hands `f` the tiles of `shape` in row-major order of tiles, each
/// computed by all workers; memory is one tile.
pub(crate) fn tiles<E: From<Error>>(
    job: &PairJob<'_>,
    shape: TileShape,
    f: &mut dyn FnMut(Tile<'_>) -> Result<(), E>,
) -> Result<(), E> {
    tiles_with(job, shape, f, None, Isa::chosen())
}

fn tiles_with<E: From<Error>>(
    job: &PairJob<'_>,
    shape: TileShape,
    f: &mut dyn FnMut(Tile<'_>) -> Result<(), E>,
    threads: Option<usize>,
    isa: Isa,
) -> Result<(), E> {
    let (m, n) = (job.m(), job.n());
    let (tr, tc) = (shape.rows.clamp(1, m), shape.cols.clamp(1, n));
    let work = m as u64 * n as u64 * job.cols as u64;
    let threads = threads.unwrap_or_else(|| workers(work));
    let ops = prepare(job, threads, isa)?;
    let mut buf = crate::error::try_vec(tr * tc, "a tile of an all-pairs matrix")?;
    buf.resize(tr * tc, 0.0f32);
    for r0 in (0..m).step_by(tr) {
        let r1 = (r0 + tr).min(m);
        for c0 in (0..n).step_by(tc) {
            let c1 = (c0 + tc).min(n);
            let w = c1 - c0;
            let tile = &mut buf[..(r1 - r0) * w];
            let work = ((r1 - r0) * w) as u64 * job.cols as u64;
            let tasks: Vec<(usize, &mut [f32])> = tile.chunks_mut(BAND * w).enumerate().collect();
            run_tasks(tasks, threads.min(workers(work)), |(b, rows)| {
                let a0 = r0 + b * BAND;
                let a1 = a0 + rows.len() / w;
                let mut scratch = Vec::new();
                ops.region((a0, a1), (c0, c1), rows, w, &mut scratch);
                Ok(())
            })?;
            f(Tile {
                rows: r0..r1,
                cols: c0..c1,
                values: tile,
            })?;
        }
    }
    Ok(())
}

/// One band of nearest-k rows: its index, its values and its indices.
type BandTask<'a> = (usize, (&'a mut [f32], &'a mut [u32]));

/// For each row of p, the `k` rows of q with the smallest values, ascending
/// (ties: the lower index first), into `values` and `indices` (M·k each),
/// never holding more than a band × block of the matrix.
pub(crate) fn top_k(
    job: &PairJob<'_>,
    k: usize,
    exclude_self: bool,
    values: &mut [f32],
    indices: &mut [u32],
) -> Result<()> {
    top_k_with(job, k, exclude_self, values, indices, None, Isa::chosen())
}

fn top_k_with(
    job: &PairJob<'_>,
    k: usize,
    exclude_self: bool,
    values: &mut [f32],
    indices: &mut [u32],
    threads: Option<usize>,
    isa: Isa,
) -> Result<()> {
    let (m, n) = (job.m(), job.n());
    let work = m as u64 * n as u64 * job.cols as u64;
    let threads = threads.unwrap_or_else(|| workers(work));
    let ops = prepare(job, threads, isa)?;
    let tasks: Vec<BandTask<'_>> = values
        .chunks_mut(BAND * k)
        .zip(indices.chunks_mut(BAND * k))
        .enumerate()
        .collect();
    run_tasks(tasks, threads, |(b, (vals, idxs))| {
        let r0 = b * BAND;
        let rows = vals.len() / k;
        let mut lists: Vec<Vec<(f32, u32)>> = (0..rows).map(|_| Vec::with_capacity(k)).collect();
        let mut block = vec![0.0f32; rows * BLOCK_COLS];
        let mut scratch = Vec::new();
        for c0 in (0..n).step_by(BLOCK_COLS) {
            let c1 = (c0 + BLOCK_COLS).min(n);
            let w = c1 - c0;
            ops.region((r0, r0 + rows), (c0, c1), &mut block, w, &mut scratch);
            for (r, list) in lists.iter_mut().enumerate() {
                for (dj, &v) in block[r * w..(r + 1) * w].iter().enumerate() {
                    let j = (c0 + dj) as u32;
                    if exclude_self && j as usize == r0 + r {
                        continue;
                    }
                    insert(list, k, v, j);
                }
            }
        }
        for (r, list) in lists.iter().enumerate() {
            for (t, &(v, j)) in list.iter().enumerate() {
                vals[r * k + t] = v;
                idxs[r * k + t] = j;
            }
        }
        Ok(())
    })
}

/// Inserts (v, j) into the sorted list of at most `k` (candidates come in
/// ascending j, so a value equal to the last one's never displaces it).
#[inline]
fn insert(list: &mut Vec<(f32, u32)>, k: usize, v: f32, j: u32) {
    if list.len() == k {
        let (lv, lj) = list[k - 1];
        if !pairs::before(v, j, lv, lj) {
            return;
        }
        list.pop();
    }
    let at = list.partition_point(|&(x, i)| pairs::before(x, i, v, j));
    list.insert(at, (v, j));
}

#[cfg(test)]
mod tests;
