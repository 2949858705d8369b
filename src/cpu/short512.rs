//! AVX-512 short-row kernels: whole rows of at most [`MAX_COLS`] columns of
//! probabilities (KL, cross-entropy, entropy), a run of rows per call, with
//! the contract of the AVX2 ones in [`super::fast`] (`kl_rows` and
//! siblings): the state of each row into `out`, until a row holds a value
//! that is not a positive normal number (a zero, a subnormal, a bad value, or
//! a KL ratio out of range), which the general path then takes.
//!
//! A row is at most 4 vectors of 16 lanes (a 16-column row is one vector per
//! operand, the last vector of other widths masked and padded with 1.0,
//! whose log is 0); `vfpclassps` marks the specials. The lanes of 16 rows are
//! then summed side by side by one transpose-and-add tree ([`sum16`]: 45
//! instructions for 16 rows, where a horizontal sum per row takes about 8),
//! the same order in every lane, so that a row's sums do not depend on its
//! place in the group or on the rows beside it (bit-identical over thread
//! counts). Logs are taken as in the AVX-512 segment loops ([`ln_parts`]),
//! each term's log rounded once as k·LN2_HI + (k·LN2_LO + ln m), k·LN2_HI
//! exact (the AVX2 short rows' form).

// see fast512.rs: the AVX-512 intrinsics need Rust 1.89
#![allow(
    clippy::incompatible_msrv,
    reason = "AVX-512 needs Rust 1.89, as block.rs's avx512f build already does"
)]

use std::arch::x86_64::{
    __m512, __mmask16, _MM_HINT_T0, _mm_prefetch, _mm512_add_ps, _mm512_castps512_ps256,
    _mm512_cvtps_pd, _mm512_div_ps, _mm512_extractf32x8_ps, _mm512_fmadd_ps,
    _mm512_fpclass_ps_mask, _mm512_loadu_ps, _mm512_mask_add_ps, _mm512_mask_loadu_ps,
    _mm512_set1_ps, _mm512_setzero_ps, _mm512_shuffle_f32x4, _mm512_shuffle_ps, _mm512_storeu_pd,
};

use super::fast::{PREFETCH, ROW_CROSS, ROW_ENTROPY, ROW_KL, put_row, rows_fit};
use super::fast512::{NOT_POS_NORMAL, ln_parts};
use super::kernel::State;
use super::ln::{LN2_HI, LN2_LO};

/// Widest row these kernels take: 4 vectors.
pub(super) const MAX_COLS: usize = 64;
/// Rows summed side by side.
const GROUP: usize = 16;

/// ln x for a positive normal x, rounded once: k·LN2_HI + (k·LN2_LO + ln m).
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
fn ln(x: __m512) -> __m512 {
    let (k, a) = ln_parts(x);
    let lo = _mm512_fmadd_ps(k, _mm512_set1_ps(LN2_LO), a);
    _mm512_fmadd_ps(k, _mm512_set1_ps(LN2_HI), lo)
}

/// The 16 values at `x`, or the lanes of `m` with 1.0 in the others (ln 1
/// = 0: no term).
///
/// # Safety
/// The lanes of `m` at `x` must be readable (a masked load reads no other).
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
unsafe fn load(x: *const f32, m: __mmask16) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe {
        if m == 0xffff {
            _mm512_loadu_ps(x)
        } else {
            _mm512_mask_loadu_ps(_mm512_set1_ps(1.0), m, x)
        }
    }
}

/// Lane vectors of one row: Σ p, Σ q, the terms, and the lanes that were not
/// ordinary (zero when the row is ordinary).
struct Row {
    sa: __m512,
    sb: __m512,
    t: __m512,
    special: __mmask16,
}

