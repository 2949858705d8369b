//! The per-row state machine: the CPU twin of `shaders/rows.wgsl`.
//!
//! Same state, same element rules, same finalize formulas; the names follow
//! the shader so the two read side by side. Differences, all for accuracy on
//! long rows:
//! - states are merged and finalized in f64 (the lanes of [`super::block`] sum
//!   short runs in f32 and flush into these f64 fields);
//! - KL accumulates `d = Σ w (l_p − l_q)` per element instead of `u − v` at
//!   the end (`u` and `v` are each about the entropy, their difference can be
//!   tiny); the logs of probabilities are taken in two parts so that
//!   `l_p − l_q` keeps its accuracy ([`super::ln::ln_hilo`]);
//! - an online (running-max) operand is kept relative to the maximum of each
//!   block of columns ([`super::block`] finds it first) instead of rescaling
//!   per element; blocks then merge with the shader's `merge`.

use super::ln::{
    ABS_MASK, Arith, EXP_MASK, LN2_HI, LN2_LO, MANT_MASK, NEG_INF_BITS, POS_INF_BITS, exp, ln_hilo,
    ln_pos,
};
use crate::record::code;

/// "No problem yet" while reducing; mapped to `code::OK` at the end.
pub(super) use crate::record::KEY_NONE;

/// A term with p > 0 and q = 0: the value is +inf.
pub(super) const FL_Q_ZERO_HIT: u32 = 1;
/// The online p state holds an element.
pub(super) const FL_P_SEEN: u32 = 2;
/// The online q state holds an element.
pub(super) const FL_Q_SEEN: u32 = 4;

/// A problem's ordered key (see [`crate::record::status_key`]); columns fit
/// u32 (the call's shape is checked).
#[inline(always)]
pub(super) fn status_key(col: usize, code: u32) -> u64 {
    crate::record::status_key(col as u32, code)
}

/// A row's (or a block's) reduction state. For plain operands `sa = Σ w`,
/// `u = Σ w ln p`, `v = Σ w ln q`, `d = Σ w (ln p − ln q)`, `sb = Σ q`,
/// `t = Σ` JS terms with w = p. For an online operand the sums are relative to
/// the running maximum (`ma` for p, `mb` for q): w = e^(a − ma), `l_p = a − ma`,
/// `l_q = b − mb`, `sb = Σ e^(b − mb)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct State {
    pub ma: f64,
    pub sa: f64,
    pub u: f64,
    pub mb: f64,
    pub sb: f64,
    pub v: f64,
    pub d: f64,
    pub t: f64,
    /// The first problem's key ([`KEY_NONE`] when none).
    pub key: u64,
    pub flags: u32,
}

impl State {
    pub(super) const EMPTY: State = State {
        ma: 0.0,
        sa: 0.0,
        u: 0.0,
        mb: 0.0,
        sb: 0.0,
        v: 0.0,
        d: 0.0,
        t: 0.0,
        key: KEY_NONE,
        flags: 0,
    };
}

/// Rescales an online p state to the maximum m (≥ st.ma when seen).
fn rescale_p(st: &mut State, m: f64) {
    let seen = (st.flags & FL_P_SEEN) != 0;
    let scale = if seen { (st.ma - m).exp() } else { 0.0 };
    let shift = if seen { m - st.ma } else { 0.0 };
    st.sa *= scale;
    st.u = st.u * scale - shift * st.sa;
    st.v *= scale;
    st.d = st.d * scale - shift * st.sa;
    st.ma = m;
}

