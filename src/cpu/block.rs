//! The hot loop: one block of columns of one row into a [`State`].
//!
//! Columns are read `L` at a time into fixed-size arrays; a cheap vectorised
//! "any bad bits in this chunk" test sends the rare chunk with a NaN, a
//! negative probability or an infinity to a scalar path that records the
//! first bad column, while every other chunk runs through straight-line,
//! select-only code that LLVM vectorises. The f32 lanes are flushed into the
//! f64 state every `SUB` columns (at most `SUB / L` terms per lane).
//!
//! Each kernel is compiled three times: for the baseline target, and with
//! `avx2,fma` and `avx512f` enabled (chosen at run time, [`Isa::detect`]).
//! The generic code is `#[inline(always)]`, so the `#[target_feature]`
//! wrappers get their own vector code.

use super::kernel::{
    Elem, KEY_NONE, Lanes, State, Target, bad_log, bad_probs, check_log, check_probs, log_elem,
    probs_div_elem, probs_elem, probs_pow2_elem, split_pow2, status_key, target_elem,
};
use super::ln::{Arith, POS_INF_BITS, Plain};
use super::terms::{Fast, Sums, Term};
use crate::batch::Data;
use crate::record::code;
use std::mem::MaybeUninit;

/// Lanes of the chunk loop: two vector registers' worth (LLVM's loop
/// vectoriser leaves a loop of exactly one vector of trips scalar).
const L_NARROW: usize = 16;
/// Lanes with AVX-512.
const L_WIDE: usize = 32;
/// Columns summed in f32 lanes before a flush into the f64 state.
pub(super) const SUB: usize = 512;
/// Columns of one block: the unit whose state is computed in one call, fixed
/// so that results do not depend on how rows are split over threads.
pub(super) const BLOCK: usize = 4096;

/// Instruction set a kernel was compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    /// The target's baseline (SSE2 on x86-64).
    Base,
    /// AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512F and DQ (with AVX2 and FMA).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The instruction set the CPU backend runs: the best this machine has,
    /// or at most the one `KULLBACK_CPU_ISA` names (`baseline`, `avx2`,
    /// `avx512`), read once per process. Results are bit-identical on every
    /// machine running the same instruction set, so naming one pins them.
    /// AVX-512 is used only once its kernels have agreed with the AVX2 ones
    /// on this machine (`selfcheck`; else a warning and AVX2).
    pub(super) fn chosen() -> Isa {
        static CHOSEN: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let pick = Isa::pick();
            #[cfg(target_arch = "x86_64")]
            if pick == Isa::Avx512 && !super::selfcheck::agrees(Isa::Avx512, Isa::Avx2) {
                log::warn!("kullback: the AVX-512 kernels disagree with the AVX2 ones on this machine; using AVX2");
                return Isa::Avx2;
            }
            pick
        })
    }

    /// [`Isa::chosen`] before the check.
    fn pick() -> Isa {
        let best = Isa::detect();
        let Ok(v) = std::env::var("KULLBACK_CPU_ISA") else {
            return best;
        };
        let asked = match v.trim().to_ascii_lowercase().as_str() {
            "baseline" | "base" => Isa::Base,
            #[cfg(target_arch = "x86_64")]
            "avx2" => Isa::Avx2,
            #[cfg(target_arch = "x86_64")]
            "avx512" => Isa::Avx512,
            _ => {
                log::warn!(
                    "kullback: KULLBACK_CPU_ISA={v} is not baseline, avx2 or avx512; using {best:?}"
                );
                return best;
            }
        };
        if asked.rank() > best.rank() {
            log::warn!("kullback: KULLBACK_CPU_ISA={v}, but this CPU has only {best:?}");
            return best;
        }
        asked
    }

    /// Order of the instruction sets (each includes the ones below).
    fn rank(self) -> u8 {
        match self {
            Isa::Base => 0,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => 1,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => 2,
        }
    }

    /// The best instruction set this machine has.
    pub(super) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            // F16C too (every AVX2 CPU has it): the AVX2 loops widen f16 with it
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Base
    }

    /// Every instruction set this machine can run (for tests).
    #[cfg(test)]
    pub(super) fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Base];
        #[cfg(target_arch = "x86_64")]
        {
            let best = Isa::detect();
            if best != Isa::Base {
                v.push(Isa::Avx2);
            }
            if best == Isa::Avx512 {
                v.push(Isa::Avx512);
            }
        }
        v
    }
}

