//! Row kernels with dense targets: the NLL of class targets and distillation
//! from a dense teacher.
//!
//! Pass 1 reads a row once (block maxima, log-sum-exp, every check); the
//! forward KL and the NLL then write the gradient and add up the loss in one
//! more pass. The reverse KL's row sum (its KL term) is taken in pass 1 too
//! (see `Rev`). The JSD needs a sum over the row that depends on both rows'
//! normalisers (its mixture) before the gradient, so it reads the row three
//! times.
//!
//! Distillation keeps the exponentials pass 1 takes (each block's terms
//! exp((x − running max)/T), in a worker's row buffers, which stay in L2) and
//! the later passes turn them into the softmax with one product each (a
//! factor per block, [`Soft::factor`]): two exponentials a column instead of
//! four. While the last pass computes from the caches it asks for the next
//! row, so memory keeps working; and a gradient far larger than the caches
//! is written past them (see [`super::drive::streams`]).

use std::mem::MaybeUninit;

use super::drive::RowKernel;
use super::lse::{
    AHEAD_BLOCKS, BLK, L, Lse, Soft, bad_value, log_add, max_min_bad, scaled, stream_copy,
};
use super::options::{Divergence, RowMask};
use crate::batch::Data;
use crate::call::IGNORED;
use crate::cpu::ln::{Arith, exp_normal as exp};
use crate::error::{Arg, BadValue, Error, Result, try_vec};
use crate::measure::Form;

/// `n` zeros, allocated fallibly: a worker's row of terms or factors.
fn zeros(n: usize) -> Result<Vec<f32>> {
    let mut v = try_vec(n, "a row's terms")?;
    v.resize(n, 0.0);
    Ok(v)
}

/// A conversion buffer for f64 or half values (empty for f32 ones).
pub(super) fn row_buf(d: &Data<'_>, cols: usize) -> Result<Vec<MaybeUninit<f32>>> {
    let n = if d.is_converted() { cols } else { 0 };
    let mut v = try_vec(n, "a row conversion buffer")?;
    v.resize(n, MaybeUninit::uninit());
    Ok(v)
}

/// Pass 1 of one row: its log-sum-exp at scale `k` (NaN and +inf are
/// errors) and whether it holds a −inf; its terms go into `es` and each
/// block's running maximum into `at` (see [`Lse::add_block_store`]).
#[inline(always)]
fn stats<A: Arith>(
    x: &[f32],
    k: f32,
    arg: Arg,
    row: usize,
    es: &mut [f32],
    at: &mut [f32],
) -> Result<(Lse, bool)> {
    let mut l = Lse::EMPTY;
    let mut ninf = false;
    for (b, blk) in x.chunks(BLK).enumerate() {
        let (mb, ni, bad) = max_min_bad(blk);
        if bad {
            return Err(bad_value(arg, row, b * BLK, blk));
        }
        ninf |= ni;
        l.add_block_store::<A>(blk, mb, k, &mut es[b * BLK..b * BLK + blk.len()]);
        at[b] = l.max;
    }
    if l.empty() {
        return Err(Error::CannotNormalize {
            arg,
            row,
            why: crate::record::ALL_MASKED,
        });
    }
    Ok((l, ninf))
}

/// Negative log-likelihood of class targets from logits.
pub(super) struct Nll<'a> {
    pub(super) q: Data<'a>,
    pub(super) cols: usize,
    /// Targets in [0, cols) or [`IGNORED`].
    pub(super) targets: &'a [u32],
    pub(super) weights: Option<&'a [f32]>,
    /// Label smoothing ε.
    pub(super) eps: f32,
    /// Σ_c w_c (C without weights).
    pub(super) sum_w: f64,
    /// The factor of the gradient: 1 / ln(base) · the reduction's scale.
    pub(super) g: f64,
    /// The gradient goes out past the caches (see [`super::drive::streams`]).
    pub(super) stream: bool,
}

/// The scratch of [`Nll`]: a row's conversion buffer, its terms and its
/// blocks' factors (as [`Bufs`]).
pub(super) struct NllBufs {
    z: Vec<MaybeUninit<f32>>,
    es: Vec<f32>,
    fz: Vec<f32>,
}

impl Nll<'_> {
    fn w(&self, c: usize) -> f32 {
        self.weights.map_or(1.0, |w| w[c])
    }
}

/// One column of the NLL's gradient pass, `q` its softmax: (gradient
/// without the target's one-hot part, w·(−ln q)).
#[inline(always)]
fn nll_elem(z: f32, w: f32, q: f32, m: f32, ln_s: f32, a: f32, b: f32) -> (f32, f32) {
    let x = (z - m) - ln_s;
    let grad = a * q - b * w;
    let term = if z == f32::NEG_INFINITY || w == 0.0 {
        0.0
    } else {
        -w * x
    };
    (grad, term)
}

