//! Per-measure arithmetic on the CPU, in the manner of cubecl's reduce
//! instructions: a [`Term`] says what a measure adds for each element pair
//! (into f32 lanes), how the lanes join the f64 row state, and how a row's
//! state becomes its value. Everything else — decoding the input forms, the
//! zero rules of single values, online maxima, blocks, merging, status words —
//! is shared by every measure (`kernel`, `block`, `plan`).
//!
//! The GPU twin is `shaders/measures.wgsl` (one `add_<ident>` and one
//! `value_<ident>` per measure); [`with_term!`] is the one place on the CPU that
//! lists the measures.

use super::kernel::Elem;
use super::kernel::{FL_Q_ZERO_HIT, Lanes, State};
use super::ln::{ABS_MASK, Arith, EXP_MASK, MANT_MASK, ln_hilo};
use crate::measure::Measure;

/// What a row's value needs besides its state: ln Σ w of online p and q
/// (0 when not online), 1 / Σ w_p (1 when not online) and whether p is online.
#[derive(Clone, Copy, Debug)]
pub(super) struct RowLogs {
    pub la: f64,
    pub lb: f64,
    pub inv_sa: f64,
    pub p_online: bool,
}

/// The hand-written loop (`fast`) a term has for probabilities as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fast {
    None,
    Entropy,
    Cross,
    Kl,
    /// The exp sums of an online log form (first passes, NLL from logits).
    Sums,
}

/// One measure's arithmetic (or the first pass's row sums, [`Sums`]).
pub(super) trait Term: 'static {
    /// The measure described (`None`: the row sums of a first pass).
    const MEASURE: Option<Measure>;
    /// It reads q (from the measure table).
    const NEEDS_Q: bool = match Self::MEASURE {
        Some(m) => m.def().needs_q,
        None => true,
    };
    /// It takes class targets as p (a negative log-likelihood).
    const TARGETS: bool = false;
    /// Its hand-written loop, if any.
    const FAST: Fast = Fast::None;
    /// Adds a good element pair to lane `i`. Branch-free (every `if` is a
    /// select) so that loops over the lanes vectorise; every decoder gives
    /// w = ±0 for a zero, so plain sums need no select.
    fn accumulate<const L: usize, A: Arith>(acc: &mut Lanes<L>, i: usize, pe: Elem, qe: Elem);
    /// Adds the lanes of its own sums into the f64 state (Σ w of p and q are
    /// added by the caller). By default the terms that sum into `t` alone
    /// (the bounded measures: no +inf to flag).
    #[inline(always)]
    fn flush<const L: usize>(acc: &Lanes<L>, st: &mut State) {
        st.t += sum(&acc.t);
    }
    /// The row's value in nats.
    fn value(st: &State, r: &RowLogs) -> f64;
}

/// Lane sums in lane order, in f64.
#[inline(always)]
fn sum<const L: usize>(x: &[f32; L]) -> f64 {
    x.iter().fold(0.0f64, |a, &b| a + b as f64)
}

/// The lanes' "p > 0 met q = 0" into the state's flag.
#[inline(always)]
fn flush_hit<const L: usize>(acc: &Lanes<L>, st: &mut State) {
    let hit = acc.hit.iter().fold(0, |a, &b| a | b);
    if hit != 0 {
        st.flags |= FL_Q_ZERO_HIT;
    }
}

/// A zero q under p > 0 (or a log-probability below −f32::MAX under a p of
/// normal weight): the term is +inf.
#[inline(always)]
fn q_zero(pe: &Elem, qe: &Elem) -> bool {
    qe.zero | (qe.far & (pe.w >= f32::MIN_POSITIVE))
}

/// Entropy H(p) = −Σ p ln p.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entropy;

impl Term for Entropy {
    const MEASURE: Option<Measure> = Some(Measure::Entropy);
    const FAST: Fast = Fast::Entropy;
    #[inline(always)]
    fn accumulate<const L: usize, A: Arith>(acc: &mut Lanes<L>, i: usize, pe: Elem, _: Elem) {
        acc.sa[i] += pe.w;
        let t = pe.w * (pe.hi + pe.lo);
        acc.u[i] += if pe.zero { 0.0 } else { t };
    }
    #[inline(always)]
    fn flush<const L: usize>(acc: &Lanes<L>, st: &mut State) {
        st.u += sum(&acc.u);
    }
    fn value(st: &State, r: &RowLogs) -> f64 {
        if r.p_online {
            r.la - st.u * r.inv_sa
        } else {
            -st.u
        }
    }
}

/// Cross-entropy H(p, q) = −Σ p ln q; with class targets as p, the negative
/// log-likelihood.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cross;

