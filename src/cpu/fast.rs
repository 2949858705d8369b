//! Hand-written AVX2 + FMA loops for the common cases: probabilities ×
//! probabilities KL and cross-entropy, the entropy of probabilities, and the
//! sums of exponentials of an online log operand (the NLL from logits, and
//! every first pass of a log form).
//!
//! KL, cross-entropy and entropy take one segment of a block (whole steps
//! of [`STEP`] columns, at most `SUB`) per call. They first run the whole
//! segment with no test inside the loop ([`segment`]: the bits of every value
//! are folded into one running maximum that says at the end whether all were
//! positive normal numbers); that is the path of ordinary data. A segment
//! holding a special value (a zero, a subnormal or a bad value) is run again
//! step by step, up to the step that holds it, which the caller
//! ([`super::block`]) sends to its scalar path to decide the exact rule and
//! status word, and calls again after it. [`exp_sums`] checks each step the
//! same way. The f32 lanes run over at most one segment (64 terms per lane)
//! and are added into the f64 state, in lane order, before returning.
//!
//! Two kinds of call take more than a segment: [`lse`], a whole block of an
//! online log operand (the NLL from logits: its maximum, then its exp sums
//! while the next block is prefetched), and the short-row kernels
//! ([`kl_rows`], [`cross_rows`], [`entropy_rows`]: whole rows of at most
//! `SUB` columns, a run of rows per call). Both return "not done" for data
//! with a special value, which the general path then takes whole. The
//! short-row kernels sum the lanes of 8 rows side by side in f32 (one
//! transpose-and-add tree, the same order for every row: see [`sum8`]),
//! with the loop unrolled for rows of 8, 16, 32 or 64 columns; rows wider
//! than 64 columns are summed one at a time in f64.
//!
//! The log has no special cases (they never reach it): the exponent k and the
//! mantissa m in [√½, √2) come from one integer subtraction of the bits of
//! √½, ln m is a polynomial of degree 8, r + r²·Q(r) with Q by Estrin's
//! scheme (error < 1.3e-7, well inside the 2e-6 absolute bound once weighted
//! by p). The segment loops accumulate p·ln m and p·k apart and add
//! ln 2 · Σ p·k in f64 (see [`ln_parts`]); the step-by-step loops use
//! ln x = k·LN2_HI + (k·LN2_LO + ln m), with k·LN2_HI exact. KL takes the log
//! of the ratio p / q, rounded once (within 6e-8 of ln p − ln q), so that
//! close distributions lose nothing to cancellation.

use std::arch::x86_64::{
    __m256, __m256i, _MM_HINT_T0, _mm_add_pd, _mm_add_sd, _mm_cvtsd_f64, _mm_prefetch,
    _mm_unpackhi_pd, _mm256_add_epi32, _mm256_add_pd, _mm256_add_ps, _mm256_and_ps,
    _mm256_and_si256, _mm256_castpd256_pd128, _mm256_castps_si256, _mm256_castps256_ps128,
    _mm256_castsi256_ps, _mm256_cmpeq_epi32, _mm256_cmpgt_epi32, _mm256_cvtepi32_ps,
    _mm256_cvtps_pd, _mm256_div_ps, _mm256_extractf128_pd, _mm256_extractf128_ps, _mm256_fmadd_ps,
    _mm256_fnmadd_ps, _mm256_loadu_si256, _mm256_max_epu32, _mm256_max_ps, _mm256_movemask_epi8,
    _mm256_mul_ps, _mm256_or_si256, _mm256_set1_epi32, _mm256_set1_ps, _mm256_setr_epi32,
    _mm256_setzero_ps, _mm256_setzero_si256, _mm256_slli_epi32, _mm256_srai_epi32,
    _mm256_storeu_ps, _mm256_sub_epi32, _mm256_sub_ps, _mm256_testz_si256,
};

use std::arch::x86_64::{
    _mm256_blendv_epi8, _mm256_hadd_ps, _mm256_maskload_epi32, _mm256_permute2f128_ps,
    _mm256_storeu_pd,
};

use super::kernel::State;
use super::ln::{LN2_HI, LN2_LO};

/// Columns per step: two vectors of 8 lanes.
pub(super) const STEP: usize = 16;

/// Loads 8 values from `x[i..i + 8]` as their bits.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load(x: &[f32], i: usize) -> __m256i {
    let s = &x[i..i + 8];
    // SAFETY: `s` holds 8 f32 (checked by the slice above); the load is unaligned.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// Asks for the cache line `PREFETCH` bytes after `x` (a hint: an address
/// past the end of the data is harmless).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch<E>(x: &[E]) {
    let p = x.as_ptr().wrapping_byte_add(PREFETCH).cast::<i8>();
    _mm_prefetch::<_MM_HINT_T0>(p);
}

/// Asks for the cache line `n` values after `x` (a hint: an address past the
/// end of the data is harmless).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch_next(x: &[f32], n: usize) {
    let p = x.as_ptr().wrapping_add(n).cast::<i8>();
    _mm_prefetch::<_MM_HINT_T0>(p);
}

/// Bytes ahead of the loads to prefetch (the AVX-512 loops' too).
pub(super) const PREFETCH: usize = 2048;