impl RowKernel for Nll<'_> {
    type Scratch = NllBufs;
    fn scratch(&self) -> Result<NllBufs> {
        Ok(NllBufs {
            z: row_buf(&self.q, self.cols)?,
            es: zeros(self.cols)?,
            fz: zeros(self.cols.div_ceil(BLK))?,
        })
    }

    #[inline(always)]
    fn row<A: Arith>(
        &self,
        row: usize,
        grad: &mut [f32],
        _tgrad: &mut [f32],
        buf: &mut Self::Scratch,
    ) -> Result<f64> {
        let t = self.targets[row];
        if t == IGNORED {
            grad.fill(0.0);
            return Ok(0.0);
        }
        let (cols, t) = (self.cols, t as usize);
        let NllBufs { z, es, fz } = buf;
        let z = self.q.f32s(row * cols..(row + 1) * cols, z);
        let (lse, ninf) = stats::<A>(z, 1.0, Arg::Q, row, es, fz)?;
        let eps = self.eps;
        let wt = self.w(t);
        let one_hot = (1.0 - eps as f64) * wt as f64;
        if z[t] == f32::NEG_INFINITY && one_hot > 0.0 {
            return Err(Error::InfiniteLoss {
                row,
                col: t,
                why: super::WHY_TARGET,
            });
        }
        if eps > 0.0 && ninf {
            if let Some(c) = (0..cols).find(|&c| z[c] == f32::NEG_INFINITY && self.w(c) > 0.0) {
                return Err(Error::InfiniteLoss {
                    row,
                    col: c,
                    why: super::WHY_SMOOTHING,
                });
            }
        }
        let soft: Soft = lse.soft(1.0);
        let (m, ln_s) = (soft.m, soft.ln_s as f32);
        let smooth = eps as f64 / cols as f64;
        let sum_p = one_hot + smooth * self.sum_w;
        let a = (self.g * sum_p) as f32;
        let b = (self.g * smooth) as f32;
        for f in fz.iter_mut() {
            *f = soft.factor(*f);
        }
        // the target's column exactly, in f64 (put into its block before the
        // block is written)
        let xt = soft.logp64(z[t]);
        let g_t = (self.g * (sum_p * xt.exp() - smooth * wt as f64 - one_hot)) as f32;
        let mut total = 0f64;
        let ones = [1f32; BLK];
        let mut stage = [0f32; BLK];
        for (bi, zb) in z.chunks(BLK).enumerate() {
            let (c0, len) = (bi * BLK, zb.len());
            let wb = match self.weights {
                Some(w) => &w[c0..c0 + len],
                None => &ones[..len],
            };
            let (eb, f) = (&es[c0..c0 + len], fz[bi]);
            let gb = sink(self.stream, &mut stage, grad, c0, len);
            let mut lanes = [0f32; L];
            let n = len - len % L;
            let zw = zb[..n].chunks_exact(L).zip(wb[..n].chunks_exact(L));
            let ge = gb[..n].chunks_exact_mut(L).zip(eb[..n].chunks_exact(L));
            for ((zc, wc), (gc, ec)) in zw.zip(ge) {
                for i in 0..L {
                    let q = scaled(ec[i], f);
                    let (g, term) = nll_elem(zc[i], wc[i], q, m, ln_s, a, b);
                    gc[i] = g;
                    lanes[i] += term;
                }
            }
            for i in n..len {
                let q = scaled(eb[i], f);
                let (g, term) = nll_elem(zb[i], wb[i], q, m, ln_s, a, b);
                gb[i] = g;
                lanes[i - n] += term;
            }
            if (c0..c0 + len).contains(&t) {
                gb[t - c0] = g_t;
            }
            flush(self.stream, &stage, grad, c0, len);
            total += lanes.iter().map(|&v| v as f64).sum::<f64>();
        }
        let nll_t = if one_hot > 0.0 { -xt * one_hot } else { 0.0 };
        Ok(nll_t + smooth * total)
    }
}

/// Distillation from a dense teacher (and, where the caller asks, the
/// gradient with respect to the teacher's values: see `Tg`).
pub(super) struct Dense<'a> {
    pub(super) s: Data<'a>,
    pub(super) t: Data<'a>,
    pub(super) t_form: Form,
    pub(super) cols: usize,
    pub(super) div: Divergence,
    pub(super) beta: f32,
    /// 1 / T.
    pub(super) k: f32,
    /// T².
    pub(super) t2: f64,
    /// The factor of the gradient: T · the reduction's scale.
    pub(super) g: f64,
    pub(super) mask: Option<RowMask<'a>>,
    /// The gradient goes out past the caches (see [`super::drive::streams`]).
    pub(super) stream: bool,
}

/// The scratch of [`Dense`]: a worker's buffers, each a row long (or a
/// row's blocks).
pub(super) struct Bufs {
    /// The student's values converted to f32 (empty for f32 ones).
    s: Vec<MaybeUninit<f32>>,
    /// The teacher's, likewise.
    t: Vec<MaybeUninit<f32>>,
    /// The terms of pass 1: the student's and the teacher's.
    es: Vec<f32>,
    et: Vec<f32>,
    /// Per block, the running maximum its terms were taken at, then its
    /// factor ([`Soft::factor`]): the student's and the teacher's.
    fs: Vec<f32>,
    ft: Vec<f32>,
}

impl<'a> Terms<'a> {
    /// Block `bi` (`len` columns from `bi · BLK`) of both rows' terms and
    /// its two factors; asks L2 for the next row's block meanwhile.
    #[inline(always)]
    fn block(&self, bi: usize, len: usize) -> (&'a [f32], &'a [f32], f32, f32) {
        self.next.block(bi);
        let c0 = bi * BLK;
        let (es, et) = (&self.es[c0..c0 + len], &self.et[c0..c0 + len]);
        (es, et, self.fs[bi], self.ft[bi])
    }
}

/// Where the last pass writes a block of `out` (`len` values from `c0`):
/// straight into it, or where `stream`, into `stage` (in L1), which
/// [`flush`] then streams out.
#[inline(always)]
fn sink<'b>(
    stream: bool,
    stage: &'b mut [f32; BLK],
    out: &'b mut [f32],
    c0: usize,
    len: usize,
) -> &'b mut [f32] {
    if stream {
        &mut stage[..len]
    } else {
        &mut out[c0..c0 + len]
    }
}

/// Streams a block staged by [`sink`] into `out` (nothing otherwise).
#[inline(always)]
fn flush(stream: bool, stage: &[f32; BLK], out: &mut [f32], c0: usize, len: usize) {
    if stream {
        stream_copy(&mut out[c0..c0 + len], &stage[..len]);
    }
}