/// Rescales an online q state to the maximum m: sb scales, v loses shift · sa.
/// When m is more than f32::MAX above mb, the log-probabilities of the elements
/// so far do not fit f32 (see [`Elem::far`]), as in the shader's `rescale_q`.
fn rescale_q(st: &mut State, m: f64) {
    let seen = (st.flags & FL_Q_SEEN) != 0;
    let shift = if seen { m - st.mb } else { 0.0 };
    if shift > f32::MAX as f64 {
        st.sb = 0.0;
        st.v = 0.0;
        st.d = 0.0;
        if st.sa >= f32::MIN_POSITIVE as f64 {
            st.flags |= FL_Q_ZERO_HIT;
        }
        st.mb = m;
        return;
    }
    let scale = if seen { (st.mb - m).exp() } else { 0.0 };
    st.sb *= scale;
    st.v -= shift * st.sa;
    st.d += shift * st.sa;
    st.mb = m;
}

/// How an operand's sums are kept in a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rel {
    /// Plain sums.
    Plain,
    /// Relative to the running maximum `m` (e^(x − m)): logits and log forms
    /// being normalised.
    Online,
    /// Relative to 2^K, K the running largest exponent (first pass of
    /// probabilities being renormalised): exact scaling, so that sums of
    /// subnormals and sums beyond the f32 range are formed like any other.
    Pow2,
}

/// 2^d in f64 for an integer d ≥ −1022 (exact).
fn pow2_f64(d: f64) -> f64 {
    f64::from_bits(((d as i64 + 1023) as u64) << 52)
}

/// Merges two power-of-two-relative sums (`Rel::Pow2`) to the larger exponent.
fn merge_pow2(
    (ka, sa, a_seen): (f64, f64, bool),
    (kb, sb, b_seen): (f64, f64, bool),
) -> (f64, f64) {
    let k = match (a_seen, b_seen) {
        (true, true) => ka.max(kb),
        (true, false) => ka,
        (false, _) => kb,
    };
    let scale = |kx: f64, seen: bool| if seen { pow2_f64(kx - k) } else { 0.0 };
    (k, sa * scale(ka, a_seen) + sb * scale(kb, b_seen))
}

/// Merges two states; `p` / `q` say how each operand's sums are kept.
pub(super) fn merge(a_in: &State, b_in: &State, p: Rel, q: Rel) -> State {
    let mut a = *a_in;
    let mut b = *b_in;
    if p == Rel::Pow2 {
        let seen = |s: &State| (s.flags & FL_P_SEEN) != 0;
        (a.ma, a.sa) = merge_pow2((a.ma, a.sa, seen(&a)), (b.ma, b.sa, seen(&b)));
        b.sa = 0.0;
    }
    if q == Rel::Pow2 {
        let seen = |s: &State| (s.flags & FL_Q_SEEN) != 0;
        (a.mb, a.sb) = merge_pow2((a.mb, a.sb, seen(&a)), (b.mb, b.sb, seen(&b)));
        b.sb = 0.0;
    }
    let (p_online, q_online) = (p == Rel::Online, q == Rel::Online);
    if p_online {
        let a_seen = (a.flags & FL_P_SEEN) != 0;
        let b_seen = (b.flags & FL_P_SEEN) != 0;
        let m = match (a_seen, b_seen) {
            (true, true) => a.ma.max(b.ma),
            (true, false) => a.ma,
            (false, _) => b.ma,
        };
        rescale_p(&mut a, m);
        rescale_p(&mut b, m);
    }
    if q_online {
        let a_seen = (a.flags & FL_Q_SEEN) != 0;
        let b_seen = (b.flags & FL_Q_SEEN) != 0;
        let m = match (a_seen, b_seen) {
            (true, true) => a.mb.max(b.mb),
            (true, false) => a.mb,
            (false, _) => b.mb,
        };
        rescale_q(&mut a, m);
        rescale_q(&mut b, m);
    }
    State {
        ma: a.ma,
        sa: a.sa + b.sa,
        u: a.u + b.u,
        mb: a.mb,
        sb: a.sb + b.sb,
        v: a.v + b.v,
        d: a.d + b.d,
        t: a.t + b.t,
        key: a.key.min(b.key),
        flags: a.flags | b.flags,
    }
}