/// All lanes set where the probability is not a positive normal number (zero,
/// subnormal, negative, infinite or NaN): (b + 0x7f80_0000) wraps the normal
/// range onto the lowest signed integers.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn special_prob(b: __m256i) -> __m256i {
    let t = _mm256_add_epi32(b, _mm256_set1_epi32(0x7f80_0000));
    _mm256_cmpgt_epi32(t, _mm256_set1_epi32(-0x0100_0001))
}

/// All lanes set where a log value is not finite, or is positive while
/// `pos_max` is 0 (with `pos_max` = i32::MAX positive values are allowed).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn special_log(b: __m256i, pos_max: __m256i) -> __m256i {
    let abs = _mm256_and_si256(b, _mm256_set1_epi32(0x7fff_ffff));
    let inf = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f7f_ffff));
    _mm256_or_si256(inf, _mm256_cmpgt_epi32(b, pos_max))
}

/// Whether any lane of `m` is set.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn any(m: __m256i) -> bool {
    _mm256_testz_si256(m, m) == 0
}

/// ln x = k·ln 2 + a for the bits `b` of a positive normal x: returns (k, a)
/// with a = ln m, m in [√½, √2), as r + r²·Q(r), r = m − 1 (Q of degree 6
/// interpolating (ln(1 + r) − r) / r² at Chebyshev nodes: |error| < 1.3e-7).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ln_core(b: __m256i) -> (__m256i, __m256) {
    let ix = _mm256_sub_epi32(b, _mm256_set1_epi32(0x3f35_04f3));
    let k = _mm256_srai_epi32::<23>(ix);
    // k << 23 rather than ix & 0xff80_0000: one constant fewer to hold
    let mb = _mm256_sub_epi32(b, _mm256_slli_epi32::<23>(k));
    let r = _mm256_sub_ps(_mm256_castsi256_ps(mb), _mm256_set1_ps(1.0));
    let z = _mm256_mul_ps(r, r);
    let c = |v: f32| _mm256_set1_ps(v);
    // Estrin's scheme: three short chains instead of one of six FMAs (the
    // loop is bound by this latency, not by the number of operations)
    let z2 = _mm256_mul_ps(z, z);
    let a = _mm256_fmadd_ps(c(0.33334112), r, c(-0.5000009));
    let b = _mm256_fmadd_ps(c(0.19929057), r, c(-0.24982451));
    let d = _mm256_fmadd_ps(c(0.15984096), r, c(-0.17132387));
    let hi = _mm256_fmadd_ps(c(-0.10188586), z, d);
    let lo = _mm256_fmadd_ps(b, z, a);
    let y = _mm256_fmadd_ps(hi, z2, lo);
    (k, _mm256_fmadd_ps(y, z, r))
}

/// ln x for the bits of a positive normal x.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ln(b: __m256i) -> __m256 {
    let (k, a) = ln_core(b);
    let k = _mm256_cvtepi32_ps(k);
    let lo = _mm256_fmadd_ps(k, _mm256_set1_ps(LN2_LO), a);
    _mm256_fmadd_ps(k, _mm256_set1_ps(LN2_HI), lo)
}

/// e^l for l ≤ 0 (values below −87 give e^−87 ≈ 1.6e-38 instead: nothing
/// beside the 1 of the maximum): 2^n · (1 + r·P(r)), r = l − n ln 2, P of
/// degree 4 interpolating (e^r − 1) / r at Chebyshev nodes (relative error
/// < 2.1e-7; the reduction with ln 2 in one f32 adds at most 2.4e-7 for
/// n = −126).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn exp_neg(l: __m256) -> __m256 {
    let c = |v: f32| _mm256_set1_ps(v);
    let l = _mm256_max_ps(l, c(-87.0));
    // 1.5·2^23: adding it rounds to an integer held in the low mantissa bits
    let t = _mm256_fmadd_ps(l, c(std::f32::consts::LOG2_E), c(12_582_912.0));
    let n = _mm256_sub_ps(t, c(12_582_912.0));
    let r = _mm256_fnmadd_ps(n, c(std::f32::consts::LN_2), l);
    let mut y = c(0.008363233);
    y = _mm256_fmadd_ps(y, r, c(0.041876063));
    y = _mm256_fmadd_ps(y, r, c(0.16666576));
    y = _mm256_fmadd_ps(y, r, c(0.49999368));
    y = _mm256_fmadd_ps(y, r, c(1.0));
    y = _mm256_fmadd_ps(y, r, c(1.0));
    // the low bits of t hold n in [-126, 0]: 2^n = (n + 127) << 23
    let s = _mm256_add_epi32(
        _mm256_slli_epi32::<23>(_mm256_castps_si256(t)),
        _mm256_set1_epi32(127 << 23),
    );
    _mm256_mul_ps(y, _mm256_castsi256_ps(s))
}

/// Adds the lanes of `a + b` to `acc` in f64 (each lane holds at most 64
/// terms), in a fixed order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn flush(acc: &mut f64, a: __m256, b: __m256) {
    let v = _mm256_add_ps(a, b);
    let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
    let s = _mm256_add_pd(lo, hi);
    let s = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd::<1>(s));
    *acc += _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