impl Term for Cross {
    const MEASURE: Option<Measure> = Some(Measure::CrossEntropy);
    const TARGETS: bool = true;
    const FAST: Fast = Fast::Cross;
    #[inline(always)]
    fn accumulate<const L: usize, A: Arith>(acc: &mut Lanes<L>, i: usize, pe: Elem, qe: Elem) {
        acc.sb[i] += qe.w;
        acc.sa[i] += pe.w;
        let qz = q_zero(&pe, &qe);
        let t = pe.w * (qe.hi + qe.lo);
        acc.v[i] += if pe.zero | qz | qe.far { 0.0 } else { t };
        acc.hit[i] |= (!pe.zero & qz) as u32;
    }
    #[inline(always)]
    fn flush<const L: usize>(acc: &Lanes<L>, st: &mut State) {
        st.v += sum(&acc.v);
        flush_hit(acc, st);
    }
    fn value(st: &State, r: &RowLogs) -> f64 {
        if r.p_online {
            -st.v * r.inv_sa + r.lb
        } else {
            -st.v + st.sa * r.lb
        }
    }
}

/// Kullback-Leibler D(P‖Q) = Σ p (ln p − ln q), summed per element (`d`) so
/// that the logs cancel there; each log taken in two parts (`ln_hilo`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Kl;

impl Term for Kl {
    const MEASURE: Option<Measure> = Some(Measure::Kl);
    const FAST: Fast = Fast::Kl;
    #[inline(always)]
    fn accumulate<const L: usize, A: Arith>(acc: &mut Lanes<L>, i: usize, pe: Elem, qe: Elem) {
        acc.sb[i] += qe.w;
        acc.sa[i] += pe.w;
        let qz = q_zero(&pe, &qe);
        let t = pe.w * ((pe.hi - qe.hi) + (pe.lo - qe.lo));
        acc.d[i] += if pe.zero | qz | qe.far { 0.0 } else { t };
        acc.hit[i] |= (!pe.zero & qz) as u32;
    }
    #[inline(always)]
    fn flush<const L: usize>(acc: &Lanes<L>, st: &mut State) {
        st.d += sum(&acc.d);
        flush_hit(acc, st);
    }
    fn value(st: &State, r: &RowLogs) -> f64 {
        if r.p_online {
            st.d * r.inv_sa - r.la + r.lb
        } else {
            st.d + st.sa * r.lb
        }
    }
}

/// Jensen-Shannon: ½ p ln(2p / (p + q)) + ½ q ln(2q / (p + q)) per element;
/// never infinite; normalised values only (the plan normalises online forms
/// first).
#[derive(Clone, Copy, Debug)]
pub(super) struct Js;

impl Term for Js {
    const MEASURE: Option<Measure> = Some(Measure::Js);
    #[inline(always)]
    fn accumulate<const L: usize, A: Arith>(acc: &mut Lanes<L>, i: usize, pe: Elem, qe: Elem) {
        acc.sa[i] += pe.w;
        acc.sb[i] += qe.w;
        // A sum that is subnormal leaves a term below 1e-36: dropped. A weight
        // that is 0 (an exp that underflowed, or a ratio that did) counts as a
        // zero: its term is 0, not 0 · (-inf).
        let s = pe.w + qe.w;
        let rp = 2.0 * pe.w / s;
        let rq = 2.0 * qe.w / s;
        let (hp, lp) = ln_hilo::<A>(rp);
        let (hq, lq) = ln_hilo::<A>(rq);
        let tp = 0.5 * pe.w * (hp + lp);
        let tq = 0.5 * qe.w * (hq + lq);
        let pz = pe.zero | ((rp.to_bits() & ABS_MASK) == 0);
        let qz = qe.zero | ((rq.to_bits() & ABS_MASK) == 0);
        let tp = if pz { 0.0 } else { tp };
        let tq = if qz { 0.0 } else { tq };
        let normal = (s.to_bits() & EXP_MASK) != 0;
        acc.t[i] += if normal { tp + tq } else { 0.0 };
    }
    fn value(st: &State, _: &RowLogs) -> f64 {
        st.t
    }
}

/// √w of a weight w ≥ 0 (or −0) from its bits: a subnormal w = m·2⁻¹⁴⁹ is
/// √(2m)·2⁻⁷⁵, so no subnormal is computed on (DAZ, flushing hardware) —
/// the twin of the shader's `sqrt_bits`.
#[inline(always)]
fn sqrt_bits(w: f32) -> f32 {
    let b = w.to_bits() & ABS_MASK;
    // 2⁻⁷⁵: the biased exponent 127 − 75, mantissa 0
    let tiny = (((b & MANT_MASK) << 1) as f32).sqrt() * f32::from_bits(52 << 23);
    let normal = f32::from_bits(b).sqrt();
    if (b & EXP_MASK) == 0 { tiny } else { normal }
}