/// Normaliser of one operand for the second pass: for probabilities the row
/// sum `s` (divide), for log forms the pair (`m`, `ls` = ln s) (subtract both,
/// never their sum). The identity is (0, 0, 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Norm {
    pub m: f32,
    pub ls: f32,
    pub s: f32,
}

impl Norm {
    pub(super) const IDENTITY: Norm = Norm {
        m: 0.0,
        ls: 0.0,
        s: 1.0,
    };
}

/// One element of one operand as the terms need it: `zero` (probability 0:
/// the term vanishes whatever the other side is), the weight `w` (p itself,
/// or e^l in a log form) and ln p = `hi + lo`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Elem {
    pub zero: bool,
    pub w: f32,
    pub hi: f32,
    pub lo: f32,
    /// A log form's value more than f32::MAX below its maximum: its log does
    /// not fit f32. Its weight and log are 0 (term 0 as p); as q the term is
    /// +inf under a p of normal weight and 0 under a negligible one (below
    /// f32::MIN_POSITIVE), as in the shader.
    pub far: bool,
}

/// Whether `b` are the bits of ±0. Written so that LLVM keeps it an integer
/// test: `(b & ABS_MASK) == 0` (and its rotations and multiples) it turns into
/// `x == 0.0`, a float compare that reads a subnormal as zero when MXCSR's
/// DAZ is set, as a caller's flush-to-zero mode or flushing hardware would
/// (tests/flush.rs runs the CPU path so). The same holds of the sign tests
/// in [`check_probs`] and [`check_log`].
#[inline(always)]
pub(super) fn zero_bits(b: u32) -> bool {
    (b.wrapping_sub(1) & ABS_MASK) == ABS_MASK
}

/// The shader's `check_value` without the P/Q base: 0 when good, else
/// 1 NaN, 2 negative, 3 infinite, 4 positive log-probability (add the base
/// `code::P_NAN - 1` or `code::Q_NAN - 1`).
#[inline(always)]
pub(super) fn check_probs(b: u32) -> u32 {
    if (b & ABS_MASK) > POS_INF_BITS {
        1
    } else if (b & ABS_MASK) == POS_INF_BITS {
        3
    } else if b > 0x8000_0000 {
        // negative and not -0 (NaN and -inf are taken above); see `zero_bits`
        2
    } else {
        0
    }
}

/// `check_value` for log-probabilities and logits: -inf is probability 0;
/// values above 0 are bad unless `pos_ok` (logits, renormalised log-probs).
#[inline(always)]
pub(super) fn check_log(b: u32, pos_ok: bool) -> u32 {
    if (b & ABS_MASK) > POS_INF_BITS {
        1
    } else if b == POS_INF_BITS {
        3
    } else if !pos_ok && (b as i32) > 0 {
        4
    } else {
        0
    }
}

/// Vectorisable "is this probability bad": anything but +finite, ±0.
#[inline(always)]
pub(super) fn bad_probs(b: u32) -> bool {
    b >= POS_INF_BITS && b != 0x8000_0000
}

/// Vectorisable "is this log value bad": NaN, +inf, or > 0 unless `pos_ok`.
#[inline(always)]
pub(super) fn bad_log(b: u32, pos_ok: bool) -> bool {
    let nan = (b & ABS_MASK) > POS_INF_BITS;
    let positive = b.wrapping_sub(1) < POS_INF_BITS; // (0, +inf]
    nan | (b == POS_INF_BITS) | (positive & !pos_ok)
}

/// A probability (already divided by its normaliser, if any): the shader's
/// `plain_elem` for `F_PROBS`.
#[inline(always)]
pub(super) fn probs_elem<A: Arith>(x: f32) -> Elem {
    // w = ±0 for a zero, and its hi, lo are finite garbage that `accumulate`
    // selects away
    let zero = zero_bits(x.to_bits());
    let (hi, lo) = ln_hilo::<A>(x);
    Elem {
        zero,
        w: x,
        hi,
        lo,
        far: false,
    }
}

