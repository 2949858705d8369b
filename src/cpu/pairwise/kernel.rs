//! The all-pairs micro-kernels: `MR` rows of p against `NR` rows of q over a
//! run of at most `KC` columns, register-blocked as in a GEMM (the q side
//! in the vector lanes, the p side broadcast), f32 lanes flushed into an
//! f64 tile at the end of every run.
//!
//! Per pair-element (w: weight, l: ln w, from [`super::prep`]):
//! - KL: w_p (l_p − l_q) — the difference of logs per element, never
//!   −H(P) − P·log Qᵀ, which cancels for close rows (2.2e-6 off with f32
//!   accumulation where KL ≈ 0.01, above the bound);
//! - cross-entropy: −w_p l_q (a product, no cancellation: the result is
//!   the size of its terms);
//! - JS: ½ [p ln(2p / s) + q ln(2q / s)], s = p + q, with one log per
//!   pair-element, of s, in parts: ln s = e·LN2_HI + lo with e·LN2_HI
//!   exact, so ln 2p − ln s = (e_p + 1 − e_s)·LN2_HI + (lo_p + LN2_LO − lo_s)
//!   keeps its absolute accuracy (≈ 1e-7) however close p and q are;
//! - Hellinger: ½ (√p − √q)²; total variation: ½ |p − q|.
//!
//! The symmetric measures are computed with operations that commute (no
//! fused multiply-add across the two sides), so D[i, j] and D[j, i] are the
//! same bits whichever side each row is on.

use crate::cpu::ln::{Arith, LN2_HI, ln_parts};
use crate::measure::Measure;

use super::prep::Packed;

/// Rows of p per micro-tile (broadcast).
pub(super) const MR: usize = 4;
/// Rows of q per micro-tile (vector lanes).
pub(super) const NR: usize = 16;
/// Columns summed in f32 before the lanes are flushed into f64.
pub(super) const KC: usize = 128;

/// The f32 accumulators of one micro-tile.
pub(super) type Acc = [[f32; NR]; MR];

/// One measure's micro-kernel: `p[f]` holds field `f` of the `MR` p rows
/// (`MR` values per column), `q[f]` that of the `NR` q rows, over `kc`
/// columns.
pub(super) trait Kern {
    fn micro<A: Arith>(p: &[&[f32]; 3], q: &[&[f32]; 3], kc: usize, acc: &mut Acc);
}

pub(super) struct Kl;
pub(super) struct Cross;
pub(super) struct Js;
pub(super) struct Hellinger;
pub(super) struct Tv;

/// Column `k` of a panel of `N` rows, as an array.
#[inline(always)]
fn col<const N: usize>(panel: &[f32], k: usize) -> &[f32; N] {
    panel[k * N..(k + 1) * N]
        .try_into()
        .unwrap_or_else(|_| unreachable!("panels hold whole columns"))
}

impl Kern for Kl {
    #[inline(always)]
    fn micro<A: Arith>(p: &[&[f32]; 3], q: &[&[f32]; 3], kc: usize, acc: &mut Acc) {
        for k in 0..kc {
            let lq = col::<NR>(q[1], k);
            let (pw, pl) = (col::<MR>(p[0], k), col::<MR>(p[1], k));
            for r in 0..MR {
                let (w, lp) = (pw[r], pl[r]);
                for c in 0..NR {
                    acc[r][c] = A::madd(w, lp - lq[c], acc[r][c]);
                }
            }
        }
    }
}

impl Kern for Cross {
    #[inline(always)]
    fn micro<A: Arith>(p: &[&[f32]; 3], q: &[&[f32]; 3], kc: usize, acc: &mut Acc) {
        for k in 0..kc {
            let lq = col::<NR>(q[1], k);
            let pw = col::<MR>(p[0], k);
            for r in 0..MR {
                let w = pw[r];
                for c in 0..NR {
                    acc[r][c] = A::madd(w, lq[c], acc[r][c]);
                }
            }
        }
    }
}

impl Kern for Js {
    #[inline(always)]
    fn micro<A: Arith>(p: &[&[f32]; 3], q: &[&[f32]; 3], kc: usize, acc: &mut Acc) {
        for k in 0..kc {
            let (qw, qe, ql) = (col::<NR>(q[0], k), col::<NR>(q[1], k), col::<NR>(q[2], k));
            let (pw, pe, pl) = (col::<MR>(p[0], k), col::<MR>(p[1], k), col::<MR>(p[2], k));
            for r in 0..MR {
                let (w, e, lo) = (pw[r], pe[r], pl[r]);
                for c in 0..NR {
                    let s = w + qw[c];
                    let (es, ls) = ln_parts::<A>(s);
                    let a = (e - es) * LN2_HI + (lo - ls);
                    let b = (qe[c] - es) * LN2_HI + (ql[c] - ls);
                    acc[r][c] += w * a + qw[c] * b;
                }
            }
        }
    }
}

impl Kern for Hellinger {
    #[inline(always)]
    fn micro<A: Arith>(p: &[&[f32]; 3], q: &[&[f32]; 3], kc: usize, acc: &mut Acc) {
        for k in 0..kc {
            let qr = col::<NR>(q[0], k);
            let pr = col::<MR>(p[0], k);
            for r in 0..MR {
                let x = pr[r];
                for c in 0..NR {
                    let d = x - qr[c];
                    acc[r][c] = A::madd(d, d, acc[r][c]);
                }
            }
        }
    }
}

impl Kern for Tv {
    #[inline(always)]
    fn micro<A: Arith>(p: &[&[f32]; 3], q: &[&[f32]; 3], kc: usize, acc: &mut Acc) {
        for k in 0..kc {
            let qw = col::<NR>(q[0], k);
            let pw = col::<MR>(p[0], k);
            for r in 0..MR {
                let x = pw[r];
                for c in 0..NR {
                    acc[r][c] += (x - qw[c]).abs();
                }
            }
        }
    }
}