/// The student's and teacher's values from index `at` on (the next row).
struct Next<'a> {
    s: &'a Data<'a>,
    t: &'a Data<'a>,
    at: usize,
}

impl Next<'_> {
    /// Asks L2 for block `b` of both.
    #[inline(always)]
    fn block(&self, b: usize) {
        let i = self.at + b * BLK;
        self.s.prefetch_l2(i..i + BLK);
        self.t.prefetch_l2(i..i + BLK);
    }
}

/// The terms of pass 1 (exp((x − running max)·k), see
/// [`Lse::add_block_store`]) and their blocks' factors: the last pass finds
/// q = e_s·fs and p = e_t·ft with a product each instead of an exponential.
struct Terms<'a> {
    /// The next row: each block of the last pass asks for its block, so
    /// that memory works while the last pass computes from the caches.
    next: Next<'a>,
    es: &'a [f32],
    et: &'a [f32],
    fs: &'a [f32],
    ft: &'a [f32],
}

/// Row constants of the dense loops.
#[derive(Clone, Copy)]
struct Rc {
    ms: f32,
    mt: f32,
    k: f32,
    ln_ss: f32,
    ln_st: f32,
    /// ln Σ_S − ln Σ_T: d = ((t − mt) − (s − ms))·k + dk = ln p − ln q.
    dk: f32,
    ln_b: f32,
    ln_1b: f32,
}

impl Rc {
    /// (ln q, ln p).
    #[inline(always)]
    fn logs(&self, s: f32, t: f32) -> (f32, f32) {
        (
            (s - self.ms) * self.k - self.ln_ss,
            (t - self.mt) * self.k - self.ln_st,
        )
    }
    /// ln p − ln q, with the shifts cancelled first.
    #[inline(always)]
    fn d(&self, s: f32, t: f32) -> f32 {
        ((t - self.mt) - (s - self.ms)) * self.k + self.dk
    }
}

/// Forward KL, one column of the logits `s`, `t` and their softmax `q`,
/// `p`: (gradient, p·(ln p − ln q)).
#[inline(always)]
fn fwd_elem(s: f32, t: f32, q: f32, p: f32, c: &Rc, g: f32) -> (f32, f32) {
    let term = if t == f32::NEG_INFINITY {
        0.0
    } else {
        p * c.d(s, t)
    };
    (g * (q - p), term)
}

/// JSD, one column: (p·(ln p − ln M), q·(ln q − ln M)).
#[inline(always)]
fn jsd_elem<A: Arith>(s: f32, t: f32, q: f32, p: f32, c: &Rc) -> (f32, f32) {
    let (x, y) = c.logs(s, t);
    let ln_m = log_add::<A>(c.ln_b + y, c.ln_1b + x);
    let a = if t == f32::NEG_INFINITY {
        0.0
    } else {
        p * (y - ln_m)
    };
    let b = if s == f32::NEG_INFINITY {
        0.0
    } else {
        q * (x - ln_m)
    };
    (a, b)
}

/// Forward KL with the teacher's gradient, one column: (gradient, the
/// teacher's gradient, p·(ln p − ln q)). The student's gradient and the loss
/// term are [`fwd_elem`]'s operations, so their bits are plain `distill`'s.
/// The teacher's, T·p ⊙ (ln p − ln q − KL), is formed relative to the
/// teacher's argmax (as `Rev` does for the student).
#[inline(always)]
fn fwd_elem2(s: f32, t: f32, q: f32, p: f32, c: &Rc, g: f32, r: &Tg) -> (f32, f32, f32) {
    let masked = t == f32::NEG_INFINITY;
    let term = if masked { 0.0 } else { p * c.d(s, t) };
    let e = ((t - r.t0) - (s - r.s0)) * c.k;
    let gt = r.g * p * (e - r.sum_e);
    (g * (q - p), if masked { 0.0 } else { gt }, term)
}

/// The teacher gradient's constants of the forward KL: relative to the
/// teacher's argmax column *, e_c = ((t_c − t*) − (s_c − s*))/T and
/// ln p_c − ln q_c − KL = e_c − Σ p e, which keeps its digits when the KL is
/// large.
struct Tg {
    t0: f32,
    s0: f32,
    /// The teacher gradient's factor (T · the reduction's scale).
    g: f32,
    /// Σ p e (from pass 1).
    sum_e: f32,
}

/// A divergence's gradient of one column, for the last pass. Methods
/// rather than closures, so that they are inlined into the `avx2,fma`
/// kernels (a closure is compiled without its caller's target features).
trait Cols {
    /// The gradient of one column of the logits `s`, `t` and their softmax
    /// `q`, `p`.
    fn grad<A: Arith>(&self, s: f32, t: f32, q: f32, p: f32) -> f32;
    /// The gradients of one column with respect to the student (the bits
    /// of [`Cols::grad`]) and the teacher.
    fn grads<A: Arith>(&self, s: f32, t: f32, q: f32, p: f32) -> (f32, f32);
}

/// A divergence that needs a pass of row sums between pass 1 and the
/// gradient (the JSD: its mixture needs both rows' normalisers).
trait ColSums: Cols {
    /// Two terms of the row sums.
    fn sum<A: Arith>(&self, s: f32, t: f32, q: f32, p: f32) -> (f32, f32);
}

/// The reverse KL relative to the student's argmax column *: with
/// e_c = ((s_c − s*) − (t_c − t*))/T, the gradient factor
/// ln q_c − ln p_c − KL is e_c − Σ q e, which keeps its digits when the KL
/// is large (logits of 10⁴) and the factor at * is tiny. Σ q e comes from
/// pass 1 ([`sum_exp_e`], rebased when the running argmax moves), so the
/// reverse KL reads the row twice, as the forward KL does.
struct Rev {
    c: Rc,
    s0: f32,
    t0: f32,
    g: f32,
    /// Σ q e (set after the sum pass).
    sum_e: f32,
}

