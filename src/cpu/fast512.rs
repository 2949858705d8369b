//! Hand-written AVX-512 loops (F + DQ) for the hot cases of [`super::fast`]:
//! probabilities × probabilities KL and cross-entropy, the entropy of
//! probabilities, and the NLL from logits ([`lse`]), 16 lanes a vector.
//!
//! KL, cross-entropy and entropy take one segment of a block (whole vectors
//! of [`STEP`] columns, at most `SUB`) per call and consume all of it. The
//! segment first runs with no test inside the loop: `vfpclassps` marks, in
//! one instruction per operand, every lane that is not a positive normal
//! number (a zero, a subnormal, a negative, an infinity or a NaN), and the
//! marks are or-ed into one mask read at the end. A segment with a mark is run
//! again once, with masks instead of the AVX2 path's step-by-step rerun: the
//! ordinary lanes add their terms under a mask, the lanes where p is a zero
//! (beside a valid q) add only q to Σ q, and the rare lanes left (subnormals,
//! q = 0 under p > 0, bad values, a ratio out of the normal range) go one at
//! a time through the kernel's scalar rules ([`super::kernel::accumulate`]),
//! which also record the first bad column. So zeros in the data (sparse
//! distributions, one-hot rows) cost no scalar work.
//!
//! The log takes the exponent with `vgetexpps` and the mantissa in [1, 2)
//! with `vgetmantps` (both exact for every positive normal number), folds
//! mantissas at or above √2 into [√½, 1) (the exponent one up), and evaluates
//! the same polynomial as the AVX2 loop (error < 1.3e-7). Subnormals never
//! reach it (they are marked as special and take the scalar rules, which read
//! them from the bits), so a caller running with MXCSR's DAZ gets the same
//! results. Terms are p·a and p·k (ln x = a + k ln 2) in f32 lanes (32 terms
//! per lane in a segment), added in f64 at the segment's end in a fixed order.
//! Bits differ from the AVX2 path's (16 lanes instead of 8), not between
//! thread counts: the segments are fixed by the block structure.

// The AVX-512 intrinsics are stable since Rust 1.89; the crate declares
// 1.87 (wgpu's), but its AVX-512 build of the generic kernels
// (`#[target_feature(enable = "avx512f")]` in block.rs) needs 1.89 already.
#![allow(
    clippy::incompatible_msrv,
    reason = "AVX-512 needs Rust 1.89, as block.rs's avx512f build already does"
)]

use std::arch::x86_64::{
    __m512, __mmask16, _CMP_GE_OQ, _MM_HINT_T0, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_ZERO,
    _mm_prefetch, _mm512_add_pd, _mm512_add_ps, _mm512_castps512_ps256, _mm512_cmp_ps_mask,
    _mm512_cvtps_pd, _mm512_div_ps, _mm512_extractf32x8_ps, _mm512_fmadd_ps, _mm512_fnmadd_ps,
    _mm512_fpclass_ps_mask, _mm512_getexp_ps, _mm512_getmant_ps, _mm512_loadu_ps,
    _mm512_mask_add_ps, _mm512_mask_mul_ps, _mm512_mask3_fmadd_ps, _mm512_maskz_loadu_ps,
    _mm512_max_ps, _mm512_mul_ps, _mm512_reduce_add_pd, _mm512_reduce_max_ps, _mm512_scalef_ps,
    _mm512_set1_ps, _mm512_setzero_ps, _mm512_sub_ps,
};

use super::fast::PREFETCH;
use super::kernel::{Lanes, State, check_probs, probs_elem, status_key};
use super::ln::Fused;
use super::terms::{Cross, Entropy, Kl, Term};
use crate::record::code;

/// Columns per vector.
pub(super) const STEP: usize = 16;

/// `vfpclassps` categories: QNaN, +0, −0, +inf, −inf, denormal, negative
/// finite, SNaN: every value that is not a positive normal number.
pub(super) const NOT_POS_NORMAL: i32 = 0xff;
/// ±0.
const ZERO: i32 = 0x06;
/// A probability that is bad: NaN, ±inf, negative finite.
const BAD_PROB: i32 = 0x01 | 0x08 | 0x10 | 0x40 | 0x80;
/// A log value that is not finite: NaN, ±inf.
const NOT_FINITE: i32 = 0x01 | 0x08 | 0x10 | 0x80;

