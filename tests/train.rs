//! Loss and gradient (`Context::nll_grad`, `Context::distill`,
//! `Context::distill_with_teacher_grad`) against a plain float64 reference
//! written here from the formulas of the issue and the crate docs (not from
//! the library's code): the analytic gradients (the student's and the
//! teacher's), each checked by central finite differences of the float64
//! loss. Per
//! row ‖g − g_ref‖₁ ≤ 1e-4·‖g_ref‖₁ + 1e-6; losses within abs 2e-6·max(1,
//! T²) + rel 2e-5.

mod common;

use kullback::{
    Backend, Base, Batch, Context, DistillOptions, Divergence, Error, Form, NllOptions, Reduction,
    RowMask, Setting, SparseTeacher, Tail, Targets, Teacher,
};

// ------------------------------------------------------------ inputs

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unif(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unif().max(1e-300), self.unif());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Flavor {
    Plain,
    /// Some columns −inf (the same in student and teacher).
    Masked,
    /// Logits of magnitude 10⁴.
    Huge,
}

/// Student and teacher logits, rows × cols, of one flavor; masked columns
/// are the same in both and never all of a row.
fn logits(rng: &mut Rng, rows: usize, cols: usize, flavor: Flavor) -> (Vec<f32>, Vec<f32>) {
    let mut s = Vec::with_capacity(rows * cols);
    let mut t = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        for c in 0..cols {
            let (a, b) = match flavor {
                Flavor::Huge => (
                    1e4 * (2.0 * rng.unif() - 1.0),
                    1e4 * (2.0 * rng.unif() - 1.0),
                ),
                _ => {
                    let a = 2.0 * rng.normal();
                    (a, a + 1.5 * rng.normal())
                }
            };
            let masked = flavor == Flavor::Masked && c % 5 == 1 && cols > 1;
            if masked {
                s.push(f32::NEG_INFINITY);
                t.push(f32::NEG_INFINITY);
            } else {
                s.push(a as f32);
                t.push(b as f32);
            }
        }
    }
    // a huge row where the student and teacher are close (small KL)
    if flavor == Flavor::Huge && rows > 1 {
        for c in 0..cols {
            t[c] = s[c] + (rng.normal() * 0.5) as f32;
        }
    }
    (s, t)
}

// ------------------------------------------------------------ f64 reference

fn lse(x: &[f64]) -> f64 {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

fn log_softmax(x: &[f64]) -> Vec<f64> {
    let l = lse(x);
    x.iter().map(|v| v - l).collect()
}

fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if hi == f64::NEG_INFINITY {
        hi
    } else {
        hi + (lo - hi).exp().ln_1p()
    }
}

/// KL(P‖Q) of log-distributions, 0·log 0 = 0.
fn kl(lp: &[f64], lq: &[f64]) -> f64 {
    lp.iter()
        .zip(lq)
        .filter(|(p, _)| **p > f64::NEG_INFINITY)
        // p > 0 (even one that underflows in f64) with q = 0 is +inf
        .map(|(p, q)| {
            if *q == f64::NEG_INFINITY {
                f64::INFINITY
            } else {
                p.exp() * (p - q)
            }
        })
        .sum()
}

#[derive(Clone, Copy, Debug)]
enum Div {
    Fwd,
    Rev,
    Jsd(f64),
}

fn divergence(d: Div, lp: &[f64], lq: &[f64]) -> f64 {
    match d {
        Div::Fwd => kl(lp, lq),
        Div::Rev => kl(lq, lp),
        Div::Jsd(b) => {
            let lm: Vec<f64> = lp
                .iter()
                .zip(lq)
                .map(|(p, q)| log_add(b.ln() + p, (1.0 - b).ln() + q))
                .collect();
            b * kl(lp, &lm) + (1.0 - b) * kl(lq, &lm)
        }
    }
}

/// d divergence / d ln Q_b · ... : the gradient with respect to the scaled
/// logits a (a = s / T) of a divergence between bucketed distributions,
/// buckets[c] the bucket of column c (None: in no bucket), bucket log-masses
/// lq (from the full or restricted softmax lqc of the columns) and lp.
fn bucket_grad(d: Div, lp: &[f64], lq: &[f64], lqc: &[f64], bucket: &[Option<usize>]) -> Vec<f64> {
    let ni = f64::NEG_INFINITY;
    // φ_b = ∂div/∂Q_b
    let phi: Vec<f64> = (0..lp.len())
        .map(|b| match d {
            Div::Fwd => {
                if lp[b] == ni {
                    0.0
                } else {
                    -(lp[b] - lq[b]).exp()
                }
            }
            Div::Rev => {
                if lq[b] == ni {
                    0.0
                } else {
                    lq[b] - lp[b] + 1.0
                }
            }
            Div::Jsd(beta) => {
                if lq[b] == ni {
                    0.0
                } else {
                    let lm = log_add(beta.ln() + lp[b], (1.0 - beta).ln() + lq[b]);
                    (1.0 - beta) * (lq[b] - lm)
                }
            }
        })
        .collect();
    // Σ_b Q_b φ_b, the forward KL's −P_b without the ratio
    let big: f64 = (0..lp.len())
        .map(|b| match d {
            Div::Fwd => -lp[b].exp(),
            _ if lq[b] == ni => 0.0,
            _ => lq[b].exp() * phi[b],
        })
        .sum();
    lqc.iter()
        .zip(bucket)
        .map(|(&l, b)| match b {
            Some(b) if l > ni => {
                // forward: q_c·φ_b = −P_b·q_c/Q_b, formed without the ratio
                let qphi = match d {
                    Div::Fwd if lp[*b] > ni => -(lp[*b] + l - lq[*b]).exp(),
                    _ => l.exp() * phi[*b],
                };
                qphi - l.exp() * big
            }
            _ => 0.0,
        })
        .collect()
}

#[derive(Clone, Debug)]
enum TRef {
    Dense(Vec<f64>),
    /// (columns, ln p_T at them, tail policy bucket?)
    Sparse(Vec<usize>, Vec<f64>, bool),
}

/// Row loss T²·div and its gradient with respect to the student's logits s
/// (before the reduction's scale).
fn distill_ref(s: &[f64], t: &TRef, temp: f64, d: Div) -> (f64, Vec<f64>) {
    let a: Vec<f64> = s.iter().map(|v| v / temp).collect();
    let lq = log_softmax(&a);
    let cols = s.len();
    let (div, ga) = match t {
        TRef::Dense(tl) => {
            let b: Vec<f64> = tl.iter().map(|v| v / temp).collect();
            let lp = log_softmax(&b);
            let buckets: Vec<Option<usize>> = (0..cols).map(Some).collect();
            (
                divergence(d, &lp, &lq),
                bucket_grad(d, &lp, &lq, &lq, &buckets),
            )
        }
        TRef::Sparse(ix, l, true) => {
            let mut bucket = vec![Some(ix.len()); cols];
            let mut lqb: Vec<f64> = Vec::new();
            for (j, &c) in ix.iter().enumerate() {
                bucket[c] = Some(j);
                lqb.push(lq[c]);
            }
            let tail: Vec<f64> = (0..cols)
                .filter(|c| !ix.contains(c))
                .map(|c| lq[c])
                .collect();
            let mut lpb = l.clone();
            if !tail.is_empty() {
                let r = (1.0 - l.iter().map(|v| v.exp()).sum::<f64>()).max(0.0);
                lpb.push(r.ln());
                lqb.push(lse(&tail));
            }
            (
                divergence(d, &lpb, &lqb),
                bucket_grad(d, &lpb, &lqb, &lq, &bucket),
            )
        }
        TRef::Sparse(ix, l, false) => {
            let sub: Vec<f64> = ix.iter().map(|&c| a[c]).collect();
            let lqb = log_softmax(&sub);
            let lpb = log_softmax(l);
            let mut bucket = vec![None; cols];
            let mut lqc = vec![f64::NEG_INFINITY; cols];
            for (j, &c) in ix.iter().enumerate() {
                bucket[c] = Some(j);
                lqc[c] = lqb[j];
            }
            (
                divergence(d, &lpb, &lqb),
                bucket_grad(d, &lpb, &lqb, &lqc, &bucket),
            )
        }
    };
    // d/ds = (1/T) d/da; loss T²·div
    (temp * temp * div, ga.iter().map(|g| g * temp).collect())
}

/// The gradient of the row loss T²·div with respect to a dense teacher's
/// values t (p_T = softmax(t / T), whether t are logits or log-probs), from
/// the derivation: with a_c = ∂div/∂p_c, ∂div/∂(t_c/T) = p_c (a_c − Σ p a);
/// forward KL: a = ln p − ln q + 1 (the 1 cancels); reverse KL: a = −q/p,
/// so p (a − Σ p a) = p − q; JSD: a = β(ln p + 1 − ln M) − β(βp + (1 − β)q)/M
/// = β(ln p − ln M). Then d/dt = (1/T) d/d(t/T), times T². Checked against
/// finite differences of `distill_ref`'s loss.
fn teacher_grad_ref(s: &[f64], t: &[f64], temp: f64, d: Div) -> Vec<f64> {
    let lq = log_softmax(&s.iter().map(|v| v / temp).collect::<Vec<_>>());
    let lp = log_softmax(&t.iter().map(|v| v / temp).collect::<Vec<_>>());
    let ni = f64::NEG_INFINITY;
    let p_times = |f: &dyn Fn(usize) -> f64| -> Vec<f64> {
        (0..lp.len())
            .map(|c| {
                if lp[c] == ni {
                    0.0
                } else {
                    temp * lp[c].exp() * f(c)
                }
            })
            .collect()
    };
    match d {
        Div::Fwd => {
            let k = kl(&lp, &lq);
            p_times(&|c| lp[c] - lq[c] - k)
        }
        Div::Rev => lp
            .iter()
            .zip(&lq)
            .map(|(p, q)| temp * (p.exp() - q.exp()))
            .collect(),
        Div::Jsd(b) => {
            let lm: Vec<f64> = lp
                .iter()
                .zip(&lq)
                .map(|(p, q)| log_add(b.ln() + p, (1.0 - b).ln() + q))
                .collect();
            let k = kl(&lp, &lm);
            p_times(&|c| b * (lp[c] - lm[c] - k))
        }
    }
}

/// NLL row loss Σ p_c (−ln q_c) and its gradient (Σp)·q − p.
fn nll_ref(z: &[f64], t: usize, w: Option<&[f32]>, eps: f64) -> (f64, Vec<f64>) {
    let c = z.len();
    let wf = |i: usize| w.map_or(1.0, |w| w[i] as f64);
    let lq = log_softmax(z);
    let p: Vec<f64> = (0..c)
        .map(|i| eps * wf(i) / c as f64 + if i == t { (1.0 - eps) * wf(t) } else { 0.0 })
        .collect();
    let sp: f64 = p.iter().sum();
    let loss = (0..c).filter(|&i| p[i] > 0.0).map(|i| -p[i] * lq[i]).sum();
    let g = (0..c).map(|i| sp * lq[i].exp() - p[i]).collect();
    (loss, g)
}

/// Central differences of `f` at `x` (all coordinates), step h.
fn fd(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut y = x.to_vec();
    (0..x.len())
        .map(|i| {
            if x[i] == f64::NEG_INFINITY {
                return 0.0;
            }
            y[i] = x[i] + h;
            let a = f(&y);
            y[i] = x[i] - h;
            let b = f(&y);
            y[i] = x[i];
            (a - b) / (2.0 * h)
        })
        .collect()
}

fn l1(a: &[f64]) -> f64 {
    a.iter().map(|v| v.abs()).sum()
}

/// ‖g − g_ref‖₁ ≤ 1e-4·‖g_ref‖₁ + 1e-6 for one row.
fn check_row(got: &[f32], want: &[f64], what: &str) {
    let err: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .sum();
    let bound = 1e-4 * l1(want) + 1e-6;
    if err > bound {
        let mut idx: Vec<usize> = (0..got.len()).collect();
        idx.sort_by(|&a, &b| {
            let ea = (got[a] as f64 - want[a]).abs();
            let eb = (got[b] as f64 - want[b]).abs();
            eb.total_cmp(&ea)
        });
        for &i in idx.iter().take(4) {
            eprintln!("col {i}: got {:e} want {:e}", got[i], want[i]);
        }
    }
    assert!(
        err <= bound,
        "{what}: ‖g − g_ref‖₁ = {err:e} > {bound:e}\n got {:?}\nwant {:?}",
        &got[..got.len().min(8)],
        &want[..want.len().min(8)]
    );
    assert!(
        got.iter().all(|g| g.is_finite()),
        "{what}: non-finite gradient"
    );
}

fn check_loss(got: f32, want: f64, t2: f64, what: &str) {
    let bound = 2e-6 * t2.max(1.0) + 2e-5 * want.abs();
    assert!(
        (got as f64 - want).abs() <= bound || (got.is_nan() && want.is_nan()),
        "{what}: loss {got} vs {want} (bound {bound:e})"
    );
}

/// The reference gradient against central differences of the reference
/// loss (a check of the test's own analytic gradient).
fn check_fd(s: &[f64], want: &[f64], h: f64, f: impl Fn(&[f64]) -> f64, what: &str) {
    let num = fd(s, h, f);
    let err: f64 = num.iter().zip(want).map(|(a, b)| (a - b).abs()).sum();
    assert!(
        err <= 1e-5 * l1(want) + 1e-7 * s.len() as f64,
        "{what}: analytic f64 gradient vs finite differences: {err:e}\n  fd {:?}\n  an {:?}",
        &num[..num.len().min(6)],
        &want[..want.len().min(6)]
    );
}

