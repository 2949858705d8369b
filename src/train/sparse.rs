//! Distillation from a sparse (top-k) teacher.
//!
//! The loss is a divergence between bucketed distributions: the k indexed
//! columns, plus (under [`Tail::Bucket`]) one bucket for every other column,
//! of mass r = 1 − Σₖ exp(lₖ) for the teacher and Q_tail for the student.
//! ln Q_tail is a log-sum-exp over the student's columns outside the indices
//! (pass 1 walks the gaps between the sorted indices), never ln(1 − Σ q),
//! which cancels in f32. The k + 1 buckets are handled in f64; the tail's
//! gradient is one vector pass (pass 2) over pass 1's kept terms (a row of
//! them per worker, in L2), each scaled by its block's factor, with one
//! exponential per column instead where the tail's second term needs its own
//! (see [`TailRow`]).
//!
//! With buckets b, Q_b, P_b and φ_b = ∂loss/∂Q_b, the gradient with respect
//! to the scaled logit of column c in bucket b is q_c (φ_b − Σ Q φ):
//! forward KL q_c ΣP − P_b q_c / Q_b, reverse KL q_c (ln Q_b − ln P_b − KL),
//! JSD (1 − β) q_c (ln Q_b − ln M_b − KL(Q‖M)).

use std::mem::MaybeUninit;

use super::dense::row_buf;
use super::drive::RowKernel;
use super::lse::{BLK, L, Lse, bad_f, bad_value, log_add64, max_bad, scaled};
use super::options::{Divergence, RowMask, Tail};
use crate::batch::{Data, Targets};
use crate::cpu::ln::{Arith, exp_normal as exp};
use crate::error::{Arg, BadValue, Error, Result, try_vec};
use crate::gpu::Gpu;
use crate::gpu::train::{SPARSE_CONSTS, SPARSE_STATS, TrainParams, sub};
use crate::grad::GradMut;
use crate::record::{self, code::COL_NONE};

/// Distillation from a sparse teacher.
pub(super) struct Sparse<'a> {
    pub(super) s: Data<'a>,
    pub(super) cols: usize,
    pub(super) indices: Targets<'a>,
    pub(super) logprobs: &'a [f32],
    /// Indices per row.
    pub(super) top: usize,
    pub(super) tail: Tail,
    pub(super) div: Divergence,
    pub(super) beta: f32,
    /// 1 / T.
    pub(super) k: f32,
    /// T².
    pub(super) t2: f64,
    /// T · the reduction's scale.
    pub(super) g: f64,
    pub(super) tolerance: f32,
    pub(super) mask: Option<RowMask<'a>>,
}

/// The scratch of [`Sparse`]: the student's conversion buffer, the row's
/// (column, position) pairs, and pass 1's exponentials of the tail's
/// columns with their blocks (see [`Stored`]).
pub(super) type Scratch = (Vec<MaybeUninit<f32>>, Vec<(u32, u32)>, Stored);

/// Pass 1's terms exp((s − max)·k) of the tail's columns, each block's
/// relative to the running maximum after it (`blocks`: start, end, that
/// maximum), so that pass 2 takes q_c as a term times its block's factor
/// from L2 instead of reading the row and taking exponentials again (as the
/// dense kernels keep theirs).
pub(super) struct Stored {
    terms: Vec<f32>,
    blocks: Vec<(u32, u32, f32)>,
}

/// One bucket: ln Q, ln P, the student column it is reported as.
#[derive(Clone, Copy)]
struct Bucket {
    lq: f64,
    lp: f64,
    col: usize,
}