/// [`kl`] step by step: stops at the first step holding a special value.
/// The ratio p / q must be a normal number too, else the step goes to the
/// scalar path.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
fn kl_checked(p: &[f32], q: &[f32], st: &mut State) -> usize {
    let n = p.len().min(q.len());
    let (mut sa0, mut sa1, mut sb0, mut sb1, mut d0, mut d1) = (
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
    );
    let mut c = 0;
    for (pc, qc) in p[..n].chunks_exact(STEP).zip(q[..n].chunks_exact(STEP)) {
        prefetch(pc);
        prefetch(qc);
        let (p0, p1, q0, q1) = (load(pc, 0), load(pc, 8), load(qc, 0), load(qc, 8));
        let (pf0, pf1) = (_mm256_castsi256_ps(p0), _mm256_castsi256_ps(p1));
        let (qf0, qf1) = (_mm256_castsi256_ps(q0), _mm256_castsi256_ps(q1));
        let r0 = _mm256_castps_si256(_mm256_div_ps(pf0, qf0));
        let r1 = _mm256_castps_si256(_mm256_div_ps(pf1, qf1));
        let s = _mm256_or_si256(
            _mm256_or_si256(special_prob(p0), special_prob(p1)),
            _mm256_or_si256(special_prob(q0), special_prob(q1)),
        );
        let s = _mm256_or_si256(s, _mm256_or_si256(special_prob(r0), special_prob(r1)));
        if any(s) {
            break;
        }
        d0 = _mm256_fmadd_ps(pf0, ln(r0), d0);
        d1 = _mm256_fmadd_ps(pf1, ln(r1), d1);
        sa0 = _mm256_add_ps(sa0, pf0);
        sa1 = _mm256_add_ps(sa1, pf1);
        sb0 = _mm256_add_ps(sb0, qf0);
        sb1 = _mm256_add_ps(sb1, qf1);
        c += STEP;
    }
    flush(&mut st.sa, sa0, sa1);
    flush(&mut st.sb, sb0, sb1);
    flush(&mut st.d, d0, d1);
    c
}

/// [`cross`] step by step: stops at the first step holding a special value.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
fn cross_checked(p: &[f32], q: &[f32], st: &mut State) -> usize {
    let n = p.len().min(q.len());
    let (mut sa0, mut sa1, mut sb0, mut sb1, mut v0, mut v1) = (
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
    );
    let mut c = 0;
    for (pc, qc) in p[..n].chunks_exact(STEP).zip(q[..n].chunks_exact(STEP)) {
        prefetch(pc);
        prefetch(qc);
        let (p0, p1, q0, q1) = (load(pc, 0), load(pc, 8), load(qc, 0), load(qc, 8));
        let s = _mm256_or_si256(
            _mm256_or_si256(special_prob(p0), special_prob(p1)),
            _mm256_or_si256(special_prob(q0), special_prob(q1)),
        );
        if any(s) {
            break;
        }
        let (pf0, pf1) = (_mm256_castsi256_ps(p0), _mm256_castsi256_ps(p1));
        v0 = _mm256_fmadd_ps(pf0, ln(q0), v0);
        v1 = _mm256_fmadd_ps(pf1, ln(q1), v1);
        sa0 = _mm256_add_ps(sa0, pf0);
        sa1 = _mm256_add_ps(sa1, pf1);
        sb0 = _mm256_add_ps(sb0, _mm256_castsi256_ps(q0));
        sb1 = _mm256_add_ps(sb1, _mm256_castsi256_ps(q1));
        c += STEP;
    }
    flush(&mut st.sa, sa0, sa1);
    flush(&mut st.sb, sb0, sb1);
    flush(&mut st.v, v0, v1);
    c
}

/// [`entropy`] step by step: stops at the first step holding a special value.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
fn entropy_checked(p: &[f32], st: &mut State) -> usize {
    let (mut sa0, mut sa1, mut u0, mut u1) = (
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
    );
    let mut c = 0;
    for pc in p.chunks_exact(STEP) {
        prefetch(pc);
        let (p0, p1) = (load(pc, 0), load(pc, 8));
        if any(_mm256_or_si256(special_prob(p0), special_prob(p1))) {
            break;
        }
        let (pf0, pf1) = (_mm256_castsi256_ps(p0), _mm256_castsi256_ps(p1));
        u0 = _mm256_fmadd_ps(pf0, ln(p0), u0);
        u1 = _mm256_fmadd_ps(pf1, ln(p1), u1);
        sa0 = _mm256_add_ps(sa0, pf0);
        sa1 = _mm256_add_ps(sa1, pf1);
        c += STEP;
    }
    flush(&mut st.sa, sa0, sa1);
    flush(&mut st.u, u0, u1);
    c
}

/// Which terms a segment or short row accumulates (the AVX-512 row kernels'
/// too).
pub(super) const ROW_ENTROPY: u8 = 0;
pub(super) const ROW_CROSS: u8 = 1;
pub(super) const ROW_KL: u8 = 2;

/// A short row's sums into its state: Σ p, Σ q and the terms' sum into the
/// fields measure `K` accumulates (the others are left as they are).
#[inline(always)]
pub(super) fn put_row<const K: u8>(st: &mut State, sa: f64, sb: f64, t: f64) {
    st.sa = sa;
    match K {
        ROW_ENTROPY => st.u = t,
        ROW_CROSS => {
            st.sb = sb;
            st.v = t;
        }
        _ => {
            st.sb = sb;
            st.d = t;
        }
    }
}

/// Whether `rows` rows of `cols` values, `stride` apart, lie inside `len`
/// values: checked once per run, so that the row loops take their rows
/// without a check per row.
pub(super) fn rows_fit(len: usize, rows: usize, stride: usize, cols: usize) -> bool {
    rows.saturating_sub(1)
        .checked_mul(stride)
        .and_then(|o| o.checked_add(cols))
        .is_some_and(|end| end <= len)
}