/// The lane vectors of the row at `p` (and `q`): `nv` vectors, the last one
/// under `last` (padded with 1.0; Σ p and Σ q masked), or `V` whole vectors
/// without masks when `V` > 0.
///
/// # Safety
/// `p` (and `q`, but for the entropy) must point at a row of at least
/// `16 * (nv - 1)` values plus the lanes set in `last` (`16 * V` when `V` > 0).
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
unsafe fn row<const K: u8, const V: usize>(
    p: *const f32,
    q: *const f32,
    nv: usize,
    last: __mmask16,
) -> Row {
    let z = _mm512_setzero_ps();
    let mut r = Row {
        sa: z,
        sb: z,
        t: z,
        special: 0,
    };
    let n = if V > 0 { V } else { nv };
    for v in 0..n {
        let m = if V == 0 && v + 1 == n { last } else { 0xffff };
        // SAFETY: vector v of the row is inside it (the caller's contract).
        let pv = unsafe { load(p.add(16 * v), m) };
        r.special |= _mm512_fpclass_ps_mask::<NOT_POS_NORMAL>(pv);
        r.sa = _mm512_mask_add_ps(r.sa, m, r.sa, pv);
        if K == ROW_ENTROPY {
            r.t = _mm512_fmadd_ps(pv, ln(pv), r.t);
            continue;
        }
        // SAFETY: as for `p`.
        let qv = unsafe { load(q.add(16 * v), m) };
        r.special |= _mm512_fpclass_ps_mask::<NOT_POS_NORMAL>(qv);
        r.sb = _mm512_mask_add_ps(r.sb, m, r.sb, qv);
        let x = if K == ROW_KL {
            let ratio = _mm512_div_ps(pv, qv);
            r.special |= _mm512_fpclass_ps_mask::<NOT_POS_NORMAL>(ratio);
            ratio
        } else {
            qv
        };
        r.t = _mm512_fmadd_ps(pv, ln(x), r.t);
    }
    r
}

/// Where [`sum16`] wants row k's vector: the tree leaves row σ(k) in lane k
/// for input k, σ swapping bits 3 ↔ 2 and 1 ↔ 0 (an involution).
const SLOT: [usize; GROUP] = {
    let mut s = [0; GROUP];
    let mut k = 0;
    while k < GROUP {
        s[k] = ((k & 0b1010) >> 1) | ((k & 0b0101) << 1);
        k += 1;
    }
    s
};

/// Lane k of the result: the sum of the 16 lanes of the row stored at
/// `v[SLOT[k]]`, by the same tree in every lane (halves of 256, then 128,
/// 64 and 32 bits added).
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
fn sum16(v: &[__m512; GROUP]) -> __m512 {
    // 16 → 8: low 256 bits row i, high row i + 8 (8 partials each)
    let t: [__m512; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[i], v[i + 8]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        )
    });
    // 8 → 4: 128-bit lanes rows i, i + 8, i + 4, i + 12 (4 partials each)
    let u: [__m512; 4] = std::array::from_fn(|i| {
        let (a, b) = (t[i], t[i + 4]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    });
    // 4 → 2: each 128-bit lane two partials of u[i]'s row, two of u[i + 2]'s
    let w: [__m512; 2] = std::array::from_fn(|i| {
        let (a, b) = (u[i], u[i + 2]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        )
    });
    // 2 → 1: each 128-bit lane the rows of u[0], u[2], u[1], u[3]
    _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(w[0], w[1]),
        _mm512_shuffle_ps::<0xDD>(w[0], w[1]),
    )
}

/// The lanes of `v` in f64.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
fn widen(v: __m512) -> [f64; GROUP] {
    let mut out = [0.0f64; GROUP];
    let (lo, hi) = out.split_at_mut(8);
    // SAFETY: each half holds 8 f64; the stores are unaligned.
    unsafe {
        _mm512_storeu_pd(lo.as_mut_ptr(), _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        _mm512_storeu_pd(
            hi.as_mut_ptr(),
            _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(v)),
        );
    }
    out
}

/// Writes the sums of a group's rows into `out` (at most 16): only the
/// fields the measure accumulates.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
fn put16<const K: u8>(
    sa: &[__m512; GROUP],
    sb: &[__m512; GROUP],
    t: &[__m512; GROUP],
    out: &mut [State],
) {
    let a = widen(sum16(sa));
    let t = widen(sum16(t));
    let b = if K == ROW_ENTROPY {
        [0.0; GROUP]
    } else {
        widen(sum16(sb))
    };
    for (j, st) in out.iter_mut().enumerate() {
        put_row::<K>(st, a[j], b[j], t[j]);
    }
}