/// Runtime parameters of one operand's decoder in one block.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Dec {
    /// Probabilities: the row sum to divide by (`ProbsDiv`), relative to 2^m.
    pub s: f32,
    /// Log forms: subtract `m` then `ls`; probabilities divided by their sum:
    /// the exponent K the sum is relative to.
    pub m: f32,
    pub ls: f32,
    /// Log forms: values above 0 are allowed (logits, renormalised log-probs).
    pub pos_ok: bool,
    /// Log forms: online, relative to the block's maximum (found first).
    pub online: bool,
    /// NLL targets.
    pub target: Target,
}

/// Which decoder a kernel is compiled with for one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DecKind {
    /// No operand (q of entropy; p of the NLL fast path).
    None,
    /// Probabilities as given.
    Probs,
    /// Probabilities divided by the row sum.
    ProbsDiv,
    /// Probabilities summed relative to a power of two (the first pass of
    /// probabilities being renormalised).
    ProbsPow2,
    /// Log-probabilities or logits (as given, normalised, or online).
    Log,
    /// NLL targets without class weights.
    Targets,
    /// NLL targets with class weights (the p slice holds the weights).
    TargetsWeighted,
}

/// One operand's element decoder, monomorphised per [`DecKind`].
trait Decode: Copy {
    /// Reads its slice.
    const READS: bool;
    /// Its values can be bad.
    const CHECKS: bool;
    /// Can be online (relative to the block maximum).
    const ONLINE: bool = false;
    /// Relative to 2^K, K the block's largest exponent ([`Decode::set_max`] takes K).
    const POW2: bool = false;
    /// Which decoder this is (picks a hand-written loop where there is one).
    const KIND: DecKind;
    fn new(d: &Dec) -> Self;
    fn is_bad(&self, b: u32) -> bool;
    /// 0, or 1 NaN, 2 negative, 3 infinite, 4 positive log.
    fn code(&self, b: u32) -> u32;
    fn elem<A: Arith>(&self, x: f32, col: u32) -> Elem;
    fn set_max(&mut self, _m: f32) {}
    /// The maximum set by [`Decode::set_max`] (0 when none).
    fn max(&self) -> f32 {
        0.0
    }
}

#[derive(Clone, Copy)]
struct NoneD;
impl Decode for NoneD {
    const KIND: DecKind = DecKind::None;
    const READS: bool = false;
    const CHECKS: bool = false;
    fn new(_: &Dec) -> Self {
        NoneD
    }
    #[inline(always)]
    fn is_bad(&self, _: u32) -> bool {
        false
    }
    #[inline(always)]
    fn code(&self, _: u32) -> u32 {
        0
    }
    #[inline(always)]
    fn elem<A: Arith>(&self, _: f32, _: u32) -> Elem {
        Elem {
            zero: true,
            w: 0.0,
            hi: 0.0,
            lo: 0.0,
            far: false,
        }
    }
}

#[derive(Clone, Copy)]
struct ProbsD;
impl Decode for ProbsD {
    const KIND: DecKind = DecKind::Probs;
    const READS: bool = true;
    const CHECKS: bool = true;
    fn new(_: &Dec) -> Self {
        ProbsD
    }
    #[inline(always)]
    fn is_bad(&self, b: u32) -> bool {
        bad_probs(b)
    }
    #[inline(always)]
    fn code(&self, b: u32) -> u32 {
        check_probs(b)
    }
    #[inline(always)]
    fn elem<A: Arith>(&self, x: f32, _: u32) -> Elem {
        probs_elem::<A>(x)
    }
}

#[derive(Clone, Copy)]
struct ProbsDivD {
    s: f32,
    k: f32,
}
impl Decode for ProbsDivD {
    const KIND: DecKind = DecKind::ProbsDiv;
    const READS: bool = true;
    const CHECKS: bool = true;
    fn new(d: &Dec) -> Self {
        ProbsDivD { s: d.s, k: d.m }
    }
    #[inline(always)]
    fn is_bad(&self, b: u32) -> bool {
        bad_probs(b)
    }
    #[inline(always)]
    fn code(&self, b: u32) -> u32 {
        check_probs(b)
    }
    #[inline(always)]
    fn elem<A: Arith>(&self, x: f32, _: u32) -> Elem {
        probs_div_elem::<A>(x, self.k, self.s)
    }
}