/// Folds the bits `b` into `acc`, the running unsigned maximum of
/// b − 0x0080_0000: every value seen was a positive normal number exactly
/// when it stays at most 0x7eff_ffff (zeros, subnormals and negative values
/// wrap above it, infinities and NaN land above it). One operation and no
/// branch per vector: the hot loop checks nothing until the segment's end.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn track(acc: __m256i, b: __m256i) -> __m256i {
    _mm256_max_epu32(acc, _mm256_sub_epi32(b, _mm256_set1_epi32(0x0080_0000)))
}

/// Whether every value folded by [`track`] was a positive normal number.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn all_normal(acc: __m256i) -> bool {
    let top = _mm256_set1_epi32(0x7eff_ffff);
    _mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_max_epu32(acc, top), top)) == -1
}

/// ln x = k·ln 2 + a split in two f32 vectors (k as f32, a = ln m), so that
/// a loop accumulates p·a and p·k apart and multiplies Σ p·k by ln 2 in f64
/// once per segment: two FMAs per vector instead of three, and no f32 ln 2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ln_parts(b: __m256i) -> (__m256, __m256) {
    let (k, a) = ln_core(b);
    (_mm256_cvtepi32_ps(k), a)
}

/// One segment (whole [`STEP`]s, at most `SUB` columns) of probabilities
/// with no check inside the loop: (Σ p, Σ q, Σ p·a, Σ p·k) of the terms
/// p ln x = p·(a + k ln 2), x = p, q or p / q by `K`, or `None` when a value
/// (or ratio) was not a positive normal number, and nothing is added.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn segment<const K: u8, E: Src>(p: &[E], q: &[E]) -> Option<(f64, f64, f64, f64)> {
    let n = if K == ROW_ENTROPY {
        p.len()
    } else {
        p.len().min(q.len())
    };
    let n = n - n % STEP;
    // one accumulator per sum (at most `SUB / 8` = 64 terms per lane), one
    // vector at a time: fewer live registers than two vectors side by side
    // (no spills), and the out-of-order core overlaps the vectors
    let z = _mm256_setzero_ps();
    let (mut sa, mut sb, mut ta, mut tk) = (z, z, z, z);
    let mut chk = _mm256_setzero_si256();
    let q = if K == ROW_ENTROPY { p } else { q };
    // two vectors a trip (the same accumulators in the same order as one
    // a trip: the same bits), the prefetch once a trip without a branch
    for (pc, qc) in p[..n].chunks_exact(STEP).zip(q[..n].chunks_exact(STEP)) {
        prefetch(pc);
        if K != ROW_ENTROPY {
            prefetch(qc);
        }
        for h in [0, 8] {
            // SAFETY: this function's features are the ones `bits8` needs.
            let pb = unsafe { E::bits8(pc, h) };
            let pf = _mm256_castsi256_ps(pb);
            chk = track(chk, pb);
            sa = _mm256_add_ps(sa, pf);
            let x = if K == ROW_ENTROPY {
                pb
            } else {
                // SAFETY: as above.
                let qb = unsafe { E::bits8(qc, h) };
                let qf = _mm256_castsi256_ps(qb);
                chk = track(chk, qb);
                sb = _mm256_add_ps(sb, qf);
                if K == ROW_KL {
                    let r = _mm256_castps_si256(_mm256_div_ps(pf, qf));
                    chk = track(chk, r);
                    r
                } else {
                    qb
                }
            };
            let (k, a) = ln_parts(x);
            ta = _mm256_fmadd_ps(pf, a, ta);
            tk = _mm256_fmadd_ps(pf, k, tk);
        }
    }
    if !all_normal(chk) {
        return None;
    }
    let fold = |v: __m256| {
        let mut acc = 0.0;
        flush(&mut acc, v, z);
        acc
    };
    Some((fold(sa), fold(sb), fold(ta), fold(tk)))
}

/// KL terms of probabilities: `sa += Σ p`, `sb += Σ q`, `d += Σ p ln(p / q)`
/// (the ratio rounded once, within 6e-8 of ln p − ln q, and a normal
/// number). The whole segment in one unchecked loop when every value is
/// ordinary, else step by step up to the first special one.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
pub(super) fn kl(p: &[f32], q: &[f32], st: &mut State) -> usize {
    let Some((sa, sb, a, k)) = segment::<ROW_KL, f32>(p, q) else {
        return kl_checked(p, q, st);
    };
    st.sa += sa;
    st.sb += sb;
    st.d += a + std::f64::consts::LN_2 * k;
    p.len().min(q.len()) / STEP * STEP
}

/// Cross-entropy terms of probabilities: `sa += Σ p`, `sb += Σ q`,
/// `v += Σ p ln q` ([`kl`]'s plan).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
pub(super) fn cross(p: &[f32], q: &[f32], st: &mut State) -> usize {
    let Some((sa, sb, a, k)) = segment::<ROW_CROSS, f32>(p, q) else {
        return cross_checked(p, q, st);
    };
    st.sa += sa;
    st.sb += sb;
    st.v += a + std::f64::consts::LN_2 * k;
    p.len().min(q.len()) / STEP * STEP
}

