//! A [`Job`] lowered for the CPU: which kernels each pass runs, each row's
//! decoders, and the fixed block structure that makes results independent of
//! the thread count. The per-operand decisions come from the job's
//! [`Call`](crate::call::Call); this module only maps them onto kernels.
//!
//! A row is cut into blocks of [`BLOCK`] columns and blocks into super-blocks
//! of [`SUPER`] columns. A super-block's state is the left fold of its blocks'
//! states and a row's state the left fold of its super-blocks' states, whoever
//! computes them: threads share rows, or (few long rows) super-blocks.
//!
//! The two-pass plan (`Call::two_pass`): the first pass reduces each row to its
//! normalisers (Σ for probabilities, (max, ln s) for log forms) and the second
//! computes the terms on normalised values: p / S (divide first), or
//! (x − m) − ln s. Only operands being normalised are divided: the others (a
//! probability row under `Validate` next to logits, in Jensen-Shannon) are used
//! as given and their sum is checked.

use super::block::{BLOCK, BlockFn, BlockIo, Conv, Dec, DecKind, Isa, SUB, pick, pick_sums};
use super::kernel::{self, Norm, Rel, RowEnd, Side, State, Target};
use super::terms::{RowLogs, Term, with_term};
use crate::batch::Data;
use crate::call::Operand;
use crate::job::Job;
use crate::measure::{Form, Measure};
use crate::record::{Record, code};

/// Columns of a super-block: the unit of work when threads share a row.
pub(super) const SUPER: usize = 16 * BLOCK;

/// Which pass a state is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pass {
    /// Row normalisers.
    Sums,
    /// Terms (the only pass of the one-pass plan).
    Terms,
}

/// One operand's plan.
#[derive(Clone, Copy, Debug)]
struct OpPlan {
    form: Form,
    side: Side,
    /// Values above 0 allowed in a log form.
    pos_ok: bool,
}

/// First-pass result of a row: normalisers, status and aux values.
#[derive(Clone, Copy, Debug)]
pub(super) struct RowNorm {
    p: Norm,
    q: Norm,
    /// The first pass's problem ([`kernel::KEY_NONE`] when good).
    key: u64,
    aux_p: f32,
    aux_q: f32,
}

impl RowNorm {
    pub(super) const IDENTITY: RowNorm = RowNorm {
        p: Norm::IDENTITY,
        q: Norm::IDENTITY,
        key: kernel::KEY_NONE,
        aux_p: 0.0,
        aux_q: 0.0,
    };
}

/// One operand's values: `rows` is the call's rows, or 1 for a row compared
/// with every row of the other argument.
#[derive(Clone, Copy, Debug)]
struct HostOp<'a> {
    data: Data<'a>,
    rows: usize,
}

impl HostOp<'_> {
    /// The element range of row `r` of the call (the broadcast row for a
    /// one-row operand).
    fn row_range(&self, r: usize, cols: usize) -> std::ops::Range<usize> {
        let r = if self.rows == 1 { 0 } else { r };
        r * cols..(r + 1) * cols
    }
}

pub(super) struct Plan<'j> {
    job: &'j Job<'j>,
    p_in: Option<HostOp<'j>>,
    q_in: Option<HostOp<'j>>,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) two_pass: bool,
    p: OpPlan,
    q: OpPlan,
    /// First-pass kernel (two-pass plan).
    sums_fn: Option<BlockFn>,
    /// Term kernel.
    terms_fn: BlockFn,
    terms_p: DecKind,
    /// NLL rows without smoothing (or ignored): the sums of q plus one term.
    nll_fast_fn: Option<BlockFn>,
    /// Short rows of probabilities: a whole row's state in one call.
    short_fn: Option<ShortFn>,
}

/// The states of a run of short rows (see `fast::kl_rows`): the number of
/// rows done before one that holds a value the general path must decide.
/// Safety: only one [`short_kernel`] returned.
type ShortFn = unsafe fn(&[f32], &[f32], usize, (usize, usize), &mut [State]) -> usize;