#[derive(Clone, Copy)]
struct ProbsPow2D {
    k: f32,
}
impl Decode for ProbsPow2D {
    const KIND: DecKind = DecKind::ProbsPow2;
    const READS: bool = true;
    const CHECKS: bool = true;
    const POW2: bool = true;
    fn new(_: &Dec) -> Self {
        ProbsPow2D { k: 0.0 }
    }
    #[inline(always)]
    fn is_bad(&self, b: u32) -> bool {
        bad_probs(b)
    }
    #[inline(always)]
    fn code(&self, b: u32) -> u32 {
        check_probs(b)
    }
    #[inline(always)]
    fn elem<A: Arith>(&self, x: f32, _: u32) -> Elem {
        probs_pow2_elem(x, self.k)
    }
    fn set_max(&mut self, k: f32) {
        self.k = k;
    }
    fn max(&self) -> f32 {
        self.k
    }
}

#[derive(Clone, Copy)]
struct LogD {
    m: f32,
    ls: f32,
    pos_ok: bool,
}
impl Decode for LogD {
    const KIND: DecKind = DecKind::Log;
    const READS: bool = true;
    const CHECKS: bool = true;
    const ONLINE: bool = true;
    fn new(d: &Dec) -> Self {
        LogD {
            m: d.m,
            ls: d.ls,
            pos_ok: d.pos_ok,
        }
    }
    #[inline(always)]
    fn is_bad(&self, b: u32) -> bool {
        bad_log(b, self.pos_ok)
    }
    #[inline(always)]
    fn code(&self, b: u32) -> u32 {
        check_log(b, self.pos_ok)
    }
    #[inline(always)]
    fn elem<A: Arith>(&self, x: f32, _: u32) -> Elem {
        log_elem::<A>(x, self.m, self.ls)
    }
    fn set_max(&mut self, m: f32) {
        self.m = m;
        self.ls = 0.0;
    }
    fn max(&self) -> f32 {
        self.m
    }
}

#[derive(Clone, Copy)]
struct TargetsD<const W: bool> {
    t: Target,
}
impl<const W: bool> Decode for TargetsD<W> {
    const KIND: DecKind = if W {
        DecKind::TargetsWeighted
    } else {
        DecKind::Targets
    };
    const READS: bool = W;
    const CHECKS: bool = false;
    fn new(d: &Dec) -> Self {
        TargetsD { t: d.target }
    }
    #[inline(always)]
    fn is_bad(&self, _: u32) -> bool {
        false
    }
    #[inline(always)]
    fn code(&self, _: u32) -> u32 {
        0
    }
    #[inline(always)]
    fn elem<A: Arith>(&self, x: f32, col: u32) -> Elem {
        target_elem(if W { x } else { 1.0 }, col, &self.t)
    }
}

/// The data of one block: `p` and `q` hold the block's columns (empty when
/// the decoder reads nothing; for weighted targets `p` holds the class
/// weights), `col0` is the row column of their first element.
#[derive(Clone, Copy, Debug)]
pub(super) struct BlockIo<'a> {
    pub p: &'a [f32],
    pub q: &'a [f32],
    pub len: usize,
    pub col0: usize,
    /// NLL fast path: (column in the block, w_t) of a target term to add.
    pub target: Option<(usize, f32)>,
    /// Operands that are not f32 in the caller's memory (f64, f16, bf16):
    /// their values and the element index of the block's first column. Such
    /// an operand's slice above is empty; [`block_impl`] converts its values
    /// a segment ([`SUB`] columns, an L1-sized tile) at a time, or the whole
    /// block first where the kernel reads it before its segments (maxima,
    /// exponents, an NLL target).
    pub conv: Conv<'a>,
}

/// The converted operands of a block (see [`BlockIo::conv`]).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Conv<'a> {
    pub p: Option<(Data<'a>, usize)>,
    pub q: Option<(Data<'a>, usize)>,
}

impl Conv<'_> {
    fn any(&self) -> bool {
        self.p.is_some() || self.q.is_some()
    }
}

/// `o`'s columns `c0..c1` of the block as f32: converted into `buf`, or the
/// block's own slice.
#[inline(always)]
fn conv_cols<'s>(
    o: Option<(Data<'s>, usize)>,
    own: &'s [f32],
    (c0, c1): (usize, usize),
    buf: &'s mut [MaybeUninit<f32>],
) -> &'s [f32] {
    match o {
        Some((d, at)) => d.f32s(at + c0..at + c1, buf),
        None if own.is_empty() => own,
        None => &own[c0..c1],
    }
}