/// Entropy terms of probabilities: `sa += Σ p`, `u += Σ p ln p` ([`kl`]'s
/// plan).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
pub(super) fn entropy(p: &[f32], st: &mut State) -> usize {
    let Some((sa, _, a, k)) = segment::<ROW_ENTROPY, f32>(p, &[]) else {
        return entropy_checked(p, st);
    };
    st.sa += sa;
    st.u += a + std::f64::consts::LN_2 * k;
    p.len() / STEP * STEP
}

/// The values [`segment`] reads: f32, or half precision widened in the
/// load itself (F16C's `vcvtph2ps` for f16, a 16-bit shift for bf16), so
/// that a half segment runs the f32 segment's arithmetic on the same f32
/// values without a converted copy.
pub(super) trait Src: Copy {
    /// The f32 bits of values `x[i..i + 8]`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    unsafe fn bits8(x: &[Self], i: usize) -> __m256i;
}

impl Src for f32 {
    #[inline(always)]
    unsafe fn bits8(x: &[f32], i: usize) -> __m256i {
        // SAFETY: the caller guarantees the CPU features.
        unsafe { load(x, i) }
    }
}

impl Src for half::f16 {
    #[inline(always)]
    unsafe fn bits8(x: &[half::f16], i: usize) -> __m256i {
        let s = &x[i..i + 8];
        // SAFETY: `s` holds 8 values; the caller guarantees the CPU features.
        unsafe { crate::widen::x86::load_f16(s.as_ptr()) }
    }
}

impl Src for half::bf16 {
    #[inline(always)]
    unsafe fn bits8(x: &[half::bf16], i: usize) -> __m256i {
        let s = &x[i..i + 8];
        // SAFETY: `s` holds 8 values; the caller guarantees the CPU features.
        unsafe { crate::widen::x86::load_bf16(s.as_ptr()) }
    }
}

/// Which one-pass terms [`fused`] accumulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fused {
    Kl,
    Cross,
    Entropy,
}

/// [`kl`], [`cross`] or [`entropy`] over one segment of half values (whole
/// steps only), widened in the loads: `true` with the same additions to
/// `st` as those make on the widened values when every value (and KL
/// ratio) is a positive normal number; `false`, and nothing added, else
/// (the caller then converts the segment and takes the f32 path, which
/// decides the special values).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
pub(super) fn fused<E: Src>(which: Fused, p: &[E], q: &[E], st: &mut State) -> bool {
    let r = match which {
        Fused::Kl => segment::<ROW_KL, E>(p, q),
        Fused::Cross => segment::<ROW_CROSS, E>(p, q),
        Fused::Entropy => segment::<ROW_ENTROPY, E>(p, &[]),
    };
    let Some((sa, sb, a, k)) = r else {
        return false;
    };
    st.sa += sa;
    let t = a + std::f64::consts::LN_2 * k;
    match which {
        Fused::Kl => {
            st.sb += sb;
            st.d += t;
        }
        Fused::Cross => {
            st.sb += sb;
            st.v += t;
        }
        Fused::Entropy => st.u += t,
    }
    true
}

/// Sums of an online log operand relative to the block maximum `m`:
/// `sb += Σ e^(x − m)`. Positive values stop it unless `pos_ok`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
pub(super) fn exp_sums(x: &[f32], m: f32, pos_ok: bool, st: &mut State) -> usize {
    let pos_max = _mm256_set1_epi32(if pos_ok { i32::MAX } else { 0 });
    let mv = _mm256_set1_ps(m);
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut c = 0;
    for xc in x.chunks_exact(STEP) {
        prefetch(xc);
        let (x0, x1) = (load(xc, 0), load(xc, 8));
        if any(_mm256_or_si256(
            special_log(x0, pos_max),
            special_log(x1, pos_max),
        )) {
            break;
        }
        let l0 = _mm256_sub_ps(_mm256_castsi256_ps(x0), mv);
        let l1 = _mm256_sub_ps(_mm256_castsi256_ps(x1), mv);
        s0 = _mm256_add_ps(s0, exp_neg(l0));
        s1 = _mm256_add_ps(s1, exp_neg(l1));
        c += STEP;
    }
    flush(&mut st.sb, s0, s1);
    c
}

/// The maximum of `x`, or `None` when `x` holds a value that is not finite
/// (the caller's scalar maximum then skips NaN and +inf and counts -inf).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
pub(super) fn max(x: &[f32]) -> Option<f32> {
    let never = _mm256_set1_epi32(i32::MAX);
    let lowest = _mm256_set1_ps(f32::MIN);
    let (mut m0, mut m1) = (lowest, lowest);
    let mut bad = _mm256_setzero_si256();
    let mut c = 0;
    for xc in x.chunks_exact(STEP) {
        prefetch(xc);
        let (x0, x1) = (load(xc, 0), load(xc, 8));
        bad = _mm256_or_si256(
            bad,
            _mm256_or_si256(special_log(x0, never), special_log(x1, never)),
        );
        m0 = _mm256_max_ps(m0, _mm256_castsi256_ps(x0));
        m1 = _mm256_max_ps(m1, _mm256_castsi256_ps(x1));
        c += STEP;
    }
    if any(bad) {
        return None;
    }
    let mut lanes = [0.0f32; 16];
    let (lo, hi) = lanes.split_at_mut(8);
    // SAFETY: each half holds 8 f32; the stores are unaligned.
    unsafe {
        _mm256_storeu_ps(lo.as_mut_ptr(), m0);
        _mm256_storeu_ps(hi.as_mut_ptr(), m1);
    }
    let mut m = lanes.iter().fold(f32::MIN, |a, &b| a.max(b));
    for &v in &x[c..] {
        if !v.is_finite() {
            return None;
        }
        m = m.max(v);
    }
    Some(m)
}

