//! The CPU backend: kernels that mirror `shaders/rows.wgsl`.
//!
//! - [`terms`]: each measure's arithmetic (what it adds per element, its
//!   value from a row's state), the twin of `shaders/measures.wgsl`;
//! - [`kernel`]: the per-row state machine, the CPU twin of the shader
//!   (state, merge, element rules, finalize);
//! - [`block`]: the vectorised loop over one block of columns, compiled for
//!   the baseline, AVX2 + FMA and AVX-512 and chosen at run time;
//! - [`ln`]: the branch-free f32 log (exact for subnormals) and exp it uses;
//! - [`plan`]: the job lowered into passes, decoders and a fixed block
//!   structure, so that results are bit-identical whatever the thread count;
//! - [`threads`]: scoped workers.
//!
//! Rows of at most `SUB` columns of probabilities go through one-call row
//! kernels ([`plan::Plan::rows_into`]) instead of the block machinery
//! ([`short512`] for rows of at most 64 columns on AVX-512, else the AVX2
//! ones in [`fast`]). Where workers split the rows, each decodes its rows'
//! records a chunk at a time into the output values ([`decoded`]): no
//! records buffer in memory.
//!
//! Threads share rows when there are many, and the super-blocks of each row
//! when there are few long ones; either way a row's state is the same left
//! fold of the same block states.

mod block;
#[cfg(target_arch = "x86_64")]
mod fast;
#[cfg(target_arch = "x86_64")]
mod fast512;
#[cfg(test)]
mod half_tests;
mod kernel;
pub(crate) mod ln;
mod plan;
mod selfcheck;
#[cfg(target_arch = "x86_64")]
mod short512;
mod terms;
// all pairs: a module of its own (kernels, packing, drivers)
pub(crate) mod pairwise;
#[cfg(test)]
mod tests;
pub(crate) mod threads;
mod total;

use block::Isa;
use kernel::State;
use plan::{Pass, Plan, RowNorm};

use crate::error::{Error, Result};
use crate::job::Job;
use crate::measure::Reduction;
use crate::record::{self, Record};

/// Whether the CPU backend runs its AVX2 + FMA kernels (or the AVX-512
/// ones, which imply them): the training kernels (`crate::train`) follow the
/// same choice (their AVX-512 build gives the AVX2 build's bits).
pub(crate) fn avx2_chosen() -> bool {
    !matches!(Isa::chosen(), Isa::Base)
}

/// Whether the CPU kernels run the AVX-512 loops (which implies AVX2 and
/// FMA).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_chosen() -> bool {
    matches!(Isa::chosen(), Isa::Avx512)
}

/// Elements per worker below which fewer threads are started.
const MIN_WORK: usize = 1 << 15;
/// Super-block states held at once when threads share rows.
const MAX_SCRATCH: usize = 1 << 14;

/// The output records of `job` in the layout every path shares (see
/// [`OutputDesc`](crate::record::OutputDesc)): per-row records with the same
/// values and status words as the GPU path, or for a sum or mean the batch
/// record and a copy of the first bad row's. Written into `out`, whose memory
/// is reused: a caller that keeps it pays no allocation or page faults on
/// the next call.
pub(crate) fn run_into(job: &Job<'_>, out: &mut Vec<Record>) -> Result<()> {
    fill(job, threads::available(), Isa::chosen(), out)?;
    let call = &job.call;
    if call.reduction != Reduction::None {
        let mean = call.reduction == Reduction::Mean;
        let total = total::reduce(out, mean, call.rows_weighted());
        out.clear();
        out.extend(total);
    }
    Ok(())
}

/// The decoded output of `job`: per-row values straight from the workers
/// ([`values`]) where the rows are split over them and nothing needs the
/// whole records (no reduction, no row weights), else the records in
/// `scratch`'s kept buffer and [`record::decode_output`]. Both give the same
/// values and the same error (the first bad row's).
pub(crate) fn decoded(job: &Job<'_>, scratch: &Scratch) -> Result<record::Decoded> {
    let desc = job.call.output_desc();
    let isa = Isa::chosen();
    if desc.reduction == Reduction::None && !desc.weighted {
        let plan = Plan::new(job, isa);
        let threads = workers(&plan, threads::available());
        if splits_rows(&plan, threads) {
            let values = values(&plan, threads, &desc.ctx)?;
            return Ok(record::Decoded {
                counted: values.len() as f64,
                values,
            });
        }
    }
    scratch.with(|records| {
        run_into(job, records)?;
        record::decode_output(records, &desc)
    })
}

/// Rows a worker decodes at a time in [`values`]: their records (6 KiB) stay
/// in L1 between being written and read.
const CHUNK: usize = 256;

/// The per-row values of a row-split plan, each worker decoding its rows a
/// [`CHUNK`] at a time, or the first bad row's error. No records buffer: a
/// write and a read of 24 bytes a row in memory, beside the 128 bytes a
/// 16-column KL row reads, was a third more traffic for short rows.
fn values(plan: &Plan<'_>, threads: usize, ctx: &record::DecodeCtx) -> Result<Vec<f32>> {
    let n = plan.rows;
    let mut out = crate::error::try_vec(n, "the output values")?;
    // the first bad row met by any worker (each stops at its own first)
    let bad = std::sync::Mutex::new(None::<(usize, Record)>);
    threads::split_mut(&mut out.spare_capacity_mut()[..n], threads, |r0, part| {
        let mut recs = [Record::default(); CHUNK];
        for (c, vals) in part.chunks_mut(CHUNK).enumerate() {
            let r = r0 + c * CHUNK;
            let recs = &mut recs[..vals.len()];
            plan.rows_into(r, recs);
            if let Err(i) = record::write_values(recs, vals) {
                let mut b = bad.lock().unwrap_or_else(|e| e.into_inner());
                if b.is_none_or(|(row, _)| r + i < row) {
                    *b = Some((r + i, recs[i]));
                }
                return;
            }
        }
    });
    if let Some((row, rec)) = bad.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(record::decode(row, &rec, ctx));
    }
    // SAFETY: no worker met a bad row, so each wrote every value of its part
    // (`write_values` writes all of a chunk when it returns Ok).
    unsafe { out.set_len(n) };
    Ok(out)
}