impl Rev {
    #[inline(always)]
    fn e(&self, s: f32, t: f32) -> f32 {
        ((s - self.s0) - (t - self.t0)) * self.c.k
    }
}

impl Cols for Rev {
    #[inline(always)]
    fn grad<A: Arith>(&self, s: f32, t: f32, q: f32, _p: f32) -> f32 {
        let v = self.g * q * (self.e(s, t) - self.sum_e);
        if s == f32::NEG_INFINITY { 0.0 } else { v }
    }
    /// The teacher's: T·(p − q) (0 where both are masked).
    #[inline(always)]
    fn grads<A: Arith>(&self, s: f32, t: f32, q: f32, p: f32) -> (f32, f32) {
        let v = self.g * q * (self.e(s, t) - self.sum_e);
        let gs = if s == f32::NEG_INFINITY { 0.0 } else { v };
        (gs, self.g * (p - q))
    }
}

/// The generalized JSD.
struct Jsd {
    c: Rc,
    /// T (1 − β) · the reduction's scale.
    g: f32,
    /// KL(q ‖ M) (set after the sum pass).
    kl_qm: f32,
    /// T β · the reduction's scale (the teacher's gradient).
    gt: f32,
    /// KL(p ‖ M) (set after the sum pass).
    kl_pm: f32,
}

impl ColSums for Jsd {
    #[inline(always)]
    fn sum<A: Arith>(&self, s: f32, t: f32, q: f32, p: f32) -> (f32, f32) {
        jsd_elem::<A>(s, t, q, p, &self.c)
    }
}

impl Cols for Jsd {
    #[inline(always)]
    fn grad<A: Arith>(&self, s: f32, t: f32, q: f32, _p: f32) -> f32 {
        let c = &self.c;
        let (x, y) = c.logs(s, t);
        let ln_m = log_add::<A>(c.ln_b + y, c.ln_1b + x);
        let v = self.g * q * (x - ln_m - self.kl_qm);
        if s == f32::NEG_INFINITY { 0.0 } else { v }
    }
    /// The teacher's: Tβ·p ⊙ (ln p − ln M − KL(p ‖ M)).
    #[inline(always)]
    fn grads<A: Arith>(&self, s: f32, t: f32, q: f32, p: f32) -> (f32, f32) {
        let c = &self.c;
        let (x, y) = c.logs(s, t);
        let ln_m = log_add::<A>(c.ln_b + y, c.ln_1b + x);
        let v = self.g * q * (x - ln_m - self.kl_qm);
        let w = self.gt * p * (y - ln_m - self.kl_pm);
        (
            if s == f32::NEG_INFINITY { 0.0 } else { v },
            if t == f32::NEG_INFINITY { 0.0 } else { w },
        )
    }
}

/// Pass 1 of the reverse KL over one block of the student `s` and teacher
/// `t`, all s ≤ `shift`: Σ v and Σ v·e with v = exp((s − shift)·k) and
/// e = ((s − s0) − (t − t0))·k (0 where s is −inf), in f32 lanes as
/// [`super::lse::sum_exp_store`] sums (whose bits Σ v equals, as those of the terms v
/// it writes into `out`).
#[inline(always)]
fn sum_exp_e<A: Arith>(
    s: &[f32],
    t: &[f32],
    shift: f32,
    k: f32,
    s0: f32,
    t0: f32,
    out: &mut [f32],
) -> (f64, f64) {
    // a function, not a closure: inlined into the caller's `avx2,fma` code
    #[inline(always)]
    fn ve<A: Arith>(s: f32, t: f32, shift: f32, k: f32, s0: f32, t0: f32) -> (f32, f32) {
        let v = exp::<A>((s - shift) * k);
        let e = ((s - s0) - (t - t0)) * k;
        (v, if s == f32::NEG_INFINITY { 0.0 } else { v * e })
    }
    let (mut a, mut b) = ([0f32; L], [0f32; L]);
    let sc = s.chunks_exact(L);
    let n = s.len() - sc.remainder().len();
    for ((sc, tc), oc) in sc.zip(t.chunks_exact(L)).zip(out[..n].chunks_exact_mut(L)) {
        for i in 0..L {
            let (v, w) = ve::<A>(sc[i], tc[i], shift, k, s0, t0);
            oc[i] = v;
            a[i] += v;
            b[i] += w;
        }
    }
    for i in n..s.len() {
        let (v, w) = ve::<A>(s[i], t[i], shift, k, s0, t0);
        out[i] = v;
        a[i - n] += v;
        b[i - n] += w;
    }
    (
        a.iter().map(|&v| v as f64).sum(),
        b.iter().map(|&v| v as f64).sum(),
    )
}

/// Sums `f.sum(s, t, q, p)` over a row (f32 lanes, flushed per block into
/// f64), for the loss passes that write nothing.
#[inline(always)]
fn row_sum2<A: Arith, F: ColSums>(s: &[f32], t: &[f32], w: &Terms<'_>, f: &F) -> (f64, f64) {
    let (mut ta, mut tb) = (0f64, 0f64);
    for (bi, (sb, tb_)) in s.chunks(BLK).zip(t.chunks(BLK)).enumerate() {
        let len = sb.len();
        let (eq, ep, fs, ft) = w.block(bi, len);
        let (mut la, mut lb) = ([0f32; L], [0f32; L]);
        let n = len - len % L;
        let cs = sb[..n].chunks_exact(L).zip(tb_[..n].chunks_exact(L));
        for ((sc, tc), (qc, pc)) in cs.zip(eq[..n].chunks_exact(L).zip(ep[..n].chunks_exact(L))) {
            for i in 0..L {
                let (q, p) = (scaled(qc[i], fs), scaled(pc[i], ft));
                let (a, b) = f.sum::<A>(sc[i], tc[i], q, p);
                la[i] += a;
                lb[i] += b;
            }
        }
        for i in n..len {
            let (q, p) = (scaled(eq[i], fs), scaled(ep[i], ft));
            let (a, b) = f.sum::<A>(sb[i], tb_[i], q, p);
            la[i - n] += a;
            lb[i - n] += b;
        }
        ta += la.iter().map(|&v| v as f64).sum::<f64>();
        tb += lb.iter().map(|&v| v as f64).sum::<f64>();
    }
    (ta, tb)
}