/// Which terms a segment accumulates.
const SEG_ENTROPY: u8 = 0;
const SEG_CROSS: u8 = 1;
const SEG_KL: u8 = 2;

/// Asks for the cache line of `x[i]` (a hint: an address past the end of
/// the data is harmless, a prefetch never faults).
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
fn prefetch(x: &[f32], i: usize) {
    _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().wrapping_add(i).cast::<i8>());
}

/// Values ahead of the loads to prefetch: the AVX2 loops' distance. Without
/// it the hardware prefetcher alone kept KL over 4096 × 4096 on two cores
/// at 60–65% of the read bandwidth on a Xeon (Emerald Rapids, 2 cores).
const AHEAD: usize = PREFETCH / 4;

/// Loads 16 values from `x[i..i + 16]`.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
fn load(x: &[f32], i: usize) -> __m512 {
    let s = &x[i..i + STEP];
    // SAFETY: `s` holds 16 f32 (checked by the slice above); the load is unaligned.
    unsafe { _mm512_loadu_ps(s.as_ptr()) }
}

/// ln x = k·ln 2 + a for a positive normal x: (k, a) with a = ln m, m in
/// [√½, √2): the exponent by `vgetexpps`, the mantissa in [1, 2) by
/// `vgetmantps` (both exact), those at or above √2 halved (k one up); a is
/// r + r²·Q(r), r = m − 1, with the AVX2 loop's polynomial (Estrin's scheme).
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
pub(super) fn ln_parts(x: __m512) -> (__m512, __m512) {
    let c = |v: f32| _mm512_set1_ps(v);
    let e = _mm512_getexp_ps(x);
    let m = _mm512_getmant_ps::<_MM_MANT_NORM_1_2, _MM_MANT_SIGN_ZERO>(x);
    let big = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(m, c(std::f32::consts::SQRT_2));
    let m = _mm512_mask_mul_ps(m, big, m, c(0.5));
    let k = _mm512_mask_add_ps(e, big, e, c(1.0));
    let r = _mm512_sub_ps(m, c(1.0));
    let z = _mm512_mul_ps(r, r);
    let z2 = _mm512_mul_ps(z, z);
    let a = _mm512_fmadd_ps(c(0.33334112), r, c(-0.5000009));
    let b = _mm512_fmadd_ps(c(0.19929057), r, c(-0.24982451));
    let d = _mm512_fmadd_ps(c(0.15984096), r, c(-0.17132387));
    let hi = _mm512_fmadd_ps(c(-0.10188586), z, d);
    let lo = _mm512_fmadd_ps(b, z, a);
    let y = _mm512_fmadd_ps(hi, z2, lo);
    (k, _mm512_fmadd_ps(y, z, r))
}

/// The 16 lanes of `v` added in f64, in a fixed order.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
fn hsum(v: __m512) -> f64 {
    let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    let hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(v));
    _mm512_reduce_add_pd(_mm512_add_pd(lo, hi))
}

/// The f32 lane sums of one segment: Σ p, Σ q, Σ p·a, Σ p·k.
#[derive(Clone, Copy)]
struct Sums {
    sa: __m512,
    sb: __m512,
    ta: __m512,
    tk: __m512,
}