/// A compiled kernel. Safety: only call one that [`pick`] returned for this
/// machine's [`Isa`] (it may use instructions the baseline lacks).
pub(super) type BlockFn = unsafe fn(&Dec, &Dec, &BlockIo<'_>) -> State;

/// Maximum of the finite and -inf values (NaN and +inf are skipped: they are
/// reported as bad values), -inf when there is none.
#[inline(always)]
fn block_max<const L: usize>(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; L];
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for i in 0..L {
            let b = c[i].to_bits();
            let skip = (b & 0x7fff_ffff) >= POS_INF_BITS;
            let v = if skip { f32::NEG_INFINITY } else { c[i] };
            lanes[i] = if v > lanes[i] { v } else { lanes[i] };
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        let skip = (v.to_bits() & 0x7fff_ffff) >= POS_INF_BITS;
        if !skip && v > lanes[i] {
            lanes[i] = v;
        }
    }
    lanes
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// The largest exponent k (x = m · 2^k, m in [1, 2)) of the positive finite
/// values, `None` when there is none (bad values are reported elsewhere).
#[inline(always)]
fn block_pow2<const L: usize>(x: &[f32]) -> Option<i32> {
    let mut lanes = [0u32; L];
    let mut chunks = x.chunks_exact(L);
    let keep = |b: u32| if b < POS_INF_BITS { b } else { 0 };
    for c in &mut chunks {
        for i in 0..L {
            lanes[i] = lanes[i].max(keep(c[i].to_bits()));
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        lanes[i] = lanes[i].max(keep(v.to_bits()));
    }
    // positive floats order as their bits: the largest bits are the largest value
    let b = lanes.iter().fold(0, |a, &b| a.max(b));
    (b != 0).then(|| split_pow2(b).1)
}

/// The scalar path for `n` lanes of a chunk that holds a bad value (or is the
/// short last chunk): the shader's `accumulate` element by element.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the inlined body of the chunk loop"
)]
fn slow<T: Term, const L: usize, A: Arith, P: Decode, Q: Decode>(
    pd: &P,
    qd: &Q,
    pc: &[f32],
    qc: &[f32],
    n: usize,
    col: usize,
    acc: &mut Lanes<L>,
    key: &mut u64,
) {
    for i in 0..n {
        let px = if P::READS { pc[i] } else { 0.0 };
        let qx = if Q::READS { qc[i] } else { 0.0 };
        let c = pd.code(px.to_bits());
        if c != 0 {
            *key = (*key).min(status_key(col + i, code::P_NAN - 1 + c));
            continue;
        }
        let c = qd.code(qx.to_bits());
        if c != 0 {
            *key = (*key).min(status_key(col + i, code::Q_NAN - 1 + c));
            continue;
        }
        let pe = pd.elem::<A>(px, (col + i) as u32);
        let qe = qd.elem::<A>(qx, (col + i) as u32);
        T::accumulate::<L, A>(acc, i, pe, qe);
    }
}

/// The hand-written AVX2 loop of [`super::fast`] for `(M, P, Q)` over
/// columns `c..c1` of the block: the columns it consumed (whole steps of
/// ordinary values), or `None` where there is no such loop. `qm` is the
/// block maximum of an online q.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fast_cols<T: Term, const L: usize, P: Decode, Q: Decode>(
    dq: &Dec,
    io: &BlockIo<'_>,
    qm: f32,
    c: usize,
    c1: usize,
    st: &mut State,
) -> Option<usize> {
    use super::fast;
    use DecKind as K;
    if L == L_WIDE {
        // SAFETY: wide kernels are only picked on machines with AVX-512F/DQ.
        let k = unsafe { fast512_cols::<T, P, Q>(io, c, c1, st) };
        if k.is_some() {
            return k;
        }
    }
    // SAFETY (every call below): the caller guarantees AVX2, FMA and F16C.
    unsafe {
        match (T::FAST, P::KIND, Q::KIND) {
            (Fast::Kl, K::Probs, K::Probs) => Some(fast::kl(&io.p[c..c1], &io.q[c..c1], st)),
            (Fast::Cross, K::Probs, K::Probs) => Some(fast::cross(&io.p[c..c1], &io.q[c..c1], st)),
            (Fast::Entropy, K::Probs, K::None) => Some(fast::entropy(&io.p[c..c1], st)),
            (Fast::Sums, K::None, K::Log) if dq.online => {
                Some(fast::exp_sums(&io.q[c..c1], qm, dq.pos_ok, st))
            }
            _ => None,
        }
    }
}