impl Sparse<'_> {
    /// The row's indices checked and sorted (column, position), and the
    /// teacher's log-probabilities checked.
    fn gather(&self, row: usize, pairs: &mut Vec<(u32, u32)>) -> Result<()> {
        pairs.clear();
        for j in 0..self.top {
            let at = row * self.top + j;
            let ix = self.indices.get(at);
            if ix < 0 || ix as u64 >= self.cols as u64 {
                return Err(Error::TeacherIndex {
                    row,
                    position: j,
                    index: ix,
                    why: record::why_index_range(self.cols),
                });
            }
            let l = self.logprobs[at];
            let what = if l.is_nan() {
                Some(BadValue::Nan)
            } else if l == f32::INFINITY {
                Some(BadValue::Infinite)
            } else if l > 0.0 {
                Some(BadValue::PositiveLog)
            } else {
                None
            };
            if let Some(what) = what {
                return Err(Error::BadValue {
                    arg: Arg::P,
                    row,
                    col: Some(j),
                    what,
                });
            }
            pairs.push((ix as u32, j as u32));
        }
        pairs.sort_unstable();
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            let (a, b) = (w[0].1.min(w[1].1), w[0].1.max(w[1].1));
            return Err(Error::TeacherIndex {
                row,
                position: b as usize,
                index: w[0].0 as i64,
                why: record::why_index_repeat(a),
            });
        }
        Ok(())
    }

    /// The divergence of the buckets and each bucket's gradient factor g_b
    /// (the gradient of column c in bucket b is q_c·g_b, with q_c the
    /// bucket's own share for a single column), before T and the reduction.
    fn buckets(&self, row: usize, b: &[Bucket], factors: &mut Vec<f64>) -> Result<f64> {
        factors.clear();
        let beta = self.beta as f64;
        let inf = f64::NEG_INFINITY;
        match self.div {
            Divergence::ForwardKl => {
                let sum_p: f64 = b.iter().map(|b| b.lp.exp()).sum();
                let mut loss = 0.0;
                for x in b {
                    if x.lp == inf {
                        continue;
                    }
                    if x.lq == inf {
                        return Err(Error::InfiniteLoss {
                            row,
                            col: x.col,
                            why: super::WHY_TEACHER_MASS,
                        });
                    }
                    loss += x.lp.exp() * (x.lp - x.lq);
                }
                // q_c (ΣP − P_b / Q_b), with P_b / Q_b = exp(lp − lq)
                factors.extend(b.iter().map(|x| {
                    if x.lp == inf {
                        sum_p
                    } else {
                        sum_p - (x.lp - x.lq).exp()
                    }
                }));
                Ok(loss)
            }
            Divergence::ReverseKl => {
                let mut kl = 0.0;
                for x in b {
                    if x.lq == inf {
                        continue;
                    }
                    if x.lp == inf {
                        return Err(Error::InfiniteLoss {
                            row,
                            col: x.col,
                            why: super::WHY_STUDENT_MASS,
                        });
                    }
                    kl += x.lq.exp() * (x.lq - x.lp);
                }
                factors.extend(
                    b.iter()
                        .map(|x| if x.lq == inf { 0.0 } else { x.lq - x.lp - kl }),
                );
                Ok(kl)
            }
            Divergence::Jsd => {
                let (lb, l1b) = (beta.ln(), (1.0 - beta).ln());
                let (mut a, mut kq) = (0.0, 0.0);
                for x in b {
                    let lm = log_add64(lb + x.lp, l1b + x.lq);
                    if x.lp != inf {
                        a += x.lp.exp() * (x.lp - lm);
                    }
                    if x.lq != inf {
                        kq += x.lq.exp() * (x.lq - lm);
                    }
                }
                factors.extend(b.iter().map(|x| {
                    if x.lq == inf {
                        0.0
                    } else {
                        (1.0 - beta) * (x.lq - log_add64(lb + x.lp, l1b + x.lq) - kq)
                    }
                }));
                Ok(beta * a + (1.0 - beta) * kq)
            }
        }
    }
}

impl Sparse<'_> {
    /// The gradients of the indexed columns (the first `top` buckets), in
    /// f64: the forward KL's as g (ΣP·Q_b − P_b), which has no P/Q ratio to
    /// overflow; the others as g·Q_b·φ.
    fn write_cols(&self, b: &[Bucket], factors: &[f64], mut grad: GradMut<'_>) {
        let sum_p: f64 = b.iter().map(|x| x.lp.exp()).sum();
        for (x, f) in b[..self.top].iter().zip(factors) {
            let v = match self.div {
                Divergence::ForwardKl => sum_p * x.lq.exp() - x.lp.exp(),
                _ => x.lq.exp() * f,
            };
            grad.set(x.col, (self.g * v) as f32);
        }
    }
}

/// Row constants of the tail's gradient.
#[derive(Clone, Copy)]
struct TailRow {
    /// The student's row maximum, scale 1/T and ln Σ.
    m: f32,
    k: f32,
    ln_s: f32,
    /// f·q_c − h·exp((s − mt)·k + j).
    f: f32,
    h: f32,
    mt: f32,
    j: f32,
    /// Where `Some`, h·exp((s − mt)·k + j) = q_c·hc for every column, with
    /// hc = h·exp((m − mt)·k + ln Σ + j) a normal f32: one exponential per
    /// column instead of two (none where the ratio would overflow or vanish,
    /// which is why the second one exists).
    hc: Option<f32>,
}