/// One block of an online log operand (the NLL from logits) in two sweeps
/// over data that stays in L1: the vector maximum `m`, then `Σ e^(x − m)`
/// (f32 lanes flushed into f64 every `SUB` columns). `None` when the block
/// holds a value that is not finite (a -inf, NaN or +inf), or a positive
/// value while `!pos_ok`: the caller's general path then decides its rules
/// and status. `x` must not be empty.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
pub(super) fn lse(x: &[f32], pos_ok: bool, sub: usize) -> Option<(f32, f64)> {
    let lowest = _mm256_set1_ps(f32::MIN);
    let never = _mm256_set1_epi32(i32::MAX);
    let (mut m0, mut m1, mut m2, mut m3) = (lowest, lowest, lowest, lowest);
    let mut bad = _mm256_setzero_si256();
    let body = x.len() - x.len() % 32;
    for xc in x[..body].chunks_exact(32) {
        prefetch(xc);
        let (a, b, c, d) = (load(xc, 0), load(xc, 8), load(xc, 16), load(xc, 24));
        bad = _mm256_or_si256(
            bad,
            _mm256_or_si256(
                _mm256_or_si256(special_log(a, never), special_log(b, never)),
                _mm256_or_si256(special_log(c, never), special_log(d, never)),
            ),
        );
        m0 = _mm256_max_ps(m0, _mm256_castsi256_ps(a));
        m1 = _mm256_max_ps(m1, _mm256_castsi256_ps(b));
        m2 = _mm256_max_ps(m2, _mm256_castsi256_ps(c));
        m3 = _mm256_max_ps(m3, _mm256_castsi256_ps(d));
    }
    if any(bad) {
        return None;
    }
    let mut lanes = [0.0f32; 8];
    let mv = _mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3));
    // SAFETY: `lanes` holds 8 f32; the store is unaligned.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), mv) };
    let mut m = lanes.iter().fold(f32::MIN, |a, &b| a.max(b));
    for &v in &x[body..] {
        if !v.is_finite() {
            return None;
        }
        m = m.max(v);
    }
    // from the bits: a positive subnormal maximum is positive too (flushing
    // hardware would compare it equal to 0)
    if !pos_ok && (m.to_bits() as i32) > 0 {
        return None;
    }
    let mv = _mm256_set1_ps(m);
    let mut s = 0.0f64;
    let mut tail = [f32::MIN; 16];
    for seg in x.chunks(sub) {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut steps = seg.chunks_exact(STEP);
        for xc in &mut steps {
            // the next block (this thread's next columns, or a hint past
            // the data) comes in while this one computes
            prefetch_next(xc, x.len());
            let l0 = _mm256_sub_ps(_mm256_castsi256_ps(load(xc, 0)), mv);
            let l1 = _mm256_sub_ps(_mm256_castsi256_ps(load(xc, 8)), mv);
            s0 = _mm256_add_ps(s0, exp_neg(l0));
            s1 = _mm256_add_ps(s1, exp_neg(l1));
        }
        let rest = steps.remainder();
        if !rest.is_empty() {
            // padding of f32::MIN gives e^-87 ≈ 1.6e-38 per lane: masked away
            tail[..rest.len()].copy_from_slice(rest);
            tail[rest.len()..].fill(f32::MIN);
            let e0 = exp_neg(_mm256_sub_ps(_mm256_castsi256_ps(load(&tail, 0)), mv));
            let e1 = exp_neg(_mm256_sub_ps(_mm256_castsi256_ps(load(&tail, 8)), mv));
            let keep = |i: i32| {
                let idx = _mm256_setr_epi32(i, i + 1, i + 2, i + 3, i + 4, i + 5, i + 6, i + 7);
                _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                    _mm256_set1_epi32(rest.len() as i32),
                    idx,
                ))
            };
            s0 = _mm256_add_ps(s0, _mm256_and_ps(e0, keep(0)));
            s1 = _mm256_add_ps(s1, _mm256_and_ps(e1, keep(8)));
        }
        flush(&mut s, s0, s1);
    }
    Some((m, s))
}

/// Loads `x[i..i + 8]`, or the fewer than 8 values left with 1.0 in the
/// lanes past the end, as bits, with the mask of the real lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_part(x: &[f32], i: usize) -> (__m256i, __m256i) {
    if i + 8 <= x.len() {
        return (load(x, i), _mm256_set1_epi32(-1));
    }
    let n = x.len().saturating_sub(i) as i32;
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
    let p = x.as_ptr().wrapping_add(i.min(x.len())).cast::<i32>();
    // SAFETY: the masked load reads only the lanes set in `mask`, the
    // `n` values x[i..] (none when n is 0).
    let v = unsafe { _mm256_maskload_epi32(p, mask) };
    let one = _mm256_set1_epi32(0x3f80_0000);
    (_mm256_blendv_epi8(one, v, mask), mask)
}