fn cpu() -> Context {
    Context::with_backend(Backend::Cpu).expect("the CPU backend")
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ------------------------------------------------------------ distillation

/// A sparse top-k teacher of the dense teacher logits `t` at temperature T:
/// the k largest columns in shuffled order and their ln p_T as f32.
fn top_k(rng: &mut Rng, t: &[f32], temp: f64, k: usize) -> (Vec<usize>, Vec<f32>) {
    let lp = log_softmax(&t.iter().map(|&v| v as f64 / temp).collect::<Vec<_>>());
    let mut order: Vec<usize> = (0..t.len()).collect();
    order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
    let mut ix: Vec<usize> = order[..k].to_vec();
    for i in (1..ix.len()).rev() {
        ix.swap(i, rng.below(i + 1));
    }
    let l = ix.iter().map(|&c| lp[c] as f32).collect();
    (ix, l)
}

struct Case {
    rows: usize,
    cols: usize,
    temp: f64,
    div: Div,
    flavor: Flavor,
    /// None: dense logits; Some(0): dense log-probs; Some(k): sparse top-k.
    sparse: Option<usize>,
    bucket: bool,
    reduction: Reduction,
    mask: bool,
    fd: bool,
}

fn run_case(ctx: &Context, rng: &mut Rng, c: &Case) {
    run_case_on(ctx, None, rng, c)
}

/// [`run_case`], and a sparse teacher's case on the GPU-resident path too
/// where `res` is given.
fn run_case_on(ctx: &Context, res: Option<&Resident>, rng: &mut Rng, c: &Case) {
    let (rows, cols) = (c.rows, c.cols);
    let (s, tl) = logits(rng, rows, cols, c.flavor);
    let mask: Vec<bool> = (0..rows).map(|r| !c.mask || r % 3 != 1).collect();
    let divergence = match c.div {
        Div::Fwd => Divergence::ForwardKl,
        Div::Rev => Divergence::ReverseKl,
        Div::Jsd(_) => Divergence::Jsd,
    };
    let beta = match c.div {
        Div::Jsd(b) => b as f32,
        _ => 0.5,
    };
    let mut opts = DistillOptions::default()
        .divergence(divergence)
        .beta(beta)
        .temperature(c.temp as f32)
        .reduction(c.reduction)
        .tail(if c.bucket {
            Tail::Bucket
        } else {
            Tail::Renormalize
        });
    if c.mask {
        opts = opts.mask(&mask);
    }
    // the teacher, and its reference per row
    let mut refs: Vec<TRef> = Vec::new();
    let mut t_vals: Vec<f32> = tl.clone();
    let (mut ix_all, mut l_all) = (Vec::<i64>::new(), Vec::<f32>::new());
    for r in 0..rows {
        let row = &tl[r * cols..(r + 1) * cols];
        match c.sparse {
            None => refs.push(TRef::Dense(f64s(row))),
            Some(0) => {
                // log-probabilities at T = 1 as the teacher gives them
                let lp = log_softmax(&f64s(row));
                for (i, v) in lp.iter().enumerate() {
                    t_vals[r * cols + i] = *v as f32;
                }
                refs.push(TRef::Dense(f64s(&t_vals[r * cols..(r + 1) * cols])));
            }
            Some(k) => {
                let (ix, l) = top_k(rng, row, c.temp, k);
                ix_all.extend(ix.iter().map(|&v| v as i64));
                l_all.extend(&l);
                refs.push(TRef::Sparse(ix, f64s(&l), c.bucket));
            }
        }
    }
    let student = Batch::new(&s, rows, cols).form(Form::Logits);
    let form = if c.sparse == Some(0) {
        Form::LogProbs
    } else {
        Form::Logits
    };
    let teacher = match c.sparse {
        Some(k) if k > 0 => {
            // the three index types in turn
            let i32s: Vec<i32> = ix_all.iter().map(|&v| v as i32).collect();
            let u32s: Vec<u32> = ix_all.iter().map(|&v| v as u32).collect();
            let targets: Targets<'_> = match k % 3 {
                0 => Targets::from(&i32s),
                1 => Targets::from(&ix_all),
                _ => Targets::from(&u32s),
            };
            // keep the vectors alive for the call below
            let sp = SparseTeacher::new(targets, &l_all, k);
            run_checked(
                ctx,
                c,
                &student,
                Teacher::Sparse(sp),
                &opts,
                &s,
                &refs,
                &mask,
            );
            if let Some(res) = res {
                check_resident(res, c, &s, &sp, &opts, &refs, &mask);
            }
            return;
        }
        _ => Teacher::Dense(Batch::new(&t_vals, rows, cols).form(form)),
    };
    run_checked(ctx, c, &student, teacher, &opts, &s, &refs, &mask);
}

#[expect(
    clippy::too_many_arguments,
    reason = "one test case's inputs and references"
)]
fn run_checked(
    ctx: &Context,
    c: &Case,
    student: &Batch<'_>,
    teacher: Teacher<'_>,
    opts: &DistillOptions<'_>,
    s: &[f32],
    refs: &[TRef],
    mask: &[bool],
) {
    let (rows, cols) = (c.rows, c.cols);
    let what = format!(
        "C={cols} T={} {:?} {:?} sparse={:?} bucket={} {:?} mask={}",
        c.temp, c.div, c.flavor, c.sparse, c.bucket, c.reduction, c.mask
    );
    let mut grad = vec![f32::NAN; rows * cols];
    // a row whose reference loss is infinite (a sparse teacher's tail mass
    // that rounds to 0 in f32 under a reverse KL) is an error naming it
    let infinite = (0..rows).find(|&r| {
        mask[r]
            && distill_ref(&f64s(&s[r * cols..(r + 1) * cols]), &refs[r], c.temp, c.div)
                .0
                .is_infinite()
    });
    if let Some(r) = infinite {
        let e = ctx
            .distill(student, &teacher, opts, &mut grad)
            .expect_err(&what);
        assert!(
            matches!(e, Error::InfiniteLoss { row, .. } if row == r),
            "{what}: {e} (reference: row {r}) {:?}",
            &refs[..2]
        );
        if let Teacher::Dense(_) = teacher {
            let mut gt = vec![0f32; rows * cols];
            let e2 = ctx
                .distill_with_teacher_grad(student, &teacher, opts, &mut grad, &mut gt)
                .expect_err(&what);
            assert_eq!(e.to_string(), e2.to_string(), "{what}");
        }
        return;
    }
    let out = ctx
        .distill(student, &teacher, opts, &mut grad)
        .unwrap_or_else(|e| panic!("{what}: {e} {:?} {:?}", &refs[..1], &s[..cols]));
    // dense and sparse teachers run on the context's backend
    assert_eq!(out.backend, ctx.backend(), "{what}");
    let count = mask.iter().filter(|&&m| m).count() as f64;
    let scale = match c.reduction {
        Reduction::Mean => 1.0 / count,
        _ => 1.0,
    };
    let mut losses = Vec::new();
    for r in 0..rows {
        let sr = f64s(&s[r * cols..(r + 1) * cols]);
        let g = &grad[r * cols..(r + 1) * cols];
        if !mask[r] {
            assert!(
                g.iter().all(|&v| v == 0.0),
                "{what}: masked row {r} has a gradient"
            );
            losses.push(0.0);
            continue;
        }
        let (loss, gr) = distill_ref(&sr, &refs[r], c.temp, c.div);
        if c.fd {
            let h = if c.flavor == Flavor::Huge { 1e-3 } else { 1e-5 } * c.temp;
            check_fd(
                &sr,
                &gr,
                h,
                |x| distill_ref(x, &refs[r], c.temp, c.div).0,
                &what,
            );
        }
        let want: Vec<f64> = gr.iter().map(|v| v * scale).collect();
        check_row(g, &want, &format!("{what} row {r}"));
        losses.push(loss);
    }
    let t2 = c.temp * c.temp;
    match c.reduction {
        Reduction::None => {
            for (r, (&got, &want)) in out.values.iter().zip(&losses).enumerate() {
                check_loss(got, want, t2, &format!("{what} row {r}"));
            }
        }
        Reduction::Sum => check_loss(out.values[0], losses.iter().sum(), t2 * rows as f64, &what),
        _ => check_loss(out.values[0], losses.iter().sum::<f64>() / count, t2, &what),
    }
    // bit-identical rerun
    let mut again = vec![0f32; rows * cols];
    let out2 = ctx
        .distill(student, &teacher, opts, &mut again)
        .expect("rerun");
    assert!(
        grad.iter()
            .zip(&again)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{what}: rerun differs"
    );
    assert_eq!(
        out.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        out2.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    match teacher {
        Teacher::Dense(_) => check_teacher_grad(
            ctx,
            c,
            student,
            &teacher,
            opts,
            (&grad, &out),
            s,
            refs,
            mask,
        ),
        // a sparse teacher has no gradient of its own
        _ => {
            let mut gt = vec![0f32; rows * cols];
            let e = ctx
                .distill_with_teacher_grad(student, &teacher, opts, &mut again, &mut gt)
                .expect_err(&what);
            assert!(matches!(e, Error::Unsupported(_)), "{what}: {e}");
        }
    }
}

/// `distill_with_teacher_grad` on a dense teacher: the loss and student
/// gradient of plain `distill` (`plain`) bit for bit, the teacher's gradient
/// against [`teacher_grad_ref`] (itself against finite differences where
/// the case asks), bit-identical on a rerun.
#[expect(
    clippy::too_many_arguments,
    reason = "one test case's inputs, references and plain results"
)]
fn check_teacher_grad(
    ctx: &Context,
    c: &Case,
    student: &Batch<'_>,
    teacher: &Teacher<'_>,
    opts: &DistillOptions<'_>,
    plain: (&[f32], &kullback::Output),
    s: &[f32],
    refs: &[TRef],
    mask: &[bool],
) {
    let (rows, cols) = (c.rows, c.cols);
    let what = format!(
        "teacher grad: C={cols} T={} {:?} {:?} logprobs={} {:?} mask={}",
        c.temp,
        c.div,
        c.flavor,
        c.sparse.is_some(),
        c.reduction,
        c.mask
    );
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let run = || {
        let mut gs = vec![f32::NAN; rows * cols];
        let mut gt = vec![f32::NAN; rows * cols];
        let out = ctx
            .distill_with_teacher_grad(student, teacher, opts, &mut gs, &mut gt)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        (gs, gt, out)
    };
    let (gs, gt, out) = run();
    assert_eq!(out.backend, ctx.backend(), "{what}");
    assert_eq!(
        bits(plain.0),
        bits(&gs),
        "{what}: the student's gradient moved"
    );
    assert_eq!(
        bits(&plain.1.values),
        bits(&out.values),
        "{what}: the loss moved"
    );
    let count = mask.iter().filter(|&&m| m).count() as f64;
    let scale = match c.reduction {
        Reduction::Mean => 1.0 / count,
        _ => 1.0,
    };
    for r in 0..rows {
        let g = &gt[r * cols..(r + 1) * cols];
        if !mask[r] {
            assert!(g.iter().all(|&v| v == 0.0), "{what}: masked row {r}");
            continue;
        }
        let TRef::Dense(t) = &refs[r] else {
            unreachable!()
        };
        let sr = f64s(&s[r * cols..(r + 1) * cols]);
        let want = teacher_grad_ref(&sr, t, c.temp, c.div);
        if c.fd {
            let h = if c.flavor == Flavor::Huge { 1e-3 } else { 1e-5 } * c.temp;
            let f = |x: &[f64]| distill_ref(&sr, &TRef::Dense(x.to_vec()), c.temp, c.div).0;
            check_fd(t, &want, h, f, &what);
        }
        let want: Vec<f64> = want.iter().map(|v| v * scale).collect();
        check_row(g, &want, &format!("{what} row {r}"));
        // a masked teacher column gets 0
        for (i, &tv) in t.iter().enumerate() {
            if tv == f64::NEG_INFINITY {
                assert_eq!(g[i], 0.0, "{what}: row {r} column {i}");
            }
        }
    }
    let (gs2, gt2, out2) = run();
    assert_eq!(bits(&gs), bits(&gs2), "{what}: rerun");
    assert_eq!(bits(&gt), bits(&gt2), "{what}: rerun");
    assert_eq!(bits(&out.values), bits(&out2.values), "{what}: rerun");
}

const DIVS: [Div; 5] = [
    Div::Fwd,
    Div::Rev,
    Div::Jsd(0.1),
    Div::Jsd(0.5),
    Div::Jsd(0.9),
];
const TEMPS: [f64; 4] = [0.5, 1.0, 2.0, 4.0];

/// The dense distillation grid on `ctx`: rows of `cols` columns, every
/// divergence, flavor and teacher form at `temps`, for each of `reductions`
/// (masks on all but the first); the reference's finite differences on the
/// first reduction's logits cases where `fd`.
fn dense_grid(
    ctx: &Context,
    rng: &mut Rng,
    cols: &[usize],
    temps: &[f64],
    reductions: &[Reduction],
    fd: bool,
) {
    for &cols in cols {
        for &div in &DIVS {
            for &temp in temps {
                for flavor in [Flavor::Plain, Flavor::Masked, Flavor::Huge] {
                    for logprobs in [false, true] {
                        for (i, &reduction) in reductions.iter().enumerate() {
                            let case = Case {
                                rows: 4,
                                cols,
                                temp,
                                div,
                                flavor,
                                sparse: logprobs.then_some(0),
                                bucket: true,
                                reduction,
                                mask: i > 0,
                                fd: fd && i == 0,
                            };
                            run_case(ctx, rng, &case);
                        }
                    }
                }
            }
        }
    }
}

const REDUCTIONS: [Reduction; 3] = [Reduction::None, Reduction::Sum, Reduction::Mean];

#[test]
fn distill_dense_grid() {
    dense_grid(&cpu(), &mut Rng(1), &[1, 3, 257], &TEMPS, &REDUCTIONS, true);
}

/// Rows of several blocks (the CPU's blocks are 512 columns), where the
/// running maxima move from block to block: the reverse KL's pass-1 sum is
/// rebased each time its reference column moves. The reference's own
/// derivatives are checked by the grids above.
#[test]
fn distill_dense_multi_block() {
    let mut rng = Rng(4);
    for ctx in std::iter::once(cpu()).chain(common::gpu()) {
        dense_grid(
            &ctx,
            &mut rng,
            &[1500],
            &[0.5, 4.0],
            &[Reduction::None],
            false,
        );
    }
}