impl TailRow {
    fn new(m: f32, k: f32, ln_s: f64, f: f64, h: f64, mt: f32, j: f64) -> TailRow {
        // (0 without the second term: never 0 times an infinite exponential)
        let hc = match h {
            0.0 => 0.0,
            _ => h * (((m - mt) as f64) * k as f64 + ln_s + j).exp(),
        };
        let normal = (2f64.powi(-100)..2f64.powi(100)).contains(&hc.abs());
        TailRow {
            m,
            k,
            ln_s: ln_s as f32,
            f: f as f32,
            h: h as f32,
            mt,
            j: j as f32,
            hc: (h == 0.0 || normal).then_some(hc as f32),
        }
    }
}

/// The tail's gradient, one column.
#[inline(always)]
fn tail_elem<A: Arith>(s: f32, r: &TailRow) -> f32 {
    let q = exp::<A>((s - r.m) * r.k - r.ln_s);
    let v = r.f * q - r.h * exp::<A>((s - r.mt) * r.k + r.j);
    if s == f32::NEG_INFINITY { 0.0 } else { v }
}

/// [`tail_elem`] with one exponential: q_c·(f − hc).
#[inline(always)]
fn tail_elem_one<A: Arith>(s: f32, r: &TailRow, fh: f32) -> f32 {
    let v = exp::<A>((s - r.m) * r.k - r.ln_s) * fh;
    if s == f32::NEG_INFINITY { 0.0 } else { v }
}

/// The tail's gradient q_c·fh over one block of pass 1's terms, q_c = term ×
/// the block's factor `f` (0 for a masked column, whose term is 0).
#[inline(always)]
fn tail_block(terms: &[f32], grad: &mut [f32], f: f32, fh: f32) {
    let elem = |e: f32| {
        let q = scaled(e, f);
        if q == 0.0 { 0.0 } else { q * fh }
    };
    let tc = terms.chunks_exact(L);
    let n = terms.len() - tc.remainder().len();
    for (tc, gc) in tc.zip(grad[..n].chunks_exact_mut(L)) {
        for i in 0..L {
            gc[i] = elem(tc[i]);
        }
    }
    for i in n..terms.len() {
        grad[i] = elem(terms[i]);
    }
}

/// The tail's gradient over a row (the indexed columns are written after).
#[inline(always)]
fn tail_row<A: Arith>(s: &[f32], grad: &mut [f32], r: &TailRow) {
    let cols = s.len();
    let sc = s.chunks_exact(L);
    let n = cols - sc.remainder().len();
    match r.hc {
        Some(hc) => {
            let fh = r.f - hc;
            for (sc, gc) in sc.zip(grad[..n].chunks_exact_mut(L)) {
                for i in 0..L {
                    gc[i] = tail_elem_one::<A>(sc[i], r, fh);
                }
            }
            for i in n..cols {
                grad[i] = tail_elem_one::<A>(s[i], r, fh);
            }
        }
        None => {
            for (sc, gc) in sc.zip(grad[..n].chunks_exact_mut(L)) {
                for i in 0..L {
                    gc[i] = tail_elem::<A>(sc[i], r);
                }
            }
            for i in n..cols {
                grad[i] = tail_elem::<A>(s[i], r);
            }
        }
    }
}