/// The hand-written AVX2 loop of [`super::fast`] for `(M, P, Q)` over
/// columns `c0..c1` of a block of half values (whole steps only), widened
/// in its loads: `true` when it added to `st` exactly what [`segment`]
/// adds from the widened values (a segment of ordinary values), `false`
/// with nothing added (the caller then converts the segment).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fused_half<'a, T: Term, P: Decode, Q: Decode>(
    io: &BlockIo<'a>,
    (c0, c1): (usize, usize),
    st: &mut State,
) -> bool {
    use super::fast::{Fused, fused};
    use DecKind as K;
    if !(c1 - c0).is_multiple_of(super::fast::STEP) {
        return false;
    }
    let which = match (T::FAST, P::KIND, Q::KIND) {
        (Fast::Kl, K::Probs, K::Probs) => Fused::Kl,
        (Fast::Cross, K::Probs, K::Probs) => Fused::Cross,
        (Fast::Entropy, K::Probs, K::None) => Fused::Entropy,
        _ => return false,
    };
    let at = |o: Option<(Data<'a>, usize)>| o.map(|(d, a)| (d, a + c0..a + c1));
    // SAFETY (every call): the caller guarantees the CPU features.
    unsafe {
        match (at(io.conv.p), at(io.conv.q), which) {
            (Some((Data::F16(p), rp)), None, Fused::Entropy) => fused(which, &p[rp], &[], st),
            (Some((Data::BF16(p), rp)), None, Fused::Entropy) => fused(which, &p[rp], &[], st),
            (Some((Data::F16(p), rp)), Some((Data::F16(q), rq)), _) => {
                fused(which, &p[rp], &q[rq], st)
            }
            (Some((Data::BF16(p), rp)), Some((Data::BF16(q), rq)), _) => {
                fused(which, &p[rp], &q[rq], st)
            }
            _ => false,
        }
    }
}

/// The AVX-512 loops of [`super::fast512`] for `(M, P, Q)` over columns
/// `c..c1` of the block: every whole vector, specials and status included
/// (the first bad column into `st.key`), or `None` where there is no such loop.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512DQ, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fast512_cols<T: Term, P: Decode, Q: Decode>(
    io: &BlockIo<'_>,
    c: usize,
    c1: usize,
    st: &mut State,
) -> Option<usize> {
    use super::fast512 as f;
    use DecKind as K;
    let col = io.col0 + c;
    // SAFETY (every call below): the caller guarantees AVX-512F/DQ.
    unsafe {
        match (T::FAST, P::KIND, Q::KIND) {
            (Fast::Kl, K::Probs, K::Probs) => Some(f::kl(&io.p[c..c1], &io.q[c..c1], col, st)),
            (Fast::Cross, K::Probs, K::Probs) => {
                Some(f::cross(&io.p[c..c1], &io.q[c..c1], col, st))
            }
            (Fast::Entropy, K::Probs, K::None) => Some(f::entropy(&io.p[c..c1], col, st)),
            _ => None,
        }
    }
}

/// Maximum of a block for an online operand, with the AVX2 loop when `FAST`.
#[inline(always)]
fn max_of<const L: usize, const FAST: bool>(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if FAST && !x.is_empty() {
        // SAFETY: FAST kernels are only picked on machines with AVX2, FMA and F16C.
        if let Some(m) = unsafe { super::fast::max(x) } {
            return m;
        }
    }
    block_max::<L>(x)
}

/// One block into a state. `FAST`: the build has AVX2 and FMA, and uses the
/// hand-written loops where there is one. Converted operands
/// ([`BlockIo::conv`]) go by segment-sized tiles, or, where the kernel reads
/// the whole block before its segments, are converted whole first.
#[inline(always)]
fn block_impl<T: Term, const L: usize, A: Arith, P: Decode, Q: Decode, const FAST: bool>(
    dp: &Dec,
    dq: &Dec,
    io: &BlockIo<'_>,
) -> State {
    let whole = (P::ONLINE && dp.online)
        || (Q::ONLINE && dq.online)
        || P::POW2
        || Q::POW2
        || io.target.is_some();
    let mut pb = [const { MaybeUninit::<f32>::uninit() }; BLOCK];
    let mut qb = [const { MaybeUninit::<f32>::uninit() }; BLOCK];
    let converted;
    let io = if whole && io.conv.any() {
        let n = io.len;
        converted = BlockIo {
            p: conv_cols(io.conv.p, io.p, (0, n), &mut pb),
            q: conv_cols(io.conv.q, io.q, (0, n), &mut qb),
            conv: Conv::default(),
            ..*io
        };
        &converted
    } else {
        io
    };
    block_core::<T, L, A, P, Q, FAST>(dp, dq, io)
}