/// Adds one block (columns `c0..c0 + len` of the rows) of the row `x` to
/// its log-sum-exp `l` and Σ v·e relative to the running argmax `arg` of x
/// (rebased when it moves), e = ((x − x*) − (y − y*))·k against the other
/// row `y`, writing the block's terms into `out`: the reverse KL's pass 1
/// (x the student) and, for the teacher's gradient, the forward KL's (x the
/// teacher). `l` and `out` end with the bits of [`Lse::add_block_store`].
#[expect(clippy::too_many_arguments, reason = "one block of two rows' state")]
#[inline(always)]
fn add_rebased<A: Arith>(
    l: &mut Lse,
    sum_ve: &mut f64,
    arg: &mut usize,
    x: &[f32],
    y: &[f32],
    c0: usize,
    mb: f32,
    k: f32,
    out: &mut [f32],
) {
    if mb == f32::NEG_INFINITY {
        out.fill(0.0);
        return;
    }
    let len = out.len();
    let (xb, yb) = (&x[c0..c0 + len], &y[c0..c0 + len]);
    if mb > l.max {
        let j = c0 + xb.iter().position(|&v| v == mb).unwrap_or(0);
        // e relative to column j is e relative to the old reference − Δ:
        // rebase the sum, then rescale it
        if !l.empty() {
            let a = *arg;
            let delta = ((x[j] - x[a]) as f64 - (y[j] - y[a]) as f64) * k as f64;
            *sum_ve -= delta * l.sum;
        }
        *sum_ve *= l.raise(mb, k);
        *arg = j;
    }
    let (v, ve) = sum_exp_e::<A>(xb, yb, l.max, k, x[*arg], y[*arg], out);
    l.sum += v;
    *sum_ve += ve;
}

/// Writes `grad[c] = f.grad(s[c], t[c], q[c], p[c])`, block by block,
/// through an L1 block streamed out where `stream`.
#[inline(always)]
fn row_map<A: Arith, F: Cols>(
    s: &[f32],
    t: &[f32],
    grad: &mut [f32],
    w: &Terms<'_>,
    f: &F,
    stream: bool,
) {
    let mut stage = [0f32; BLK];
    for (bi, (sb, tb)) in s.chunks(BLK).zip(t.chunks(BLK)).enumerate() {
        let (c0, len) = (bi * BLK, sb.len());
        let (eq, ep, fs, ft) = w.block(bi, len);
        let gb = sink(stream, &mut stage, grad, c0, len);
        let n = len - len % L;
        let cs = sb[..n].chunks_exact(L).zip(tb[..n].chunks_exact(L));
        let es = eq[..n].chunks_exact(L).zip(ep[..n].chunks_exact(L));
        for (((sc, tc), (qc, pc)), gc) in cs.zip(es).zip(gb[..n].chunks_exact_mut(L)) {
            for i in 0..L {
                let (q, p) = (scaled(qc[i], fs), scaled(pc[i], ft));
                gc[i] = f.grad::<A>(sc[i], tc[i], q, p);
            }
        }
        for i in n..len {
            let (q, p) = (scaled(eq[i], fs), scaled(ep[i], ft));
            gb[i] = f.grad::<A>(sb[i], tb[i], q, p);
        }
        flush(stream, &stage, grad, c0, len);
    }
}

/// Writes `(grad[c], tgrad[c]) = f.grads(s[c], t[c], q[c], p[c])`, as
/// [`row_map`] writes the one.
#[inline(always)]
fn row_map2<A: Arith, F: Cols>(
    s: &[f32],
    t: &[f32],
    grad: &mut [f32],
    tgrad: &mut [f32],
    w: &Terms<'_>,
    f: &F,
    stream: bool,
) {
    let (mut stage, mut stage_t) = ([0f32; BLK], [0f32; BLK]);
    for (bi, (sb, tb)) in s.chunks(BLK).zip(t.chunks(BLK)).enumerate() {
        let (c0, len) = (bi * BLK, sb.len());
        let (eq, ep, fs, ft) = w.block(bi, len);
        let gb = sink(stream, &mut stage, grad, c0, len);
        let hb = sink(stream, &mut stage_t, tgrad, c0, len);
        let n = len - len % L;
        let cs = sb[..n].chunks_exact(L).zip(tb[..n].chunks_exact(L));
        let es = eq[..n].chunks_exact(L).zip(ep[..n].chunks_exact(L));
        let outs = gb[..n].chunks_exact_mut(L).zip(hb[..n].chunks_exact_mut(L));
        for (((sc, tc), (qc, pc)), (gc, hc)) in cs.zip(es).zip(outs) {
            for i in 0..L {
                let (q, p) = (scaled(qc[i], fs), scaled(pc[i], ft));
                (gc[i], hc[i]) = f.grads::<A>(sc[i], tc[i], q, p);
            }
        }
        for i in n..len {
            let (q, p) = (scaled(eq[i], fs), scaled(ep[i], ft));
            (gb[i], hb[i]) = f.grads::<A>(sb[i], tb[i], q, p);
        }
        flush(stream, &stage, grad, c0, len);
        flush(stream, &stage_t, tgrad, c0, len);
    }
}