/// The panels of fields 0..3 (empty beyond the measure's fields).
#[inline(always)]
fn panels(pk: &Packed, g: usize, k0: usize, k1: usize) -> [&[f32]; 3] {
    let f = |i: usize| {
        if i < pk.fields.len() {
            pk.panel(i, g, k0, k1)
        } else {
            &[][..]
        }
    };
    [f(0), f(1), f(2)]
}

/// A micro-kernel with its flush: adds the sums of `MR` p rows against `NR`
/// q rows over `kc` columns into `out` (f64, rows `ld` apart).
pub(super) trait Micro {
    fn run(p: &[&[f32]; 3], q: &[&[f32]; 3], kc: usize, out: &mut [f64], ld: usize);
}

/// The portable micro-kernel of `K` with the arithmetic `A`.
pub(super) struct Portable<K, A>(std::marker::PhantomData<(K, A)>);

impl<K: Kern, A: Arith> Micro for Portable<K, A> {
    #[inline(always)]
    fn run(p: &[&[f32]; 3], q: &[&[f32]; 3], kc: usize, out: &mut [f64], ld: usize) {
        let mut acc: Acc = [[0.0; NR]; MR];
        K::micro::<A>(p, q, kc, &mut acc);
        for (r, a) in acc.iter().enumerate() {
            for (o, &x) in out[r * ld..r * ld + NR].iter_mut().zip(a) {
                *o += x as f64;
            }
        }
    }
}

/// Adds the sums of p groups `g0..g1` against q groups `h0..h1` into `out`
/// (row-major, `(g1 - g0)·MR` × `(h1 - h0)·NR`). Each pair's sum is the
/// same left fold of the same `KC`-column runs wherever the pair sits.
#[inline(always)]
fn block<M: Micro>(
    pp: &Packed,
    (g0, g1): (usize, usize),
    qp: &Packed,
    (h0, h1): (usize, usize),
    out: &mut [f64],
) {
    let ld = (h1 - h0) * NR;
    let cols = pp.cols;
    let mut k0 = 0;
    while k0 < cols {
        let k1 = (k0 + KC).min(cols);
        for h in h0..h1 {
            let q = panels(qp, h, k0, k1);
            for g in g0..g1 {
                let p = panels(pp, g, k0, k1);
                let at = (g - g0) * MR * ld + (h - h0) * NR;
                M::run(&p, &q, k1 - k0, &mut out[at..], ld);
            }
        }
        k0 = k1;
    }
}

/// Which compiled variant runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Variant {
    /// The target's baseline, two roundings (portable kernels).
    Base,
    /// AVX2 + FMA intrinsics (also where the CPU has AVX-512: the kernels
    /// are bound by FMA and add throughput, not by vector width).
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

#[cfg(target_arch = "x86_64")]
macro_rules! avx2_micro {
    ($($name:ident => $f:ident),* $(,)?) => {
        $(
            pub(super) struct $name;
            impl Micro for $name {
                #[inline(always)]
                fn run(p: &[&[f32]; 3], q: &[&[f32]; 3], kc: usize, out: &mut [f64], ld: usize) {
                    // SAFETY: only reached from `run_block`'s AVX2 variant,
                    // chosen where AVX2 and FMA were detected.
                    unsafe { super::avx2::$f(p, q, kc, out, ld) }
                }
            }
        )*
    };
}

#[cfg(target_arch = "x86_64")]
avx2_micro!(KlAvx2 => kl, CrossAvx2 => cross, JsAvx2 => js, HellingerAvx2 => hellinger, TvAvx2 => tv);

macro_rules! variants {
    ($($name:ident: $kern:ty, $avx:ty),* $(,)?) => {
        $(
            #[allow(non_snake_case, reason = "one module per kernel, named after it")]
            mod $name {
                use super::*;
                pub(super) fn base(pp: &Packed, g: (usize, usize), qp: &Packed, h: (usize, usize), out: &mut [f64]) {
                    block::<Portable<$kern, crate::cpu::ln::Plain>>(pp, g, qp, h, out)
                }
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx2,fma")]
                pub(super) fn avx2(pp: &Packed, g: (usize, usize), qp: &Packed, h: (usize, usize), out: &mut [f64]) {
                    block::<$avx>(pp, g, qp, h, out)
                }
            }
        )*
    };
}

variants!(
    KL: Kl, KlAvx2,
    CROSS: Cross, CrossAvx2,
    JS: Js, JsAvx2,
    HELLINGER: Hellinger, HellingerAvx2,
    TV: Tv, TvAvx2,
);

/// Adds the sums of `measure` for p groups `g` against q groups `h` into
/// `out`, with the kernels compiled for `variant`.
pub(super) fn run_block(
    measure: Measure,
    variant: Variant,
    pp: &Packed,
    g: (usize, usize),
    qp: &Packed,
    h: (usize, usize),
    out: &mut [f64],
) {
    macro_rules! go {
        ($m:ident) => {
            match variant {
                Variant::Base => $m::base(pp, g, qp, h, out),
                // SAFETY: the variant is chosen from the detected features
                // (`Isa::chosen`), so AVX2 and FMA are present.
                #[cfg(target_arch = "x86_64")]
                Variant::Avx2 => unsafe { $m::avx2(pp, g, qp, h, out) },
            }
        };
    }
    match measure {
        Measure::Kl => go!(KL),
        Measure::CrossEntropy => go!(CROSS),
        Measure::Js => go!(JS),
        Measure::Hellinger => go!(HELLINGER),
        _ => go!(TV),
    }
}