/// [`block_impl`] once whole-block conversions are done.
#[inline(always)]
fn block_core<T: Term, const L: usize, A: Arith, P: Decode, Q: Decode, const FAST: bool>(
    dp: &Dec,
    dq: &Dec,
    io: &BlockIo<'_>,
) -> State {
    use super::kernel::{FL_P_SEEN, FL_Q_SEEN};
    let mut pd = P::new(dp);
    let mut qd = Q::new(dq);
    let mut st = State::EMPTY;
    // NLL from logits (and every sums pass of one online log operand): the
    // maximum and the exp sums in one hand-written call; a block with a
    // special value takes the general path below
    #[cfg(target_arch = "x86_64")]
    if FAST
        && T::FAST == Fast::Sums
        && P::KIND == DecKind::None
        && Q::KIND == DecKind::Log
        && dq.online
        && io.len > 0
    {
        let x = &io.q[..io.len];
        // SAFETY: FAST kernels are only picked on machines with AVX2, FMA and F16C,
        // wide ones (L_WIDE) on machines with AVX-512F/DQ.
        let lse = unsafe {
            if L == L_WIDE {
                super::fast512::lse(x, dq.pos_ok, SUB)
            } else {
                super::fast::lse(x, dq.pos_ok, SUB)
            }
        };
        if let Some((m, s)) = lse {
            qd.set_max(m);
            st.mb = m as f64;
            st.sb = s;
            st.flags |= FL_Q_SEEN;
            add_target::<A, Q>(&qd, io, &mut st);
            return st;
        }
    }
    // online operands: relative to the block's maximum, found first
    if P::ONLINE && dp.online {
        let m = max_of::<L, FAST>(&io.p[..io.len]);
        pd.set_max(m);
        st.ma = m as f64;
        if m > f32::NEG_INFINITY {
            st.flags |= FL_P_SEEN;
        }
    }
    if Q::ONLINE && dq.online {
        let m = max_of::<L, FAST>(&io.q[..io.len]);
        qd.set_max(m);
        st.mb = m as f64;
        if m > f32::NEG_INFINITY {
            st.flags |= FL_Q_SEEN;
        }
    }
    // probabilities summed relative to 2^K: K of the block, found first
    if P::POW2 {
        if let Some(k) = block_pow2::<L>(&io.p[..io.len]) {
            pd.set_max(k as f32);
            st.ma = k as f64;
            st.flags |= FL_P_SEEN;
        }
    }
    if Q::POW2 {
        if let Some(k) = block_pow2::<L>(&io.q[..io.len]) {
            qd.set_max(k as f32);
            st.mb = k as f64;
            st.flags |= FL_Q_SEEN;
        }
    }
    let mut acc = Lanes::<L>::ZERO;
    let mut key = KEY_NONE;
    let n = io.len;
    let mut c0 = 0;
    while c0 < n {
        let c1 = (c0 + SUB).min(n);
        if io.conv.any() {
            // the next segment's values come in while this one computes
            for (d, at) in [io.conv.p, io.conv.q].into_iter().flatten() {
                d.prefetch(at + c1..at + c1 + SUB);
            }
            // half values widened in the hand-written loop's loads
            #[cfg(target_arch = "x86_64")]
            // SAFETY: FAST kernels are only picked on machines with AVX2, FMA
            // and F16C.
            if FAST && L == L_NARROW && unsafe { fused_half::<T, P, Q>(io, (c0, c1), &mut st) } {
                c0 = c1;
                continue;
            }
            // else this segment's values converted into L1-sized tiles: the
            // same segment, column for column, as from f32 values
            let mut pt = [const { MaybeUninit::<f32>::uninit() }; SUB];
            let mut qt = [const { MaybeUninit::<f32>::uninit() }; SUB];
            let p = if P::READS {
                conv_cols(io.conv.p, io.p, (c0, c1), &mut pt)
            } else {
                io.p
            };
            let q = if Q::READS {
                conv_cols(io.conv.q, io.q, (c0, c1), &mut qt)
            } else {
                io.q
            };
            let tile = BlockIo {
                p,
                q,
                len: c1 - c0,
                col0: io.col0 + c0,
                target: None,
                conv: Conv::default(),
            };
            segment::<T, L, A, P, Q, FAST>(
                &pd,
                &qd,
                dq,
                &tile,
                (0, c1 - c0),
                &mut st,
                &mut acc,
                &mut key,
            );
        } else {
            segment::<T, L, A, P, Q, FAST>(&pd, &qd, dq, io, (c0, c1), &mut st, &mut acc, &mut key);
        }
        c0 = c1;
    }
    add_target::<A, Q>(&qd, io, &mut st);
    // the AVX-512 loops record the bad columns they meet in `st.key`
    st.key = st.key.min(key);
    st
}