/// A finite x > 0 given by its bits as (m, k), x = m · 2^k with m in [1, 2),
/// subnormals included, by integer operations only (no subnormal arithmetic:
/// the same as the shader's `split_pow2`). Garbage for 0.
#[inline(always)]
pub(super) fn split_pow2(b: u32) -> (f32, i32) {
    let sub = (b & EXP_MASK) == 0;
    let n = if sub {
        ((b & MANT_MASK) as f32).to_bits()
    } else {
        b
    };
    let k = ((n >> 23) & 0xff) as i32 - 127 - if sub { 149 } else { 0 };
    (f32::from_bits((n & MANT_MASK) | 0x3f80_0000), k)
}

/// 2^d from its bits: exact for −126 ≤ d ≤ 127, 0 below (the shader's `pow2`).
#[inline(always)]
pub(super) fn pow2(d: i32) -> f32 {
    let v = f32::from_bits(((d.clamp(-126, 127) + 127) as u32) << 23);
    if d < -126 { 0.0 } else { v }
}

/// A probability relative to 2^`k_max` (first pass of the two-pass plan for
/// probabilities being renormalised): m · 2^(k − K), exact.
#[inline(always)]
pub(super) fn probs_pow2_elem(x: f32, k_max: f32) -> Elem {
    let b = x.to_bits();
    let zero = zero_bits(b);
    let (m, k) = split_pow2(b);
    let w = m * pow2(k - k_max as i32);
    Elem {
        zero,
        w: if zero { 0.0 } else { w },
        hi: 0.0,
        lo: 0.0,
        far: false,
    }
}

/// A probability divided by its row sum, the sum given relative to 2^`k_max`
/// (`s` = Σ x · 2^−K): (m · 2^(k − K)) / s, the same bits as x / Σ x wherever
/// both are in range. The zero rule comes from x's bits; a quotient that is
/// subnormal (or 0) keeps an exact log from the parts, ln(m / s) + (k − K) ln 2,
/// as the shader's `plain_elem` does.
#[inline(always)]
pub(super) fn probs_div_elem<A: Arith>(x: f32, k_max: f32, s: f32) -> Elem {
    let b = x.to_bits();
    let zero = zero_bits(b);
    let (m, k) = split_pow2(b);
    let dk = k - k_max as i32;
    let y = m * pow2(dk) / s;
    let normal = (y.to_bits() & EXP_MASK) != 0;
    let (hi, lo) = ln_hilo::<A>(y);
    let dkf = dk as f32;
    let (h2, l2) = (dkf * LN2_HI, A::madd(dkf, LN2_LO, ln_pos::<A>(m / s)));
    Elem {
        zero,
        w: if zero { 0.0 } else { y },
        hi: if normal { hi } else { h2 },
        lo: if normal { lo } else { l2 },
        far: false,
    }
}

/// A log-probability (as given: `n` the identity) or a log value normalised by
/// `(m, ls)`, or an online value relative to the block maximum `m` (`ls` 0):
/// the shader's `plain_elem` for log forms and the online branch of `accumulate`.
#[inline(always)]
pub(super) fn log_elem<A: Arith>(x: f32, m: f32, ls: f32) -> Elem {
    let zero = x.to_bits() == NEG_INF_BITS;
    // x − m beyond the f32 range (logit spreads above f32::MAX): see `Elem::far`
    let far = !zero & (m > 0.0) & (x < m - f32::MAX);
    let l = (x - m) - ls;
    let w = exp::<A>(l);
    let off = zero | far;
    Elem {
        zero,
        w: if off { 0.0 } else { w },
        hi: if off { 0.0 } else { l },
        lo: 0.0,
        far,
    }
}