/// The forward KL's gradient pass: writes the student's gradient (and the
/// teacher's where `TG`, with `tg`), as [`row_map`] writes, and returns the
/// row's KL.
#[expect(
    clippy::too_many_arguments,
    reason = "two rows, their terms, two outputs"
)]
#[inline(always)]
fn fwd_pass<const TG: bool>(
    s: &[f32],
    t: &[f32],
    grad: &mut [f32],
    tgrad: &mut [f32],
    w: &Terms<'_>,
    c: &Rc,
    g: f32,
    tg: &Tg,
    stream: bool,
) -> f64 {
    let mut total = 0f64;
    let (mut stage, mut stage_t) = ([0f32; BLK], [0f32; BLK]);
    for (bi, (sb, tb)) in s.chunks(BLK).zip(t.chunks(BLK)).enumerate() {
        let (c0, len) = (bi * BLK, sb.len());
        let (eq, ep, fs, ft) = w.block(bi, len);
        let gb = sink(stream, &mut stage, grad, c0, len);
        let mut lanes = [0f32; L];
        let n = len - len % L;
        let cs = sb[..n].chunks_exact(L).zip(tb[..n].chunks_exact(L));
        let es = eq[..n].chunks_exact(L).zip(ep[..n].chunks_exact(L));
        if TG {
            let hb = sink(stream, &mut stage_t, tgrad, c0, len);
            let outs = gb[..n].chunks_exact_mut(L).zip(hb[..n].chunks_exact_mut(L));
            for (((sc, tc), (qc, pc)), (gc, hc)) in cs.zip(es).zip(outs) {
                for i in 0..L {
                    let (q, p) = (scaled(qc[i], fs), scaled(pc[i], ft));
                    let (gr, gt, term) = fwd_elem2(sc[i], tc[i], q, p, c, g, tg);
                    gc[i] = gr;
                    hc[i] = gt;
                    lanes[i] += term;
                }
            }
            for i in n..len {
                let (q, p) = (scaled(eq[i], fs), scaled(ep[i], ft));
                let (gr, gt, term) = fwd_elem2(sb[i], tb[i], q, p, c, g, tg);
                gb[i] = gr;
                hb[i] = gt;
                lanes[i - n] += term;
            }
            flush(stream, &stage_t, tgrad, c0, len);
        } else {
            for (((sc, tc), (qc, pc)), gc) in cs.zip(es).zip(gb[..n].chunks_exact_mut(L)) {
                for i in 0..L {
                    let (q, p) = (scaled(qc[i], fs), scaled(pc[i], ft));
                    let (gr, term) = fwd_elem(sc[i], tc[i], q, p, c, g);
                    gc[i] = gr;
                    lanes[i] += term;
                }
            }
            for i in n..len {
                let (q, p) = (scaled(eq[i], fs), scaled(ep[i], ft));
                let (gr, term) = fwd_elem(sb[i], tb[i], q, p, c, g);
                gb[i] = gr;
                lanes[i - n] += term;
            }
        }
        flush(stream, &stage, grad, c0, len);
        total += lanes.iter().map(|&v| v as f64).sum::<f64>();
    }
    total
}

impl Dense<'_> {
    /// The first column where the divergence is infinite, in a block that
    /// holds a −inf.
    fn infinite(&self, row: usize, c0: usize, s: &[f32], t: &[f32]) -> Result<()> {
        let ni = f32::NEG_INFINITY;
        let (hit, why) = match self.div {
            Divergence::ForwardKl => (
                s.iter().zip(t).position(|(&s, &t)| s == ni && t != ni),
                super::WHY_TEACHER_MASS,
            ),
            Divergence::ReverseKl => (
                s.iter().zip(t).position(|(&s, &t)| t == ni && s != ni),
                super::WHY_STUDENT_MASS,
            ),
            Divergence::Jsd => (None, ""),
        };
        match hit {
            Some(i) => Err(Error::InfiniteLoss {
                row,
                col: c0 + i,
                why,
            }),
            None => Ok(()),
        }
    }
}