/// The lane vectors of one short row (at most `SUB` columns: 64 terms per
/// lane) of probabilities, 8 columns at a time, the last vector padded with
/// 1.0 (ln 1 = 0: its terms are 0; the sums are masked): (Σ p, Σ q, terms).
/// `None` when a value (or a KL ratio) is not a positive normal number: the
/// caller's general path decides the rules and status words of that row.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn row_lanes<const K: u8, const V: usize>(
    p: &[f32],
    q: &[f32],
) -> Option<(__m256, __m256, __m256)> {
    if V > 0 {
        return row_full::<K, V>(p, q);
    }
    let n = p.len();
    let (mut sa, mut sb, mut acc) = (
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
    );
    let mut bad = _mm256_setzero_si256();
    let mut i = 0;
    while i < n {
        let (pb, m) = load_part(p, i);
        let pf = _mm256_castsi256_ps(pb);
        bad = _mm256_or_si256(bad, special_prob(pb));
        sa = _mm256_add_ps(sa, _mm256_and_ps(pf, _mm256_castsi256_ps(m)));
        if K == ROW_ENTROPY {
            acc = _mm256_fmadd_ps(pf, ln(pb), acc);
        } else {
            let (qb, _) = load_part(q, i);
            let qf = _mm256_castsi256_ps(qb);
            bad = _mm256_or_si256(bad, special_prob(qb));
            sb = _mm256_add_ps(sb, _mm256_and_ps(qf, _mm256_castsi256_ps(m)));
            if K == ROW_KL {
                let r = _mm256_castps_si256(_mm256_div_ps(pf, qf));
                bad = _mm256_or_si256(bad, special_prob(r));
                acc = _mm256_fmadd_ps(pf, ln(r), acc);
            } else {
                acc = _mm256_fmadd_ps(pf, ln(qb), acc);
            }
        }
        i += 8;
    }
    if any(bad) {
        return None;
    }
    Some((sa, sb, acc))
}

/// [`row_lanes`] for rows of exactly `V` vectors (8·V columns): no padding
/// and no masks, the loop unrolled.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn row_full<const K: u8, const V: usize>(p: &[f32], q: &[f32]) -> Option<(__m256, __m256, __m256)> {
    let p = &p[..8 * V];
    let q = if K == ROW_ENTROPY { q } else { &q[..8 * V] };
    let (mut sa, mut sb, mut acc) = (
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
    );
    let mut bad = _mm256_setzero_si256();
    for v in 0..V {
        let pb = load(p, 8 * v);
        let pf = _mm256_castsi256_ps(pb);
        bad = _mm256_or_si256(bad, special_prob(pb));
        sa = _mm256_add_ps(sa, pf);
        if K == ROW_ENTROPY {
            acc = _mm256_fmadd_ps(pf, ln(pb), acc);
        } else {
            let qb = load(q, 8 * v);
            let qf = _mm256_castsi256_ps(qb);
            bad = _mm256_or_si256(bad, special_prob(qb));
            sb = _mm256_add_ps(sb, qf);
            if K == ROW_KL {
                let r = _mm256_castps_si256(_mm256_div_ps(pf, qf));
                bad = _mm256_or_si256(bad, special_prob(r));
                acc = _mm256_fmadd_ps(pf, ln(r), acc);
            } else {
                acc = _mm256_fmadd_ps(pf, ln(qb), acc);
            }
        }
    }
    if any(bad) {
        return None;
    }
    Some((sa, sb, acc))
}

/// The lane sums of 8 rows' vectors side by side: lane i of the result is
/// ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)) of `v[i]`, the same
/// order in every lane, so that a row's sum does not depend on its place in
/// the group (nor on which rows share it).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn sum8(v: &[__m256; 8]) -> [f64; 8] {
    let h01 = _mm256_hadd_ps(v[0], v[1]);
    let h23 = _mm256_hadd_ps(v[2], v[3]);
    let h45 = _mm256_hadd_ps(v[4], v[5]);
    let h67 = _mm256_hadd_ps(v[6], v[7]);
    // lanes 0..4: rows 0..4 (low halves), 4..8: the same rows (high halves)
    let a = _mm256_hadd_ps(h01, h23);
    let b = _mm256_hadd_ps(h45, h67);
    let lo = _mm256_permute2f128_ps::<0x20>(a, b);
    let hi = _mm256_permute2f128_ps::<0x31>(a, b);
    let s = _mm256_add_ps(lo, hi);
    let mut out = [0.0f64; 8];
    let (o0, o1) = out.split_at_mut(4);
    // SAFETY: each half holds 4 f64; the stores are unaligned.
    unsafe {
        _mm256_storeu_pd(o0.as_mut_ptr(), _mm256_cvtps_pd(_mm256_castps256_ps128(s)));
        _mm256_storeu_pd(
            o1.as_mut_ptr(),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(s)),
        );
    }
    out
}

/// Writes the sums of the rows of a group of 8 into the states `out` (at
/// most 8; the lane vectors past `out.len()` are zero and unused): only the
/// fields the measure accumulates, the others are left as they are.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn put8<const K: u8>(sa: &[__m256; 8], sb: &[__m256; 8], acc: &[__m256; 8], out: &mut [State]) {
    let a = sum8(sa);
    let t = sum8(acc);
    let b = if K == ROW_ENTROPY { [0.0; 8] } else { sum8(sb) };
    for (j, st) in out.iter_mut().enumerate() {
        put_row::<K>(st, a[j], b[j], t[j]);
    }
}