impl RowKernel for Sparse<'_> {
    type Scratch = Scratch;
    fn scratch(&self) -> Result<Scratch> {
        let mut terms = try_vec(self.cols, "a row of exponentials")?;
        terms.resize(self.cols, 0f32);
        Ok((
            row_buf(&self.s, self.cols)?,
            try_vec(self.top, "the sorted teacher indices")?,
            Stored {
                terms,
                blocks: Vec::new(),
            },
        ))
    }

    #[inline(always)]
    fn row<A: Arith>(
        &self,
        row: usize,
        grad: &mut [f32],
        _tgrad: &mut [f32],
        sc: &mut Scratch,
    ) -> Result<f64> {
        if self.mask.is_some_and(|m| !m.counts(row)) {
            grad.fill(0.0);
            return Ok(0.0);
        }
        let (buf, pairs, stored) = sc;
        self.gather(row, pairs)?;
        let cols = self.cols;
        let s = self.s.f32s(row * cols..(row + 1) * cols, buf);
        let k = self.k;
        let li = self.index_lse(row, s, pairs)?;
        let mut buckets: Vec<Bucket> = Vec::with_capacity(self.top + 1);
        let mut factors: Vec<f64> = Vec::with_capacity(self.top + 1);
        let (div, tail) = match self.tail {
            Tail::Renormalize => (
                self.renormalized(row, s, pairs, &li, &mut buckets, &mut factors)?,
                None,
            ),
            Tail::Bucket => {
                // pass 1: the tail's log-sum-exp over the gaps between
                // indices, its terms kept
                let mut lt = Lse::EMPTY;
                let mut prev = 0usize;
                let ends = pairs.iter().map(|p| p.0 as usize).chain([cols]);
                stored.blocks.clear();
                for c in ends {
                    for (b, blk) in s[prev..c.max(prev)].chunks(BLK).enumerate() {
                        let at = prev + b * BLK;
                        let (mb, bad) = max_bad(blk);
                        if bad {
                            return Err(bad_value(Arg::Q, row, at, &s[at..c]));
                        }
                        let out = &mut stored.terms[at..at + blk.len()];
                        lt.add_block_store::<A>(blk, mb, k, out);
                        let end = (at + blk.len()) as u32;
                        stored.blocks.push((at as u32, end, lt.max));
                    }
                    prev = c + 1;
                }
                self.bucketed(row, s, pairs, &li, &lt, &mut buckets, &mut factors)?
            }
        };
        // pass 2: the tail's gradient over the row, then the indices
        match tail {
            // (a tail row comes only with the tail bucket, after pass 1)
            Some(TailRow {
                hc: Some(hc),
                f,
                m,
                ln_s,
                ..
            }) => {
                // q_c = term × its block's factor; every column outside the
                // indices is in a block, the indices are written next
                for &(a, b, mx) in &stored.blocks {
                    let fb = ((((mx - m) as f64) * k as f64) - ln_s as f64).exp() as f32;
                    let (a, b) = (a as usize, b as usize);
                    tail_block(&stored.terms[a..b], &mut grad[a..b], fb, f - hc);
                }
            }
            Some(tr) => tail_row::<A>(s, grad, &tr),
            None => grad.fill(0.0),
        }
        self.write_cols(&buckets, &factors, GradMut::F32(grad));
        Ok(self.t2 * div)
    }
}

/// The first column outside the sorted indices `pairs` of a row of `cols`.
fn first_tail(pairs: &[(u32, u32)], cols: usize) -> Option<usize> {
    let gap = pairs
        .iter()
        .enumerate()
        .find(|&(i, p)| p.0 as usize != i)
        .map_or(pairs.len(), |(i, _)| i);
    (gap < cols).then_some(gap)
}