/// The one-call kernel for rows of at most `SUB` columns of probabilities
/// as given (one pass, no NLL), where this machine has one.
fn short_kernel(
    job: &Job<'_>,
    isa: Isa,
    p: DecKind,
    q: DecKind,
    two_pass: bool,
) -> Option<ShortFn> {
    let call = &job.call;
    if isa == Isa::Base || two_pass || call.is_nll() || call.cols > SUB || p != DecKind::Probs {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use super::{fast, short512};
        if isa == Isa::Avx512 && call.cols <= short512::MAX_COLS {
            return match (call.measure, q) {
                (Measure::Kl, DecKind::Probs) => Some(short512::kl_rows),
                (Measure::CrossEntropy, DecKind::Probs) => Some(short512::cross_rows),
                (Measure::Entropy, DecKind::None) => Some(short512::entropy_rows),
                _ => None,
            };
        }
        match (call.measure, q) {
            (Measure::Kl, DecKind::Probs) => Some(fast::kl_rows),
            (Measure::CrossEntropy, DecKind::Probs) => Some(fast::cross_rows),
            (Measure::Entropy, DecKind::None) => Some(fast::entropy_rows),
            _ => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

fn log_form(f: Form) -> bool {
    f != Form::Probs
}

impl<'j> Plan<'j> {
    pub(super) fn new(job: &'j Job<'j>, isa: Isa) -> Plan<'j> {
        let call = &job.call;
        let two_pass = call.two_pass;
        let op = |o: Option<Operand>| -> OpPlan {
            match o {
                None => OpPlan {
                    form: Form::Probs,
                    side: Side::default(),
                    pos_ok: false,
                },
                Some(o) => OpPlan {
                    form: o.form,
                    side: Side {
                        present: true,
                        online: o.online,
                        normalized: o.normalized,
                        check_sum: o.check_sum,
                    },
                    pos_ok: o.pos_ok,
                },
            }
        };
        let p = op(call.p);
        let q = op(call.q);
        let sums_kind = |o: &OpPlan| match (o.side.present, log_form(o.form)) {
            (false, _) => DecKind::None,
            (true, false) if o.side.normalized => DecKind::ProbsPow2,
            (true, false) => DecKind::Probs,
            (true, true) => DecKind::Log,
        };
        let terms_kind = |o: &OpPlan| match (o.side.present, log_form(o.form)) {
            (false, _) => DecKind::None,
            (true, false) if o.side.normalized => DecKind::ProbsDiv,
            (true, false) => DecKind::Probs,
            (true, true) => DecKind::Log,
        };
        let (sums_p, sums_q) = (sums_kind(&p), sums_kind(&q));
        let sums_fn = two_pass.then(|| pick_sums(sums_p, sums_q, isa));
        let terms_p = match &job.nll {
            Some(n) if n.weights.is_some() => DecKind::TargetsWeighted,
            Some(_) => DecKind::Targets,
            None => terms_kind(&p),
        };
        let terms_q = terms_kind(&q);
        let nll_fast_fn = job
            .nll
            .as_ref()
            .map(|_| pick_sums(DecKind::None, terms_q, isa));
        let short_fn = short_kernel(job, isa, terms_p, terms_q, two_pass);
        let fail = || unreachable!("no kernel for {call:?}: {terms_p:?} x {terms_q:?}");
        let host = |o: Option<Operand>, d: Option<Data<'j>>| {
            Some(HostOp {
                data: d?,
                rows: o?.rows,
            })
        };
        Plan {
            job,
            p_in: host(call.p, job.p),
            q_in: host(call.q, job.q),
            rows: call.rows,
            cols: call.cols,
            two_pass,
            p,
            q,
            sums_fn: sums_fn.map(|f| f.unwrap_or_else(fail)),
            terms_fn: with_term!(call.measure, T => pick::<T>(terms_p, terms_q, isa))
                .unwrap_or_else(fail),
            terms_p,
            nll_fast_fn: nll_fast_fn.map(|f| f.unwrap_or_else(fail)),
            short_fn,
        }
    }

    /// Super-blocks per row.
    pub(super) fn supers(&self) -> usize {
        self.cols.div_ceil(SUPER)
    }

    fn pass_log(&self, o: &OpPlan) -> bool {
        o.side.present && log_form(o.form)
    }

    /// How the p / q sums of `pass` are kept: relative to running maxima
    /// (online log forms), to powers of two (probabilities being renormalised,
    /// first pass) or plain.
    fn online(&self, pass: Pass) -> (Rel, Rel) {
        let rel = |o: &OpPlan| match pass {
            Pass::Sums if self.pass_log(o) => Rel::Online,
            Pass::Sums if o.side.present && o.side.normalized => Rel::Pow2,
            Pass::Terms if o.side.online => Rel::Online,
            _ => Rel::Plain,
        };
        (rel(&self.p), rel(&self.q))
    }

    fn nll_row(&self, row: usize) -> Option<(Target, f32)> {
        let n = self.job.nll.as_ref()?;
        let eps = self.job.call.nll.map_or(0.0, |n| n.smoothing);
        let t = n.targets[row];
        let ignored = t == crate::call::IGNORED;
        let wt = if ignored { 0.0 } else { n.weight(t as usize) };
        let target = Target {
            target: t,
            ignored,
            eps,
            classes: self.cols as f32,
            tw: (1.0 - eps) * wt,
        };
        Some((target, wt))
    }

    fn dec(&self, o: &OpPlan, pass: Pass, n: &Norm) -> Dec {
        let mut d = Dec {
            s: 1.0,
            pos_ok: o.pos_ok,
            ..Dec::default()
        };
        match pass {
            Pass::Sums => d.online = log_form(o.form),
            Pass::Terms => {
                d.online = o.side.online;
                if o.side.normalized {
                    d.s = n.s;
                    d.m = n.m;
                    d.ls = n.ls;
                }
            }
        }
        d
    }

    /// Whether an operand is not f32 (converted where it is read).
    fn f64_input(&self) -> bool {
        [self.job.p, self.job.q]
            .iter()
            .any(|o| o.is_some_and(|d| d.is_converted()))
    }

    /// State of columns `c0..c1` (one block) of `row`. f32 operands are read
    /// in place; the others (f64, f16, bf16) are converted by the kernel,
    /// tile by tile ([`BlockIo::conv`](super::block::BlockIo)).
    fn block(&self, pass: Pass, row: usize, c0: usize, c1: usize, norm: &RowNorm) -> State {
        let cols = self.cols;
        let mut conv = Conv::default();
        let side = |o: &Option<HostOp<'j>>, conv: &mut Option<(Data<'j>, usize)>| {
            let Some(o) = o.as_ref() else {
                return &[][..];
            };
            let r = o.row_range(row, cols);
            match o.data {
                Data::F32(v) => &v[r.start + c0..r.start + c1],
                d => {
                    *conv = Some((d, r.start + c0));
                    &[][..]
                }
            }
        };
        let p = side(&self.p_in, &mut conv.p);
        let q = side(&self.q_in, &mut conv.q);
        self.block_io(pass, row, (c0, c1), norm, (p, q), conv)
    }

    /// [`Plan::block`] over the block's f32 columns `p` and `q`.
    fn block_io(
        &self,
        pass: Pass,
        row: usize,
        (c0, c1): (usize, usize),
        norm: &RowNorm,
        (p, q): (&[f32], &[f32]),
        conv: Conv<'_>,
    ) -> State {
        let mut io = BlockIo {
            p,
            q,
            len: c1 - c0,
            col0: c0,
            target: None,
            conv,
        };
        let mut dp = self.dec(&self.p, pass, &norm.p);
        let dq = self.dec(&self.q, pass, &norm.q);
        let f = match pass {
            Pass::Sums => self.sums_fn,
            Pass::Terms => match self.nll_row(row) {
                None => Some(self.terms_fn),
                Some((t, _)) => {
                    if t.ignored || t.eps == 0.0 {
                        let tc = t.target as usize;
                        if !t.ignored && (c0..c1).contains(&tc) {
                            io.target = Some((tc - c0, t.tw));
                        }
                        self.nll_fast_fn
                    } else {
                        dp.target = t;
                        if self.terms_p == DecKind::TargetsWeighted {
                            io.p = self
                                .job
                                .nll
                                .as_ref()
                                .and_then(|n| n.weights.as_deref())
                                .map_or(&[][..], |w| &w[c0..c1]);
                        }
                        Some(self.terms_fn)
                    }
                }
            },
        };
        let Some(f) = f else {
            return State::EMPTY;
        };
        // SAFETY: `f` was picked for this machine's instruction set.
        unsafe { f(&dp, &dq, &io) }
    }

    /// State of super-block `sb` of `row`: the left fold of its blocks.
    pub(super) fn super_state(&self, pass: Pass, row: usize, sb: usize, norm: &RowNorm) -> State {
        if pass == Pass::Terms && norm.key != kernel::KEY_NONE {
            return State::EMPTY;
        }
        let (po, qo) = self.online(pass);
        let c_end = ((sb + 1) * SUPER).min(self.cols);
        let mut st = State::EMPTY;
        let mut c0 = sb * SUPER;
        while c0 < c_end {
            let c1 = (c0 + BLOCK).min(c_end);
            let b = self.block(pass, row, c0, c1, norm);
            st = kernel::merge(&st, &b, po, qo);
            c0 = c1;
        }
        st
    }

    /// Left fold of super-block states.
    pub(super) fn fold(&self, pass: Pass, states: &[State]) -> State {
        let (po, qo) = self.online(pass);
        states
            .iter()
            .fold(State::EMPTY, |a, b| kernel::merge(&a, b, po, qo))
    }

    /// State of a whole row in `pass`.
    fn row_state(&self, pass: Pass, row: usize, norm: &RowNorm) -> State {
        let (po, qo) = self.online(pass);
        if self.cols <= BLOCK {
            // one block: the folds below reduce to this one merge (merging
            // with the empty state twice gives the same bits as once)
            if pass == Pass::Terms && norm.key != kernel::KEY_NONE {
                return State::EMPTY;
            }
            let b = self.block(pass, row, 0, self.cols, norm);
            return kernel::merge(&State::EMPTY, &b, po, qo);
        }
        (0..self.supers()).fold(State::EMPTY, |a, sb| {
            kernel::merge(&a, &self.super_state(pass, row, sb, norm), po, qo)
        })
    }

    /// The first pass's finalize: normalisers and status of a row.
    pub(super) fn normalisers(&self, st: &State) -> RowNorm {
        let mut out = RowNorm::IDENTITY;
        let mut key = st.key;
        if self.p.side.present {
            let (n, k, aux) = kernel::normaliser(
                log_form(self.p.form),
                st.flags & kernel::FL_P_SEEN != 0,
                st.ma,
                st.sa,
                code::P_ZERO_SUM,
                code::P_ALL_MASKED,
            );
            if self.p.side.normalized {
                out.p = n;
                out.aux_p = aux;
                key = key.min(k);
            }
        }
        if self.q.side.present {
            let (n, k, aux) = kernel::normaliser(
                log_form(self.q.form),
                st.flags & kernel::FL_Q_SEEN != 0,
                st.mb,
                st.sb,
                code::Q_ZERO_SUM,
                code::Q_ALL_MASKED,
            );
            if self.q.side.normalized {
                out.q = n;
                out.aux_q = aux;
                key = key.min(k);
            }
        }
        out.key = key;
        out
    }

    /// The record of a row from its term state.
    pub(super) fn finalize(&self, row: usize, st: &State, norm: &RowNorm) -> Record {
        if norm.key != kernel::KEY_NONE {
            return Record {
                value: f32::NAN,
                aux_p: if self.p.side.normalized {
                    norm.aux_p
                } else {
                    0.0
                },
                aux_q: if self.q.side.normalized {
                    norm.aux_q
                } else {
                    0.0
                },
                ..crate::record::Record::from_key(norm.key)
            };
        }
        let end = RowEnd {
            measure: self.job.call.measure,
            p: self.p.side,
            q: self.q.side,
            tolerance: self.job.call.tolerance,
            ln_base: self.job.call.ln_base,
            first: norm.key,
            aux_p: norm.aux_p,
            aux_q: norm.aux_q,
            nll_weight: self.nll_row(row).map(|(_, wt)| wt),
        };
        kernel::finalize(st, &end)
    }

    /// [`kernel::finalize`] for the row states of a short-row kernel (one
    /// pass, probabilities as given, no NLL, no bad value, no zero): the same
    /// records, without the branches that cannot apply, the measure chosen
    /// once for the run.
    fn finalize_short(&self, states: &[State], out: &mut [Record]) {
        with_term!(self.job.call.measure, T => self.finalize_short_as::<T>(states, out));
    }

    /// [`Plan::finalize_short`] for the measure `T`.
    #[inline(always)]
    fn finalize_short_as<T: Term>(&self, states: &[State], out: &mut [Record]) {
        let row_key = |c: u32| kernel::status_key(code::COL_NONE as usize, c);
        let call = &self.job.call;
        let (tol, ln_base) = (call.tolerance, call.ln_base);
        let (check_p, check_q) = (self.p.side.check_sum, self.q.side.check_sum);
        // as finalize: nothing online
        let logs = RowLogs {
            la: 0.0,
            lb: 0.0,
            inv_sa: 1.0,
            p_online: false,
        };
        for (rec, st) in out.iter_mut().zip(states) {
            let mut key = kernel::KEY_NONE;
            if check_p && ((st.sa as f32) - 1.0).abs() > tol {
                key = key.min(row_key(code::P_SUM));
            }
            if check_q && ((st.sb as f32) - 1.0).abs() > tol {
                key = key.min(row_key(code::Q_SUM));
            }
            let (status, column) = crate::record::key_parts(key);
            let value = if status == code::OK {
                kernel::positive_zero(kernel::in_base(T::value(st, &logs), ln_base) as f32)
            } else {
                f32::NAN
            };
            *rec = Record {
                value,
                aux_p: st.sa as f32,
                aux_q: st.sb as f32,
                code: status,
                column,
                index: 0,
            };
        }
    }

    /// Rows `r0..r0 + out.len()`, on the calling thread: short rows of
    /// probabilities one call each, every other row (or one holding a value
    /// the general path must decide) through [`Plan::row`].
    pub(super) fn rows_into(&self, r0: usize, out: &mut [Record]) {
        let Some(f) = self.short_fn else {
            for (k, rec) in out.iter_mut().enumerate() {
                *rec = self.row(r0 + k);
            }
            return;
        };
        let cols = self.cols;
        // (data from row r0, stride): a broadcast row has stride 0
        fn from<'a>(o: &'a Option<HostOp<'_>>, r0: usize, cols: usize) -> (&'a [f32], usize) {
            match o.as_ref().map(|o| (o.rows, o.data)) {
                Some((1, Data::F32(v))) => (&v[..cols], 0),
                Some((_, Data::F32(v))) => (&v[r0 * cols..], cols),
                _ => (&[][..], 0),
            }
        }
        // f64 operands: rows `w.0..w.1` converted into `pb` / `qb` (a
        // broadcast row once), at most BATCH rows at a time
        fn fill(o: &Option<HostOp<'_>>, (w0, w1): (usize, usize), cols: usize, buf: &mut Vec<f32>) {
            let Some(o) = o else { return };
            if !o.data.is_converted() {
                return;
            }
            let range = if o.rows == 1 {
                if !buf.is_empty() {
                    return;
                }
                0..cols
            } else {
                w0 * cols..w1 * cols
            };
            buf.resize(range.len(), 0.0);
            o.data.convert_range(range, buf);
        }
        fn view<'a>(
            o: &'a Option<HostOp<'_>>,
            (r, w0): (usize, usize),
            cols: usize,
            buf: &'a [f32],
        ) -> (&'a [f32], usize) {
            match o {
                Some(o) if o.data.is_converted() && o.rows == 1 => (&buf[..cols], 0),
                Some(o) if o.data.is_converted() => (&buf[(r - w0) * cols..], cols),
                _ => from(o, r, cols),
            }
        }
        const BATCH: usize = 64;
        let conv = self.f64_input();
        let (mut pb, mut qb) = (Vec::new(), Vec::new());
        let mut w = (0, 0);
        let mut states = [State::EMPTY; BATCH];
        let mut k = 0;
        while k < out.len() {
            let r = r0 + k;
            let mut n = BATCH.min(out.len() - k);
            if conv {
                if r >= w.1 {
                    w = (r, r + n);
                    fill(&self.p_in, w, cols, &mut pb);
                    fill(&self.q_in, w, cols, &mut qb);
                }
                n = n.min(w.1 - r);
            }
            let (p, sp) = view(&self.p_in, (r, w.0), cols, &pb);
            let (q, sq) = view(&self.q_in, (r, w.0), cols, &qb);
            // SAFETY: `f` was picked for this machine's instruction set.
            let done = unsafe { f(p, q, cols, (sp, sq), &mut states[..n]) };
            self.finalize_short(&states[..done], &mut out[k..k + done]);
            k += done;
            if done < n {
                // a row with a zero or a bad value: the general path
                out[k] = self.row(r0 + k);
                k += 1;
            }
        }
    }

    /// A whole row, on the calling thread.
    pub(super) fn row(&self, row: usize) -> Record {
        let norm = if self.two_pass {
            self.normalisers(&self.row_state(Pass::Sums, row, &RowNorm::IDENTITY))
        } else {
            RowNorm::IDENTITY
        };
        let st = self.row_state(Pass::Terms, row, &norm);
        self.finalize(row, &st, &norm)
    }
}