/// Short rows `k = 0, 1, ..` of `p` and `q` (row k at `k * stride`, a stride
/// of 0 for a broadcast row; `cols` columns, 1 to [`MAX_COLS`]): see the
/// module docs and `fast::kl_rows`. Returns the number of rows done.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
fn rows_impl<const K: u8>(
    p: &[f32],
    q: &[f32],
    cols: usize,
    strides: (usize, usize),
    out: &mut [State],
) -> usize {
    match cols {
        16 => rows_run::<K, 1>(p, q, cols, strides, out),
        32 => rows_run::<K, 2>(p, q, cols, strides, out),
        48 => rows_run::<K, 3>(p, q, cols, strides, out),
        64 => rows_run::<K, 4>(p, q, cols, strides, out),
        1..=MAX_COLS => rows_run::<K, 0>(p, q, cols, strides, out),
        _ => 0,
    }
}

/// [`rows_impl`] for rows of `V` whole vectors, or of any width for `V` = 0.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
fn rows_run<const K: u8, const V: usize>(
    p: &[f32],
    q: &[f32],
    cols: usize,
    strides: (usize, usize),
    out: &mut [State],
) -> usize {
    let fits = |x: &[f32], stride: usize| rows_fit(x.len(), out.len(), stride, cols);
    if out.is_empty() || !fits(p, strides.0) || (K != ROW_ENTROPY && !fits(q, strides.1)) {
        return 0;
    }
    let nv = cols.div_ceil(16);
    let last: __mmask16 = match cols % 16 {
        0 => 0xffff,
        r => (1u16 << r) - 1,
    };
    let z = _mm512_setzero_ps();
    for (g, outg) in out.chunks_mut(GROUP).enumerate() {
        let (mut sa, mut sb, mut t) = ([z; GROUP], [z; GROUP], [z; GROUP]);
        for j in 0..outg.len() {
            let k = g * GROUP + j;
            let pr = p.as_ptr().wrapping_add(k * strides.0);
            let qr = q.as_ptr().wrapping_add(k * strides.1);
            // the rows `PREFETCH` bytes ahead come in while these compute (a
            // hint: an address past the data is harmless)
            _mm_prefetch::<_MM_HINT_T0>(pr.wrapping_byte_add(PREFETCH).cast());
            if K != ROW_ENTROPY {
                _mm_prefetch::<_MM_HINT_T0>(qr.wrapping_byte_add(PREFETCH).cast());
            }
            // SAFETY: row k < out.len() starts at k * stride and ends at
            // k * stride + cols <= len (checked above); `nv` and `last`
            // cover exactly `cols` values.
            let r = unsafe { row::<K, V>(pr, qr, nv, last) };
            if r.special != 0 {
                put16::<K>(&sa, &sb, &t, &mut outg[..j]);
                return k;
            }
            let s = SLOT[j];
            sa[s] = r.sa;
            sb[s] = r.sb;
            t[s] = r.t;
        }
        put16::<K>(&sa, &sb, &t, outg);
    }
    out.len()
}

/// Short rows' KL states ([`rows_impl`]).
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512DQ, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
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
///
/// # Safety
/// As [`kl_rows`].
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
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
///
/// # Safety
/// As [`kl_rows`].
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree leaves in lane k the sum of the row stored at `SLOT[k]`:
    /// rows of small integers (exact sums) that differ per row and lane.
    #[test]
    fn sum16_sums_each_row_into_its_lane() {
        if !super::super::fast512::available() {
            eprintln!("note: no AVX-512 on this machine; sum16 not run");
            return;
        }
        let rows: Vec<[f32; 16]> = (0..16)
            .map(|r| std::array::from_fn(|l| (r * 17 + l * l) as f32))
            .collect();
        // SAFETY: AVX-512 is present (checked above).
        let got = unsafe { sum_rows(&rows) };
        for (k, row) in rows.iter().enumerate() {
            assert_eq!(got[k], row.iter().sum::<f32>(), "row {k}");
        }
    }

    #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
    fn sum_rows(rows: &[[f32; 16]]) -> [f32; 16] {
        let mut v = [_mm512_setzero_ps(); GROUP];
        for (k, r) in rows.iter().enumerate() {
            // SAFETY: 16 values.
            v[SLOT[k]] = unsafe { _mm512_loadu_ps(r.as_ptr()) };
        }
        let s = sum16(&v);
        let mut out = [0.0f32; 16];
        // SAFETY: 16 values.
        unsafe { std::arch::x86_64::_mm512_storeu_ps(out.as_mut_ptr(), s) };
        out
    }
}