/// NLL: p is the smoothed, weighted one-hot of the target (the shader's
/// `nll_weight`); `wc` the class weight of `col` (1 without weights).
#[inline(always)]
pub(super) fn target_elem(wc: f32, col: u32, t: &Target) -> Elem {
    let w = wc * t.eps / t.classes + if col == t.target { t.tw } else { 0.0 };
    let w = if t.ignored { 0.0 } else { w };
    Elem {
        zero: w == 0.0,
        w,
        hi: 0.0,
        lo: 0.0,
        far: false,
    }
}

/// The target of one NLL row.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Target {
    pub target: u32,
    pub ignored: bool,
    /// Label smoothing ε.
    pub eps: f32,
    /// Number of classes, as f32.
    pub classes: f32,
    /// (1 − ε) · w_t: the one-hot part of p at the target.
    pub tw: f32,
}

/// f32 lanes of the terms (`L` columns at a time); flushed into a [`State`]
/// every few chunks. `hit` is a per-lane "p > 0 met q = 0".
#[derive(Clone, Copy, Debug)]
pub(super) struct Lanes<const L: usize> {
    pub sa: [f32; L],
    pub u: [f32; L],
    pub sb: [f32; L],
    pub v: [f32; L],
    pub d: [f32; L],
    pub t: [f32; L],
    pub hit: [u32; L],
}

impl<const L: usize> Lanes<L> {
    pub(super) const ZERO: Self = Lanes {
        sa: [0.0; L],
        u: [0.0; L],
        sb: [0.0; L],
        v: [0.0; L],
        d: [0.0; L],
        t: [0.0; L],
        hit: [0; L],
    };

    /// Adds the lanes (in lane order, in f64) into `st` and clears them:
    /// Σ w of p and q, then the term's own sums.
    #[inline(always)]
    pub(super) fn flush<T: super::terms::Term>(&mut self, st: &mut State) {
        fn sum<const L: usize>(x: &[f32; L]) -> f64 {
            x.iter().fold(0.0f64, |a, &b| a + b as f64)
        }
        st.sa += sum(&self.sa);
        st.sb += sum(&self.sb);
        T::flush(self, st);
        *self = Self::ZERO;
    }
}

/// One operand's role in a row, for [`finalize`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Side {
    /// The operand is read (q of entropy and p of NLL are not).
    pub present: bool,
    /// Accumulated relative to a running maximum in this (single) pass.
    pub online: bool,
    /// Divided by (or shifted by) a first-pass normaliser.
    pub normalized: bool,
    /// Its row sum is checked against 1.
    pub check_sum: bool,
}

/// What finalize needs of a row besides its state.
#[derive(Clone, Copy, Debug)]
pub(super) struct RowEnd {
    /// The measure (a negative log-likelihood is a cross-entropy).
    pub measure: crate::measure::Measure,
    pub p: Side,
    pub q: Side,
    pub tolerance: f32,
    pub ln_base: f64,
    /// The first pass's problem ([`KEY_NONE`] when good or in a one-pass plan).
    pub first: u64,
    /// aux of a normalised operand: its sum or log-sum-exp from the first pass.
    pub aux_p: f32,
    pub aux_q: f32,
    /// NLL: the row's weight w_t (0 when ignored).
    pub nll_weight: Option<f32>,
}