#[cfg(test)]
mod f64_tests {
    use super::super::tests::bits;
    use super::super::{block::Isa, run_with};
    use crate::job::Job;
    use crate::test_support::random::{Rng, rand_probs_f64};
    use crate::{Batch, Form, Measure, NllOptions, Normalization, Options};

    /// f64 values of every kind: rows summing to about 1, zeros, tiny values,
    /// a NaN and a negative (bad rows decided by the general path).
    fn values(rows: usize, cols: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        let mut v = rand_probs_f64(&mut rng, rows, cols, 1.0 / 29.0, 1.0 / 29.0, 1e-40);
        if rows > 3 {
            v[2 * cols + cols / 2] = f64::NAN;
            v[3 * cols] = -0.5;
        }
        v
    }

    /// Per-block conversion on every instruction set and thread count gives
    /// the records of the values converted first.
    #[test]
    fn f64_blocks_equal_f32_for_any_threads_and_isa() {
        for &(rows, cols) in &[
            (1usize, 1usize),
            (300, 7),
            (200, 512),
            (4, 70_001),
            (9, 4097),
        ] {
            let p = values(rows, cols, 3);
            let q = values(rows, cols, 5);
            let (p32, q32): (Vec<f32>, Vec<f32>) = (
                p.iter().map(|&x| x as f32).collect(),
                q.iter().map(|&x| x as f32).collect(),
            );
            for norm in [Normalization::Validate, Normalization::Renormalize] {
                let o = Options::default().normalization(norm);
                for m in [
                    Measure::Entropy,
                    Measure::CrossEntropy,
                    Measure::Kl,
                    Measure::Js,
                ] {
                    for (qrows, qf) in [
                        (rows, Form::Probs),
                        (1, Form::Probs),
                        (rows, Form::LogProbs),
                    ] {
                        let qn = qrows * cols;
                        let a = Job::measure(
                            m,
                            &Batch::new(&p, rows, cols),
                            Some(&Batch::new(&q[..qn], qrows, cols).form(qf)),
                            &o,
                        );
                        let b = Job::measure(
                            m,
                            &Batch::new(&p32, rows, cols),
                            Some(&Batch::new(&q32[..qn], qrows, cols).form(qf)),
                            &o,
                        );
                        let (a, b) = match (a, b) {
                            (Ok(a), Ok(b)) => (a, b),
                            (Err(a), Err(b)) => {
                                assert_eq!(format!("{a:?}"), format!("{b:?}"));
                                continue;
                            }
                            (a, b) => panic!("{a:?} vs {b:?}"),
                        };
                        for isa in Isa::available() {
                            let want = bits(&run_with(&b, 1, isa));
                            for t in [1, 2, 3, 8] {
                                assert_eq!(
                                    bits(&run_with(&a, t, isa)),
                                    want,
                                    "{rows}x{cols} {m:?} {norm:?} q {qrows} {qf:?} {isa:?} {t} threads"
                                );
                            }
                        }
                    }
                }
            }
            let t: Vec<i64> = (0..rows as i64).map(|r| (r * 7) % cols as i64).collect();
            let l: Vec<f64> = p.iter().map(|&x| x.ln() * 3.0).collect();
            let l32: Vec<f32> = l.iter().map(|&x| x as f32).collect();
            for eps in [0.0, 0.2] {
                let o = NllOptions::default().label_smoothing(eps);
                let a = Job::nll(
                    &Batch::new(&l, rows, cols).form(Form::Logits),
                    (&t).into(),
                    &o,
                )
                .expect("nll");
                let b = Job::nll(
                    &Batch::new(&l32, rows, cols).form(Form::Logits),
                    (&t).into(),
                    &o,
                )
                .expect("nll");
                for isa in Isa::available() {
                    let want = bits(&run_with(&b, 1, isa));
                    for th in [1, 2, 8] {
                        assert_eq!(
                            bits(&run_with(&a, th, isa)),
                            want,
                            "nll {rows}x{cols} {isa:?}"
                        );
                    }
                }
            }
        }
    }
}