/// Records buffers kept between calls by a context: calls take the buffer
/// (concurrent calls find it empty and allocate their own, never wait) and
/// give it back unless it holds more than [`KEEP_BYTES`].
#[derive(Default)]
pub(crate) struct Scratch(std::sync::Mutex<Vec<Record>>);

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

/// Largest records buffer a context keeps between calls (64 MiB: 4 M rows).
const KEEP_BYTES: usize = 64 << 20;

impl Scratch {
    /// Frees the kept buffer.
    pub(crate) fn trim(&self) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *g = Vec::new();
    }

    /// Runs `f` on the kept buffer (or a new one), then keeps it.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Vec<Record>) -> R) -> R {
        let take = |m: &std::sync::Mutex<Vec<Record>>| match m.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        let mut v = take(&self.0);
        let r = f(&mut v);
        if v.capacity() * std::mem::size_of::<Record>() <= KEEP_BYTES {
            if let Ok(mut g) = self.0.lock() {
                *g = v;
            }
        }
        r
    }
}

/// An allocation of `n` records that failed, as the error the caller sees.
fn records_oom(n: usize) -> Error {
    Error::OutOfMemory {
        what: format!("the per-row records of {n} rows (host memory)"),
        bytes: (n as u64).saturating_mul(std::mem::size_of::<Record>() as u64),
    }
}

/// `n` default records from zeroed memory (fresh pages from the allocator
/// need no pass of writes before the workers fill them); an allocation that
/// fails is an error, not an abort.
fn zeroed_records(n: usize) -> Result<Vec<Record>> {
    let layout = std::alloc::Layout::array::<Record>(n).map_err(|_| records_oom(n))?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Record>();
    if ptr.is_null() {
        return Err(records_oom(n));
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of
    // `n` records (as `Vec` would), and all-zero bytes are a valid `Record`
    // (it is `bytemuck::Zeroable`, and zero is its default).
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// Records of `job` on `threads` workers with the kernels built for `isa`.
#[cfg(test)]
fn run_with(job: &Job<'_>, threads: usize, isa: Isa) -> Vec<Record> {
    let mut out = Vec::new();
    fill(job, threads, isa, &mut out).expect("records fit in memory");
    out
}

/// Workers for `plan` out of `threads`: fewer for little work.
fn workers(plan: &Plan<'_>, threads: usize) -> usize {
    threads
        .min(plan.rows.saturating_mul(plan.cols) / MIN_WORK)
        .max(1)
}

/// Whether `threads` workers share the rows (each a contiguous run of whole
/// rows), not the super-blocks of a few long rows.
fn splits_rows(plan: &Plan<'_>, threads: usize) -> bool {
    threads == 1 || plan.supers() <= 1 || plan.rows >= 4 * threads
}

/// [`run_into`] on `threads` workers with the kernels built for `isa`:
/// every record of `out` is written.
fn fill(job: &Job<'_>, threads: usize, isa: Isa, out: &mut Vec<Record>) -> Result<()> {
    let plan = Plan::new(job, isa);
    let rows = plan.rows;
    if out.capacity() < rows {
        // fresh pages from the allocator need no pass of writes
        *out = Vec::new();
        *out = zeroed_records(rows)?;
    } else {
        // every record is overwritten below
        out.resize(rows, Record::default());
    }
    let out = &mut out[..];
    let threads = workers(&plan, threads);
    if splits_rows(&plan, threads) {
        threads::split_mut(out, threads, |r0, recs| plan.rows_into(r0, recs));
        return Ok(());
    }
    let supers = plan.supers();
    // Few long rows: threads share the super-blocks of a group of rows.
    let group = (MAX_SCRATCH / supers).clamp(1, rows);
    let mut scratch = vec![State::EMPTY; group * supers];
    let mut norms = vec![RowNorm::IDENTITY; group];
    let ident = vec![RowNorm::IDENTITY; group];
    let mut g0 = 0;
    while g0 < rows {
        let g = group.min(rows - g0);
        let states = &mut scratch[..g * supers];
        let pass_states = |pass: Pass, norms: &[RowNorm], states: &mut [State]| {
            threads::split_mut(states, threads, |i0, part| {
                for (k, st) in part.iter_mut().enumerate() {
                    let (r, sb) = ((i0 + k) / supers, (i0 + k) % supers);
                    *st = plan.super_state(pass, g0 + r, sb, &norms[r]);
                }
            });
        };
        if plan.two_pass {
            pass_states(Pass::Sums, &ident[..g], states);
            for (r, n) in norms[..g].iter_mut().enumerate() {
                let st = plan.fold(Pass::Sums, &states[r * supers..(r + 1) * supers]);
                *n = plan.normalisers(&st);
            }
        }
        pass_states(Pass::Terms, &norms[..g], states);
        for r in 0..g {
            let st = plan.fold(Pass::Terms, &states[r * supers..(r + 1) * supers]);
            out[g0 + r] = plan.finalize(g0 + r, &st, &norms[r]);
        }
        g0 += g;
    }
    Ok(())
}