/// One segment (whole vectors) with no test inside the loop: its sums and
/// the mask of lanes (or-ed over the segment) that were not ordinary.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
fn segment<const K: u8>(p: &[f32], q: &[f32], n: usize) -> (Sums, __mmask16) {
    let z = _mm512_setzero_ps();
    let mut s = Sums {
        sa: z,
        sb: z,
        ta: z,
        tk: z,
    };
    let mut special: __mmask16 = 0;
    let mut i = 0;
    while i < n {
        // one line of each operand a trip (16 values, 64 bytes)
        prefetch(p, i + AHEAD);
        if K != SEG_ENTROPY {
            prefetch(q, i + AHEAD);
        }
        let pv = load(p, i);
        special |= _mm512_fpclass_ps_mask::<NOT_POS_NORMAL>(pv);
        s.sa = _mm512_add_ps(s.sa, pv);
        let x = if K == SEG_ENTROPY {
            pv
        } else {
            let qv = load(q, i);
            special |= _mm512_fpclass_ps_mask::<NOT_POS_NORMAL>(qv);
            s.sb = _mm512_add_ps(s.sb, qv);
            if K == SEG_KL {
                let r = _mm512_div_ps(pv, qv);
                special |= _mm512_fpclass_ps_mask::<NOT_POS_NORMAL>(r);
                r
            } else {
                qv
            }
        };
        let (k, a) = ln_parts(x);
        s.ta = _mm512_fmadd_ps(pv, a, s.ta);
        s.tk = _mm512_fmadd_ps(pv, k, s.tk);
        i += STEP;
    }
    (s, special)
}

/// [`segment`] for a segment with special lanes: the ordinary lanes under a
/// mask, p = ±0 beside a valid q adds only q (its term is 0 by the zero
/// rule), every other lane through the kernel's scalar rules (added to `st`
/// in column order, the first bad column kept in `st.key`).
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline(never)]
fn segment_masked<const K: u8>(p: &[f32], q: &[f32], n: usize, col: usize, st: &mut State) -> Sums {
    let z = _mm512_setzero_ps();
    let mut s = Sums {
        sa: z,
        sb: z,
        ta: z,
        tk: z,
    };
    let mut i = 0;
    while i < n {
        let pv = load(p, i);
        let mut special = _mm512_fpclass_ps_mask::<NOT_POS_NORMAL>(pv);
        let p_zero = _mm512_fpclass_ps_mask::<ZERO>(pv);
        let (x, q_ok) = if K == SEG_ENTROPY {
            (pv, 0xffff)
        } else {
            let qv = load(q, i);
            special |= _mm512_fpclass_ps_mask::<NOT_POS_NORMAL>(qv);
            let q_ok = !_mm512_fpclass_ps_mask::<BAD_PROB>(qv);
            let x = if K == SEG_KL {
                let r = _mm512_div_ps(pv, qv);
                special |= _mm512_fpclass_ps_mask::<NOT_POS_NORMAL>(r);
                r
            } else {
                qv
            };
            // after the ratio's test: a lane whose ratio is out of range
            // goes to the scalar rules, which add its q themselves. q beside
            // a zero p: Σ q takes it, there is no term
            s.sb = _mm512_mask_add_ps(s.sb, !special | (p_zero & q_ok), s.sb, qv);
            (x, q_ok)
        };
        let ok = !special;
        s.sa = _mm512_mask_add_ps(s.sa, ok, s.sa, pv);
        let (k, a) = ln_parts(x);
        s.ta = _mm512_mask3_fmadd_ps(pv, a, s.ta, ok);
        s.tk = _mm512_mask3_fmadd_ps(pv, k, s.tk, ok);
        // the rest, one lane at a time: subnormals, q = 0 under p > 0, bad
        // values, ratios out of the normal range
        let mut rest = special & !(p_zero & q_ok);
        while rest != 0 {
            let j = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            scalar_lane::<K>(
                p[i + j],
                if K == SEG_ENTROPY { 0.0 } else { q[i + j] },
                col + i + j,
                st,
            );
        }
        i += STEP;
    }
    s
}