/// Squared Hellinger distance H² = ½ Σ (√p − √q)², this form rather than
/// 1 − Σ √(p q), which cancels for close rows (as the all-pairs kernels);
/// never infinite; normalised values only.
#[derive(Clone, Copy, Debug)]
pub(super) struct Hellinger;

impl Term for Hellinger {
    const MEASURE: Option<Measure> = Some(Measure::Hellinger);
    #[inline(always)]
    fn accumulate<const L: usize, A: Arith>(acc: &mut Lanes<L>, i: usize, pe: Elem, qe: Elem) {
        acc.sa[i] += pe.w;
        acc.sb[i] += qe.w;
        // a zero's weight is ±0: its term is ½ (the other side)
        let d = sqrt_bits(pe.w) - sqrt_bits(qe.w);
        acc.t[i] += d * d;
    }
    fn value(st: &State, _: &RowLogs) -> f64 {
        half_t(st)
    }
}

/// Total variation distance ½ Σ |p − q|; never infinite; normalised values
/// only.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tv;

impl Term for Tv {
    const MEASURE: Option<Measure> = Some(Measure::TotalVariation);
    #[inline(always)]
    fn accumulate<const L: usize, A: Arith>(acc: &mut Lanes<L>, i: usize, pe: Elem, qe: Elem) {
        acc.sa[i] += pe.w;
        acc.sb[i] += qe.w;
        acc.t[i] += (pe.w - qe.w).abs();
    }
    fn value(st: &State, _: &RowLogs) -> f64 {
        half_t(st)
    }
}

/// ½ Σ t: the value of the measures defined as half a sum of distances.
#[inline(always)]
fn half_t(st: &State) -> f64 {
    0.5 * st.t
}

/// The first pass of the two-pass plan: row sums only (its finalize is
/// `kernel::normaliser`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Sums;

impl Term for Sums {
    const MEASURE: Option<Measure> = None;
    const FAST: Fast = Fast::Sums;
    #[inline(always)]
    fn accumulate<const L: usize, A: Arith>(acc: &mut Lanes<L>, i: usize, pe: Elem, qe: Elem) {
        acc.sa[i] += pe.w;
        acc.sb[i] += qe.w;
    }
    #[inline(always)]
    fn flush<const L: usize>(_: &Lanes<L>, _: &mut State) {}
    fn value(_: &State, _: &RowLogs) -> f64 {
        0.0
    }
}

/// Evaluates `$body` with `$T` the [`Term`] of the measure `$m`: the one
/// place on the CPU that lists the measures.
macro_rules! with_term {
    ($m:expr, $T:ident => $body:expr) => {
        match $m {
            $crate::measure::Measure::Entropy => {
                type $T = $crate::cpu::terms::Entropy;
                $body
            }
            $crate::measure::Measure::CrossEntropy => {
                type $T = $crate::cpu::terms::Cross;
                $body
            }
            $crate::measure::Measure::Kl => {
                type $T = $crate::cpu::terms::Kl;
                $body
            }
            $crate::measure::Measure::Js => {
                type $T = $crate::cpu::terms::Js;
                $body
            }
            $crate::measure::Measure::Hellinger => {
                type $T = $crate::cpu::terms::Hellinger;
                $body
            }
            $crate::measure::Measure::TotalVariation => {
                type $T = $crate::cpu::terms::Tv;
                $body
            }
        }
    };
}
pub(super) use with_term;

#[cfg(test)]
mod tests {
    use super::*;

    /// Each measure's term describes that measure (the registry and the
    /// table agree).
    #[test]
    fn every_measure_has_its_term() {
        for m in Measure::ALL {
            assert_eq!(with_term!(m, T => T::MEASURE), Some(m));
            assert_eq!(with_term!(m, T => T::NEEDS_Q), m.needs_q());
        }
        assert!(Sums::NEEDS_Q && Sums::MEASURE.is_none());
    }

    /// √ of every subnormal and of normals around them, from the bits.
    #[test]
    fn sqrt_bits_is_exact_on_subnormals() {
        for b in [
            0u32,
            1,
            2,
            3,
            0x40_0000,
            0x7f_ffff,
            0x80_0000,
            0x3f80_0000,
            0x8000_0000,
        ] {
            let w = f32::from_bits(b);
            let want = (w as f64).abs().sqrt();
            let got = sqrt_bits(w) as f64;
            assert!(
                (got - want).abs() <= want * 1.2e-7,
                "{b:#x}: {got} vs {want}"
            );
        }
    }
}