/// Short rows `k = 0, 1, ..` of `p` and `q` (row k at `k * stride`, a stride
/// of 0 for a broadcast row; `cols` columns, at most `SUB`): the state of
/// each into `out[k]` (which must hold [`State::EMPTY`] on entry: only the
/// fields of the measure's sums are written), until `out` is full or a row holds a value the
/// general path must decide. Returns the number of rows done. The lanes of
/// 8 rows at a time are summed side by side ([`sum8`]).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn rows_impl<const K: u8>(
    p: &[f32],
    q: &[f32],
    cols: usize,
    strides: (usize, usize),
    out: &mut [State],
) -> usize {
    match cols {
        8 => rows_run::<K, 1>(p, q, cols, strides, out),
        16 => rows_run::<K, 2>(p, q, cols, strides, out),
        32 => rows_run::<K, 4>(p, q, cols, strides, out),
        64 => rows_run::<K, 8>(p, q, cols, strides, out),
        c if c < 64 => rows_run::<K, 0>(p, q, cols, strides, out),
        _ => rows_each::<K>(p, q, cols, strides, out),
    }
}

/// [`rows_impl`] one row at a time, each row's lanes added in f64
/// ([`hsum`]): for rows wider than 64 columns, where the side-by-side sums
/// gain nothing.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn rows_each<const K: u8>(
    p: &[f32],
    q: &[f32],
    cols: usize,
    strides: (usize, usize),
    out: &mut [State],
) -> usize {
    for (k, st) in out.iter_mut().enumerate() {
        let pr = &p[k * strides.0..][..cols];
        let qr = if K == ROW_ENTROPY {
            &[][..]
        } else {
            &q[k * strides.1..][..cols]
        };
        let Some((sa, sb, acc)) = row_lanes::<K, 0>(pr, qr) else {
            return k;
        };
        let b = if K == ROW_ENTROPY { 0.0 } else { hsum(sb) };
        put_row::<K>(st, hsum(sa), b, hsum(acc));
    }
    out.len()
}

/// Horizontal sum of the 8 lanes in f64, in a fixed order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum(v: __m256) -> f64 {
    let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
    let s = _mm256_add_pd(lo, hi);
    let s = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd::<1>(s));
    _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
}

/// [`rows_impl`] with rows of `V` whole vectors, or any width for `V` = 0.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn rows_run<const K: u8, const V: usize>(
    p: &[f32],
    q: &[f32],
    cols: usize,
    strides: (usize, usize),
    out: &mut [State],
) -> usize {
    let z = _mm256_setzero_ps();
    // every row read lies inside the slices: checked once here (the general
    // path takes the rows otherwise, which never happens), so that the loop
    // below takes its rows without a check per row
    let fits = |x: &[f32], stride: usize| rows_fit(x.len(), out.len(), stride, cols);
    if out.is_empty() || !fits(p, strides.0) || (K != ROW_ENTROPY && !fits(q, strides.1)) {
        return 0;
    }
    // SAFETY (both): row k < out.len() starts at k * stride and ends at
    // k * stride + cols <= len, checked above.
    let row_p =
        |k: usize| unsafe { std::slice::from_raw_parts(p.as_ptr().add(k * strides.0), cols) };
    let row_q =
        |k: usize| unsafe { std::slice::from_raw_parts(q.as_ptr().add(k * strides.1), cols) };
    for (g, outg) in out.chunks_mut(8).enumerate() {
        let (mut sa, mut sb, mut acc) = ([z; 8], [z; 8], [z; 8]);
        for j in 0..outg.len() {
            let k = g * 8 + j;
            let pr = row_p(k);
            let qr = if K == ROW_ENTROPY { &[][..] } else { row_q(k) };
            // the rows `PREFETCH` bytes ahead come in while these compute
            // (rows of 64 columns or more do better on the hardware
            // prefetcher alone)
            if cols < 64 {
                prefetch(pr);
                if K != ROW_ENTROPY {
                    prefetch(qr);
                }
            }
            match row_lanes::<K, V>(pr, qr) {
                Some((a, b, t)) => {
                    sa[j] = a;
                    sb[j] = b;
                    acc[j] = t;
                }
                None => {
                    put8::<K>(&sa, &sb, &acc, &mut outg[..j]);
                    return k;
                }
            }
        }
        put8::<K>(&sa, &sb, &acc, outg);
    }
    out.len()
}

/// Short rows' KL states ([`rows_impl`]).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
pub(super) fn kl_rows(
    p: &[f32],
    q: &[f32],
    cols: usize,
    strides: (usize, usize),
    out: &mut [State],
) -> usize {
    rows_impl::<ROW_KL>(p, q, cols, strides, out)
}

/// Short rows' cross-entropy states ([`rows_impl`]).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
pub(super) fn cross_rows(
    p: &[f32],
    q: &[f32],
    cols: usize,
    strides: (usize, usize),
    out: &mut [State],
) -> usize {
    rows_impl::<ROW_CROSS>(p, q, cols, strides, out)
}

/// Short rows' entropy states ([`rows_impl`]; `q` is not read).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
pub(super) fn entropy_rows(
    p: &[f32],
    q: &[f32],
    cols: usize,
    strides: (usize, usize),
    out: &mut [State],
) -> usize {
    rows_impl::<ROW_ENTROPY>(p, q, cols, strides, out)
}