/// Turns a row's state into its record: the shader's `finalize` (term passes).
pub(super) fn finalize(st: &State, e: &RowEnd) -> crate::record::Record {
    use super::terms::{RowLogs, Term, with_term};
    let mut key = st.key;
    let row_key = |c: u32| status_key(code::COL_NONE as usize, c);
    // online operands must have seen an element (a row of all -inf is an error)
    if e.p.present && e.p.online && (st.flags & FL_P_SEEN) == 0 {
        key = key.min(row_key(code::P_ALL_MASKED));
    }
    if e.q.present && e.q.online && (st.flags & FL_Q_SEEN) == 0 {
        key = key.min(row_key(code::Q_ALL_MASKED));
    }
    if e.p.check_sum && ((st.sa as f32) - 1.0).abs() > e.tolerance {
        key = key.min(row_key(code::P_SUM));
    }
    if e.q.check_sum && ((st.sb as f32) - 1.0).abs() > e.tolerance {
        key = key.min(row_key(code::Q_SUM));
    }
    // a problem found by the first pass wins
    let key = if e.first != KEY_NONE { e.first } else { key };
    let (status, column) = crate::record::key_parts(key);
    let (p_online, q_online) = (e.p.online, e.q.online);
    let lb = if q_online { st.sb.max(1.0).ln() } else { 0.0 };
    let la = if p_online { st.sa.max(1.0).ln() } else { 0.0 };
    let inv_sa = if p_online { 1.0 / st.sa.max(1.0) } else { 1.0 };
    let mut aux_p = if p_online { st.ma + la } else { st.sa } as f32;
    let mut aux_q = if q_online { st.mb + lb } else { st.sb } as f32;
    if e.p.normalized {
        aux_p = e.aux_p;
    }
    if e.q.normalized {
        aux_q = e.aux_q;
    }
    let logs = RowLogs {
        la,
        lb,
        inv_sa,
        p_online,
    };
    let value = with_term!(e.measure, T => T::value(st, &logs));
    if let Some(w) = e.nll_weight {
        aux_p = w;
    }
    let hit = (st.flags & FL_Q_ZERO_HIT) != 0 && e.measure.def().q_zero_inf;
    let mut value = if hit {
        signed_inf(e.ln_base)
    } else {
        positive_zero(in_base(value, e.ln_base) as f32)
    };
    if status != code::OK {
        value = f32::NAN;
    }
    crate::record::Record {
        value,
        aux_p,
        aux_q,
        code: status,
        column,
        index: 0,
    }
}

/// The infinity of a value divided by ln(base): −inf for a base below 1.
pub(super) fn signed_inf(ln_base: f64) -> f32 {
    if ln_base < 0.0 {
        f32::NEG_INFINITY
    } else {
        f32::INFINITY
    }
}

/// A value in nats divided by ln(base): natural logs (ln_base 1, the
/// default) skip the division, which is exact there (x / 1 = x) and was the
/// dearest instruction of a short row's finalize.
#[inline(always)]
pub(super) fn in_base(value: f64, ln_base: f64) -> f64 {
    if ln_base == 1.0 {
        value
    } else {
        value / ln_base
    }
}

/// +0.0 for either zero (the shader's `positive_zero`).
#[inline(always)]
pub(super) fn positive_zero(x: f32) -> f32 {
    if x == 0.0 { 0.0 } else { x }
}

/// The first pass's finalize for one operand: its normaliser, the status it
/// raises (0 when good) and its aux value (sum, or log-sum-exp). For
/// probabilities `m` is the exponent K and `s` the sum relative to 2^K.
pub(super) fn normaliser(
    log_form: bool,
    seen: bool,
    m: f64,
    s: f64,
    zero_code: u32,
    masked_code: u32,
) -> (Norm, u64, f32) {
    let row_key = |c: u32| status_key(code::COL_NONE as usize, c);
    if log_form {
        let ls = s.max(1.0).ln();
        let n = Norm {
            m: m as f32,
            ls: ls as f32,
            s: s as f32,
        };
        let key = if seen { KEY_NONE } else { row_key(masked_code) };
        (n, key, (m + ls) as f32)
    } else {
        // only a row with no non-zero element cannot be normalised
        let key = if seen { KEY_NONE } else { row_key(zero_code) };
        // the caller's sum: +inf beyond f32, 0 below its normal range (as the shader)
        let sum = (s * pow2_f64(m)) as f32;
        let sum = if sum < f32::MIN_POSITIVE { 0.0 } else { sum };
        (
            Norm {
                m: m as f32,
                ls: 0.0,
                s: s as f32,
            },
            key,
            sum,
        )
    }
}