impl RowKernel for Dense<'_> {
    type Scratch = Bufs;
    fn scratch(&self) -> Result<Bufs> {
        let blocks = self.cols.div_ceil(BLK);
        Ok(Bufs {
            s: row_buf(&self.s, self.cols)?,
            t: row_buf(&self.t, self.cols)?,
            es: zeros(self.cols)?,
            et: zeros(self.cols)?,
            fs: zeros(blocks)?,
            ft: zeros(blocks)?,
        })
    }

    #[inline(always)]
    fn row<A: Arith>(
        &self,
        row: usize,
        grad: &mut [f32],
        tgrad: &mut [f32],
        bufs: &mut Bufs,
    ) -> Result<f64> {
        if self.mask.is_some_and(|m| !m.counts(row)) {
            grad.fill(0.0);
            tgrad.fill(0.0);
            return Ok(0.0);
        }
        // the teacher's gradient is asked for (the slice is empty otherwise)
        let want_t = !tgrad.is_empty();
        let fwd_t = want_t && self.div == Divergence::ForwardKl;
        let cols = self.cols;
        let range = row * cols..(row + 1) * cols;
        let Bufs {
            s,
            t,
            es,
            et,
            fs,
            ft,
        } = bufs;
        let s = self.s.f32s(range.clone(), s);
        let t = self.t.f32s(range, t);
        let k = self.k;
        // pass 1: both log-sum-exps and every check, a block at a time
        let (mut ls, mut lt) = (Lse::EMPTY, Lse::EMPTY);
        // reported after a row of −inf, the more basic error
        let mut infinite = Ok(());
        // the reverse KL's reference column: the student's first maximum so
        // far, and Σ exp((s − max)·k)·e relative to it (see `Rev`); for the
        // forward KL's teacher gradient the same with the roles swapped
        // (see `Tg`)
        let mut arg = 0usize;
        let mut sum_ve = 0f64;
        for (b, (sb, tb)) in s.chunks(BLK).zip(t.chunks(BLK)).enumerate() {
            // the next block (of this row or the next) comes in while this
            // one is computed: the hardware prefetcher stops at each 4 KiB
            // page
            let next = row * cols + (b + AHEAD_BLOCKS) * BLK;
            self.s.prefetch(next..next + BLK);
            self.t.prefetch(next..next + BLK);
            let (ms, ni_s, bad_s) = max_min_bad(sb);
            if bad_s {
                return Err(bad_value(Arg::Q, row, b * BLK, sb));
            }
            let (mt, ni_t, bad_t) = max_min_bad(tb);
            if bad_t {
                return Err(bad_value(Arg::P, row, b * BLK, tb));
            }
            if self.t_form == Form::LogProbs && mt > 0.0 {
                let i = tb.iter().position(|&v| v > 0.0).unwrap_or(0);
                return Err(Error::BadValue {
                    arg: Arg::P,
                    row,
                    col: Some(b * BLK + i),
                    what: BadValue::PositiveLog,
                });
            }
            if (ni_s || ni_t) && infinite.is_ok() {
                infinite = self.infinite(row, b * BLK, sb, tb);
            }
            let c0 = b * BLK;
            let (gs, gt) = (&mut es[c0..c0 + sb.len()], &mut et[c0..c0 + sb.len()]);
            if self.div == Divergence::ReverseKl {
                // the student's sums and Σ v·e in one loop (its exps once)
                add_rebased::<A>(&mut ls, &mut sum_ve, &mut arg, s, t, c0, ms, k, gs);
            } else {
                ls.add_block_store::<A>(sb, ms, k, gs);
            }
            if fwd_t {
                add_rebased::<A>(&mut lt, &mut sum_ve, &mut arg, t, s, c0, mt, k, gt);
            } else {
                lt.add_block_store::<A>(tb, mt, k, gt);
            }
            (fs[b], ft[b]) = (ls.max, lt.max);
        }
        for (l, arg) in [(&ls, Arg::Q), (&lt, Arg::P)] {
            if l.empty() {
                return Err(Error::CannotNormalize {
                    arg,
                    row,
                    why: crate::record::ALL_MASKED,
                });
            }
        }
        infinite?;
        let (ss, st) = (ls.soft(k), lt.soft(k));
        for (f, g) in fs.iter_mut().zip(ft.iter_mut()) {
            (*f, *g) = (ss.factor(*f), st.factor(*g));
        }
        let next = Next {
            s: &self.s,
            t: &self.t,
            at: (row + 1) * cols,
        };
        let w = Terms {
            next,
            es,
            et,
            fs,
            ft,
        };
        let beta = self.beta as f64;
        let c = Rc {
            ms: ss.m,
            mt: st.m,
            k,
            ln_ss: ss.ln_s as f32,
            ln_st: st.ln_s as f32,
            dk: (ss.ln_s - st.ln_s) as f32,
            ln_b: beta.ln() as f32,
            ln_1b: (1.0 - beta).ln() as f32,
        };
        let div = match self.div {
            Divergence::ForwardKl => {
                let g = self.g as f32;
                if fwd_t {
                    let tg = Tg {
                        t0: t[arg],
                        s0: s[arg],
                        g,
                        sum_e: (sum_ve / lt.sum) as f32,
                    };
                    fwd_pass::<true>(s, t, grad, tgrad, &w, &c, g, &tg, self.stream)
                } else {
                    let tg = Tg {
                        t0: 0.0,
                        s0: 0.0,
                        g,
                        sum_e: 0.0,
                    };
                    fwd_pass::<false>(s, t, grad, &mut [], &w, &c, g, &tg, self.stream)
                }
            }
            Divergence::ReverseKl => {
                let (s0, t0) = (s[arg], t[arg]);
                // Σ q e, from pass 1's sums
                let sum_e = sum_ve / ls.sum;
                let f = Rev {
                    c,
                    s0,
                    t0,
                    g: self.g as f32,
                    sum_e: sum_e as f32,
                };
                if want_t {
                    row_map2::<A, _>(s, t, grad, tgrad, &w, &f, self.stream);
                } else {
                    row_map::<A, _>(s, t, grad, &w, &f, self.stream);
                }
                // KL = ln q* − ln p* + Σ q e
                ss.logp64(s0) - st.logp64(t0) + sum_e
            }
            Divergence::Jsd => {
                let mut f = Jsd {
                    c,
                    g: (self.g * (1.0 - beta)) as f32,
                    kl_qm: 0.0,
                    gt: (self.g * beta) as f32,
                    kl_pm: 0.0,
                };
                let (a, b) = row_sum2::<A, _>(s, t, &w, &f);
                f.kl_qm = b as f32;
                f.kl_pm = a as f32;
                if want_t {
                    row_map2::<A, _>(s, t, grad, tgrad, &w, &f, self.stream);
                } else {
                    row_map::<A, _>(s, t, grad, &w, &f, self.stream);
                }
                beta * a + (1.0 - beta) * b
            }
        };
        Ok(self.t2 * div)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::drive;

    /// Rows of two blocks and a part, the first row opening with a whole
    /// block of −inf in both (its terms are stored as zeros).
    fn rows(rows: usize, cols: usize) -> (Vec<f32>, Vec<f32>) {
        let v = |i: usize, a: usize| ((i * a) % 1009) as f32 / 97.0 - 5.0;
        let mut s: Vec<f32> = (0..rows * cols).map(|i| v(i, 7919)).collect();
        let mut t: Vec<f32> = (0..rows * cols).map(|i| v(i, 104_729)).collect();
        s[..BLK].fill(f32::NEG_INFINITY);
        t[..BLK].fill(f32::NEG_INFINITY);
        (s, t)
    }

    /// The losses and gradients of `drive::run`, the gradients written at
    /// `off` values into their buffers (unaligned for odd `off`).
    fn run<K: RowKernel>(
        k: &K,
        rows: usize,
        cols: usize,
        tg: bool,
        off: usize,
    ) -> (Vec<f64>, Vec<f32>, Vec<f32>) {
        let n = rows * cols;
        let (mut g, mut h) = (vec![0f32; n + off], vec![0f32; n + off]);
        let th = if tg {
            Some((&mut h[off..]).into())
        } else {
            None
        };
        let l = drive::run(k, rows, cols, (&mut g[off..]).into(), th).unwrap();
        (l, g[off..].to_vec(), h[off..].to_vec())
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Gradients written past the caches (through an L1 block, aligned or
    /// not) have the bits of those written in place, for every divergence,
    /// with and without the teacher's gradient.
    #[test]
    fn streamed_gradients_have_the_bits_of_cached_ones() {
        let (r, c) = (3, 2 * BLK + 37);
        let (s, t) = rows(r, c);
        for div in [
            Divergence::ForwardKl,
            Divergence::ReverseKl,
            Divergence::Jsd,
        ] {
            for tg in [false, true] {
                let k = |stream| Dense {
                    s: Data::F32(&s),
                    t: Data::F32(&t),
                    t_form: Form::Logits,
                    cols: c,
                    div,
                    beta: 0.3,
                    k: 0.5,
                    t2: 4.0,
                    g: 0.1,
                    mask: None,
                    stream,
                };
                let want = run(&k(false), r, c, tg, 0);
                for off in [0, 1, 2] {
                    let got = run(&k(true), r, c, tg, off);
                    let what = format!("{div:?}, teacher gradient {tg}, offset {off}");
                    assert_eq!(got.0, want.0, "{what}");
                    assert_eq!(bits(&got.1), bits(&want.1), "{what}");
                    assert_eq!(bits(&got.2), bits(&want.2), "{what}");
                }
            }
        }
    }

    /// The NLL's gradient written past the caches has the bits of the one
    /// written in place, targets in every block (the last, short one too)
    /// and one row ignored, with and without weights and smoothing.
    #[test]
    fn streamed_nll_gradients_have_the_bits_of_cached_ones() {
        let (r, c) = (4, 2 * BLK + 37);
        let (mut s, _) = rows(r, c);
        // finite throughout (−inf logits are errors under smoothing)
        for (i, v) in s[..BLK].iter_mut().enumerate() {
            *v = (i % 13) as f32 - 6.0;
        }
        let targets = [3u32, (BLK + 5) as u32, IGNORED, (2 * BLK + 30) as u32];
        let w: Vec<f32> = (0..c).map(|i| 0.5 + (i % 7) as f32 / 7.0).collect();
        for (weights, eps) in [(None, 0.0), (Some(&w[..]), 0.1)] {
            let k = |stream| Nll {
                q: Data::F32(&s),
                cols: c,
                targets: &targets,
                weights,
                eps,
                sum_w: weights.map_or(c as f64, |w| w.iter().map(|&v| v as f64).sum()),
                g: 0.25,
                stream,
            };
            let want = run(&k(false), r, c, false, 0);
            for off in [0, 1, 3] {
                let got = run(&k(true), r, c, false, off);
                assert_eq!(got.0, want.0, "offset {off}");
                assert_eq!(bits(&got.1), bits(&want.1), "offset {off}");
            }
        }
    }

    /// The forward KL from stored terms (a block of −inf included) against
    /// float64: loss and gradient per row.
    #[test]
    fn forward_kl_from_stored_terms_matches_f64() {
        let (r, c) = (3, 2 * BLK + 37);
        let (s, t) = rows(r, c);
        let (k, g) = (0.5f64, 0.1f64);
        let dense = Dense {
            s: Data::F32(&s),
            t: Data::F32(&t),
            t_form: Form::Logits,
            cols: c,
            div: Divergence::ForwardKl,
            beta: 0.5,
            k: k as f32,
            t2: 4.0,
            g,
            mask: None,
            stream: false,
        };
        let (loss, grad, _) = run(&dense, r, c, false, 0);
        let soft = |x: &[f32]| {
            let m = x
                .iter()
                .fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64 * k));
            let z: f64 = x.iter().map(|&v| (v as f64 * k - m).exp()).sum();
            x.iter()
                .map(|&v| (v as f64 * k - m).exp() / z)
                .collect::<Vec<f64>>()
        };
        for row in 0..r {
            let range = row * c..(row + 1) * c;
            let (q, p) = (soft(&s[range.clone()]), soft(&t[range.clone()]));
            let kl: f64 = p
                .iter()
                .zip(&q)
                .filter(|(p, _)| **p > 0.0)
                .map(|(p, q)| p * (p / q).ln())
                .sum();
            let want = 4.0 * kl;
            assert!(
                (loss[row] - want).abs() <= 2e-6 + 2e-5 * want.abs(),
                "row {row}: {} {want}",
                loss[row]
            );
            let (mut d, mut n) = (0f64, 0f64);
            for (j, (q, p)) in q.iter().zip(&p).enumerate() {
                let w = g * (q - p);
                d += (grad[row * c + j] as f64 - w).abs();
                n += w.abs();
            }
            assert!(d <= 1e-4 * n + 1e-6, "row {row}: {d} of {n}");
        }
    }
}
