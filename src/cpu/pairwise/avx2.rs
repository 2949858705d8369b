//! The micro-kernels of [`super::kernel`] written with AVX2 + FMA
//! intrinsics: `MR` × `NR` accumulators (4 × 2 vectors of 8 lanes) held in
//! registers over a run of columns, then flushed into the f64 block.
//! Same terms as the portable kernels (see there); the JS log of the
//! mixture is the portable `ln_parts` (Cephes' polynomial, as
//! `crate::cpu::ln`) on 8 lanes.

use std::arch::x86_64::{
    __m256, _mm256_add_pd, _mm256_add_ps, _mm256_and_ps, _mm256_and_si256, _mm256_andnot_ps,
    _mm256_broadcast_ss, _mm256_castps_si256, _mm256_castps256_ps128, _mm256_castsi256_ps,
    _mm256_cmpeq_epi32, _mm256_cvtepi32_ps, _mm256_cvtps_pd, _mm256_extractf128_ps,
    _mm256_fmadd_ps, _mm256_loadu_pd, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_epi32,
    _mm256_set1_ps, _mm256_setzero_ps, _mm256_slli_epi32, _mm256_srai_epi32, _mm256_storeu_pd,
    _mm256_sub_epi32, _mm256_sub_ps,
};

use super::kernel::{MR, NR};
use crate::cpu::ln::{LN2_HI, LN2_LO};

/// The panels a micro-kernel reads, checked once: `p[f]` holds `MR·kc`
/// values, `q[f]` `NR·kc`, for each field `f` the measure reads.
fn check(p: &[&[f32]; 3], q: &[&[f32]; 3], fields: usize, kc: usize) {
    for f in 0..fields {
        assert!(
            p[f].len() >= MR * kc && q[f].len() >= NR * kc,
            "short panel"
        );
    }
}

/// Adds the accumulators of row `r` (two vectors) into `out[r * ld ..][..NR]` in f64.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn flush_row(out: &mut [f64], at: usize, a: __m256, b: __m256) {
    let o = &mut out[at..at + NR];
    let halves = [
        _mm256_cvtps_pd(_mm256_castps256_ps128(a)),
        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(a)),
        _mm256_cvtps_pd(_mm256_castps256_ps128(b)),
        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(b)),
    ];
    for (i, h) in halves.into_iter().enumerate() {
        let d = &mut o[4 * i..4 * i + 4];
        // SAFETY: `d` holds 4 f64 (sliced above); unaligned loads and stores.
        unsafe {
            let v = _mm256_add_pd(_mm256_loadu_pd(d.as_ptr()), h);
            _mm256_storeu_pd(d.as_mut_ptr(), v);
        }
    }
}

/// 8 values at `x[i..i + 8]`.
///
/// # Safety
/// `x` must hold `i + 8` values (the kernels check their panels once, in
/// [`check`], instead of at every load).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load(x: &[f32], i: usize) -> __m256 {
    debug_assert!(i + 8 <= x.len());
    // SAFETY: the caller's promise; the load is unaligned.
    unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) }
}

/// `x[i]` in every lane.
///
/// # Safety
/// `x` must hold `i + 1` values.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn bcast(x: &[f32], i: usize) -> __m256 {
    debug_assert!(i < x.len());
    // SAFETY: the caller's promise.
    unsafe { _mm256_broadcast_ss(&*x.as_ptr().add(i)) }
}

/// The generic shape of the simple kernels: per column, the two q vectors
/// of field `QF`, and for each p row its broadcast fields 0 and `PF`, the
/// accumulators updated by `step(acc, p0, pf, q)`.
macro_rules! simple_kernel {
    ($name:ident, $pf:expr, $qf:expr, |$acc:ident, $w:ident, $x:ident, $qv:ident| $body:expr) => {
        #[target_feature(enable = "avx2,fma")]
        pub(super) fn $name(
            p: &[&[f32]; 3],
            q: &[&[f32]; 3],
            kc: usize,
            out: &mut [f64],
            ld: usize,
        ) {
            check(p, q, $pf.max($qf) + 1, kc);
            let mut acc = [_mm256_setzero_ps(); 2 * MR];
            let (p0, pf, qv) = (p[0], p[$pf], q[$qf]);
            for k in 0..kc {
                // SAFETY (loads and broadcasts): `check` found MR·kc values
                // in every p panel and NR·kc in every q panel read here.
                let (q0, q1) = unsafe { (load(qv, k * NR), load(qv, k * NR + 8)) };
                for r in 0..MR {
                    let ($w, $x) = unsafe { (bcast(p0, k * MR + r), bcast(pf, k * MR + r)) };
                    {
                        let $acc = acc[2 * r];
                        let $qv = q0;
                        acc[2 * r] = $body;
                    }
                    {
                        let $acc = acc[2 * r + 1];
                        let $qv = q1;
                        acc[2 * r + 1] = $body;
                    }
                }
            }
            for r in 0..MR {
                flush_row(out, r * ld, acc[2 * r], acc[2 * r + 1]);
            }
        }
    };
}