/// One element pair by the kernel's rules (the block's scalar path).
#[inline]
fn scalar_lane<const K: u8>(px: f32, qx: f32, col: usize, st: &mut State) {
    let c = check_probs(px.to_bits());
    if c != 0 {
        st.key = st.key.min(status_key(col, code::P_NAN - 1 + c));
        return;
    }
    let pe = probs_elem::<Fused>(px);
    let mut acc = Lanes::<1>::ZERO;
    if K == SEG_ENTROPY {
        let qe = probs_elem::<Fused>(1.0);
        Entropy::accumulate::<1, Fused>(&mut acc, 0, pe, qe);
        acc.flush::<Entropy>(st);
        return;
    }
    let c = check_probs(qx.to_bits());
    if c != 0 {
        st.key = st.key.min(status_key(col, code::Q_NAN - 1 + c));
        return;
    }
    let qe = probs_elem::<Fused>(qx);
    if K == SEG_KL {
        Kl::accumulate::<1, Fused>(&mut acc, 0, pe, qe);
        acc.flush::<Kl>(st);
    } else {
        Cross::accumulate::<1, Fused>(&mut acc, 0, pe, qe);
        acc.flush::<Cross>(st);
    }
}

/// One segment of measure `K` into `st`: the sums and terms of every whole
/// vector of `p` (and `q`), specials included; returns the columns consumed.
/// `col` is the row column of `p[0]`.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
fn run<const K: u8>(p: &[f32], q: &[f32], col: usize, st: &mut State) -> usize {
    let n = if K == SEG_ENTROPY {
        p.len()
    } else {
        p.len().min(q.len())
    };
    let n = n - n % STEP;
    let (s, special) = segment::<K>(p, q, n);
    let s = if special == 0 {
        s
    } else {
        segment_masked::<K>(p, q, n, col, st)
    };
    st.sa += hsum(s.sa);
    let t = hsum(s.ta) + std::f64::consts::LN_2 * hsum(s.tk);
    match K {
        SEG_ENTROPY => st.u += t,
        SEG_CROSS => {
            st.sb += hsum(s.sb);
            st.v += t;
        }
        _ => {
            st.sb += hsum(s.sb);
            st.d += t;
        }
    }
    n
}

/// KL terms of probabilities: `sa += Σ p`, `sb += Σ q`, `d += Σ p ln(p / q)`
/// (the ratio rounded once), every rule and status of the kernel included.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512DQ, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline(never)]
pub(super) fn kl(p: &[f32], q: &[f32], col: usize, st: &mut State) -> usize {
    run::<SEG_KL>(p, q, col, st)
}

/// Cross-entropy terms of probabilities: `sa += Σ p`, `sb += Σ q`,
/// `v += Σ p ln q` ([`kl`]'s plan).
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline(never)]
pub(super) fn cross(p: &[f32], q: &[f32], col: usize, st: &mut State) -> usize {
    run::<SEG_CROSS>(p, q, col, st)
}

/// Entropy terms of probabilities: `sa += Σ p`, `u += Σ p ln p` ([`kl`]'s
/// plan).
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline(never)]
pub(super) fn entropy(p: &[f32], col: usize, st: &mut State) -> usize {
    run::<SEG_ENTROPY>(p, &[], col, st)
}

/// e^l for l ≤ 0 (values below −87 give e^−87 ≈ 1.6e-38 instead): 2^n ·
/// (1 + r·P(r)), r = l − n ln 2, the AVX2 loop's polynomial, 2^n applied by
/// `vscalefps` (no bit assembly).
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
fn exp_neg(l: __m512) -> __m512 {
    let c = |v: f32| _mm512_set1_ps(v);
    let l = _mm512_max_ps(l, c(-87.0));
    // 1.5·2^23: adding it rounds to an integer
    let t = _mm512_fmadd_ps(l, c(std::f32::consts::LOG2_E), c(12_582_912.0));
    let n = _mm512_sub_ps(t, c(12_582_912.0));
    let r = _mm512_fnmadd_ps(n, c(std::f32::consts::LN_2), l);
    let mut y = c(0.008363233);
    y = _mm512_fmadd_ps(y, r, c(0.041876063));
    y = _mm512_fmadd_ps(y, r, c(0.16666576));
    y = _mm512_fmadd_ps(y, r, c(0.49999368));
    y = _mm512_fmadd_ps(y, r, c(1.0));
    y = _mm512_fmadd_ps(y, r, c(1.0));
    _mm512_scalef_ps(y, n)
}