impl Sparse<'_> {
    /// The student's values at the row's indices checked, and their
    /// log-sum-exp.
    fn index_lse(&self, row: usize, s: &[f32], pairs: &[(u32, u32)]) -> Result<Lse> {
        let mut li = Lse::EMPTY;
        for &(c, _) in pairs.iter() {
            let v = s[c as usize];
            if bad_f(v) {
                return Err(bad_value(Arg::Q, row, c as usize, &s[c as usize..]));
            }
            li.add_one(v, self.k);
        }
        Ok(li)
    }

    /// [`Tail::Renormalize`]: the divergence between the conditionals on
    /// the indices, the buckets and their factors.
    fn renormalized(
        &self,
        row: usize,
        s: &[f32],
        pairs: &[(u32, u32)],
        li: &Lse,
        buckets: &mut Vec<Bucket>,
        factors: &mut Vec<f64>,
    ) -> Result<f64> {
        if li.empty() {
            return Err(Error::CannotNormalize {
                arg: Arg::Q,
                row,
                why: record::WHY_INDEX_ALL_MASKED,
            });
        }
        let base = row * self.top;
        let sq = li.soft(self.k);
        let mut lt = Lse::EMPTY;
        for j in 0..self.top {
            lt.add_one(self.logprobs[base + j], 1.0);
        }
        if lt.empty() {
            return Err(Error::CannotNormalize {
                arg: Arg::P,
                row,
                why: record::WHY_TEACHER_ALL_MASKED,
            });
        }
        let lse_t = lt.max as f64 + lt.sum.ln();
        for &(c, j) in pairs.iter() {
            buckets.push(Bucket {
                lq: sq.logp64(s[c as usize]),
                lp: self.logprobs[base + j as usize] as f64 - lse_t,
                col: c as usize,
            });
        }
        self.buckets(row, buckets, factors)
    }

    /// [`Tail::Bucket`], given the log-sum-exps of the indexed columns (`li`)
    /// and of the others (`lt`): the divergence of the k + 1 buckets, the
    /// buckets and their factors, and the tail's gradient constants (none
    /// where every column is indexed).
    #[expect(
        clippy::too_many_arguments,
        reason = "one row's statistics and outputs"
    )]
    fn bucketed(
        &self,
        row: usize,
        s: &[f32],
        pairs: &[(u32, u32)],
        li: &Lse,
        lt: &Lse,
        buckets: &mut Vec<Bucket>,
        factors: &mut Vec<f64>,
    ) -> Result<(f64, Option<TailRow>)> {
        let (k, base) = (self.k, row * self.top);
        let mut all = *lt;
        all.merge(li, k);
        if all.empty() {
            return Err(Error::CannotNormalize {
                arg: Arg::Q,
                row,
                why: crate::record::ALL_MASKED,
            });
        }
        let soft = all.soft(k);
        let lq_tail = if lt.empty() {
            f64::NEG_INFINITY
        } else {
            lt.sum.ln() + ((lt.max - all.max) as f64) * k as f64 - soft.ln_s
        };
        let sum_p: f64 = (0..self.top)
            .map(|j| (self.logprobs[base + j] as f64).exp())
            .sum();
        let r = 1.0 - sum_p;
        if r < -(self.tolerance as f64) {
            return Err(Error::NotNormalized {
                arg: Arg::P,
                row,
                sum: sum_p as f32,
                tolerance: self.tolerance,
            });
        }
        let ln_r = r.max(0.0).ln();
        for &(c, j) in pairs.iter() {
            buckets.push(Bucket {
                lq: soft.logp64(s[c as usize]),
                lp: self.logprobs[base + j as usize] as f64,
                col: c as usize,
            });
        }
        let first = first_tail(pairs, self.cols);
        match first {
            Some(tail_col) => buckets.push(Bucket {
                lq: lq_tail,
                lp: ln_r,
                col: tail_col,
            }),
            // k = C: a tail mass within the tolerance is rounding, and has no bucket
            None if r > self.tolerance as f64 => {
                return Err(Error::InfiniteLoss {
                    row,
                    col: 0,
                    why: record::WHY_TAIL_UNCOVERED,
                });
            }
            None => {}
        }
        let div = self.buckets(row, buckets, factors)?;
        if first.is_none() {
            return Ok((div, None));
        }
        let ft = factors[self.top];
        let (f, h, j) = match self.div {
            // q_c ΣP − q_c r / Q_tail: the second term relative to the tail's own max
            Divergence::ForwardKl if ln_r > f64::NEG_INFINITY && lq_tail > f64::NEG_INFINITY => {
                let sum_p_all = sum_p + r.max(0.0);
                (self.g * sum_p_all, self.g, ln_r - lt.sum.ln())
            }
            _ => (self.g * ft, 0.0, 0.0),
        };
        let mt = if lt.empty() { soft.m } else { lt.max };
        Ok((div, Some(TailRow::new(soft.m, k, soft.ln_s, f, h, mt, j))))
    }

    /// The host path of a GPU context: the indices checked and the buckets
    /// made here, the passes over every column (the tail's log-sum-exp, the
    /// tail's gradient) on `gpu` (shaders/train.wgsl's `sparse_*`), rows in
    /// chunks that fit its bindings. The same errors as the CPU's, from the
    /// first bad row.
    pub(super) fn on_gpu(&self, gpu: &Gpu, mut grad: GradMut<'_>) -> Result<Vec<f64>> {
        let cols = self.cols;
        let rows = grad.len() / cols.max(1);
        let chunk = gpu.sparse_chunk_rows(rows, cols)?;
        let mut losses = try_vec(rows, "the per-row losses")?;
        // the student's conversion buffer and the sorted pairs (no kept
        // terms: the GPU takes the passes over the columns)
        let mut buf = row_buf(&self.s, cols)?;
        let mut pairs = try_vec(self.top, "the sorted teacher indices")?;
        let params = TrainParams {
            cols: cols as u32,
            k: self.k,
            top: self.top as u32,
            ..TrainParams::default()
        };
        for r0 in (0..rows).step_by(chunk) {
            let r1 = (r0 + chunk).min(rows);
            let n = r1 - r0;
            // the sorted indices of the rows that run (the others' are never
            // looked at: a masked row is off, a bad one is reported first)
            let mut indices = try_vec(n * self.top, "the sorted teacher indices")?;
            let mut bad: Option<(usize, Error)> = None;
            let mut all_pairs = try_vec(n * self.top, "the sorted teacher indices")?;
            for row in r0..r1 {
                let counted = self.mask.is_none_or(|m| m.counts(row));
                if counted && bad.is_none() {
                    if let Err(e) = self.gather(row, &mut pairs) {
                        bad = Some((row, e));
                    }
                }
                if counted && bad.as_ref().is_none_or(|b| b.0 != row) && pairs.len() == self.top {
                    indices.extend(pairs.iter().map(|p| p.0));
                    all_pairs.extend_from_slice(&pairs);
                } else {
                    indices.extend(std::iter::repeat_n(u32::MAX, self.top));
                    all_pairs.extend(std::iter::repeat_n((u32::MAX, 0), self.top));
                }
                pairs.clear();
            }
            let vals = r0 * cols..r1 * cols;
            let mut plans: Vec<(Vec<Bucket>, Vec<f64>)> = Vec::new();
            let mut consts = try_vec(n * SPARSE_CONSTS, "the tail's constants")?;
            gpu.sparse_rows(
                sub(self.s, vals.clone()),
                params,
                &indices,
                grad.sub(vals),
                |stats| {
                    for (i, st) in stats.chunks_exact(SPARSE_STATS).enumerate() {
                        let row = r0 + i;
                        let mut buckets = Vec::new();
                        let mut factors = Vec::new();
                        let mut c = [0u32; SPARSE_CONSTS];
                        if self.mask.is_none_or(|m| m.counts(row)) {
                            if let Some((at, _)) = &bad {
                                if *at == row {
                                    return Err(bad.take().map(|b| b.1).unwrap_or(Error::Device(
                                        "a sparse row's error was lost".into(),
                                    )));
                                }
                            }
                            let p = &all_pairs[i * self.top..(i + 1) * self.top];
                            let s = self.s.f32s(row * cols..(row + 1) * cols, &mut buf);
                            let li = self.index_lse(row, s, p)?;
                            let (div, tail) = match self.tail {
                                Tail::Renormalize => (
                                    self.renormalized(row, s, p, &li, &mut buckets, &mut factors)?,
                                    None,
                                ),
                                Tail::Bucket => {
                                    if st[2] != COL_NONE {
                                        let at = st[2] as usize;
                                        return Err(bad_value(Arg::Q, row, at, &s[at..]));
                                    }
                                    let (max, sum) = (f32::from_bits(st[0]), f32::from_bits(st[1]));
                                    let lt = if sum > 0.0 {
                                        Lse {
                                            max,
                                            sum: sum as f64,
                                        }
                                    } else {
                                        Lse::EMPTY
                                    };
                                    self.bucketed(row, s, p, &li, &lt, &mut buckets, &mut factors)?
                                }
                            };
                            losses.push(self.t2 * div);
                            if let Some(t) = tail {
                                c = [
                                    t.m.to_bits(),
                                    t.ln_s.to_bits(),
                                    t.f.to_bits(),
                                    t.h.to_bits(),
                                    t.mt.to_bits(),
                                    t.j.to_bits(),
                                    1,
                                    0,
                                ];
                            }
                        } else {
                            losses.push(0.0);
                        }
                        consts.extend_from_slice(&c);
                        plans.push((buckets, factors));
                    }
                    Ok(consts)
                },
            )?;
            // the indexed columns over pass 2's values (a masked row has none)
            for (i, (b, f)) in plans.iter().enumerate() {
                if !b.is_empty() {
                    let row = r0 + i;
                    self.write_cols(b, f, grad.sub(row * cols..(row + 1) * cols));
                }
            }
        }
        Ok(losses)
    }
}