/// Columns `c0..c1` (one segment, at most [`SUB`]) of `io` into `st`, the
/// body of [`block_impl`]'s segment loop.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the inlined body of the segment loop"
)]
fn segment<T: Term, const L: usize, A: Arith, P: Decode, Q: Decode, const FAST: bool>(
    pd: &P,
    qd: &Q,
    dq: &Dec,
    io: &BlockIo<'_>,
    (c0, c1): (usize, usize),
    st: &mut State,
    acc: &mut Lanes<L>,
    key: &mut u64,
) {
    let zeros = [0.0f32; L];
    // read by the hand-written loops only
    let _ = dq;
    let mut c = c0;
    // the lanes of `acc` hold something to flush
    let mut slow_used = !FAST;
    #[cfg(target_arch = "x86_64")]
    if FAST {
        // hand-written steps; a step with a special value goes through
        // `slow`, and the loop resumes after it
        let qm = qd.max();
        // SAFETY: FAST kernels are only picked on machines with AVX2, FMA and F16C.
        while let Some(k) = unsafe { fast_cols::<T, L, P, Q>(dq, io, qm, c, c1, st) } {
            c += k;
            if c + L > c1 {
                break;
            }
            slow_used = true;
            let pc = if P::READS {
                &io.p[c..c + L]
            } else {
                &zeros[..]
            };
            let qc = if Q::READS {
                &io.q[c..c + L]
            } else {
                &zeros[..]
            };
            slow::<T, L, A, P, Q>(pd, qd, pc, qc, L, io.col0 + c, acc, key);
            c += L;
        }
    }
    while c + L <= c1 {
        slow_used = true;
        let pc: &[f32; L] = if P::READS {
            io.p[c..c + L].try_into().unwrap_or(&zeros)
        } else {
            &zeros
        };
        let qc: &[f32; L] = if Q::READS {
            io.q[c..c + L].try_into().unwrap_or(&zeros)
        } else {
            &zeros
        };
        let mut bad = 0u32;
        if P::CHECKS {
            for x in pc {
                bad |= pd.is_bad(x.to_bits()) as u32;
            }
        }
        if Q::CHECKS {
            for x in qc {
                bad |= qd.is_bad(x.to_bits()) as u32;
            }
        }
        let col = io.col0 + c;
        if bad == 0 {
            for i in 0..L {
                let pe = pd.elem::<A>(pc[i], (col + i) as u32);
                let qe = qd.elem::<A>(qc[i], (col + i) as u32);
                T::accumulate::<L, A>(acc, i, pe, qe);
            }
        } else {
            slow::<T, L, A, P, Q>(pd, qd, pc, qc, L, col, acc, key);
        }
        c += L;
    }
    if c < c1 {
        let k = c1 - c;
        let pc = if P::READS { &io.p[c..c1] } else { &zeros[..k] };
        let qc = if Q::READS { &io.q[c..c1] } else { &zeros[..k] };
        slow::<T, L, A, P, Q>(pd, qd, pc, qc, k, io.col0 + c, acc, key);
        slow_used = true;
    }
    if slow_used {
        acc.flush::<T>(st);
    }
}

/// NLL fast path: the one term of an unsmoothed target, if it is in this block.
#[inline(always)]
fn add_target<A: Arith, Q: Decode>(qd: &Q, io: &BlockIo<'_>, st: &mut State) {
    use super::kernel::FL_Q_ZERO_HIT;
    if let Some((i, w)) = io.target {
        let qx = io.q[i];
        if qd.code(qx.to_bits()) == 0 && w != 0.0 {
            let qe = qd.elem::<A>(qx, (io.col0 + i) as u32);
            st.sa += w as f64;
            if qe.zero | (qe.far & (w >= f32::MIN_POSITIVE)) {
                st.flags |= FL_Q_ZERO_HIT;
            } else {
                st.v += (w * (qe.hi + qe.lo)) as f64;
            }
        }
    }
}

/// Baseline build of a kernel.
///
/// # Safety
/// None beyond the [`BlockFn`] contract (this one runs anywhere).
unsafe fn block_base<T: Term, P: Decode, Q: Decode>(dp: &Dec, dq: &Dec, io: &BlockIo<'_>) -> State {
    block_impl::<T, L_NARROW, Plain, P, Q, false>(dp, dq, io)
}

/// AVX2 + FMA build of a kernel.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<T: Term, P: Decode, Q: Decode>(dp: &Dec, dq: &Dec, io: &BlockIo<'_>) -> State {
    block_impl::<T, L_NARROW, super::ln::Fused, P, Q, true>(dp, dq, io)
}