/// One block of an online log operand (the NLL from logits): the maximum
/// `m`, then `Σ e^(x − m)` (f32 lanes added in f64 every `sub` columns), the
/// last partial vector under a mask. `None` when the block holds a value
/// that is not finite, or a positive value while `!pos_ok` (decided from the
/// bits): the caller's general path then decides its rules and status. `x`
/// must not be empty.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512DQ, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline(never)]
pub(super) fn lse(x: &[f32], pos_ok: bool, sub: usize) -> Option<(f32, f64)> {
    let lowest = _mm512_set1_ps(f32::MIN);
    let (mut m0, mut m1) = (lowest, lowest);
    let mut bad: __mmask16 = 0;
    let body = x.len() - x.len() % (2 * STEP);
    for c in x[..body].chunks_exact(2 * STEP) {
        prefetch(c, AHEAD);
        prefetch(c, AHEAD + STEP);
        let (a, b) = (load(c, 0), load(c, STEP));
        bad |= _mm512_fpclass_ps_mask::<NOT_FINITE>(a) | _mm512_fpclass_ps_mask::<NOT_FINITE>(b);
        m0 = _mm512_max_ps(m0, a);
        m1 = _mm512_max_ps(m1, b);
    }
    if bad != 0 {
        return None;
    }
    let mut m = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
    for &v in &x[body..] {
        if !v.is_finite() {
            return None;
        }
        m = m.max(v);
    }
    if !pos_ok && (m.to_bits() as i32) > 0 {
        return None;
    }
    let mv = _mm512_set1_ps(m);
    let mut s = 0.0f64;
    for seg in x.chunks(sub) {
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let n = seg.len() - seg.len() % (2 * STEP);
        for c in seg[..n].chunks_exact(2 * STEP) {
            // the next block (this thread's next columns, or a hint past
            // the data) comes in while this one computes
            prefetch(c, x.len());
            prefetch(c, x.len() + STEP);
            let l0 = _mm512_sub_ps(load(c, 0), mv);
            let l1 = _mm512_sub_ps(load(c, STEP), mv);
            s0 = _mm512_add_ps(s0, exp_neg(l0));
            s1 = _mm512_add_ps(s1, exp_neg(l1));
        }
        let mut i = n;
        while i < seg.len() {
            let left = (seg.len() - i).min(STEP);
            let k: __mmask16 = if left == STEP {
                0xffff
            } else {
                (1u16 << left) - 1
            };
            // SAFETY: the masked load reads only the `left` values seg[i..].
            let v = unsafe { _mm512_maskz_loadu_ps(k, seg.as_ptr().add(i)) };
            let e = exp_neg(_mm512_sub_ps(v, mv));
            s0 = _mm512_mask_add_ps(s0, k, s0, e);
            i += left;
        }
        s += hsum(_mm512_add_ps(s0, s1));
    }
    Some((m, s))
}

/// The lanes of `v` as an array (tests).
#[cfg(test)]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
fn lanes(v: __m512) -> [f32; 16] {
    let mut out = [0.0f32; 16];
    // SAFETY: `out` holds 16 f32; the store is unaligned.
    unsafe { std::arch::x86_64::_mm512_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// Whether this machine runs these loops.
#[cfg(test)]
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's parts against f64 on every exponent and many mantissas.
    #[test]
    fn ln_parts_within_bound() {
        if !available() {
            eprintln!("note: no AVX-512 on this machine; its log is not run here");
            return;
        }
        let mut xs: Vec<f32> = (-126..128)
            .map(|k: i32| f32::from_bits(((k + 127) as u32) << 23))
            .collect();
        let mut s = 0x2468_ace1u32;
        for _ in 0..100_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let x = f32::from_bits(s & 0x7f7f_ffff);
            if x >= f32::MIN_POSITIVE {
                xs.push(x);
            }
        }
        xs.extend([
            std::f32::consts::SQRT_2,
            f32::from_bits(std::f32::consts::SQRT_2.to_bits() - 1),
            1.0,
            f32::MAX,
            f32::MIN_POSITIVE,
        ]);
        while !xs.len().is_multiple_of(16) {
            xs.push(1.5);
        }
        for c in xs.chunks_exact(16) {
            // SAFETY: `available` checked the instruction sets.
            let (k, a) = unsafe { ln_parts(load(c, 0)) };
            // SAFETY: as above.
            let (k, a) = unsafe { (lanes(k), lanes(a)) };
            for j in 0..16 {
                let got = a[j] as f64 + k[j] as f64 * std::f64::consts::LN_2;
                let want = (c[j] as f64).ln();
                assert!(
                    (got - want).abs() <= 2.5e-7 + 1e-7 * want.abs(),
                    "ln {:e}: {got} vs {want}",
                    c[j]
                );
            }
        }
    }
}

