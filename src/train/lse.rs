//! Row statistics: a blocked online log-sum-exp of `x·k` that reads each
//! value from memory once (a block's maximum, then its sum of exponentials,
//! while the block is in L1), and the vector loops it is made of.
//!
//! Values are shifted by the row maximum of the raw `x` before the scale `k`
//! (1/T) is applied: `(x − m)·k` is exact where it matters (values near the
//! maximum), so logits of magnitude 10⁴ lose nothing to the scaling.

use crate::cpu::ln::{Arith, exp_normal as exp, ln_pos};

/// Lanes of the vector loops (two AVX2 registers, one AVX-512 register).
pub(super) const L: usize = 16;
/// Columns of one block: its maximum and its exponentials are taken while it
/// sits in L1. Fixed, so results do not depend on how rows are split.
pub(super) const BLK: usize = 512;
/// Blocks ahead of pass 1 to prefetch.
pub(super) const AHEAD_BLOCKS: usize = 1;

/// `dst.copy_from_slice(src)` with stores that go past the caches (the
/// 16-byte-aligned middle; the edges are copied plainly): for gradients too
/// large for the caches, whose lines would otherwise be read in before each
/// is written over. The caller's worker ends with [`store_fence`].
#[inline(always)]
pub(super) fn stream_copy(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        let end = head + (dst.len() - head) / 4 * 4;
        dst[..head].copy_from_slice(&src[..head]);
        for i in (head..end).step_by(4) {
            // SAFETY: i + 4 ≤ end ≤ len for both slices, and dst + i is 16-byte
            // aligned (head aligns it, steps are 16 bytes); SSE is part of
            // x86-64.
            unsafe { _mm_stream_ps(dst.as_mut_ptr().add(i), _mm_loadu_ps(src.as_ptr().add(i))) };
        }
        dst[end..].copy_from_slice(&src[end..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// Orders the streaming stores of [`stream_copy`] before what follows (the
/// worker's completion, which the caller's thread then reads past): they
/// are not ordered by the usual release.
#[inline]
pub(super) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64; a fence has no other effect.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// NaN or +inf: a value no row may hold.
#[inline(always)]
pub(super) fn bad_f(v: f32) -> bool {
    v.is_nan() | (v == f32::INFINITY)
}

/// The maximum of `x` (−inf when every value is −inf, NaN ignored) and
/// whether any value is NaN or +inf.
#[inline(always)]
pub(super) fn max_bad(x: &[f32]) -> (f32, bool) {
    let (m, _, bad) = max_min_bad(x);
    (m, bad)
}

/// [`max_bad`] and whether any value is −inf (a masked column).
#[inline(always)]
pub(super) fn max_min_bad(x: &[f32]) -> (f32, bool, bool) {
    let mut m = [f32::NEG_INFINITY; L];
    let mut ninf = [0u32; L];
    let mut bad = [0u32; L];
    let chunks = x.chunks_exact(L);
    let rem = chunks.remainder();
    for c in chunks {
        for i in 0..L {
            let v = c[i];
            m[i] = if v > m[i] { v } else { m[i] };
            ninf[i] |= (v == f32::NEG_INFINITY) as u32;
            bad[i] |= bad_f(v) as u32;
        }
    }
    for (i, &v) in rem.iter().enumerate() {
        m[i] = if v > m[i] { v } else { m[i] };
        ninf[i] |= (v == f32::NEG_INFINITY) as u32;
        bad[i] |= bad_f(v) as u32;
    }
    let mx = m
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    (
        mx,
        ninf.iter().any(|&b| b != 0),
        bad.iter().any(|&b| b != 0),
    )
}

/// The error for the first NaN or +inf of `x` (which holds one), whose
/// first value is column `col0` of `row`.
pub(super) fn bad_value(arg: crate::Arg, row: usize, col0: usize, x: &[f32]) -> crate::Error {
    let i = x.iter().position(|&v| bad_f(v)).unwrap_or(0);
    crate::Error::BadValue {
        arg,
        row,
        col: Some(col0 + i),
        what: if x[i].is_nan() {
            crate::BadValue::Nan
        } else {
            crate::BadValue::Infinite
        },
    }
}

/// Σ exp((x − shift)·k) over `x` (every x ≤ shift, shift finite), summed in
/// f32 lanes of at most `BLK / L` terms each, also writing each term into
/// `out` (as long as `x`): the last pass scales these by a factor per block
/// instead of taking its exponentials again.
#[inline(always)]
pub(super) fn sum_exp_store<A: Arith>(x: &[f32], shift: f32, k: f32, out: &mut [f32]) -> f64 {
    let mut s = [0f32; L];
    let chunks = x.chunks_exact(L);
    let rem = chunks.remainder();
    let n = x.len() - rem.len();
    for (c, o) in chunks.zip(out[..n].chunks_exact_mut(L)) {
        let mut e = [0f32; L];
        for i in 0..L {
            e[i] = exp::<A>((c[i] - shift) * k);
        }
        o.copy_from_slice(&e);
        for i in 0..L {
            s[i] += e[i];
        }
    }
    for (i, &v) in rem.iter().enumerate() {
        let e = exp::<A>((v - shift) * k);
        out[n + i] = e;
        s[i] += e;
    }
    s.iter().map(|&v| v as f64).sum()
}

/// `e · f` flushed to 0 below the smallest normal: a stored term scaled by
/// its block's factor (see [`Soft::factor`]), never subnormal, so the result
/// is the same whether or not the hardware flushes.
#[inline(always)]
pub(super) fn scaled(e: f32, f: f32) -> f32 {
    let v = e * f;
    if v < f32::MIN_POSITIVE { 0.0 } else { v }
}

/// A running log-sum-exp of `x·k`: `sum` = Σ exp((x − max)·k).
#[derive(Clone, Copy, Debug)]
pub(super) struct Lse {
    /// The largest x met (−inf before any finite one).
    pub(super) max: f32,
    /// Σ exp((x − max)·k).
    pub(super) sum: f64,
}

impl Lse {
    /// Nothing met yet.
    pub(super) const EMPTY: Lse = Lse {
        max: f32::NEG_INFINITY,
        sum: 0.0,
    };

    /// Adds one block whose maximum is `mb`, writing the block's terms
    /// exp((x − max)·k) at the maximum after the block into `out` (zeros for
    /// a block of −inf).
    #[inline(always)]
    pub(super) fn add_block_store<A: Arith>(
        &mut self,
        blk: &[f32],
        mb: f32,
        k: f32,
        out: &mut [f32],
    ) {
        if mb == f32::NEG_INFINITY {
            out.fill(0.0);
            return;
        }
        self.raise(mb, k);
        self.sum += sum_exp_store::<A>(blk, self.max, k, out);
    }

    /// Makes `mb` the maximum if it is above the one met so far, rescaling
    /// the sum; returns the factor applied (1 when unchanged; 0 when nothing
    /// was met before: exp(−inf)).
    #[inline(always)]
    pub(super) fn raise(&mut self, mb: f32, k: f32) -> f64 {
        if mb > self.max {
            let f = (((self.max - mb) as f64) * k as f64).exp();
            self.sum *= f;
            self.max = mb;
            f
        } else {
            1.0
        }
    }

    /// Adds one value (f64 arithmetic; for the few indexed columns of a
    /// sparse teacher).
    pub(super) fn add_one(&mut self, v: f32, k: f32) {
        if v == f32::NEG_INFINITY {
            return;
        }
        if v > self.max {
            self.sum *= (((self.max - v) as f64) * k as f64).exp();
            self.max = v;
        }
        self.sum += (((v - self.max) as f64) * k as f64).exp();
    }

    /// Merges another running sum (of the same `k`).
    pub(super) fn merge(&mut self, o: &Lse, k: f32) {
        if o.max == f32::NEG_INFINITY {
            return;
        }
        if o.max > self.max {
            self.sum *= (((self.max - o.max) as f64) * k as f64).exp();
            self.max = o.max;
        }
        self.sum += o.sum * (((o.max - self.max) as f64) * k as f64).exp();
    }

    /// Whether no value other than −inf was met.
    pub(super) fn empty(&self) -> bool {
        self.max == f32::NEG_INFINITY
    }

    /// The softmax of the values seen, as [`Soft`].
    pub(super) fn soft(&self, k: f32) -> Soft {
        Soft {
            m: self.max,
            k,
            ln_s: self.sum.ln(),
        }
    }
}

/// A row's softmax of `x·k`: ln softmax(x·k)_c = (x_c − m)·k − ln_s.
#[derive(Clone, Copy, Debug)]
pub(super) struct Soft {
    /// The row maximum of x.
    pub(super) m: f32,
    /// The scale (1/T).
    pub(super) k: f32,
    /// ln Σ exp((x − m)·k), in f64.
    pub(super) ln_s: f64,
}

impl Soft {
    /// ln softmax of one value, in f64 (for single columns).
    pub(super) fn logp64(&self, v: f32) -> f64 {
        ((v - self.m) as f64) * self.k as f64 - self.ln_s
    }

    /// The factor that turns a term stored at the running maximum `at`
    /// (exp((x − at)·k), see [`Lse::add_block_store`]) into the softmax
    /// exp((x − m)·k − ln_s): exp((at − m)·k − ln_s), 0 where that is below
    /// the smallest normal f32 or `at` is −inf.
    pub(super) fn factor(&self, at: f32) -> f32 {
        let f = ((at as f64 - self.m as f64) * self.k as f64 - self.ln_s).exp();
        if f < f32::MIN_POSITIVE as f64 {
            0.0
        } else {
            f as f32
        }
    }
}

/// ln(e^a + e^b) in f32 for the vector loops (−inf when both are −inf).
#[inline(always)]
pub(super) fn log_add<A: Arith>(a: f32, b: f32) -> f32 {
    let hi = if a > b { a } else { b };
    let lo = if a > b { b } else { a };
    let d = lo - hi;
    // d is NaN only when both are −inf
    let d = if d.is_nan() { f32::NEG_INFINITY } else { d };
    let r = hi + ln_pos::<A>(1.0 + exp::<A>(d));
    if hi == f32::NEG_INFINITY { hi } else { r }
}

/// ln(e^a + e^b) in f64.
pub(super) fn log_add64(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if hi == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ln::Plain;

    fn lse64(x: &[f32], k: f64) -> f64 {
        let m = x
            .iter()
            .fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64 * k));
        m + x
            .iter()
            .map(|&v| (v as f64 * k - m).exp())
            .sum::<f64>()
            .ln()
    }

    /// Adds `x` block by block (as the kernels do), the first bad block's
    /// offset as the error.
    fn add(l: &mut Lse, x: &[f32], k: f32) -> Result<(), usize> {
        let mut out = vec![0f32; BLK];
        for (b, blk) in x.chunks(BLK).enumerate() {
            let (mb, bad) = max_bad(blk);
            if bad {
                return Err(b * BLK);
            }
            l.add_block_store::<Plain>(blk, mb, k, &mut out[..blk.len()]);
        }
        Ok(())
    }

    #[test]
    fn blocked_lse_matches_f64() {
        for n in [1usize, 3, 15, 16, 17, 511, 512, 513, 2000] {
            for k in [0.25f32, 1.0, 2.0] {
                let x: Vec<f32> = (0..n)
                    .map(|i| {
                        ((i * 7919 % 1000) as f32 - 500.0) * if i % 3 == 0 { 20.0 } else { 0.01 }
                    })
                    .collect();
                let mut l = Lse::EMPTY;
                add(&mut l, &x, k).unwrap();
                let got = l.max as f64 * k as f64 + l.sum.ln();
                let want = lse64(&x, k as f64);
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{n} {k}: {got} {want}"
                );
            }
        }
    }

    #[test]
    fn bad_values_and_masks() {
        let mut l = Lse::EMPTY;
        let mut x = vec![f32::NEG_INFINITY; 600];
        assert!(add(&mut l, &x, 1.0).is_ok());
        assert!(l.empty());
        x[550] = f32::NAN;
        assert_eq!(add(&mut l, &x, 1.0), Err(512));
        x[550] = f32::INFINITY;
        let mut fresh = Lse::EMPTY;
        assert_eq!(add(&mut fresh, &x, 1.0), Err(512));
        assert_eq!(
            log_add::<Plain>(f32::NEG_INFINITY, f32::NEG_INFINITY),
            f32::NEG_INFINITY
        );
        assert!((log_add::<Plain>(0.0, 0.0) - std::f32::consts::LN_2).abs() < 1e-6);
    }
}