/// AVX-512 build of a kernel.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512DQ, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn block_avx512<T: Term, P: Decode, Q: Decode>(
    dp: &Dec,
    dq: &Dec,
    io: &BlockIo<'_>,
) -> State {
    block_impl::<T, L_WIDE, super::ln::Fused, P, Q, true>(dp, dq, io)
}

fn build<T: Term, P: Decode, Q: Decode>(isa: Isa) -> BlockFn {
    match isa {
        Isa::Base => block_base::<T, P, Q>,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => block_avx2::<T, P, Q>,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => block_avx512::<T, P, Q>,
    }
}

fn with_q<T: Term, P: Decode>(q: DecKind, isa: Isa) -> Option<BlockFn> {
    Some(match q {
        DecKind::None => build::<T, P, NoneD>(isa),
        DecKind::Probs => build::<T, P, ProbsD>(isa),
        DecKind::ProbsDiv => build::<T, P, ProbsDivD>(isa),
        DecKind::ProbsPow2 => build::<T, P, ProbsPow2D>(isa),
        DecKind::Log => build::<T, P, LogD>(isa),
        DecKind::Targets | DecKind::TargetsWeighted => return None,
    })
}

/// The kernel of term `T` for the decoders `p` and `q`, compiled for `isa`;
/// `None` for a pair no plan meets (those are not compiled): a measure reads
/// values of p (and q where it needs one), the cross-entropy also class
/// targets as p; the row sums of a first pass read what is being normalised.
pub(super) fn pick<T: Term>(p: DecKind, q: DecKind, isa: Isa) -> Option<BlockFn> {
    use DecKind as K;
    let q_none = q == K::None;
    if T::MEASURE.is_none() {
        // first passes, and the NLL fast path (p None, q as in its term pass)
        let sums_q = matches!(q, K::None | K::Probs | K::ProbsPow2 | K::Log);
        return match p {
            K::None if !q_none => with_q::<T, NoneD>(q, isa),
            K::Probs if sums_q => with_q::<T, ProbsD>(q, isa),
            K::ProbsPow2 if sums_q => with_q::<T, ProbsPow2D>(q, isa),
            K::Log if sums_q => with_q::<T, LogD>(q, isa),
            _ => None,
        };
    }
    // the q side a measure meets: none, or any values decoder
    let q_ok = if T::NEEDS_Q {
        !matches!(q, K::None | K::Targets | K::TargetsWeighted)
    } else {
        q_none
    };
    match p {
        K::Probs if q_ok => with_q::<T, ProbsD>(q, isa),
        K::ProbsDiv if q_ok => with_q::<T, ProbsDivD>(q, isa),
        K::Log if q_ok => with_q::<T, LogD>(q, isa),
        K::Targets if T::TARGETS && !q_none => with_q::<T, TargetsD<false>>(q, isa),
        K::TargetsWeighted if T::TARGETS && !q_none => with_q::<T, TargetsD<true>>(q, isa),
        _ => None,
    }
}

/// [`pick`] for the row sums of a first pass (and the NLL fast path).
pub(super) fn pick_sums(p: DecKind, q: DecKind, isa: Isa) -> Option<BlockFn> {
    pick::<Sums>(p, q, isa)
}

#[cfg(test)]
mod tests {
    use super::super::ln::NEG_INF_BITS;
    use super::*;

    #[test]
    fn bad_checks_agree_with_codes() {
        let mut vals: Vec<u32> = vec![
            0,
            0x8000_0000,
            1,
            0x8000_0001,
            0x3f80_0000,
            0xbf80_0000,
            POS_INF_BITS,
            NEG_INF_BITS,
            0x7fc0_0000,
            0xffc0_0000,
            0x7f80_0001,
            0xff80_0001,
            0x7f7f_ffff,
            0xff7f_ffff,
        ];
        let mut rng = crate::test_support::random::Rng::new(99);
        for _ in 0..10_000 {
            vals.push(rng.next_u32());
        }
        for b in vals {
            assert_eq!(bad_probs(b), check_probs(b) != 0, "{b:#x}");
            for pos_ok in [false, true] {
                assert_eq!(bad_log(b, pos_ok), check_log(b, pos_ok) != 0, "{b:#x}");
            }
        }
    }

    #[test]
    fn every_isa_picks() {
        for isa in Isa::available() {
            use super::super::terms::Kl;
            assert!(pick::<Kl>(DecKind::Probs, DecKind::Probs, isa).is_some());
            assert!(pick::<Kl>(DecKind::Targets, DecKind::Probs, isa).is_none());
        }
    }
}