// KL: w_p (l_p − l_q)
simple_kernel!(kl, 1, 1, |acc, w, x, lq| _mm256_fmadd_ps(
    w,
    _mm256_sub_ps(x, lq),
    acc
));
// cross-entropy: Σ w_p l_q (negated at the end)
simple_kernel!(cross, 0, 1, |acc, w, _x, lq| _mm256_fmadd_ps(w, lq, acc));
// Hellinger: (√p − √q)²
simple_kernel!(hellinger, 0, 0, |acc, w, _x, r| {
    let d = _mm256_sub_ps(w, r);
    _mm256_fmadd_ps(d, d, acc)
});
// total variation: |p − q|
simple_kernel!(tv, 0, 0, |acc, w, _x, qw| {
    let d = _mm256_sub_ps(w, qw);
    let abs = _mm256_and_ps(d, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff)));
    _mm256_add_ps(acc, abs)
});

/// ln s = e·LN2_HI + lo for a positive normal s, on 8 lanes: e and the
/// mantissa m in [√½, √2) from one integer subtraction of the bits of √½,
/// ln m by Cephes' polynomial (as `crate::cpu::ln`), lo = e·LN2_LO + ln m.
/// Also returns the lanes where s is normal (zero and subnormal sums are
/// dropped by the caller: their terms are below 1e-37).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn ln_split(s: __m256) -> (__m256, __m256, __m256) {
    let c = |v: f32| _mm256_set1_ps(v);
    let ci = |v: i32| _mm256_set1_epi32(v);
    let b = _mm256_castps_si256(s);
    let ix = _mm256_sub_epi32(b, ci(0x3f35_04f3));
    let k = _mm256_srai_epi32::<23>(ix);
    let m = _mm256_castsi256_ps(_mm256_sub_epi32(b, _mm256_slli_epi32::<23>(k)));
    let r = _mm256_sub_ps(m, c(1.0));
    let z = _mm256_mul_ps(r, r);
    let mut y = c(7.037_683_6e-2);
    for k in [
        -1.151_461e-1,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_5e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ] {
        y = _mm256_fmadd_ps(y, r, c(k));
    }
    y = _mm256_mul_ps(_mm256_mul_ps(y, r), z);
    y = _mm256_fmadd_ps(c(-0.5), z, y);
    let e = _mm256_cvtepi32_ps(k);
    let lo = _mm256_fmadd_ps(e, c(LN2_LO), _mm256_add_ps(r, y));
    let tiny = _mm256_cmpeq_epi32(_mm256_and_si256(b, ci(0x7f80_0000)), ci(0));
    (e, lo, _mm256_castsi256_ps(tiny))
}

/// JS: ½ [p ln(2p / s) + q ln(2q / s)] (the ½ at the end), with
/// ln 2p − ln s = (E_p − e_s)·LN2_HI + (Lo_p − lo_s) (see `super::prep`).
/// The two sides are combined with operations that commute. A sum below
/// f32's normal range leaves a term below 1e-37: dropped, as the per-row
/// kernels and the GPU do.
#[target_feature(enable = "avx2,fma")]
pub(super) fn js(p: &[&[f32]; 3], q: &[&[f32]; 3], kc: usize, out: &mut [f64], ld: usize) {
    check(p, q, 3, kc);
    let hi = _mm256_set1_ps(LN2_HI);
    let mut acc = [_mm256_setzero_ps(); 2 * MR];
    // one half of the q lanes at a time: 4 accumulators and the 3 fields
    // of q stay in registers beside the log's temporaries
    for h in 0..2 {
        let mut part = [_mm256_setzero_ps(); MR];
        for k in 0..kc {
            let at = k * NR + 8 * h;
            // SAFETY (loads and broadcasts): `check` found MR·kc values in
            // every p panel and NR·kc in every q panel.
            let (qw, qe, ql) = unsafe { (load(q[0], at), load(q[1], at), load(q[2], at)) };
            for (r, acc_r) in part.iter_mut().enumerate() {
                let i = k * MR + r;
                let (w, e, lo) = unsafe { (bcast(p[0], i), bcast(p[1], i), bcast(p[2], i)) };
                let s = _mm256_add_ps(w, qw);
                let (es, ls, tiny) = ln_split(s);
                let a = _mm256_fmadd_ps(_mm256_sub_ps(e, es), hi, _mm256_sub_ps(lo, ls));
                let b = _mm256_fmadd_ps(_mm256_sub_ps(qe, es), hi, _mm256_sub_ps(ql, ls));
                let t = _mm256_add_ps(_mm256_mul_ps(w, a), _mm256_mul_ps(qw, b));
                *acc_r = _mm256_add_ps(*acc_r, _mm256_andnot_ps(tiny, t));
            }
        }
        for r in 0..MR {
            acc[2 * r + h] = part[r];
        }
    }
    for r in 0..MR {
        flush_row(out, r * ld, acc[2 * r], acc[2 * r + 1]);
    }
}