/// The sparse-teacher grid on `ctx`: k ∈ {1, 8, 64} (k ≤ C), both tail
/// policies, every divergence, `temps`, plain, masked and 10⁴ logits, each
/// reduction (with a mask where not none; finite differences with `fd`
/// there).
fn sparse_grid(ctx: &Context, res: Option<&Resident>, rng: &mut Rng, temps: &[f64], fd: bool) {
    for cols in [1usize, 3, 257] {
        for k in [1usize, 8, 64].into_iter().filter(|&k| k <= cols) {
            for &div in &DIVS {
                for &temp in temps {
                    for flavor in [Flavor::Plain, Flavor::Masked, Flavor::Huge] {
                        for bucket in [true, false] {
                            for (i, reduction) in REDUCTIONS.into_iter().enumerate() {
                                let case = Case {
                                    rows: 4,
                                    cols,
                                    temp,
                                    div,
                                    flavor,
                                    sparse: Some(k),
                                    bucket,
                                    reduction,
                                    mask: i > 0,
                                    fd: fd && i == 0,
                                };
                                run_case_on(ctx, res, rng, &case);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn distill_sparse_grid() {
    sparse_grid(&cpu(), None, &mut Rng(2), &TEMPS, true);
}

/// One 256,000-column row: the gradient against the f64 reference in full
/// (on both backends), and the reference against finite differences on 64
/// sampled columns and along random directions.
#[test]
fn distill_256k_columns() {
    let mut rng = Rng(3);
    let cols = 256_000;
    let (s, t) = logits(&mut rng, 1, cols, Flavor::Plain);
    let sr = f64s(&s);
    let ctx = cpu();
    for (div, sparse) in [
        (Div::Fwd, None),
        (Div::Rev, None),
        (Div::Jsd(0.5), None),
        (Div::Fwd, Some(64)),
        (Div::Rev, Some(64)),
    ] {
        let temp = 2.0;
        let (teacher_ref, ix, l) = match sparse {
            None => (TRef::Dense(f64s(&t)), vec![], vec![]),
            Some(k) => {
                let (ix, l) = top_k(&mut rng, &t, temp, k);
                (TRef::Sparse(ix.clone(), f64s(&l), true), ix, l)
            }
        };
        let divergence = match div {
            Div::Fwd => Divergence::ForwardKl,
            Div::Rev => Divergence::ReverseKl,
            Div::Jsd(_) => Divergence::Jsd,
        };
        let opts = DistillOptions::default()
            .divergence(divergence)
            .temperature(temp as f32);
        let ix64: Vec<i64> = ix.iter().map(|&v| v as i64).collect();
        let teacher = match sparse {
            None => Teacher::Dense(Batch::new(&t, 1, cols).form(Form::Logits)),
            Some(k) => Teacher::Sparse(SparseTeacher::new(&ix64, &l, k)),
        };
        let mut grad = vec![0f32; cols];
        let out = ctx
            .distill(
                &Batch::new(&s, 1, cols).form(Form::Logits),
                &teacher,
                &opts,
                &mut grad,
            )
            .unwrap();
        let (loss, gr) = distill_ref(&sr, &teacher_ref, temp, div);
        let what = format!("256k {div:?} {sparse:?}");
        check_row(&grad, &gr, &what);
        check_loss(out.values[0], loss, temp * temp, &what);
        // the GPU backend, one workgroup streaming the row
        if let Some(gpu) = common::gpu() {
            let mut gg = vec![0f32; cols];
            let o = gpu
                .distill(
                    &Batch::new(&s, 1, cols).form(Form::Logits),
                    &teacher,
                    &opts,
                    &mut gg,
                )
                .unwrap();
            assert_eq!(o.backend, kullback::Ran::Gpu, "{what}");
            check_row(&gg, &gr, &format!("{what} gpu"));
            check_loss(o.values[0], loss, temp * temp, &format!("{what} gpu"));
        }
        // and the GPU-resident path (a sparse teacher's: the dense one's is
        // the host path's kernel)
        if let (Teacher::Sparse(sp), Some(res)) = (&teacher, sparse.and_then(|_| resident())) {
            let (losses, gg) = resident_sparse(&res, &s, cols, sp, &opts, 1.0).expect("resident");
            let losses = losses.unwrap_or_else(|e| panic!("{what} resident: {e}"));
            check_row(&gg, &gr, &format!("{what} resident"));
            check_loss(losses[0], loss, temp * temp, &format!("{what} resident"));
        }
        // finite differences: 64 sampled columns and 4 random directions
        let f = |x: &[f64]| distill_ref(x, &teacher_ref, temp, div).0;
        let h = 1e-4;
        let mut y = sr.clone();
        for _ in 0..64 {
            let c = rng.below(cols);
            y[c] = sr[c] + h;
            let a = f(&y);
            y[c] = sr[c] - h;
            let b = f(&y);
            y[c] = sr[c];
            let num = (a - b) / (2.0 * h);
            assert!(
                (num - gr[c]).abs() <= 1e-5 * gr[c].abs() + 1e-9,
                "{what}: column {c}: fd {num} vs {}",
                gr[c]
            );
        }
        for _ in 0..4 {
            let dir: Vec<f64> = (0..cols).map(|_| rng.normal()).collect();
            let along = |e: f64| {
                f(&sr
                    .iter()
                    .zip(&dir)
                    .map(|(x, d)| x + e * d)
                    .collect::<Vec<_>>())
            };
            let num = (along(h) - along(-h)) / (2.0 * h);
            let an: f64 = gr.iter().zip(&dir).map(|(g, d)| g * d).sum();
            assert!(
                (num - an).abs() <= 1e-5 * an.abs().max(l1(&gr) * 1e-3),
                "{what}: direction: fd {num} vs {an}"
            );
        }
    }
}

/// One row of 70,000 columns (many of the CPU's 512-column blocks, with the
/// maxima moving between them, and each GPU thread many columns): the
/// teacher's gradient of every divergence on both backends against the f64
/// reference, checked itself by finite differences on sampled columns; −inf
/// teacher columns (masked in both) in the second row.
#[test]
fn teacher_grad_long_row() {
    let mut rng = Rng(21);
    let (rows, cols) = (2, 70_000);
    let (mut s, mut t) = logits(&mut rng, rows, cols, Flavor::Plain);
    for c in (cols..2 * cols).step_by(7) {
        s[c] = f32::NEG_INFINITY;
        t[c] = f32::NEG_INFINITY;
    }
    let student = Batch::new(&s, rows, cols).form(Form::Logits);
    let teacher = Teacher::Dense(Batch::new(&t, rows, cols).form(Form::Logits));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for ctx in std::iter::once(cpu()).chain(common::gpu()) {
        for div in [Div::Fwd, Div::Rev, Div::Jsd(0.1), Div::Jsd(0.9)] {
            let (divergence, beta) = match div {
                Div::Fwd => (Divergence::ForwardKl, 0.5),
                Div::Rev => (Divergence::ReverseKl, 0.5),
                Div::Jsd(b) => (Divergence::Jsd, b as f32),
            };
            let temp = 2.0;
            let opts = DistillOptions::default()
                .divergence(divergence)
                .beta(beta)
                .temperature(temp as f32);
            let (mut gs, mut gt) = (vec![f32::NAN; rows * cols], vec![f32::NAN; rows * cols]);
            let out = ctx
                .distill_with_teacher_grad(&student, &teacher, &opts, &mut gs, &mut gt)
                .unwrap();
            assert_eq!(out.backend, ctx.backend());
            let mut plain = vec![0f32; rows * cols];
            let po = ctx.distill(&student, &teacher, &opts, &mut plain).unwrap();
            assert_eq!(bits(&plain), bits(&gs));
            assert_eq!(bits(&po.values), bits(&out.values));
            for r in 0..rows {
                let range = r * cols..(r + 1) * cols;
                let (sr, tr) = (f64s(&s[range.clone()]), f64s(&t[range.clone()]));
                let want = teacher_grad_ref(&sr, &tr, temp, div);
                let what = format!("{:?} 70k teacher grad {div:?} row {r}", ctx.backend());
                check_row(&gt[range], &want, &what);
                if ctx.backend() != kullback::Ran::Cpu {
                    continue;
                }
                let f = |x: &[f64]| distill_ref(&sr, &TRef::Dense(x.to_vec()), temp, div).0;
                let h = 1e-4;
                let mut y = tr.clone();
                for _ in 0..16 {
                    let c = rng.below(cols);
                    if tr[c] == f64::NEG_INFINITY {
                        continue;
                    }
                    y[c] = tr[c] + h;
                    let a = f(&y);
                    y[c] = tr[c] - h;
                    let b = f(&y);
                    y[c] = tr[c];
                    let num = (a - b) / (2.0 * h);
                    assert!(
                        (num - want[c]).abs() <= 1e-5 * want[c].abs() + 1e-9,
                        "{what}: column {c}: fd {num} vs {}",
                        want[c]
                    );
                }
            }
        }
    }
}

/// −inf on one side only, where the loss stays finite: a teacher column
/// the student keeps (forward KL, JSD), a student column the teacher keeps
/// (reverse KL, JSD). The teacher's gradient is 0 at a −inf teacher value
/// and finite everywhere, on both backends, against the f64 reference.
#[test]
fn teacher_grad_one_sided_masks() {
    let mut rng = Rng(22);
    let (rows, cols) = (3, 40);
    let ni = f32::NEG_INFINITY;
    for ctx in std::iter::once(cpu()).chain(common::gpu()) {
        for (div, teacher_side) in [
            (Div::Fwd, true),
            (Div::Rev, false),
            (Div::Jsd(0.1), true),
            (Div::Jsd(0.9), false),
            (Div::Jsd(0.5), true),
        ] {
            let (mut s, mut t) = logits(&mut rng, rows, cols, Flavor::Plain);
            for r in 0..rows {
                for c in (r..cols).step_by(3 + r) {
                    if teacher_side {
                        t[r * cols + c] = ni;
                    } else {
                        s[r * cols + c] = ni;
                    }
                }
            }
            let (divergence, beta) = match div {
                Div::Fwd => (Divergence::ForwardKl, 0.5),
                Div::Rev => (Divergence::ReverseKl, 0.5),
                Div::Jsd(b) => (Divergence::Jsd, b as f32),
            };
            for temp in [0.5, 4.0] {
                let opts = DistillOptions::default()
                    .divergence(divergence)
                    .beta(beta)
                    .temperature(temp as f32);
                let (mut gs, mut gt) = (vec![f32::NAN; rows * cols], vec![f32::NAN; rows * cols]);
                ctx.distill_with_teacher_grad(
                    &Batch::new(&s, rows, cols).form(Form::Logits),
                    &Teacher::Dense(Batch::new(&t, rows, cols).form(Form::Logits)),
                    &opts,
                    &mut gs,
                    &mut gt,
                )
                .unwrap();
                for r in 0..rows {
                    let range = r * cols..(r + 1) * cols;
                    let (sr, tr) = (f64s(&s[range.clone()]), f64s(&t[range.clone()]));
                    let want = teacher_grad_ref(&sr, &tr, temp, div);
                    let what = format!("{:?} one-sided {div:?} T={temp} row {r}", ctx.backend());
                    let f = |x: &[f64]| distill_ref(&sr, &TRef::Dense(x.to_vec()), temp, div).0;
                    check_fd(&tr, &want, 1e-5 * temp, f, &what);
                    check_row(&gt[range.clone()], &want, &what);
                    for (c, &tv) in t[range].iter().enumerate() {
                        if tv == ni {
                            assert_eq!(gt[r * cols + c], 0.0, "{what}: column {c}");
                        }
                    }
                }
            }
        }
    }
}

/// The teacher gradient's errors: a sparse teacher, a teacher gradient of
/// the wrong length (named), and the checks `distill` makes.
#[test]
fn teacher_grad_errors() {
    let s = [1.0f32, 0.0, -1.0, 0.5, 0.5, 0.0];
    let t = [0.0f32, 1.0, 0.5, 0.0, 0.0, 2.0];
    let student = Batch::new(&s, 2, 3).form(Form::Logits);
    let teacher = Teacher::Dense(Batch::new(&t, 2, 3).form(Form::Logits));
    let opts = DistillOptions::default();
    let mut contexts = vec![cpu()];
    contexts.extend(common::gpu());
    for ctx in &contexts {
        let mut g = vec![0f32; 6];
        let mut gt = vec![0f32; 5];
        let e = ctx
            .distill_with_teacher_grad(&student, &teacher, &opts, &mut g, &mut gt)
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Length {
                    arg: kullback::Arg::TeacherGradient,
                    len: 5,
                    expected: 6,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("teacher gradient"), "{e}");
        let mut gt = vec![0f32; 6];
        let mut g5 = vec![0f32; 5];
        let e = ctx
            .distill_with_teacher_grad(&student, &teacher, &opts, &mut g5, &mut gt)
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Length {
                    arg: kullback::Arg::Gradient,
                    ..
                }
            ),
            "{e}"
        );
        let ix = [0i64, 1];
        let l = [-0.5f32, -1.5];
        let sparse = Teacher::Sparse(SparseTeacher::new(&ix, &l, 1));
        let e = ctx
            .distill_with_teacher_grad(&student, &sparse, &opts, &mut g, &mut gt)
            .unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported(m) if m.contains("dense teacher")),
            "{e}"
        );
        // an infinite loss is the same error as distill's
        let mut tm = t;
        tm[4] = f32::NEG_INFINITY;
        let t2 = Teacher::Dense(Batch::new(&tm, 2, 3).form(Form::Logits));
        let rev = opts.divergence(Divergence::ReverseKl);
        let e = ctx
            .distill_with_teacher_grad(&student, &t2, &rev, &mut g, &mut gt)
            .unwrap_err();
        assert!(
            matches!(e, Error::InfiniteLoss { row: 1, col: 1, .. }),
            "{e}"
        );
    }
}

// ------------------------------------------------------------ NLL

#[test]
fn nll_grid() {
    nll_grid_on(&cpu(), true);
}

/// The NLL grid on `ctx`; `fd`: check the reference by finite differences.
fn nll_grid_on(ctx: &Context, fd: bool) {
    let mut rng = Rng(4);
    for cols in [1usize, 3, 257] {
        for flavor in [Flavor::Plain, Flavor::Masked, Flavor::Huge] {
            for weighted in [false, true] {
                for eps in [0.0f32, 0.1, 1.0] {
                    for ignore in [false, true] {
                        for reduction in [Reduction::None, Reduction::Sum, Reduction::Mean] {
                            let rows = 5;
                            let (z, _) = logits(&mut rng, rows, cols, flavor);
                            // weights: 0 at masked columns under smoothing (else the loss is infinite)
                            let w: Vec<f32> = (0..cols)
                                .map(|c| {
                                    if z[c] == f32::NEG_INFINITY {
                                        0.0
                                    } else {
                                        0.25 + rng.unif() as f32
                                    }
                                })
                                .collect();
                            if flavor == Flavor::Masked && eps > 0.0 && !weighted {
                                continue;
                            }
                            let targets: Vec<i64> = (0..rows)
                                .map(|r| {
                                    if ignore && r % 2 == 1 {
                                        -100
                                    } else {
                                        // an unmasked target
                                        let mut t = rng.below(cols);
                                        while z[r * cols + t] == f32::NEG_INFINITY {
                                            t = rng.below(cols);
                                        }
                                        t as i64
                                    }
                                })
                                .collect();
                            let mut opts = NllOptions::default()
                                .reduction(reduction)
                                .label_smoothing(eps);
                            if weighted {
                                opts = opts.weights(&w);
                            }
                            if ignore {
                                opts = opts.ignore_index(-100);
                            }
                            let what = format!(
                                "nll C={cols} {flavor:?} w={weighted} eps={eps} ignore={ignore} {reduction:?}"
                            );
                            let mut grad = vec![f32::NAN; rows * cols];
                            let batch = Batch::new(&z, rows, cols).form(Form::Logits);
                            let out = ctx
                                .nll_grad(&batch, &targets, &opts, &mut grad)
                                .unwrap_or_else(|e| panic!("{what}: {e}"));
                            assert_eq!(out.backend, ctx.backend(), "{what}");
                            // bit-identical rerun
                            let mut again = vec![0f32; rows * cols];
                            let out2 = ctx
                                .nll_grad(&batch, &targets, &opts, &mut again)
                                .expect("rerun");
                            assert!(
                                grad.iter()
                                    .zip(&again)
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{what}: rerun differs"
                            );
                            assert_eq!(
                                out.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                out2.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                            );
                            let wt = |t: i64| if weighted { w[t as usize] as f64 } else { 1.0 };
                            let count: f64 =
                                targets.iter().filter(|&&t| t != -100).map(|&t| wt(t)).sum();
                            let scale = if reduction == Reduction::Mean {
                                1.0 / count
                            } else {
                                1.0
                            };
                            let mut losses = Vec::new();
                            for r in 0..rows {
                                let g = &grad[r * cols..(r + 1) * cols];
                                if targets[r] == -100 {
                                    assert!(g.iter().all(|&v| v == 0.0), "{what}: ignored row {r}");
                                    losses.push(0.0);
                                    continue;
                                }
                                let zr = f64s(&z[r * cols..(r + 1) * cols]);
                                let wref = weighted.then_some(&w[..]);
                                let (loss, gr) =
                                    nll_ref(&zr, targets[r] as usize, wref, eps as f64);
                                if fd && reduction == Reduction::None {
                                    let h = if flavor == Flavor::Huge { 1e-3 } else { 1e-5 };
                                    check_fd(
                                        &zr,
                                        &gr,
                                        h,
                                        |x| nll_ref(x, targets[r] as usize, wref, eps as f64).0,
                                        &what,
                                    );
                                }
                                let want: Vec<f64> = gr.iter().map(|v| v * scale).collect();
                                check_row(g, &want, &format!("{what} row {r}"));
                                losses.push(loss);
                            }
                            match reduction {
                                Reduction::None => {
                                    for (r, (&got, &want)) in
                                        out.values.iter().zip(&losses).enumerate()
                                    {
                                        check_loss(got, want, 1.0, &format!("{what} row {r}"));
                                    }
                                }
                                Reduction::Sum => {
                                    check_loss(out.values[0], losses.iter().sum(), 1.0, &what)
                                }
                                _ => check_loss(
                                    out.values[0],
                                    losses.iter().sum::<f64>() / count,
                                    1.0,
                                    &what,
                                ),
                            }
                            // the loss is nll's
                            let fwd = ctx.nll(&batch, &targets, &opts).unwrap();
                            for (a, b) in out.values.iter().zip(&fwd.values) {
                                check_loss(*a, *b as f64, 1.0, &format!("{what} vs nll"));
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn nll_base_two_and_f64_input() {
    let ctx = cpu();
    let z: Vec<f64> = vec![1.0, -2.0, 0.5, 3.0, 0.0, -1.0];
    let z32: Vec<f32> = z.iter().map(|&v| v as f32).collect();
    let t = [2i32, 0];
    let mut g64 = vec![0f32; 6];
    let mut g32 = vec![0f32; 6];
    let opts = NllOptions::default().base(Base::Two);
    let a = ctx
        .nll_grad(
            &Batch::new(&z, 2, 3).form(Form::Logits),
            &t,
            &opts,
            &mut g64,
        )
        .unwrap();
    let b = ctx
        .nll_grad(
            &Batch::new(&z32, 2, 3).form(Form::Logits),
            &t,
            &opts,
            &mut g32,
        )
        .unwrap();
    assert_eq!(a.values, b.values);
    assert_eq!(g64, g32);
    let (loss, gr) = nll_ref(&z[..3], 2, None, 0.0);
    check_loss(a.values[0], loss / 2f64.ln(), 1.0, "base 2");
    check_row(
        &g32[..3],
        &gr.iter().map(|v| v / 2f64.ln()).collect::<Vec<_>>(),
        "base 2",
    );
}

// ------------------------------------------------------------ threads and errors

/// Results do not depend on the thread count: many rows (split over the
/// workers) give each row the bits it has alone.
#[test]
fn rows_independent_of_split() {
    let mut rng = Rng(5);
    let (rows, cols) = (64, 1000);
    let (s, t) = logits(&mut rng, rows, cols, Flavor::Plain);
    let ctx = cpu();
    let opts = DistillOptions::default().temperature(2.0);
    let mut all = vec![0f32; rows * cols];
    let out = ctx
        .distill(
            &Batch::new(&s, rows, cols).form(Form::Logits),
            &Teacher::Dense(Batch::new(&t, rows, cols).form(Form::Logits)),
            &opts,
            &mut all,
        )
        .unwrap();
    for r in [0, 17, 63] {
        let mut one = vec![0f32; cols];
        let o = ctx
            .distill(
                &Batch::new(&s[r * cols..(r + 1) * cols], 1, cols).form(Form::Logits),
                &Teacher::Dense(
                    Batch::new(&t[r * cols..(r + 1) * cols], 1, cols).form(Form::Logits),
                ),
                &opts,
                &mut one,
            )
            .unwrap();
        assert_eq!(o.values[0].to_bits(), out.values[r].to_bits());
        assert!(
            one.iter()
                .zip(&all[r * cols..])
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }
}

fn distill_err(
    s: &[f32],
    teacher: Teacher<'_>,
    opts: DistillOptions<'_>,
    rows: usize,
    cols: usize,
) -> Error {
    let run = |ctx: &Context| {
        let mut g = vec![0f32; rows * cols];
        ctx.distill(
            &Batch::new(s, rows, cols).form(Form::Logits),
            &teacher,
            &opts,
            &mut g,
        )
        .expect_err("an error")
    };
    let e = run(&cpu());
    // the GPU backend reports the same error (dense and sparse teachers)
    if let Some(gpu) = common::gpu() {
        assert_eq!(run(&gpu).to_string(), e.to_string(), "the GPU's error");
    }
    e
}

#[test]
fn distill_errors() {
    let s = [0.0f32, 1.0, 2.0, 0.5, 0.5, 0.5];
    let t = [1.0f32, 0.0, -1.0, 0.0, 0.0, 0.0];
    let dense = || Teacher::Dense(Batch::new(&t, 2, 3).form(Form::Logits));
    let d = DistillOptions::default;
    // β endpoints
    for (b, msg) in [
        (0.0, "β = 0: use forward-kl"),
        (1.0, "β = 1: use reverse-kl"),
    ] {
        let e = distill_err(&s, dense(), d().divergence(Divergence::Jsd).beta(b), 2, 3);
        assert!(
            matches!(
                e,
                Error::InvalidOption {
                    option: Setting::Beta,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains(msg), "{e}");
    }
    let e = distill_err(&s, dense(), d().divergence(Divergence::Jsd).beta(1.5), 2, 3);
    assert!(matches!(
        e,
        Error::InvalidOption {
            option: Setting::Beta,
            ..
        }
    ));
    for temp in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let e = distill_err(&s, dense(), d().temperature(temp), 2, 3);
        assert!(
            matches!(
                e,
                Error::InvalidOption {
                    option: Setting::Temperature,
                    ..
                }
            ),
            "{e}"
        );
    }
    // shapes
    let e = distill_err(
        &s,
        Teacher::Dense(Batch::new(&t[..3], 1, 3).form(Form::Logits)),
        d(),
        2,
        3,
    );
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let mask = [true];
    let e = distill_err(&s, dense(), d().mask(&mask[..]), 2, 3);
    assert!(
        matches!(
            e,
            Error::Length {
                arg: kullback::Arg::Mask,
                ..
            }
        ),
        "{e}"
    );
    let mut g = vec![0f32; 5];
    let e = cpu()
        .distill(
            &Batch::new(&s, 2, 3).form(Form::Logits),
            &dense(),
            &d(),
            &mut g,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Length {
                arg: kullback::Arg::Gradient,
                ..
            }
        ),
        "{e}"
    );
    let mut g = vec![0f32; 6];
    let e = cpu()
        .distill(&Batch::new(&s, 2, 3), &dense(), &d(), &mut g)
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    let e = cpu()
        .distill(
            &Batch::new(&s, 2, 3).form(Form::Logits),
            &Teacher::Dense(Batch::new(&t, 2, 3)),
            &d(),
            &mut g,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    // bad values name argument, row and column
    let mut sb = s;
    sb[4] = f32::NAN;
    let e = distill_err(&sb, dense(), d(), 2, 3);
    assert!(
        matches!(
            e,
            Error::BadValue {
                arg: kullback::Arg::Q,
                row: 1,
                col: Some(1),
                ..
            }
        ),
        "{e}"
    );
    let mut tb = t;
    tb[2] = f32::INFINITY;
    let e = distill_err(
        &s,
        Teacher::Dense(Batch::new(&tb, 2, 3).form(Form::Logits)),
        d(),
        2,
        3,
    );
    assert!(
        matches!(
            e,
            Error::BadValue {
                arg: kullback::Arg::P,
                row: 0,
                col: Some(2),
                ..
            }
        ),
        "{e}"
    );
    let lp = [-0.5f32, 0.1, -2.0, -1.0, -1.0, -1.0];
    let e = distill_err(
        &s,
        Teacher::Dense(Batch::new(&lp, 2, 3).form(Form::LogProbs)),
        d(),
        2,
        3,
    );
    assert!(
        matches!(
            e,
            Error::BadValue {
                row: 0,
                col: Some(1),
                what: kullback::BadValue::PositiveLog,
                ..
            }
        ),
        "{e}"
    );
    let ni = f32::NEG_INFINITY;
    let e = distill_err(&[0.0, 1.0, 2.0, ni, ni, ni], dense(), d(), 2, 3);
    assert!(
        matches!(
            e,
            Error::CannotNormalize {
                arg: kullback::Arg::Q,
                row: 1,
                ..
            }
        ),
        "{e}"
    );
    // infinite losses: forward (teacher mass where the student masks), reverse (the other way)
    let e = distill_err(&[0.0, ni, 2.0, 0.0, 0.0, 0.0], dense(), d(), 2, 3);
    assert!(
        matches!(e, Error::InfiniteLoss { row: 0, col: 1, .. }),
        "{e}"
    );
    let tm = [1.0f32, 0.0, -1.0, 0.0, 0.0, ni];
    let e = distill_err(
        &s,
        Teacher::Dense(Batch::new(&tm, 2, 3).form(Form::Logits)),
        d().divergence(Divergence::ReverseKl),
        2,
        3,
    );
    assert!(
        matches!(e, Error::InfiniteLoss { row: 1, col: 2, .. }),
        "{e}"
    );
    // ... which the other divergences take (a zero gradient there, no NaN)
    let mut g = vec![0f32; 6];
    for div in [Divergence::ForwardKl, Divergence::Jsd] {
        cpu()
            .distill(
                &Batch::new(&s, 2, 3).form(Form::Logits),
                &Teacher::Dense(Batch::new(&tm, 2, 3).form(Form::Logits)),
                &d().divergence(div),
                &mut g,
            )
            .unwrap();
        assert!(g.iter().all(|v| v.is_finite()));
    }
    // sparse: index range, duplicates, k, lengths, tail mass above 1
    let l = [-1.0f32, -2.0, -1.0, -2.0];
    let sp = |ix: &'static [i64], l: &'static [f32]| Teacher::Sparse(SparseTeacher::new(ix, l, 2));
    let e = distill_err(&s, sp(&[0, 3, 1, 2], &[-1.0, -2.0, -1.0, -2.0]), d(), 2, 3);
    assert!(
        matches!(
            e,
            Error::TeacherIndex {
                row: 0,
                position: 1,
                index: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = distill_err(&s, sp(&[0, 1, 2, 2], &[-1.0, -2.0, -1.0, -2.0]), d(), 2, 3);
    assert!(
        matches!(
            e,
            Error::TeacherIndex {
                row: 1,
                position: 1,
                index: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = distill_err(&s, sp(&[0, -1, 2, 1], &[-1.0, -2.0, -1.0, -2.0]), d(), 2, 3);
    assert!(
        matches!(
            e,
            Error::TeacherIndex {
                row: 0,
                position: 1,
                index: -1,
                ..
            }
        ),
        "{e}"
    );
    let e = distill_err(&s, sp(&[0, 1, 2, 1], &[-0.1, -0.1, -1.0, -2.0]), d(), 2, 3);
    assert!(
        matches!(
            e,
            Error::NotNormalized {
                arg: kullback::Arg::P,
                row: 0,
                ..
            }
        ),
        "{e}"
    );
    let e = distill_err(&s, sp(&[0, 1, 2, 1], &[-1.0, 0.5, -1.0, -2.0]), d(), 2, 3);
    assert!(
        matches!(
            e,
            Error::BadValue {
                arg: kullback::Arg::P,
                row: 0,
                col: Some(1),
                ..
            }
        ),
        "{e}"
    );
    let ix = [0i64, 1, 2];
    let e = distill_err(
        &s,
        Teacher::Sparse(SparseTeacher::new(&ix, &l[..3], 2)),
        d(),
        2,
        3,
    );
    assert!(
        matches!(
            e,
            Error::Length {
                arg: kullback::Arg::Indices,
                ..
            }
        ),
        "{e}"
    );
    for k in [0usize, 4] {
        let e = distill_err(
            &s,
            Teacher::Sparse(SparseTeacher::new(&ix, &l[..3], k)),
            d(),
            2,
            3,
        );
        assert!(
            matches!(
                e,
                Error::InvalidOption {
                    option: Setting::TopK,
                    ..
                }
            ),
            "{e}"
        );
    }
    // sparse infinite losses: the teacher's index on a masked student column; the tail mass with every tail column masked
    let e = distill_err(
        &[0.0, ni, 2.0, 0.0, 0.0, 0.0],
        sp(&[1, 0, 0, 1], &[-1.0, -2.0, -1.0, -2.0]),
        d(),
        2,
        3,
    );
    assert!(
        matches!(e, Error::InfiniteLoss { row: 0, col: 1, .. }),
        "{e}"
    );
    let e = distill_err(
        &[0.0, 1.0, ni, 0.0, 0.0, 0.0],
        sp(&[1, 0, 0, 1], &[-1.0, -2.0, -1.0, -2.0]),
        d(),
        2,
        3,
    );
    assert!(
        matches!(e, Error::InfiniteLoss { row: 0, col: 2, .. }),
        "{e}"
    );
    // the masked row is not read
    let mask = [false, true];
    let mut g = vec![1f32; 6];
    let out = cpu()
        .distill(
            &Batch::new(&sb, 2, 3).form(Form::Logits),
            &dense(),
            &d().mask(RowMask::from(&mask[..]))
                .reduction(Reduction::Mean),
            &mut g,
        )
        .expect_err("row 1 is read");
    assert!(matches!(out, Error::BadValue { row: 1, .. }));
    let mask = [true, false];
    let out = cpu()
        .distill(
            &Batch::new(&sb, 2, 3).form(Form::Logits),
            &dense(),
            &d().mask(&mask[..]).reduction(Reduction::Mean),
            &mut g,
        )
        .unwrap();
    assert_eq!(out.counted, 1.0);
    assert!(g[3..].iter().all(|&v| v == 0.0));
    // no row counts: the mean is NaN, the gradient 0
    let none = [0u8, 0];
    let out = cpu()
        .distill(
            &Batch::new(&s, 2, 3).form(Form::Logits),
            &dense(),
            &d().mask(&none[..]).reduction(Reduction::Mean),
            &mut g,
        )
        .unwrap();
    assert!(out.values[0].is_nan());
    assert!(g.iter().all(|&v| v == 0.0));
}

#[test]
fn nll_errors() {
    let ctx = cpu();
    let ni = f32::NEG_INFINITY;
    let z = [0.0f32, ni, 1.0, 2.0, 0.0, 1.0];
    let b = Batch::new(&z, 2, 3).form(Form::Logits);
    let mut g = vec![0f32; 6];
    let e = ctx
        .nll_grad(&b, &[1i64, 0], &NllOptions::default(), &mut g)
        .unwrap_err();
    assert!(
        matches!(e, Error::InfiniteLoss { row: 0, col: 1, .. }),
        "{e}"
    );
    let e = ctx
        .nll_grad(
            &b,
            &[0i64, 0],
            &NllOptions::default().label_smoothing(0.1),
            &mut g,
        )
        .unwrap_err();
    assert!(
        matches!(e, Error::InfiniteLoss { row: 0, col: 1, .. }),
        "{e}"
    );
    // weight 0 on the masked class: finite
    let w = [1.0f32, 0.0, 1.0];
    ctx.nll_grad(
        &b,
        &[0i64, 0],
        &NllOptions::default().label_smoothing(0.1).weights(&w),
        &mut g,
    )
    .unwrap();
    assert!(g.iter().all(|v| v.is_finite()) && g[1] == 0.0);
    let e = ctx
        .nll_grad(&b, &[0i64, 3], &NllOptions::default(), &mut g)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TargetOutOfRange {
                row: 1,
                target: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = ctx
        .nll_grad(
            &Batch::new(&z, 2, 3),
            &[0i64, 0],
            &NllOptions::default(),
            &mut g,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    let e = ctx
        .nll_grad(
            &Batch::new(&z[..3], 1, 3).form(Form::Logits),
            &[0i64, 0],
            &NllOptions::default(),
            &mut g,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    let e = ctx
        .nll_grad(&b, &[0i64, 0], &NllOptions::default(), &mut g[..5])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Length {
                arg: kullback::Arg::Gradient,
                ..
            }
        ),
        "{e}"
    );
    let e = ctx
        .nll_grad(
            &b,
            &[0i64, 0],
            &NllOptions::default().label_smoothing(1.5),
            &mut g,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidOption {
                option: Setting::LabelSmoothing,
                ..
            }
        ),
        "{e}"
    );
    let zn = [0.0f32, f32::NAN, 1.0];
    let e = ctx
        .nll_grad(
            &Batch::new(&zn, 1, 3).form(Form::Logits),
            &[0i64],
            &NllOptions::default(),
            &mut g[..3],
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::BadValue {
                row: 0,
                col: Some(1),
                ..
            }
        ),
        "{e}"
    );
    // every target ignored: mean NaN, gradient 0
    let out = ctx
        .nll_grad(
            &b,
            &[-1i64, -1],
            &NllOptions::default()
                .ignore_index(-1)
                .reduction(Reduction::Mean),
            &mut g,
        )
        .unwrap();
    assert!(out.values[0].is_nan() && g.iter().all(|&v| v == 0.0));
}

// ------------------------------------------------------------ PyTorch values

/// Stored PyTorch autograd values (tests/data/torch_train: make.py wrote
/// them with torch in float64 from the same float32 inputs), on both
/// backends.
#[test]
fn torch_reference() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/torch_train");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let f = std::fs::File::open(dir.join("values.npy")).unwrap();
    let values: Vec<f64> = npyz::NpyFile::new(std::io::BufReader::new(f))
        .unwrap()
        .into_vec()
        .unwrap();
    let arr = |c: &serde_json::Value, key: &str| -> Vec<f64> {
        let at = c[key].as_array().unwrap();
        let (o, n) = (
            at[0].as_u64().unwrap() as usize,
            at[1].as_u64().unwrap() as usize,
        );
        values[o..o + n].to_vec()
    };
    let f32s = |v: Vec<f64>| -> Vec<f32> { v.iter().map(|&x| x as f32).collect() };
    let red = |c: &serde_json::Value| match c["reduction"].as_str().unwrap() {
        "none" => Reduction::None,
        "sum" => Reduction::Sum,
        _ => Reduction::Mean,
    };
    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() >= 80);
    let mut contexts = vec![cpu()];
    contexts.extend(common::gpu());
    for (ctx, (n, c)) in contexts
        .iter()
        .flat_map(|ctx| cases.iter().enumerate().map(move |nc| (ctx, nc)))
    {
        let (rows, cols) = (
            c["rows"].as_u64().unwrap() as usize,
            c["cols"].as_u64().unwrap() as usize,
        );
        let s = f32s(arr(c, "s"));
        let want_loss = arr(c, "loss");
        let want_grad = arr(c, "grad");
        let mut grad = vec![f32::NAN; rows * cols];
        let student = Batch::new(&s, rows, cols).form(Form::Logits);
        let mut t2 = 1.0;
        let mask: Vec<u8> = c["mask"]
            .as_array()
            .map(|m| m.iter().map(|v| v.as_u64().unwrap() as u8).collect())
            .unwrap_or_default();
        let opts_of = |c: &serde_json::Value| {
            let temp = c["temperature"].as_f64().unwrap();
            DistillOptions::default()
                .divergence(Divergence::parse(c["divergence"].as_str().unwrap()).unwrap())
                .beta(c["beta"].as_f64().unwrap() as f32)
                .temperature(temp as f32)
                .reduction(red(c))
                .mask(&mask)
        };
        let out = match c["kind"].as_str().unwrap() {
            "nll" => {
                let targets: Vec<i64> = c["targets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect();
                let w = f32s(arr(c, "weights"));
                let mut o = NllOptions::default()
                    .reduction(red(c))
                    .label_smoothing(c["label_smoothing"].as_f64().unwrap() as f32);
                if c["weighted"].as_bool().unwrap() {
                    o = o.weights(&w);
                }
                if let Some(i) = c["ignore_index"].as_i64() {
                    o = o.ignore_index(i);
                }
                ctx.nll_grad(&student, &targets, &o, &mut grad)
            }
            "dense" => {
                let t = f32s(arr(c, "t"));
                let form = if c["teacher_form"] == "logits" {
                    Form::Logits
                } else {
                    Form::LogProbs
                };
                t2 = c["temperature"].as_f64().unwrap().powi(2);
                ctx.distill(
                    &student,
                    &Teacher::Dense(Batch::new(&t, rows, cols).form(form)),
                    &opts_of(c),
                    &mut grad,
                )
            }
            _ => {
                let l = f32s(arr(c, "logprobs"));
                let ix: Vec<i64> = c["indices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect();
                let k = c["k"].as_u64().unwrap() as usize;
                t2 = c["temperature"].as_f64().unwrap().powi(2);
                let tail = if c["tail"] == "bucket" {
                    Tail::Bucket
                } else {
                    Tail::Renormalize
                };
                ctx.distill(
                    &student,
                    &Teacher::Sparse(SparseTeacher::new(&ix, &l, k)),
                    &opts_of(c).tail(tail),
                    &mut grad,
                )
            }
        };
        let what = format!("torch case {n} on {:?}: {c}", ctx.backend());
        let what = &what[..what.len().min(400)];
        let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(out.backend, ctx.backend(), "{what}");
        for (got, want) in out.values.iter().zip(&want_loss) {
            check_loss(*got, *want, t2 * rows as f64, what);
        }
        for r in 0..rows {
            check_row(
                &grad[r * cols..(r + 1) * cols],
                &want_grad[r * cols..(r + 1) * cols],
                &format!("{what} row {r}"),
            );
        }
    }
}

// ------------------------------------------------------------ the GPU backend

/// The dense distillation grid on the GPU backend against the same f64
/// references (T ∈ {0.5, 2}; the references' finite differences are the CPU
/// grid's).
#[test]
fn gpu_distill_dense_grid() {
    let Some(gpu) = common::gpu() else { return };
    dense_grid(
        &gpu,
        &mut Rng(11),
        &[1, 3, 257],
        &[0.5, 2.0],
        &REDUCTIONS,
        false,
    );
}

/// The NLL grid (ignore index, class weights, label smoothing, −inf logits,
/// logits of 10⁴, reductions) on the GPU backend.
#[test]
fn gpu_nll_grid() {
    let Some(gpu) = common::gpu() else { return };
    nll_grid_on(&gpu, false);
}

/// The sparse-teacher grid on the GPU backend (k ∈ {1, 8, 64}, both tail
/// policies, every divergence, T ∈ {0.5, 2}, masks, −inf logits, logits of
/// 10⁴, reductions) against the same f64 references.
#[test]
fn gpu_distill_sparse_grid() {
    let Some(gpu) = common::gpu() else { return };
    sparse_grid(&gpu, None, &mut Rng(12), &[0.5, 2.0], false);
}

/// Two rows of 100,000 columns (each streamed by one workgroup) on the GPU,
/// every divergence and the NLL, against the f64 references.
#[test]
fn gpu_long_rows() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = Rng(12);
    let (rows, cols) = (2, 100_000);
    let (s, t) = logits(&mut rng, rows, cols, Flavor::Plain);
    let student = Batch::new(&s, rows, cols).form(Form::Logits);
    let teacher = Teacher::Dense(Batch::new(&t, rows, cols).form(Form::Logits));
    for div in [Div::Fwd, Div::Rev, Div::Jsd(0.5)] {
        let (divergence, beta) = match div {
            Div::Fwd => (Divergence::ForwardKl, 0.5),
            Div::Rev => (Divergence::ReverseKl, 0.5),
            Div::Jsd(b) => (Divergence::Jsd, b as f32),
        };
        let temp = 2.0;
        let opts = DistillOptions::default()
            .divergence(divergence)
            .beta(beta)
            .temperature(temp as f32);
        let mut grad = vec![f32::NAN; rows * cols];
        let out = gpu.distill(&student, &teacher, &opts, &mut grad).unwrap();
        assert_eq!(out.backend, kullback::Ran::Gpu);
        for r in 0..rows {
            let range = r * cols..(r + 1) * cols;
            let tr = TRef::Dense(f64s(&t[range.clone()]));
            let (loss, gr) = distill_ref(&f64s(&s[range.clone()]), &tr, temp, div);
            let what = format!("GPU 2 x 100k {div:?} row {r}");
            check_row(&grad[range], &gr, &what);
            check_loss(out.values[r], loss, temp * temp, &what);
        }
    }
    let targets: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
    let opts = NllOptions::default().label_smoothing(0.1);
    let mut grad = vec![f32::NAN; rows * cols];
    let out = gpu.nll_grad(&student, &targets, &opts, &mut grad).unwrap();
    for (r, &tr) in targets.iter().enumerate() {
        let range = r * cols..(r + 1) * cols;
        let (loss, gr) = nll_ref(&f64s(&s[range.clone()]), tr as usize, None, 0.1);
        let what = format!("GPU 2 x 100k nll row {r}");
        check_row(&grad[range], &gr, &what);
        check_loss(out.values[r], loss, 1.0, &what);
    }
}

/// An infinite loss on the GPU is the host path's error naming the row and
/// column, as on the CPU; so are NaN logits.
#[test]
fn gpu_infinite_loss_and_bad_values() {
    let Some(gpu) = common::gpu() else { return };
    let ni = f32::NEG_INFINITY;
    let (rows, cols) = (3, 600);
    let s: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32 * 0.3).collect();
    let t: Vec<f32> = (0..rows * cols).map(|i| (i % 5) as f32 * 0.2).collect();
    let mut bad_s = s.clone();
    bad_s[cols + 550] = ni;
    bad_s[cols + 590] = ni;
    let mut bad_t = t.clone();
    bad_t[2 * cols + 17] = ni;
    let cases = [
        (Divergence::ForwardKl, &bad_s, &t, 1, 550),
        (Divergence::ReverseKl, &s, &bad_t, 2, 17),
    ];
    for (div, sv, tv, row_want, col_want) in cases {
        for ctx in [cpu(), gpu.clone()] {
            let mut grad = vec![0f32; rows * cols];
            let e = ctx
                .distill(
                    &Batch::new(sv, rows, cols).form(Form::Logits),
                    &Teacher::Dense(Batch::new(tv, rows, cols).form(Form::Logits)),
                    &DistillOptions::default().divergence(div),
                    &mut grad,
                )
                .expect_err("an infinite loss");
            assert!(
                matches!(e, Error::InfiniteLoss { row, col, .. } if row == row_want && col == col_want),
                "{:?} {div:?}: {e}",
                ctx.backend()
            );
        }
    }
    // NLL: the target's logit is −inf; label smoothing over a −inf logit
    let mut z = s.clone();
    z[2 * cols + 4] = ni;
    z[cols + 9] = ni;
    for (targets, eps, want) in [
        (vec![0i64, 1, 4], 0.0f32, (2, 4)),
        (vec![0i64, 1, 5], 0.1, (1, 9)),
    ] {
        for ctx in [cpu(), gpu.clone()] {
            let mut grad = vec![0f32; rows * cols];
            let e = ctx
                .nll_grad(
                    &Batch::new(&z, rows, cols).form(Form::Logits),
                    &targets,
                    &NllOptions::default().label_smoothing(eps),
                    &mut grad,
                )
                .expect_err("an infinite loss");
            assert!(
                matches!(e, Error::InfiniteLoss { row, col, .. } if (row, col) == want),
                "{:?}: {e}",
                ctx.backend()
            );
        }
    }
    // a NaN logit of the student
    let mut nan = s.clone();
    nan[cols + 3] = f32::NAN;
    let mut grad = vec![0f32; rows * cols];
    let e = gpu
        .distill(
            &Batch::new(&nan, rows, cols).form(Form::Logits),
            &Teacher::Dense(Batch::new(&t, rows, cols).form(Form::Logits)),
            &DistillOptions::default(),
            &mut grad,
        )
        .expect_err("NaN");
    assert!(
        matches!(
            e,
            Error::BadValue {
                row: 1,
                col: Some(3),
                ..
            }
        ),
        "{e}"
    );
}

/// The GPU-resident path: logits, teacher, targets and mask in our own
/// buffers, the gradient written at an offset of a larger buffer, the
/// records decoded; the same bits as the host path on the GPU backend.
#[test]
fn gpu_resident_distill_and_nll() {
    use kullback::wgpu::{self, util::DeviceExt};
    use kullback::{GpuBatch, GpuDistill, GpuGrad, GpuNllGrad, GpuOutput, GpuRowMask, GpuTargets};
    let Some((device, queue)) = common::gpu_device(wgpu::Limits::downlevel_defaults()) else {
        return;
    };
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    let mut rng = Rng(13);
    let (rows, cols) = (5, 300);
    let (s, t) = logits(&mut rng, rows, cols, Flavor::Masked);
    let sb = common::storage(&device, &s);
    let tb = common::storage(&device, &t);
    let align = device.limits().min_storage_buffer_offset_alignment as u64;
    // the gradient one alignment into a larger buffer, and the teacher's
    // gradient after it (3 words of gap: an offset off the storage alignment)
    let tg_off = align + (rows * cols * 4) as u64 + 12;
    let gbytes = tg_off + (rows * cols * 4) as u64;
    let gbuf = common::out_buffer(&device, gbytes);
    let (obuf, obytes) = common::grad_records(&device, rows);
    let read_at = |buf: &wgpu::Buffer, at: u64| -> Vec<f32> {
        let recs = common::read_records(&device, &queue, buf, at, (rows * cols * 4) as u64);
        bytemuck::cast_slice::<kullback::Record, f32>(&recs).to_vec()
    };
    let read_grad = |buf: &wgpu::Buffer| read_at(buf, align);
    let mask = [1u32, 0, 1, 1, 0];
    let mask_bool: Vec<bool> = mask.iter().map(|&m| m != 0).collect();
    let mbuf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("mask"),
        contents: bytemuck::cast_slice(&mask),
        usage: wgpu::BufferUsages::COPY_SRC,
    });
    let student = GpuBatch::new(&sb, rows, cols).form(Form::Logits);
    let teacher = GpuBatch::new(&tb, rows, cols).form(Form::Logits);
    let counted = mask.iter().filter(|&&m| m != 0).count() as f32;
    for (div, with_t) in [
        Divergence::ForwardKl,
        Divergence::ReverseKl,
        Divergence::Jsd,
    ]
    .into_iter()
    .flat_map(|d| [(d, false), (d, true)])
    {
        let opts = DistillOptions::default()
            .divergence(div)
            .beta(0.1)
            .temperature(2.0);
        let mut call = GpuDistill::new(
            student,
            teacher,
            GpuGrad::new(&gbuf).offset(align),
            GpuOutput::new(&obuf),
        )
        .options(opts)
        .mask(GpuRowMask {
            buffer: &mbuf,
            offset: 0,
        })
        .grad_scale(1.0 / counted);
        if with_t {
            call = call.teacher_grad(GpuGrad::new(&gbuf).offset(tg_off));
        }
        let mut enc = device.create_command_encoder(&Default::default());
        ctx.encode_distill(&mut enc, &call).expect("encode");
        queue.submit([enc.finish()]);
        let recs = common::read_records(&device, &queue, &obuf, 0, obytes);
        let losses = call.decode(&recs).expect("decode");
        let got = read_grad(&gbuf);
        // the host path on the same device, mean over the counted rows
        let mut want = vec![0f32; rows * cols];
        let host = ctx
            .distill(
                &Batch::new(&s, rows, cols).form(Form::Logits),
                &Teacher::Dense(Batch::new(&t, rows, cols).form(Form::Logits)),
                &opts.reduction(Reduction::Mean).mask(&mask_bool),
                &mut want,
            )
            .expect("host");
        assert_eq!(host.backend, kullback::Ran::Gpu);
        let d = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(d(&got), d(&want), "{div:?}: gradient");
        let mean = losses.iter().map(|&v| v as f64).sum::<f64>() / counted as f64;
        assert_eq!(mean as f32, host.values[0], "{div:?}: loss");
        for r in 0..rows {
            assert_eq!(recs[r].aux_p, mask[r] as f32, "row weight");
        }
        if with_t {
            // the host path's teacher gradient, bit for bit
            let (mut gs, mut gt) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
            ctx.distill_with_teacher_grad(
                &Batch::new(&s, rows, cols).form(Form::Logits),
                &Teacher::Dense(Batch::new(&t, rows, cols).form(Form::Logits)),
                &opts.reduction(Reduction::Mean).mask(&mask_bool),
                &mut gs,
                &mut gt,
            )
            .expect("host");
            assert_eq!(d(&got), d(&gs), "{div:?}: gradient");
            assert_eq!(
                d(&read_at(&gbuf, tg_off)),
                d(&gt),
                "{div:?}: teacher gradient"
            );
            // a teacher gradient elsewhere, or over the student's, is refused
            let other = common::out_buffer(&device, gbytes);
            for bad in [
                GpuGrad::new(&other).offset(tg_off),
                GpuGrad::new(&gbuf).offset(align + 4),
            ] {
                let c = call.teacher_grad(bad);
                let mut enc = device.create_command_encoder(&Default::default());
                let e = ctx.encode_distill(&mut enc, &c).unwrap_err();
                assert!(
                    matches!(&e, Error::Unsupported(m) if m.contains("gradient's buffer")),
                    "{e}"
                );
            }
        }
    }
    // the NLL with i32 targets, an ignored row and class weights; then a
    // target out of range, reported in its row's record
    let mut targets: Vec<i32> = vec![0, -100, 7, 2, 11];
    for r in 0..rows {
        while targets[r] >= 0 && s[r * cols + targets[r] as usize] == f32::NEG_INFINITY {
            targets[r] += 1;
        }
    }
    let w: Vec<f32> = (0..cols).map(|c| 0.5 + (c % 3) as f32 * 0.25).collect();
    let opts = NllOptions::default()
        .ignore_index(-100)
        .weights(&w)
        .label_smoothing(0.0);
    let tbuf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("targets"),
        contents: bytemuck::cast_slice(&targets),
        usage: wgpu::BufferUsages::COPY_SRC,
    });
    let call = GpuNllGrad::new(
        student,
        GpuTargets::i32(&tbuf, rows),
        GpuGrad::new(&gbuf).offset(align),
        GpuOutput::new(&obuf),
    )
    .options(opts);
    let mut enc = device.create_command_encoder(&Default::default());
    ctx.encode_nll_grad(&mut enc, &call).expect("encode");
    queue.submit([enc.finish()]);
    let recs = common::read_records(&device, &queue, &obuf, 0, obytes);
    let losses = call.decode(&recs).expect("decode");
    let got = read_grad(&gbuf);
    let mut want = vec![0f32; rows * cols];
    let host = ctx
        .nll_grad(
            &Batch::new(&s, rows, cols).form(Form::Logits),
            &targets,
            &opts,
            &mut want,
        )
        .expect("host");
    let d = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(d(&got), d(&want), "nll gradient");
    assert_eq!(d(&losses), d(&host.values), "nll losses");
    let bad_targets: Vec<i32> = vec![0, 2, 3, cols as i32 + 3, 4];
    let tbad = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("targets"),
        contents: bytemuck::cast_slice(&bad_targets),
        usage: wgpu::BufferUsages::COPY_SRC,
    });
    let call = GpuNllGrad::new(
        student,
        GpuTargets::i32(&tbad, rows),
        GpuGrad::new(&gbuf),
        GpuOutput::new(&obuf),
    );
    let mut enc = device.create_command_encoder(&Default::default());
    ctx.encode_nll_grad(&mut enc, &call).expect("encode");
    queue.submit([enc.finish()]);
    let recs = common::read_records(&device, &queue, &obuf, 0, obytes);
    let e = call.decode(&recs).expect_err("out of range");
    assert!(
        matches!(e, Error::TargetOutOfRange { row: 3, target, .. } if target == cols as i64 + 3),
        "{e}"
    );
    // a mean is refused (the caller scales)
    let call = call.options(NllOptions::default().reduction(Reduction::Mean));
    let mut enc = device.create_command_encoder(&Default::default());
    assert!(matches!(
        ctx.encode_nll_grad(&mut enc, &call),
        Err(Error::Unsupported(_))
    ));
}

/// On a device that binds five storage buffers (the adapter's limits), a
/// GPU-resident teacher gradient in a buffer of its own, or in the
/// gradient's buffer before the student's, gives the host path's bits;
/// one over the student's gradient, or in an input, is refused.
#[test]
fn gpu_resident_teacher_grad_in_its_own_buffer() {
    use kullback::wgpu;
    use kullback::{GpuBatch, GpuDistill, GpuGrad, GpuOutput};
    let Some((device, queue, _)) = common::gpu_device_with(None, wgpu::Features::empty()) else {
        return;
    };
    assert!(
        device.limits().max_storage_buffers_per_shader_stage >= 5,
        "the test needs a device with five storage buffers per stage"
    );
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    let (rows, cols) = (4, 333);
    let (s, t) = logits(&mut Rng(21), rows, cols, Flavor::Masked);
    let (sb, tb) = (common::storage(&device, &s), common::storage(&device, &t));
    let align = device.limits().min_storage_buffer_offset_alignment as u64;
    let bytes = (rows * cols * 4) as u64;
    let gbytes = 2 * bytes.next_multiple_of(align) + align;
    let gbuf = common::out_buffer(&device, gbytes);
    let other = common::out_buffer(&device, bytes + align);
    let (obuf, obytes) = common::grad_records(&device, rows);
    let read = |buf: &wgpu::Buffer, at: u64| -> Vec<u32> {
        common::read_buffer::<u32>(&device, &queue, buf, at, bytes)
    };
    let student = GpuBatch::new(&sb, rows, cols).form(Form::Logits);
    let teacher = GpuBatch::new(&tb, rows, cols).form(Form::Logits);
    // the student's gradient after the teacher's, in the same buffer
    let g_at = bytes.next_multiple_of(align);
    for div in [
        Divergence::ForwardKl,
        Divergence::ReverseKl,
        Divergence::Jsd,
    ] {
        let opts = DistillOptions::default().divergence(div).temperature(2.0);
        let (mut gs, mut gt) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
        let host = ctx
            .distill_with_teacher_grad(
                &Batch::new(&s, rows, cols).form(Form::Logits),
                &Teacher::Dense(Batch::new(&t, rows, cols).form(Form::Logits)),
                &opts,
                &mut gs,
                &mut gt,
            )
            .expect("host");
        let want = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (tg, tg_at) in [
            (GpuGrad::new(&other).offset(align), (&other, align)),
            (GpuGrad::new(&gbuf), (&gbuf, 0)),
        ] {
            let call = GpuDistill::new(
                student,
                teacher,
                GpuGrad::new(&gbuf).offset(g_at),
                GpuOutput::new(&obuf),
            )
            .options(opts)
            .teacher_grad(tg);
            let mut enc = device.create_command_encoder(&Default::default());
            ctx.encode_distill(&mut enc, &call).expect("encode");
            queue.submit([enc.finish()]);
            let recs = common::read_records(&device, &queue, &obuf, 0, obytes);
            let losses = call.decode(&recs).expect("decode");
            assert_eq!(read(&gbuf, g_at), want(&gs), "{div:?}: student gradient");
            assert_eq!(
                read(tg_at.0, tg_at.1),
                want(&gt),
                "{div:?}: teacher gradient"
            );
            // per-row losses (the default reduction is none)
            assert_eq!(want(&losses), want(&host.values), "{div:?}: losses");
        }
    }
    // over the student's gradient, or in an input buffer: refused
    for (bad, name) in [
        (GpuGrad::new(&gbuf).offset(g_at - align), "teacher gradient"),
        (GpuGrad::new(&sb), "teacher gradient"),
    ] {
        let call = GpuDistill::new(
            student,
            teacher,
            GpuGrad::new(&gbuf).offset(g_at),
            GpuOutput::new(&obuf),
        )
        .teacher_grad(bad);
        let mut enc = device.create_command_encoder(&Default::default());
        let e = ctx.encode_distill(&mut enc, &call).unwrap_err();
        assert!(
            matches!(&e, Error::Buffer { name: n, .. } if *n == name),
            "{e}"
        );
    }
}

/// A binding cap of 64 KiB splits 40 rows of 1,000 columns over three
/// dispatches (the row mask, targets and weights sliced with them): the
/// same bits as one dispatch; a sparse teacher's chunks likewise.
#[test]
fn gpu_rows_split_over_dispatches() {
    let (Some(gpu), Some(capped)) = (common::gpu(), common::gpu_capped(64 * 1024)) else {
        return;
    };
    let mut rng = Rng(14);
    let (rows, cols) = (40, 1000);
    let (s, t) = logits(&mut rng, rows, cols, Flavor::Masked);
    let mask: Vec<u8> = (0..rows).map(|r| (r % 7 != 3) as u8).collect();
    let student = Batch::new(&s, rows, cols).form(Form::Logits);
    let teacher = Teacher::Dense(Batch::new(&t, rows, cols).form(Form::Logits));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for div in [
        Divergence::ForwardKl,
        Divergence::ReverseKl,
        Divergence::Jsd,
    ] {
        let opts = DistillOptions::default()
            .divergence(div)
            .temperature(2.0)
            .reduction(Reduction::Mean)
            .mask(&mask);
        let (mut a, mut b) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
        let oa = gpu.distill(&student, &teacher, &opts, &mut a).unwrap();
        let ob = capped.distill(&student, &teacher, &opts, &mut b).unwrap();
        assert_eq!(bits(&a), bits(&b), "{div:?}");
        assert_eq!(bits(&oa.values), bits(&ob.values), "{div:?}");
        // with the teacher's gradient (two gradients per binding: more
        // dispatches), the same bits again
        let (mut c, mut ct) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
        let (mut d, mut dt) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
        let oc = gpu
            .distill_with_teacher_grad(&student, &teacher, &opts, &mut c, &mut ct)
            .unwrap();
        let od = capped
            .distill_with_teacher_grad(&student, &teacher, &opts, &mut d, &mut dt)
            .unwrap();
        assert_eq!(bits(&a), bits(&c), "{div:?}");
        assert_eq!(bits(&a), bits(&d), "{div:?}");
        assert_eq!(bits(&ct), bits(&dt), "{div:?}");
        assert_eq!(bits(&oa.values), bits(&oc.values), "{div:?}");
        assert_eq!(bits(&oa.values), bits(&od.values), "{div:?}");
        // and the CPU's teacher gradient within the bound, row by row
        let (mut e, mut et) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
        cpu()
            .distill_with_teacher_grad(&student, &teacher, &opts, &mut e, &mut et)
            .unwrap();
        for r in 0..rows {
            let range = r * cols..(r + 1) * cols;
            check_row(
                &ct[range.clone()],
                &f64s(&et[range]),
                &format!("{div:?} row {r}"),
            );
        }
    }
    // a sparse teacher (k = 16, both tails): the same bits over several
    // chunks, and on a rerun
    let k = 16;
    let (mut ix, mut l) = (Vec::new(), Vec::new());
    for r in 0..rows {
        let (i, v) = top_k(&mut rng, &t[r * cols..(r + 1) * cols], 2.0, k);
        ix.extend(i.iter().map(|&c| c as u32));
        l.extend(v);
    }
    let sparse = Teacher::Sparse(SparseTeacher::new(&ix, &l, k));
    for tail in [Tail::Bucket, Tail::Renormalize] {
        for div in [Divergence::ForwardKl, Divergence::Jsd] {
            let opts = DistillOptions::default()
                .divergence(div)
                .temperature(2.0)
                .tail(tail)
                .mask(&mask);
            let mut runs = Vec::new();
            for ctx in [&gpu, &capped, &gpu] {
                let mut g = vec![0f32; rows * cols];
                let o = ctx.distill(&student, &sparse, &opts, &mut g).unwrap();
                assert_eq!(o.backend, kullback::Ran::Gpu);
                runs.push((bits(&g), bits(&o.values)));
            }
            assert_eq!(runs[0], runs[1], "sparse {tail:?} {div:?}: capped");
            assert_eq!(runs[0], runs[2], "sparse {tail:?} {div:?}: rerun");
        }
    }
    let w: Vec<f32> = (0..cols)
        .map(|c| {
            if c % 5 == 1 {
                0.0
            } else {
                0.5 + (c % 3) as f32
            }
        })
        .collect();
    let targets: Vec<i64> = (0..rows)
        .map(|r| {
            if r % 9 == 4 {
                -100
            } else {
                (r * 37 % cols) as i64 / 5 * 5
            }
        })
        .collect();
    let opts = NllOptions::default()
        .weights(&w)
        .ignore_index(-100)
        .label_smoothing(0.2)
        .reduction(Reduction::Sum);
    let (mut a, mut b) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
    let oa = gpu.nll_grad(&student, &targets, &opts, &mut a).unwrap();
    let ob = capped.nll_grad(&student, &targets, &opts, &mut b).unwrap();
    assert_eq!(bits(&a), bits(&b), "nll");
    assert_eq!(bits(&oa.values), bits(&ob.values), "nll");
    // and the CPU's value within the bound
    let mut c = vec![0f32; rows * cols];
    let oc = cpu().nll_grad(&student, &targets, &opts, &mut c).unwrap();
    check_loss(oa.values[0], oc.values[0] as f64, rows as f64, "nll vs cpu");
}

/// `grad_scale` multiplies the gradients and not the loss: a sum's gradient
/// times 1 / N is the mean's over N counted rows bit for bit (how a mean
/// split over several calls, as kullback.dask's, gives the in-memory bits),
/// for dense and sparse teachers (with the teacher's gradient) and the
/// weighted NLL, on both backends; a non-finite scale is refused by name.
#[test]
fn grad_scale_turns_a_sum_into_the_mean() {
    let mut rng = Rng(31);
    let (rows, cols) = (6, 37);
    let (s, t) = logits(&mut rng, rows, cols, Flavor::Masked);
    let mask: Vec<bool> = (0..rows).map(|r| r % 4 != 2).collect();
    let counted = mask.iter().filter(|&&m| m).count() as f64;
    let student = Batch::new(&s, rows, cols).form(Form::Logits);
    let dense = Teacher::Dense(Batch::new(&t, rows, cols).form(Form::Logits));
    let (ix, lp) = top_k(&mut rng, &t[..cols], 2.0, 5);
    let ix: Vec<u32> = (0..rows)
        .flat_map(|_| ix.iter().map(|&c| c as u32))
        .collect();
    let lp: Vec<f32> = (0..rows).flat_map(|_| lp.iter().copied()).collect();
    let sparse = Teacher::Sparse(SparseTeacher::new(&ix, &lp, 5));
    // targets off the masked columns (c % 5 == 1)
    let y: Vec<i64> = (0..rows as i64).map(|r| (r * 5) % cols as i64).collect();
    let w: Vec<f32> = (0..cols).map(|c| 0.25 + (c % 5) as f32 * 0.3).collect();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut ctxs = vec![cpu()];
    ctxs.extend(common::gpu());
    for ctx in &ctxs {
        for div in [
            Divergence::ForwardKl,
            Divergence::ReverseKl,
            Divergence::Jsd,
        ] {
            let base = DistillOptions::default()
                .divergence(div)
                .temperature(2.0)
                .mask(&mask[..]);
            let mean = base.reduction(Reduction::Mean);
            let sum = base.reduction(Reduction::Sum).grad_scale(1.0 / counted);
            let n = rows * cols;
            let (mut g1, mut t1, mut g2, mut t2) =
                (vec![0f32; n], vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            ctx.distill_with_teacher_grad(&student, &dense, &mean, &mut g1, &mut t1)
                .unwrap();
            let o = ctx
                .distill_with_teacher_grad(&student, &dense, &sum, &mut g2, &mut t2)
                .unwrap();
            assert_eq!(bits(&g1), bits(&g2), "{div:?}");
            assert_eq!(bits(&t1), bits(&t2), "{div:?} teacher");
            let plain = ctx
                .distill(&student, &dense, &base.reduction(Reduction::Sum), &mut g2)
                .unwrap();
            assert_eq!(o.values, plain.values, "{div:?}: the loss is not scaled");
            ctx.distill(&student, &sparse, &mean, &mut g1).unwrap();
            ctx.distill(&student, &sparse, &sum, &mut g2).unwrap();
            assert_eq!(bits(&g1), bits(&g2), "{div:?} sparse");
        }
        let opts = NllOptions::default().weights(&w).ignore_index(25);
        let count: f64 = y
            .iter()
            .filter(|&&t| t != 25)
            .map(|&t| w[t as usize] as f64)
            .sum();
        let (mut g1, mut g2) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
        ctx.nll_grad(&student, &y, &opts.reduction(Reduction::Mean), &mut g1)
            .unwrap();
        let sum = opts.reduction(Reduction::Sum).grad_scale(1.0 / count);
        ctx.nll_grad(&student, &y, &sum, &mut g2).unwrap();
        assert_eq!(bits(&g1), bits(&g2), "nll");
        let refused = |e: Error| {
            let named = matches!(
                &e,
                Error::InvalidOption {
                    option: Setting::GradScale,
                    ..
                }
            );
            assert!(named, "{e}");
        };
        for bad in [f64::NAN, f64::INFINITY] {
            refused(
                ctx.nll_grad(&student, &y, &opts.grad_scale(bad), &mut g2)
                    .unwrap_err(),
            );
            let opts = DistillOptions::default().grad_scale(bad);
            refused(ctx.distill(&student, &dense, &opts, &mut g2).unwrap_err());
        }
    }
}

// ------------------------------------------------------------ GPU-resident sparse teachers

/// A GPU device, and a context on it, for the GPU-resident calls.
struct Resident {
    device: kullback::wgpu::Device,
    queue: kullback::wgpu::Queue,
    ctx: Context,
}

fn resident() -> Option<Resident> {
    let (device, queue) = common::gpu_device(kullback::wgpu::Limits::downlevel_defaults())?;
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    Some(Resident { device, queue, ctx })
}

/// A GPU-resident call's decoded per-row losses (or its error) and gradient.
type ResidentRun = (Result<Vec<f32>, Error>, Vec<f32>);

/// [`Context::encode_sparse_distill`] of the host call (`s`, `sp`, `opts`,
/// whose mask goes into a buffer and whose reduction becomes per-row losses
/// and the gradient's `scale`): the decoded per-row losses (or the error)
/// and the gradient (empty where the call is refused). `None` for i64
/// indices beyond i32.
fn resident_sparse(
    res: &Resident,
    s: &[f32],
    cols: usize,
    sp: &SparseTeacher<'_>,
    opts: &DistillOptions<'_>,
    scale: f32,
) -> Option<ResidentRun> {
    resident_sparse_as(res, s, cols, sp, opts, scale, kullback::Dtype::F32)
}

/// [`resident_sparse`] with the log-probabilities stored as `dtype` (each
/// value rounded to it; f16 and bf16 packed two per word).
fn resident_sparse_as(
    res: &Resident,
    s: &[f32],
    cols: usize,
    sp: &SparseTeacher<'_>,
    opts: &DistillOptions<'_>,
    scale: f32,
    dtype: kullback::Dtype,
) -> Option<ResidentRun> {
    use kullback::wgpu::{self, util::DeviceExt};
    use kullback::{GpuBatch, GpuGrad, GpuOutput, GpuRowMask, GpuSparseDistill, GpuTargets};
    let rows = s.len() / cols;
    let k = sp.k;
    let (words, signed): (Vec<u32>, bool) = match sp.indices {
        Targets::I32(v) => (v.iter().map(|&x| x as u32).collect(), true),
        Targets::U32(v) => (v.to_vec(), false),
        Targets::I64(v) => (
            v.iter()
                .map(|&x| i32::try_from(x).ok().map(|x| x as u32))
                .collect::<Option<_>>()?,
            true,
        ),
    };
    let d = &res.device;
    let init = |label, contents: &[u8], usage| {
        d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage,
        })
    };
    let copy = wgpu::BufferUsages::COPY_SRC;
    let sb = common::storage(d, s);
    // the indices one word in, to exercise an offset
    let mut ix_words = vec![0u32];
    ix_words.extend(&words);
    let ib = init("indices", bytemuck::cast_slice(&ix_words), copy);
    use kullback::half::{bf16, f16};
    let mut halves: Vec<u16> = match dtype {
        kullback::Dtype::F16 => sp
            .logprobs
            .iter()
            .map(|&v| f16::from_f32(v).to_bits())
            .collect(),
        kullback::Dtype::BF16 => sp
            .logprobs
            .iter()
            .map(|&v| bf16::from_f32(v).to_bits())
            .collect(),
        _ => Vec::new(),
    };
    halves.resize(halves.len().next_multiple_of(2), 0);
    let lb = match dtype {
        kullback::Dtype::F32 => init("logprobs", bytemuck::cast_slice(sp.logprobs), copy),
        _ => init("logprobs", bytemuck::cast_slice(&halves), copy),
    };
    let gbuf = common::out_buffer(d, (rows * cols * 4).max(4) as u64);
    let (obuf, obytes) = common::grad_records(d, rows);
    let mask_words: Option<Vec<u32>> = opts
        .mask
        .map(|m| (0..rows).map(|r| m.counts(r) as u32).collect());
    let mbuf = mask_words
        .as_ref()
        .map(|w| init("mask", bytemuck::cast_slice(w), copy));
    let indices = if signed {
        GpuTargets::i32(&ib, words.len())
    } else {
        GpuTargets::u32(&ib, words.len())
    }
    .offset(4);
    let mut o = *opts;
    o.mask = None;
    o.reduction = Reduction::None;
    let mut call = GpuSparseDistill::new(
        GpuBatch::new(&sb, rows, cols).form(Form::Logits),
        indices,
        GpuBatch::new(&lb, rows, k)
            .form(Form::LogProbs)
            .dtype(dtype),
        GpuGrad::new(&gbuf),
        GpuOutput::new(&obuf),
    )
    .options(o)
    .grad_scale(scale);
    if let Some(m) = &mbuf {
        call = call.mask(GpuRowMask {
            buffer: m,
            offset: 0,
        });
    }
    let mut enc = d.create_command_encoder(&Default::default());
    if let Err(e) = res.ctx.encode_sparse_distill(&mut enc, &call) {
        return Some((Err(e), Vec::new()));
    }
    res.queue.submit([enc.finish()]);
    let recs = common::read_records(d, &res.queue, &obuf, 0, obytes);
    let grad = common::read_buffer::<f32>(d, &res.queue, &gbuf, 0, (rows * cols * 4) as u64);
    Some((call.decode(&recs), grad))
}

/// The GPU-resident sparse call of a case against the host path's f64
/// references (per-row losses, the gradient with the reduction's scale), an
/// infinite row reported in its record, and a bit-identical rerun.
fn check_resident(
    res: &Resident,
    c: &Case,
    s: &[f32],
    sp: &SparseTeacher<'_>,
    opts: &DistillOptions<'_>,
    refs: &[TRef],
    mask: &[bool],
) {
    let (rows, cols) = (c.rows, c.cols);
    let what = format!(
        "resident C={cols} T={} {:?} {:?} k={:?} bucket={} {:?} mask={}",
        c.temp, c.div, c.flavor, c.sparse, c.bucket, c.reduction, c.mask
    );
    let count = mask.iter().filter(|&&m| m).count() as f64;
    let scale = if c.reduction == Reduction::Mean {
        1.0 / count
    } else {
        1.0
    };
    let Some((losses, grad)) = resident_sparse(res, s, cols, sp, opts, scale as f32) else {
        return;
    };
    let row_ref =
        |r: usize| distill_ref(&f64s(&s[r * cols..(r + 1) * cols]), &refs[r], c.temp, c.div);
    if let Some(r) = (0..rows).find(|&r| mask[r] && row_ref(r).0.is_infinite()) {
        let e = losses.expect_err(&what);
        assert!(
            matches!(e, Error::InfiniteLoss { row, .. } if row == r),
            "{what}: {e} (reference: row {r})"
        );
        return;
    }
    let losses = losses.unwrap_or_else(|e| panic!("{what}: {e}"));
    for r in 0..rows {
        let g = &grad[r * cols..(r + 1) * cols];
        if !mask[r] {
            assert!(g.iter().all(|&v| v == 0.0), "{what}: masked row {r}");
            assert_eq!(losses[r], 0.0, "{what}: masked row {r}");
            continue;
        }
        let (loss, gr) = row_ref(r);
        let want: Vec<f64> = gr.iter().map(|v| v * scale).collect();
        check_row(g, &want, &format!("{what} row {r}"));
        check_loss(losses[r], loss, c.temp * c.temp, &format!("{what} row {r}"));
    }
    let (l2, g2) = resident_sparse(res, s, cols, sp, opts, scale as f32).expect("rerun");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&grad), bits(&g2), "{what}: rerun");
    assert_eq!(bits(&losses), bits(&l2.expect("rerun")), "{what}: rerun");
}

/// The sparse grid on the GPU-resident path (`encode_sparse_distill`):
/// k ∈ {1, 8, 64}, both tails, every divergence, T ∈ {0.5, 2}, masks, −inf
/// logits, logits of 10⁴, i32 and u32 indices, against the f64 references.
#[test]
fn gpu_resident_sparse_grid() {
    let Some(res) = resident() else { return };
    sparse_grid(&res.ctx, Some(&res), &mut Rng(21), &[0.5, 2.0], false);
}

/// Every problem of a sparse row on the GPU-resident path: its record
/// decodes to the host path's error (the CPU's, the same message), the
/// first bad row's; a masked row is not read.
#[test]
fn gpu_resident_sparse_errors() {
    let Some(res) = resident() else { return };
    let (rows, cols) = (2, 4);
    let ni = f32::NEG_INFINITY;
    let good_s = [0.5f32, -1.0, 2.0, 0.0, 1.0, 1.0, -0.5, 0.25];
    let renorm = |d: Divergence| {
        DistillOptions::default()
            .divergence(d)
            .tail(Tail::Renormalize)
            .temperature(2.0)
    };
    let fwd = renorm(Divergence::ForwardKl);
    let bucket = fwd.tail(Tail::Bucket);
    let rev = renorm(Divergence::ReverseKl);
    // (student, i32 indices, log-probabilities, options)
    type Case<'a> = (Vec<f32>, Vec<i32>, Vec<f32>, DistillOptions<'a>);
    let cases: Vec<(&str, Case<'_>)> = vec![
        (
            "index out of range",
            (
                good_s.to_vec(),
                vec![0, 1, 2, 4],
                vec![-1.0, -2.0, -1.0, -2.0],
                fwd,
            ),
        ),
        (
            "negative index",
            (
                good_s.to_vec(),
                vec![0, 1, -3, 2],
                vec![-1.0, -2.0, -1.0, -2.0],
                fwd,
            ),
        ),
        (
            "NaN log-probability",
            (
                good_s.to_vec(),
                vec![0, 1, 2, 3],
                vec![-1.0, -2.0, f32::NAN, -2.0],
                fwd,
            ),
        ),
        (
            "positive log-probability",
            (
                good_s.to_vec(),
                vec![0, 1, 2, 3],
                vec![-1.0, 0.5, -1.0, -2.0],
                rev,
            ),
        ),
        (
            "an earlier position's problem first",
            (
                good_s.to_vec(),
                vec![0, 1, 9, 3],
                vec![-1.0, -2.0, -1.0, f32::INFINITY],
                fwd,
            ),
        ),
        (
            "repeated index",
            (
                good_s.to_vec(),
                vec![0, 1, 3, 3],
                vec![-1.0, -2.0, -1.0, -2.0],
                fwd,
            ),
        ),
        (
            "NaN student at an index",
            (
                vec![0.5, f32::NAN, 2.0, 0.0, 1.0, 1.0, -0.5, f32::NAN],
                vec![0, 1, 0, 3],
                vec![-1.0, -2.0, -1.0, -2.0],
                fwd,
            ),
        ),
        (
            "+inf student at an index",
            (
                vec![0.5, 1.0, 2.0, 0.0, 1.0, f32::INFINITY, -0.5, 0.0],
                vec![0, 1, 0, 1],
                vec![-1.0, -2.0, -1.0, -2.0],
                rev,
            ),
        ),
        (
            "student -inf at every index",
            (
                vec![0.5, 1.0, 2.0, 0.0, ni, 1.0, ni, 0.0],
                vec![0, 1, 2, 0],
                vec![-1.0, -2.0, -1.0, -2.0],
                fwd,
            ),
        ),
        (
            "teacher -inf everywhere",
            (
                good_s.to_vec(),
                vec![0, 1, 2, 3],
                vec![-1.0, -2.0, ni, ni],
                fwd,
            ),
        ),
        (
            "teacher mass on a masked student column",
            (
                vec![0.5, 1.0, 2.0, 0.0, 1.0, ni, -0.5, 0.0],
                vec![0, 1, 0, 1],
                vec![-1.0, -2.0, -1.0, -2.0],
                fwd,
            ),
        ),
        (
            "student mass where the teacher is -inf",
            (
                good_s.to_vec(),
                vec![0, 1, 2, 3],
                vec![-1.0, -2.0, -1.0, ni],
                rev,
            ),
        ),
        // the tail bucket's
        (
            "NaN in the tail",
            (
                vec![0.5, 1.0, f32::NAN, 0.0, 1.0, 1.0, -0.5, 0.25],
                vec![0, 1, 0, 1],
                vec![-1.0, -2.0, -1.0, -2.0],
                bucket,
            ),
        ),
        (
            "an index's problem before the tail's",
            (
                vec![0.5, 1.0, f32::NAN, f32::INFINITY, 1.0, 1.0, -0.5, 0.25],
                vec![0, 3, 0, 1],
                vec![-1.0, -2.0, -1.0, -2.0],
                bucket,
            ),
        ),
        (
            "every student value -inf",
            (
                vec![0.5, 1.0, 2.0, 0.0, ni, ni, ni, ni],
                vec![0, 1, 0, 1],
                vec![-1.0, -2.0, -1.0, -2.0],
                bucket,
            ),
        ),
        (
            "teacher mass on a masked tail",
            (
                vec![0.5, 1.0, 2.0, 0.0, 1.0, 1.0, ni, ni],
                vec![0, 1, 0, 1],
                vec![-1.0, -2.0, -1.0, -2.0],
                bucket,
            ),
        ),
    ];
    for (what, (s, ix, l, opts)) in &cases {
        let sp = SparseTeacher::new(&ix[..], &l[..], 2);
        let mut g = vec![0f32; rows * cols];
        let host = cpu()
            .distill(
                &Batch::new(s, rows, cols).form(Form::Logits),
                &Teacher::Sparse(sp),
                opts,
                &mut g,
            )
            .expect_err(what);
        let (got, grad) = resident_sparse(&res, s, cols, &sp, opts, 1.0).expect("resident");
        let e = got.expect_err(what);
        assert_eq!(e.to_string(), host.to_string(), "{what}");

        // with the bad row masked the call goes through (row 0 is good, or row 1 is)
        let bad_row = match e {
            Error::TeacherIndex { row, .. }
            | Error::BadValue { row, .. }
            | Error::CannotNormalize { row, .. }
            | Error::InfiniteLoss { row, .. } => row,
            other => panic!("{what}: {other}"),
        };
        let rg = &grad[bad_row * cols..(bad_row + 1) * cols];
        assert!(
            rg.iter().all(|&v| v == 0.0),
            "{what}: a bad row's gradient is 0"
        );
        let keep: Vec<bool> = (0..rows).map(|r| r != bad_row).collect();
        let masked = opts.mask(&keep).reduction(Reduction::None);
        if let Ok(want) = cpu().distill(
            &Batch::new(s, rows, cols).form(Form::Logits),
            &Teacher::Sparse(sp),
            &masked,
            &mut g,
        ) {
            let (got, grad) = resident_sparse(&res, s, cols, &sp, &masked, 1.0).expect("resident");
            let got = got.unwrap_or_else(|e| panic!("{what}, masked: {e}"));
            assert_eq!(got[bad_row], 0.0, "{what}");
            for (a, b) in got.iter().zip(&want.values) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{what}: {a} vs {b}"
                );
            }
            let rg = &grad[bad_row * cols..(bad_row + 1) * cols];
            assert!(
                rg.iter().all(|&v| v == 0.0),
                "{what}: masked row's gradient"
            );
        }
    }
    // a teacher's sum above 1 + tolerance (the sum itself is f32 from
    // another order of additions); tail mass with every column indexed
    let l = [-0.1f32, -0.1, -1.0, -2.0];
    let ix = [0i32, 1, 0, 1];
    let sp = SparseTeacher::new(&ix[..], &l[..], 2);
    let (got, _) = resident_sparse(&res, &good_s, cols, &sp, &bucket, 1.0).expect("resident");
    assert!(
        matches!(got, Err(Error::NotNormalized { row: 0, .. })),
        "{got:?}"
    );
    let s2 = [0.5f32, 1.0, 0.0, 2.0];
    let l = [0.4f32.ln(); 4];
    let ix = [0i32, 1, 1, 0];
    let sp = SparseTeacher::new(&ix[..], &l[..], 2);
    let mut g = vec![0f32; 4];
    let host = cpu()
        .distill(
            &Batch::new(&s2, 2, 2).form(Form::Logits),
            &Teacher::Sparse(sp),
            &bucket,
            &mut g,
        )
        .expect_err("uncovered tail");
    let (got, _) = resident_sparse(&res, &s2, 2, &sp, &bucket, 1.0).expect("resident");
    assert_eq!(
        got.expect_err("uncovered tail").to_string(),
        host.to_string()
    );
    // k > 512 (sorted in the call's scratch): problems past slot 512 are
    // found and named as the host path names them
    let cols = 700;
    let s = vec![0f32; 2 * cols];
    let k = 600;
    let l = vec![-7.0f32; 2 * k];
    for (what, at, v) in [
        ("repeated index", 590, 17i32),
        ("index out of range", 599, 700),
        ("negative index", 550, -1),
    ] {
        let mut ix: Vec<i32> = (0..k as i32).chain((0..k as i32).rev()).collect();
        ix[k + at] = v;
        let sp = SparseTeacher::new(&ix[..], &l[..], k);
        let host = cpu()
            .distill(
                &Batch::new(&s, 2, cols).form(Form::Logits),
                &Teacher::Sparse(sp),
                &fwd,
                &mut vec![0f32; 2 * cols],
            )
            .expect_err(what);
        let (got, _) = resident_sparse(&res, &s, cols, &sp, &fwd, 1.0).expect("resident");
        assert_eq!(got.expect_err(what).to_string(), host.to_string(), "{what}");
    }
}

/// On the GPU-resident path the options' `grad_scale` multiplies the call's.
#[test]
fn gpu_resident_grad_scales_multiply() {
    let Some(res) = resident() else { return };
    let mut rng = Rng(29);
    let (rows, cols) = (3, 40);
    let (s, t) = logits(&mut rng, rows, cols, Flavor::Plain);
    let (ix, lp) = top_k(&mut rng, &t[..cols], 2.0, 6);
    let ix: Vec<u32> = (0..rows)
        .flat_map(|_| ix.iter().map(|&c| c as u32))
        .collect();
    let lp: Vec<f32> = (0..rows).flat_map(|_| lp.iter().copied()).collect();
    let sp = SparseTeacher::new(&ix[..], &lp[..], 6);
    let opts = DistillOptions::default().temperature(2.0);
    let (l1, g1) = resident_sparse(&res, &s, cols, &sp, &opts, 0.25).expect("resident");
    let (l2, g2) =
        resident_sparse(&res, &s, cols, &sp, &opts.grad_scale(0.25), 1.0).expect("resident");
    let (_, g3) =
        resident_sparse(&res, &s, cols, &sp, &opts.grad_scale(0.5), 0.5).expect("resident");
    assert_eq!(l1.unwrap(), l2.unwrap(), "the loss is not scaled");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&g1), bits(&g2));
    assert_eq!(bits(&g1), bits(&g3));
    assert!(g1.iter().any(|&v| v != 0.0));
}

/// k above 512 on the GPU-resident path (each row's pairs sorted in the
/// call's scratch instead of workgroup memory): against the f64 references,
/// k from 513 to every column, both tails, every divergence, masks.
#[test]
fn gpu_resident_sparse_large_k() {
    let Some(res) = resident() else { return };
    let mut rng = Rng(23);
    let cols = 1000;
    for (k, div, flavor, bucket) in [
        (513, Div::Fwd, Flavor::Plain, true),
        (700, Div::Rev, Flavor::Masked, true),
        (1000, Div::Jsd(0.5), Flavor::Plain, false),
        (1000, Div::Fwd, Flavor::Huge, true),
        (900, Div::Jsd(0.1), Flavor::Masked, true),
        (640, Div::Rev, Flavor::Plain, false),
    ] {
        let case = Case {
            rows: 4,
            cols,
            temp: 2.0,
            div,
            flavor,
            sparse: Some(k),
            bucket,
            reduction: Reduction::None,
            mask: k % 2 == 0,
            fd: false,
        };
        run_case_on(&res.ctx, Some(&res), &mut rng, &case);
    }
    // the sort scratch counts against one binding: a device that binds
    // 64 KiB takes 4 rows of k = 600 (48 KiB of scratch), not 8
    let limits = kullback::wgpu::Limits {
        max_storage_buffer_binding_size: 64 << 10,
        ..kullback::wgpu::Limits::downlevel_defaults()
    };
    let (device, queue) = common::gpu_device(limits).expect("a device of small bindings");
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    let small = Resident { device, queue, ctx };
    let (k, cols) = (600, 700);
    let fwd = DistillOptions::default();
    for rows in [4, 8] {
        let s = vec![0f32; rows * cols];
        let ix: Vec<i32> = (0..rows).flat_map(|_| 0..k as i32).collect();
        let l = vec![-7.0f32; rows * k];
        let sp = SparseTeacher::new(&ix[..], &l[..], k);
        let (got, _) = resident_sparse(&small, &s, cols, &sp, &fwd, 1.0).expect("resident");
        match rows {
            4 => assert!(got.is_ok(), "{got:?}"),
            _ => assert!(
                matches!(&got, Err(Error::TooLarge { what, .. }) if what.contains("sort scratch")),
                "{got:?}"
            ),
        }
    }
}

/// Half log-probabilities on the GPU-resident path: the bits of the same
/// values widened to f32 (every divergence, an odd count of values).
#[test]
fn gpu_resident_sparse_half_logprobs() {
    use kullback::half::{bf16, f16};
    let Some(res) = resident() else { return };
    let mut rng = Rng(23);
    let (rows, cols, k) = (3, 40, 7);
    let (s, t) = logits(&mut rng, rows, cols, Flavor::Masked);
    let (mut ix, mut l) = (Vec::new(), Vec::new());
    for r in 0..rows {
        let (i, v) = top_k(&mut rng, &t[r * cols..(r + 1) * cols], 2.0, k);
        ix.extend(i.iter().map(|&c| c as i32));
        l.extend(v);
    }
    for (dtype, round) in [
        (
            kullback::Dtype::F16,
            (|v: f32| f16::from_f32(v).to_f32()) as fn(f32) -> f32,
        ),
        (kullback::Dtype::BF16, |v: f32| bf16::from_f32(v).to_f32()),
    ] {
        let widened: Vec<f32> = l.iter().map(|&v| round(v)).collect();
        for div in [
            Divergence::ForwardKl,
            Divergence::ReverseKl,
            Divergence::Jsd,
        ] {
            let opts = DistillOptions::default()
                .divergence(div)
                .tail(Tail::Renormalize)
                .temperature(2.0);
            let half = SparseTeacher::new(&ix[..], &l[..], k);
            let wide = SparseTeacher::new(&ix[..], &widened[..], k);
            let (a, ga) =
                resident_sparse_as(&res, &s, cols, &half, &opts, 1.0, dtype).expect("half");
            let (b, gb) = resident_sparse(&res, &s, cols, &wide, &opts, 1.0).expect("f32");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let what = format!("{dtype:?} {div:?}");
            assert_eq!(bits(&a.expect(&what)), bits(&b.expect(&what)), "{what}");
            assert_eq!(bits(&ga), bits(&gb), "{what}");
        }
    }
}