/// Special values at every lane position of a vector and of a segment, on
/// every instruction set this machine has: the same status word (code and
/// first bad column) as the baseline build, values within the float64 bound
/// of it, bit-identical across thread counts (the masked rerun of
/// [`segment_masked`] on AVX-512; the step-by-step rerun on AVX2).
#[cfg(test)]
mod special_lanes {
    use super::super::block::Isa;
    use super::super::run_with;
    use super::super::tests::bits;
    use crate::batch::Batch;
    use crate::job::Job;
    use crate::measure::{Measure, Normalization, Options};

    fn close(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits()
            || (a.is_nan() && b.is_nan())
            || (a as f64 - b as f64).abs() <= 2e-6 + 2e-5 * (b as f64).abs()
    }

    #[test]
    fn specials_at_every_position() {
        if !Isa::available().contains(&Isa::Avx512) {
            eprintln!("note: no AVX-512 on this machine: its masked loops are not run here");
        }
        let specials = [
            0.0f32,
            -0.0,
            1e-40,
            f32::from_bits(1),
            f32::MIN_POSITIVE,
            f32::NAN,
            -0.25,
            f32::INFINITY,
            3.0e38,
        ];
        let o = Options::default().normalization(Normalization::AsGiven);
        for cols in [16usize, 48, 530] {
            let base: Vec<f32> = (0..cols)
                .map(|i| (1.0 + (i % 7) as f32) / (4.0 * cols as f32))
                .collect();
            let positions: Vec<usize> = [0usize, 1, 15, 16, 17, 31, 33, cols / 2, cols - 1]
                .into_iter()
                .filter(|&c| c < cols)
                .collect();
            // rows: one per (special, position, operand), plus the clean row
            let (mut p, mut q) = (base.clone(), base.clone());
            q.reverse();
            let q0 = q.clone();
            for &s in &specials {
                for &c in &positions {
                    for on_p in [true, false] {
                        let (mut pr, mut qr) = (base.clone(), q0.clone());
                        if on_p {
                            pr[c] = s;
                        } else {
                            qr[c] = s;
                        }
                        // a second special further on: the first column wins
                        pr[(c + 5) % cols] = if s == 0.0 { 0.0 } else { pr[(c + 5) % cols] };
                        p.extend(pr);
                        q.extend(qr);
                    }
                }
            }
            // a sparse row: most p zero
            p.extend((0..cols).map(|i| if i % 5 == 0 { 0.01 } else { 0.0 }));
            q.extend(q0.iter().copied());
            let rows = p.len() / cols;
            for m in [Measure::Kl, Measure::CrossEntropy, Measure::Entropy] {
                let pb = Batch::new(&p, rows, cols);
                let qb = Batch::new(&q, rows, cols);
                let job = Job::measure(m, &pb, m.needs_q().then_some(&qb), &o).expect("job");
                let want = run_with(&job, 1, Isa::Base);
                for isa in Isa::available() {
                    let got = run_with(&job, 1, isa);
                    for (r, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(a.word(), b.word(), "{m:?} {isa:?} {cols} cols row {r}");
                        assert!(
                            close(a.value, b.value)
                                && close(a.aux_p, b.aux_p)
                                && close(a.aux_q, b.aux_q),
                            "{m:?} {isa:?} {cols} cols row {r}: {a:?} vs {b:?}"
                        );
                    }
                    assert_eq!(
                        bits(&run_with(&job, 3, isa)),
                        bits(&got),
                        "{m:?} {isa:?} threads"
                    );
                }
            }
        }
    }
}
