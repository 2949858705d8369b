//! Rows over the CPU backend's workers, with its instruction-set choice.
//!
//! Each row is computed by one worker from its own values alone, in a fixed
//! order, so the results are bit-identical whatever the thread count; the
//! row losses are added in row order by the caller.

use std::sync::Mutex;

use crate::cpu::ln::{Arith, Plain};
use crate::cpu::threads;
use crate::error::{Error, Result, try_vec};

use crate::grad::GradMut;

/// Elements per worker below which fewer threads are started (as the
/// forward measures).
const MIN_WORK: usize = 1 << 15;

/// A per-row loss and gradient.
pub(super) trait RowKernel: Sync {
    /// Per-worker scratch (conversion buffers, sorted indices).
    type Scratch;
    /// A worker's scratch.
    fn scratch(&self) -> Result<Self::Scratch>;
    /// Writes the gradient of row `row` into `grad` (its `cols` values),
    /// and the gradient with respect to the teacher into `tgrad` where it is
    /// not empty (only a dense teacher is asked for one), and returns its
    /// loss. Must be `#[inline(always)]`: it is compiled inside the
    /// `avx2,fma` wrapper below.
    fn row<A: Arith>(
        &self,
        row: usize,
        grad: &mut [f32],
        tgrad: &mut [f32],
        s: &mut Self::Scratch,
    ) -> Result<f64>;
}

struct Slot<'g> {
    grad: GradMut<'g>,
    /// `None` where no teacher gradient is asked for.
    tgrad: Option<GradMut<'g>>,
    loss: f64,
}

/// Gradients from this many bytes on are written past the caches (see
/// [`super::lse::stream_copy`]): far more than the caches hold, so their
/// lines would be evicted unread anyway, and the stores need not read each
/// line in first. Below it, the caller may well read the gradient from the
/// caches next.
const STREAM_BYTES: usize = 64 << 20;

/// Whether the kernels stream a gradient of `rows × cols` f32 values
/// (with the teacher's, where asked for, as large again) out past the
/// caches; never a half one (the kernel's rows are then a worker's f32 row:
/// see [`streams_rounded`]).
pub(super) fn streams(rows: usize, cols: usize, grad: &GradMut<'_>) -> bool {
    matches!(grad, GradMut::F32(_)) && rows.saturating_mul(cols).saturating_mul(4) >= STREAM_BYTES
}

/// Whether a half gradient's rows, rounded from a worker's f32 row as each
/// is done, go out past the caches.
fn streams_rounded(rows: usize, cols: usize, grad: &GradMut<'_>) -> bool {
    !matches!(grad, GradMut::F32(_)) && rows.saturating_mul(cols).saturating_mul(2) >= STREAM_BYTES
}

/// Rows `r0..` of `part`, stopping at the first error.
#[inline(always)]
fn part<K: RowKernel, A: Arith>(
    k: &K,
    r0: usize,
    part: &mut [Slot<'_>],
    stream: bool,
) -> Result<(), (usize, Error)> {
    let mut s = k.scratch().map_err(|e| (r0, e))?;
    // f32 rows for half gradients, rounded as each row is done
    let half = |g: Option<&GradMut<'_>>| match g {
        Some(GradMut::F32(_)) | None => 0,
        Some(g) => g.len(),
    };
    let (gn, tn) = part
        .first()
        .map_or((0, 0), |p| (half(Some(&p.grad)), half(p.tgrad.as_ref())));
    let mut gb = try_vec(gn, "a gradient row").map_err(|e| (r0, e))?;
    gb.resize(gn, 0f32);
    let mut tb = try_vec(tn, "a gradient row").map_err(|e| (r0, e))?;
    tb.resize(tn, 0f32);
    let mut done = Ok(());
    for (i, slot) in part.iter_mut().enumerate() {
        let g = match slot.grad.f32s() {
            Some(g) => g,
            None => &mut gb[..],
        };
        let t = match slot.tgrad.as_mut() {
            None => &mut [][..],
            Some(t) => match t.f32s() {
                Some(t) => t,
                None => &mut tb[..],
            },
        };
        match k.row::<A>(r0 + i, g, t, &mut s) {
            Ok(v) => slot.loss = v,
            Err(e) => {
                done = Err((r0 + i, e));
                break;
            }
        }
        if gn > 0 {
            slot.grad.write(&gb, stream);
        }
        if let (Some(t), true) = (slot.tgrad.as_mut(), tn > 0) {
            t.write(&tb, stream);
        }
    }
    super::lse::store_fence();
    done
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn part_avx2<K: RowKernel>(
    k: &K,
    r0: usize,
    p: &mut [Slot<'_>],
    stream: bool,
) -> Result<(), (usize, Error)> {
    part::<K, crate::cpu::ln::Fused>(k, r0, p, stream)
}

/// The same source built with AVX-512 enabled: its 16-lane loops become one
/// zmm register instead of two ymm. Element by element the operations are
/// the same (Rust never reassociates or contracts float arithmetic; `Fused`
/// asks for its FMAs explicitly), so the bits are the AVX2 build's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
fn part_avx512<K: RowKernel>(
    k: &K,
    r0: usize,
    p: &mut [Slot<'_>],
    stream: bool,
) -> Result<(), (usize, Error)> {
    part::<K, crate::cpu::ln::Fused>(k, r0, p, stream)
}

/// [`part`] on the best instruction set; `stream`: [`streams_rounded`].
fn dispatch<K: RowKernel>(
    k: &K,
    r0: usize,
    p: &mut [Slot<'_>],
    stream: bool,
) -> Result<(), (usize, Error)> {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::avx512_chosen() {
        // SAFETY: `avx512_chosen` is true only where the CPU has AVX-512 F
        // and DQ, AVX2 and FMA.
        return unsafe { part_avx512(k, r0, p, stream) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::avx2_chosen() {
        // SAFETY: `avx2_chosen` is true only where the CPU has AVX2 and FMA.
        return unsafe { part_avx2(k, r0, p, stream) };
    }
    part::<K, Plain>(k, r0, p, stream)
}

/// The losses of `rows` rows of `cols` columns, their gradients written into
/// `grad` (`rows × cols`) and, where given, the teacher's into `tgrad` (of
/// the same size); the error of the lowest failing row.
pub(super) fn run<K: RowKernel>(
    k: &K,
    rows: usize,
    cols: usize,
    grad: GradMut<'_>,
    tgrad: Option<GradMut<'_>>,
) -> Result<Vec<f64>> {
    let stream = streams_rounded(rows, cols, &grad);
    let mut slots: Vec<Slot<'_>> = try_vec(rows, "the per-row losses")?;
    let mut tg = tgrad.map(|t| t.rows(cols).into_iter());
    slots.extend(grad.rows(cols).into_iter().map(|grad| Slot {
        grad,
        tgrad: tg.as_mut().and_then(|t| t.next()),
        loss: 0.0,
    }));
    let work = rows.saturating_mul(cols);
    let nthreads = threads::available().min(work / MIN_WORK).max(1);
    let first: Mutex<Option<(usize, Error)>> = Mutex::new(None);
    threads::split_mut(&mut slots, nthreads, |r0, p| {
        if let Err((row, e)) = dispatch(k, r0, p, stream) {
            let mut g = first.lock().unwrap_or_else(|e| e.into_inner());
            if g.as_ref().is_none_or(|(r, _)| row < *r) {
                *g = Some((row, e));
            }
        }
    });
    if let Some((_, e)) = first.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(slots.iter().map(|s| s.loss).collect())
}
