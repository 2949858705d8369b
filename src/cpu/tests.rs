//! The CPU backend against a plain f64 implementation written here, from the
//! same f32 inputs (conventions.md: abs 2e-6 + rel 2e-5).

use super::block::Isa;
use super::run_with;
use crate::batch::{Batch, Targets};
use crate::job::Job;
use crate::measure::{Base, Form, Measure, NllOptions, Normalization, Options};
use crate::record::{Record, code, status_word};

const ABS: f64 = 2e-6;
const REL: f64 = 2e-5;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (a, b) = (self.unit().max(1e-300), self.unit());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }
}

/// Normalised probability rows (normalised in f64, rounded to f32), with
/// about `zeros` of the entries exactly 0.
fn probs(rng: &mut Rng, rows: usize, cols: usize, zeros: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let mut raw: Vec<f64> = (0..cols)
            .map(|_| {
                if rng.unit() < zeros {
                    0.0
                } else {
                    (1.5 * rng.normal()).exp()
                }
            })
            .collect();
        if raw.iter().all(|&x| x == 0.0) {
            raw[0] = 1.0;
        }
        let s: f64 = raw.iter().sum();
        out.extend(raw.iter().map(|&x| (x / s) as f32));
    }
    out
}

fn logits(rng: &mut Rng, n: usize, scale: f64, offset: f64) -> Vec<f32> {
    (0..n)
        .map(|_| (offset + scale * rng.normal()) as f32)
        .collect()
}

/// Data of one operand in the given form: probabilities as drawn, their logs,
/// or logits.
fn in_form(rng: &mut Rng, form: Form, rows: usize, cols: usize) -> Vec<f32> {
    match form {
        Form::Probs => probs(rng, rows, cols, 0.1),
        Form::LogProbs => probs(rng, rows, cols, 0.1)
            .iter()
            .map(|&p| (p as f64).ln() as f32)
            .collect(),
        Form::Logits => logits(rng, rows * cols, 3.0, 1.0),
    }
}

fn lse(x: &[f64]) -> f64 {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + x.iter().map(|&v| (v - m).exp()).sum::<f64>().ln()
}

/// A row as f64 probabilities and their logs (-inf for 0).
fn ref_dist(form: Form, x: &[f32], renorm: bool) -> (Vec<f64>, Vec<f64>) {
    match form {
        Form::Probs => {
            let mut p: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            if renorm {
                let s: f64 = p.iter().sum();
                p.iter_mut().for_each(|v| *v /= s);
            }
            let l = p.iter().map(|&v| v.ln()).collect();
            (p, l)
        }
        Form::LogProbs | Form::Logits => {
            let mut l: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            if renorm || form == Form::Logits {
                let z = lse(&l);
                l.iter_mut().for_each(|v| *v -= z);
            }
            (l.iter().map(|&v| v.exp()).collect(), l)
        }
    }
}

/// The f64 reference of one row (natural log).
fn ref_value(m: Measure, p: (&[f64], &[f64]), q: Option<(&[f64], &[f64])>) -> f64 {
    let (pp, lp) = p;
    match m {
        Measure::Entropy => -pp
            .iter()
            .zip(lp)
            .filter(|(p, _)| **p > 0.0)
            .map(|(p, l)| p * l)
            .sum::<f64>(),
        Measure::CrossEntropy | Measure::Kl => {
            let (_, lq) = q.expect("q");
            let mut s = 0.0;
            for i in 0..pp.len() {
                if pp[i] > 0.0 {
                    if lq[i] == f64::NEG_INFINITY {
                        return f64::INFINITY;
                    }
                    s += if m == Measure::Kl {
                        pp[i] * (lp[i] - lq[i])
                    } else {
                        -pp[i] * lq[i]
                    };
                }
            }
            s
        }
        Measure::Js => {
            let (qq, _) = q.expect("q");
            let mut s = 0.0;
            for i in 0..pp.len() {
                let mix = 0.5 * (pp[i] + qq[i]);
                if pp[i] > 0.0 {
                    s += 0.5 * pp[i] * (pp[i] / mix).ln();
                }
                if qq[i] > 0.0 {
                    s += 0.5 * qq[i] * (qq[i] / mix).ln();
                }
            }
            s
        }
        Measure::Hellinger | Measure::TotalVariation => unreachable!("not per-row measures"),
    }
}

fn close(got: f32, want: f64) -> bool {
    if want.is_infinite() {
        return got as f64 == want;
    }
    (got as f64 - want).abs() <= ABS + REL * want.abs()
}

/// Runs a job on every instruction set and thread count tried, checks the
/// results are bit-identical across thread counts, and returns them.
fn run_all(job: &Job<'_>) -> Vec<Vec<Record>> {
    let mut all = Vec::new();
    for isa in Isa::available() {
        let one = run_with(job, 1, isa);
        for threads in [2, 3] {
            let many = run_with(job, threads, isa);
            assert_eq!(
                bits(&one),
                bits(&many),
                "{isa:?}: {threads} threads differ from 1"
            );
        }
        all.push(one);
    }
    all
}

/// Every field of each record as bits (bit-for-bit comparisons).
pub(super) fn bits(r: &[Record]) -> Vec<[u32; 6]> {
    r.iter()
        .map(|r| {
            [
                r.value.to_bits(),
                r.aux_p.to_bits(),
                r.aux_q.to_bits(),
                r.code,
                r.column,
                r.index,
            ]
        })
        .collect()
}

/// Checks a measure on `rows × cols` data against the reference.
#[expect(clippy::too_many_arguments, reason = "a test helper")]
fn check_measure(
    m: Measure,
    pf: Form,
    p: &[f32],
    p_rows: usize,
    qf: Form,
    q: &[f32],
    q_rows: usize,
    cols: usize,
    norm: Normalization,
) {
    let pb = Batch::new(p, p_rows, cols).form(pf);
    let qb = Batch::new(q, q_rows, cols).form(qf);
    let opts = Options::default().normalization(norm);
    let job = Job::measure(m, &pb, m.needs_q().then_some(&qb), &opts).expect("job");
    let renorm = norm == Normalization::Renormalize;
    let rows = job.call.rows;
    for recs in run_all(&job) {
        assert_eq!(recs.len(), rows);
        for (r, rec) in recs.iter().enumerate() {
            let pr = &p[(if p_rows == 1 { 0 } else { r }) * cols..][..cols];
            let qr = &q[(if q_rows == 1 { 0 } else { r }) * cols..][..cols];
            let (pp, lp) = ref_dist(pf, pr, renorm);
            let (qq, lq) = ref_dist(qf, qr, renorm);
            let want = ref_value(m, (&pp, &lp), m.needs_q().then_some((&qq[..], &lq[..])));
            assert_eq!(
                rec.word(),
                0,
                "{m:?} {pf:?}/{qf:?} {norm:?} row {r}: {rec:?}"
            );
            assert!(
                close(rec.value, want),
                "{m:?} {pf:?}/{qf:?} {norm:?} row {r} of {rows}x{cols}: got {}, want {want}",
                rec.value
            );
        }
    }
}

const MEASURES: [Measure; 4] = [
    Measure::Entropy,
    Measure::CrossEntropy,
    Measure::Kl,
    Measure::Js,
];
const FORMS: [Form; 3] = [Form::Probs, Form::LogProbs, Form::Logits];

#[test]
fn every_measure_and_form_pair() {
    let mut rng = Rng::new(1);
    for cols in [1usize, 7, 16, 300, 5000] {
        let rows = 3;
        for pf in FORMS {
            for qf in FORMS {
                let p = in_form(&mut rng, pf, rows, cols);
                let q = in_form(&mut rng, qf, rows, cols);
                for m in MEASURES {
                    for norm in [
                        Normalization::Validate,
                        Normalization::Renormalize,
                        Normalization::AsGiven,
                    ] {
                        if m == Measure::Entropy && qf != Form::Probs {
                            continue;
                        }
                        check_measure(m, pf, &p, rows, qf, &q, rows, cols, norm);
                    }
                }
            }
        }
    }
}

#[test]
fn close_distributions_small_divergences() {
    // KL and JS of nearly equal rows are tiny: the result must not drown in
    // the cancellation of two entropies.
    let mut rng = Rng::new(2);
    let cols = 20_000;
    let p = probs(&mut rng, 2, cols, 0.0);
    let q: Vec<f32> = p
        .iter()
        .map(|&x| x * (1.0 + 1e-3 * rng.normal() as f32))
        .collect();
    for m in [Measure::Kl, Measure::Js, Measure::CrossEntropy] {
        check_measure(
            m,
            Form::Probs,
            &p,
            2,
            Form::Probs,
            &q,
            2,
            cols,
            Normalization::Renormalize,
        );
        check_measure(
            m,
            Form::Probs,
            &p,
            2,
            Form::Probs,
            &q,
            2,
            cols,
            Normalization::AsGiven,
        );
    }
}

#[test]
fn renormalize_large_counts() {
    let mut rng = Rng::new(3);
    let cols = 3000;
    let counts = |rng: &mut Rng| -> Vec<f32> {
        (0..2 * cols)
            .map(|i| {
                if i % 3 == 0 {
                    (rng.unit() * 4e6).round() as f32
                } else {
                    (rng.unit() * 10.0).round() as f32
                }
            })
            .collect()
    };
    let p = counts(&mut rng);
    let q: Vec<f32> = counts(&mut rng).iter().map(|&x| x + 1.0).collect();
    for m in MEASURES {
        check_measure(
            m,
            Form::Probs,
            &p,
            2,
            Form::Probs,
            &q,
            2,
            cols,
            Normalization::Renormalize,
        );
    }
    // near one-hot with a huge count
    let mut p = vec![1.0f32; cols];
    p[17] = 3e9;
    let q = vec![2.0f32; cols];
    for m in MEASURES {
        check_measure(
            m,
            Form::Probs,
            &p,
            1,
            Form::Probs,
            &q,
            1,
            cols,
            Normalization::Renormalize,
        );
    }
}

#[test]
fn large_logits() {
    let mut rng = Rng::new(4);
    let cols = 5000;
    for offset in [7000.0, -7000.0, 3000.0] {
        let p = logits(&mut rng, 2 * cols, 2.0, offset);
        let q = logits(&mut rng, 2 * cols, 2.0, -offset);
        for m in MEASURES {
            for norm in [Normalization::Validate, Normalization::Renormalize] {
                check_measure(m, Form::Logits, &p, 2, Form::Logits, &q, 2, cols, norm);
                let qp = probs(&mut rng, 2, cols, 0.0);
                check_measure(m, Form::Logits, &p, 2, Form::Probs, &qp, 2, cols, norm);
            }
        }
    }
}

#[test]
fn broadcast_one_row_operands() {
    let mut rng = Rng::new(5);
    let cols = 777;
    let many = probs(&mut rng, 5, cols, 0.05);
    let one = probs(&mut rng, 1, cols, 0.0);
    let l1 = logits(&mut rng, cols, 2.0, 0.0);
    for m in [Measure::CrossEntropy, Measure::Kl, Measure::Js] {
        let v = Normalization::Validate;
        check_measure(m, Form::Probs, &many, 5, Form::Probs, &one, 1, cols, v);
        check_measure(m, Form::Probs, &one, 1, Form::Probs, &many, 5, cols, v);
        check_measure(m, Form::Probs, &many, 5, Form::Logits, &l1, 1, cols, v);
    }
}

#[test]
fn one_column() {
    for m in MEASURES {
        for (pf, qf, p, q) in [
            (Form::Probs, Form::Probs, 1.0f32, 1.0f32),
            (Form::LogProbs, Form::Logits, 0.0, 12.5),
            (Form::Logits, Form::Logits, -3.0, 4.0),
        ] {
            if m == Measure::Entropy && qf != Form::Probs {
                continue;
            }
            check_measure(m, pf, &[p], 1, qf, &[q], 1, 1, Normalization::Validate);
        }
    }
}

#[test]
fn a_million_columns() {
    let mut rng = Rng::new(6);
    let cols = 1_000_003;
    let p = probs(&mut rng, 3, cols, 0.01);
    let q = probs(&mut rng, 3, cols, 0.0);
    for m in [Measure::Kl, Measure::Entropy, Measure::Js] {
        check_measure(
            m,
            Form::Probs,
            &p,
            3,
            Form::Probs,
            &q,
            3,
            cols,
            Normalization::Validate,
        );
    }
    check_measure(
        Measure::Kl,
        Form::Probs,
        &p,
        3,
        Form::Probs,
        &q,
        3,
        cols,
        Normalization::Renormalize,
    );
    let l = logits(&mut rng, 2 * cols, 4.0, 100.0);
    check_measure(
        Measure::Entropy,
        Form::Logits,
        &l,
        2,
        Form::Probs,
        &q[..2 * cols],
        2,
        cols,
        Normalization::Validate,
    );
    check_measure(
        Measure::Kl,
        Form::Logits,
        &l[..cols],
        1,
        Form::Probs,
        &q[..cols],
        1,
        cols,
        Normalization::Validate,
    );
}

fn records(m: Measure, p: Batch<'_>, q: Batch<'_>, norm: Normalization) -> Vec<Record> {
    let opts = Options::default().normalization(norm);
    let job = Job::measure(m, &p, m.needs_q().then_some(&q), &opts).expect("job");
    let mut all = run_all(&job);
    let first = all.remove(0);
    for other in all {
        // another instruction set: same status words, values within tolerance
        for (a, b) in first.iter().zip(&other) {
            assert_eq!(a.word(), b.word());
            assert!(a.value.is_nan() && b.value.is_nan() || close(b.value, a.value as f64));
        }
    }
    first
}

#[test]
fn zero_rules() {
    let v = Normalization::Validate;
    // p = 0 where q = 0: the term is 0
    let p = [0.5f32, 0.5, 0.0];
    let q = [0.25f32, 0.75, 0.0];
    for m in [Measure::CrossEntropy, Measure::Kl, Measure::Js] {
        let r = records(m, Batch::row(&p), Batch::row(&q), v);
        assert!(
            r[0].value.is_finite() && r[0].word() == 0,
            "{m:?} {:?}",
            r[0]
        );
    }
    // p > 0 where q = 0: +inf (not for JS, which stays finite)
    let q = [0.0f32, 1.0, 0.0];
    for m in [Measure::CrossEntropy, Measure::Kl] {
        let r = records(m, Batch::row(&p), Batch::row(&q), v);
        assert_eq!(r[0].value, f32::INFINITY, "{m:?}");
        assert_eq!(r[0].word(), 0);
    }
    // log q = -inf and a masked logit are q = 0 too
    let lq = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
    for qf in [Form::LogProbs, Form::Logits] {
        let r = records(Measure::Kl, Batch::row(&p), Batch::row(&lq).form(qf), v);
        assert_eq!(r[0].value, f32::INFINITY, "{qf:?}");
    }
    // disjoint supports: JS = ln 2 exactly bounded
    let a = [0.5f32, 0.5, 0.0, 0.0];
    let b = [0.0f32, 0.0, 0.25, 0.75];
    let r = records(Measure::Js, Batch::row(&a), Batch::row(&b), v);
    assert!(close(r[0].value, std::f64::consts::LN_2), "{:?}", r[0]);
    assert!(r[0].value <= std::f32::consts::LN_2 * (1.0 + 1e-6));
    // entropy of a one-hot is 0, of p = 0 entries nothing
    let r = records(
        Measure::Entropy,
        Batch::row(&[0.0f32, 1.0, 0.0]),
        Batch::row(&[1.0f32]),
        v,
    );
    assert_eq!(r[0].value, 0.0);
    // masked logits in p: p = 0 whatever q is (even q = 0)
    let lp = [0.0f32, f32::NEG_INFINITY];
    let r = records(
        Measure::Kl,
        Batch::row(&lp).form(Form::Logits),
        Batch::row(&[1.0f32, 0.0]),
        v,
    );
    assert_eq!(r[0].value, 0.0);
}

#[test]
fn subnormal_inputs() {
    let tiny = [1e-40f32, 3e-44, f32::from_bits(1)];
    for &t in &tiny {
        assert!(t > 0.0 && !t.is_normal());
        let p = [t, 0.5, 0.5 - t, 0.0];
        let q = [0.25f32, t, 0.75, 0.0];
        for m in MEASURES {
            check_measure(
                m,
                Form::Probs,
                &p,
                1,
                Form::Probs,
                &q,
                1,
                4,
                Normalization::Validate,
            );
        }
        // a subnormal is not zero: p > 0 against a q of exactly 0 is +inf
        let q0 = [0.0f32, 0.5, 0.5, 0.0];
        let r = records(
            Measure::Kl,
            Batch::row(&p),
            Batch::row(&q0),
            Normalization::Validate,
        );
        assert_eq!(r[0].value, f32::INFINITY);
        // a subnormal q is not zero either: finite
        let r = records(
            Measure::Kl,
            Batch::row(&[0.5f32, 0.5]),
            Batch::row(&[t, 1.0]),
            Normalization::AsGiven,
        );
        assert!(r[0].value.is_finite());
        let want = 0.5 * (0.5 / t as f64).ln() + 0.5 * 0.5f64.ln();
        assert!(close(r[0].value, want), "{} vs {want}", r[0].value);
    }
    // subnormals in a vector chunk (many columns)
    let mut rng = Rng::new(7);
    let cols = 100;
    let mut p = probs(&mut rng, 1, cols, 0.0);
    let mut q = probs(&mut rng, 1, cols, 0.0);
    for i in (0..cols).step_by(3) {
        p[i] = 1e-40;
        q[(i + 1) % cols] = 3e-44;
    }
    for m in MEASURES {
        check_measure(
            m,
            Form::Probs,
            &p,
            1,
            Form::Probs,
            &q,
            1,
            cols,
            Normalization::AsGiven,
        );
    }
}

#[test]
fn bad_values_name_the_first_column() {
    let v = Normalization::Validate;
    let cols = 100;
    let base = vec![1.0f32 / cols as f32; cols];
    let cases: [(bool, usize, f32, u32); 9] = [
        (true, 3, f32::NAN, code::P_NAN),
        (true, 40, -0.5, code::P_NEGATIVE),
        (true, 99, f32::INFINITY, code::P_INFINITE),
        (true, 0, f32::NEG_INFINITY, code::P_INFINITE),
        (false, 17, f32::NAN, code::Q_NAN),
        (false, 64, -1e-30, code::Q_NEGATIVE),
        (false, 98, f32::INFINITY, code::Q_INFINITE),
        (false, 5, -f32::NAN, code::Q_NAN),
        (false, 33, -1e-40, code::Q_NEGATIVE),
    ];
    for (in_p, col, x, c) in cases {
        let mut p = base.clone();
        let mut q = base.clone();
        if in_p {
            p[col] = x;
        } else {
            q[col] = x;
        }
        for m in MEASURES {
            if m == Measure::Entropy && !in_p {
                continue;
            }
            let r = records(m, Batch::row(&p), Batch::row(&q), v);
            assert_eq!(r[0].word(), status_word(col, c), "{m:?} col {col} {x}");
            assert!(r[0].value.is_nan());
        }
    }
    // -0.0 is a zero, not a negative value
    let mut p = base.clone();
    p[7] = -0.0;
    p[8] += 1.0 / cols as f32;
    let r = records(Measure::Kl, Batch::row(&p), Batch::row(&base), v);
    assert_eq!(r[0].word(), 0);
    // the smallest column wins, and p's code at a column shared with q
    let mut p = base.clone();
    let mut q = base.clone();
    p[50] = f32::NAN;
    q[20] = -1.0;
    q[60] = f32::NAN;
    let r = records(Measure::Kl, Batch::row(&p), Batch::row(&q), v);
    assert_eq!(r[0].word(), status_word(20, code::Q_NEGATIVE));
    q[20] = base[20];
    q[50] = f32::NAN;
    let r = records(Measure::Kl, Batch::row(&p), Batch::row(&q), v);
    assert_eq!(r[0].word(), status_word(50, code::P_NAN));
    // log forms: +inf and NaN are bad, -inf is not; log-probs above 0 are bad
    let mut lp = vec![(1.0 / cols as f32).ln(); cols];
    lp[9] = 0.5;
    let r = records(
        Measure::Entropy,
        Batch::row(&lp).form(Form::LogProbs),
        Batch::row(&base),
        v,
    );
    assert_eq!(r[0].word(), status_word(9, code::P_POSITIVE_LOG));
    let mut lg = vec![0.0f32; cols];
    lg[77] = f32::INFINITY;
    let r = records(
        Measure::Kl,
        Batch::row(&base),
        Batch::row(&lg).form(Form::Logits),
        v,
    );
    assert_eq!(r[0].word(), status_word(77, code::Q_INFINITE));
    lg[77] = f32::NAN;
    lg[78] = 1e30;
    let r = records(
        Measure::Kl,
        Batch::row(&base),
        Batch::row(&lg).form(Form::Logits),
        v,
    );
    assert_eq!(r[0].word(), status_word(77, code::Q_NAN));
    // bad values in the first pass of the two-pass plan, and in a long row
    let cols = 70_000;
    let mut p = vec![1.0f32; cols];
    p[65_537] = f32::NAN;
    p[69_999] = -2.0;
    let q = vec![1.0f32; cols];
    let r = records(
        Measure::Kl,
        Batch::row(&p),
        Batch::row(&q),
        Normalization::Renormalize,
    );
    assert_eq!(r[0].word(), status_word(65_537, code::P_NAN));
}

#[test]
fn row_level_problems() {
    // unnormalised under Validate: the sum is in aux
    let p = [0.5f32, 0.6];
    let q = [0.5f32, 0.5];
    let r = records(
        Measure::Kl,
        Batch::row(&p),
        Batch::row(&q),
        Normalization::Validate,
    );
    assert_eq!(
        r[0].word(),
        status_word(code::COL_NONE as usize, code::P_SUM)
    );
    assert!((r[0].aux_p - 1.1).abs() < 1e-6);
    let r = records(
        Measure::Kl,
        Batch::row(&q),
        Batch::row(&p),
        Normalization::Validate,
    );
    assert_eq!(
        r[0].word(),
        status_word(code::COL_NONE as usize, code::Q_SUM)
    );
    assert!((r[0].aux_q - 1.1).abs() < 1e-6);
    // log-probs are validated too
    let lp = [0.5f32.ln(), 0.6f32.ln()];
    let r = records(
        Measure::Entropy,
        Batch::row(&lp).form(Form::LogProbs),
        Batch::row(&q),
        Normalization::Validate,
    );
    assert_eq!(
        r[0].word(),
        status_word(code::COL_NONE as usize, code::P_SUM)
    );
    // within tolerance passes, and as given is not checked
    let r = records(
        Measure::Kl,
        Batch::row(&[0.5f32, 0.5004]),
        Batch::row(&q),
        Normalization::Validate,
    );
    assert_eq!(r[0].word(), 0);
    let r = records(
        Measure::Kl,
        Batch::row(&p),
        Batch::row(&q),
        Normalization::AsGiven,
    );
    assert_eq!(r[0].word(), 0);
    // a zero row cannot be renormalised (a subnormal sum can: the hardening
    // issue, item 10; tests/hardening_numerics.rs checks its values)
    for z in [[0.0f32, 0.0], [-0.0, 0.0]] {
        let r = records(
            Measure::Kl,
            Batch::row(&z),
            Batch::row(&q),
            Normalization::Renormalize,
        );
        assert_eq!(
            r[0].word(),
            status_word(code::COL_NONE as usize, code::P_ZERO_SUM)
        );
        let r = records(
            Measure::Kl,
            Batch::row(&q),
            Batch::row(&z),
            Normalization::Renormalize,
        );
        assert_eq!(
            r[0].word(),
            status_word(code::COL_NONE as usize, code::Q_ZERO_SUM)
        );
    }
    for tiny in [[1e-40f32, 0.0], [1e-45, 3e-45]] {
        let r = records(
            Measure::Kl,
            Batch::row(&tiny),
            Batch::row(&q),
            Normalization::Renormalize,
        );
        assert_eq!(r[0].word(), 0, "{tiny:?}");
    }
    // all -inf logits
    let m = [f32::NEG_INFINITY; 3];
    let ok = [0.0f32; 3];
    for norm in [Normalization::Validate, Normalization::Renormalize] {
        let r = records(
            Measure::Entropy,
            Batch::row(&m).form(Form::Logits),
            Batch::row(&q),
            norm,
        );
        assert_eq!(
            r[0].word(),
            status_word(code::COL_NONE as usize, code::P_ALL_MASKED)
        );
        let r = records(
            Measure::Js,
            Batch::row(&ok).form(Form::Logits),
            Batch::row(&m).form(Form::Logits),
            norm,
        );
        assert_eq!(
            r[0].word(),
            status_word(code::COL_NONE as usize, code::Q_ALL_MASKED)
        );
    }
    // an element problem comes before a row problem
    let r = records(
        Measure::Kl,
        Batch::row(&[f32::NAN, 0.0]),
        Batch::row(&q),
        Normalization::Validate,
    );
    assert_eq!(r[0].word(), status_word(0, code::P_NAN));
}

#[test]
fn js_validate_next_to_logits_checks_the_probabilities() {
    // Jensen-Shannon with logits takes two passes; the probabilities beside
    // them are still validated as given, not silently divided.
    let l = [0.0f32, 1.0, 2.0];
    let bad = [0.2f32, 0.2, 0.2];
    let r = records(
        Measure::Js,
        Batch::row(&l).form(Form::Logits),
        Batch::row(&bad),
        Normalization::Validate,
    );
    assert_eq!(
        r[0].word(),
        status_word(code::COL_NONE as usize, code::Q_SUM)
    );
    assert!((r[0].aux_q - 0.6).abs() < 1e-6);
    check_measure(
        Measure::Js,
        Form::Logits,
        &l,
        1,
        Form::Probs,
        &bad,
        1,
        3,
        Normalization::AsGiven,
    );
    // aux of normalised operands: the log-sum-exp and the row sum
    let r = records(
        Measure::Js,
        Batch::row(&l).form(Form::Logits),
        Batch::row(&[2.0f32, 2.0, 4.0]),
        Normalization::Renormalize,
    );
    let want = lse(&[0.0, 1.0, 2.0]);
    assert!((r[0].aux_p as f64 - want).abs() < 1e-6, "{:?}", r[0]);
    assert_eq!(r[0].aux_q, 8.0);
}

#[test]
fn log_base() {
    let p = [0.25f32, 0.75];
    for (base, ln_b) in [
        (Base::Two, std::f64::consts::LN_2),
        (Base::Ten, std::f64::consts::LN_10),
    ] {
        let opts = Options::default().base(base);
        let pb = Batch::row(&p);
        let job = Job::measure(Measure::Entropy, &pb, None, &opts).expect("job");
        let r = run_all(&job);
        let want = -(0.25f64 * 0.25f64.ln() + 0.75 * 0.75f64.ln()) / ln_b;
        assert!(close(r[0][0].value, want));
    }
}

/// f64 reference NLL of one row.
fn ref_nll(
    form: Form,
    q: &[f32],
    renorm: bool,
    t: Option<usize>,
    w: Option<&[f32]>,
    eps: f64,
) -> f64 {
    let Some(t) = t else { return 0.0 };
    let c = q.len();
    let (_, lq) = ref_dist(form, q, renorm);
    let wc = |j: usize| w.map_or(1.0, |w| w[j] as f64);
    let mut s = 0.0;
    for (j, &lqj) in lq.iter().enumerate() {
        let pj = wc(j) * eps / c as f64 + if j == t { (1.0 - eps) * wc(t) } else { 0.0 };
        if pj > 0.0 {
            if lqj == f64::NEG_INFINITY {
                return f64::INFINITY;
            }
            s -= pj * lqj;
        }
    }
    s
}

#[test]
fn nll_forms_ignore_weights_smoothing() {
    let mut rng = Rng::new(8);
    let rows = 6;
    for cols in [1usize, 10, 5000] {
        let targets: Vec<i64> = (0..rows)
            .map(|i| {
                if i == 2 {
                    -100
                } else {
                    (rng.next() % cols as u64) as i64
                }
            })
            .collect();
        let weights: Vec<f32> = (0..cols).map(|_| rng.unit() as f32 * 2.0).collect();
        for form in FORMS {
            let q = in_form(&mut rng, form, rows, cols);
            for norm in [Normalization::Validate, Normalization::Renormalize] {
                for eps in [0.0f32, 0.1] {
                    for w in [None, Some(&weights[..])] {
                        let mut opts = NllOptions::default()
                            .normalization(norm)
                            .ignore_index(-100)
                            .label_smoothing(eps);
                        if let Some(w) = w {
                            opts = opts.weights(w);
                        }
                        let qb = Batch::new(&q, rows, cols).form(form);
                        let job = Job::nll(&qb, Targets::from(&targets[..]), &opts).expect("job");
                        for recs in run_all(&job) {
                            for (r, rec) in recs.iter().enumerate() {
                                let t = (targets[r] >= 0).then_some(targets[r] as usize);
                                let want = ref_nll(
                                    form,
                                    &q[r * cols..(r + 1) * cols],
                                    norm == Normalization::Renormalize,
                                    t,
                                    w,
                                    eps as f64,
                                );
                                assert_eq!(rec.word(), 0, "{form:?} {norm:?} {eps} row {r}");
                                assert!(
                                    close(rec.value, want),
                                    "{form:?} {norm:?} eps {eps} w {} row {r} cols {cols}: {} vs {want}",
                                    w.is_some(),
                                    rec.value
                                );
                                let wt = match t {
                                    None => 0.0,
                                    Some(t) => w.map_or(1.0, |w| w[t]),
                                };
                                assert_eq!(rec.aux_p, wt);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn nll_zero_probability() {
    let q = [0.0f32, 1.0, 0.0];
    let qb = Batch::new(&q, 1, 3);
    let run = |t: i64, eps: f32| {
        let opts = NllOptions::default().label_smoothing(eps);
        let job = Job::nll(&qb, Targets::from(&[t][..]), &opts).expect("job");
        run_all(&job)[0][0]
    };
    assert_eq!(run(0, 0.0).value, f32::INFINITY);
    assert_eq!(run(1, 0.0).value, 0.0);
    // smoothing puts mass on every class: q = 0 anywhere is +inf
    assert_eq!(run(1, 0.1).value, f32::INFINITY);
    // a bad q in an ignored row is still reported
    let q = [0.5f32, f32::NAN];
    let qb = Batch::new(&q, 1, 2);
    let opts = NllOptions::default().ignore_index(-1);
    let job = Job::nll(&qb, Targets::from(&[-1i64][..]), &opts).expect("job");
    assert_eq!(run_all(&job)[0][0].word(), status_word(1, code::Q_NAN));
}

#[test]
fn deterministic_across_threads_and_runs() {
    let mut rng = Rng::new(9);
    // many rows (threads share rows) and few long rows (threads share blocks)
    for (rows, cols) in [(64usize, 20_000usize), (3, 300_001)] {
        let p = probs(&mut rng, rows, cols, 0.01);
        let q = logits(&mut rng, rows * cols, 2.0, 0.0);
        for m in MEASURES {
            for norm in [Normalization::Validate, Normalization::Renormalize] {
                let pb = Batch::new(&p, rows, cols);
                let qb = Batch::new(&q, rows, cols).form(Form::Logits);
                let opts = Options::default().normalization(norm);
                let job = Job::measure(m, &pb, m.needs_q().then_some(&qb), &opts).expect("job");
                for isa in Isa::available() {
                    let a = run_with(&job, 1, isa);
                    for threads in [2, 5, 16] {
                        assert_eq!(bits(&a), bits(&run_with(&job, threads, isa)));
                    }
                    assert_eq!(bits(&a), bits(&run_with(&job, 2, isa)));
                }
            }
        }
    }
}

/// Throughput in release mode:
/// `cargo test --release --lib cpu::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a timing, not a test"]
fn throughput() {
    let mut rng = Rng::new(10);
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (rows, cols) = (
        env("KULLBACK_BENCH_ROWS", 4096),
        env("KULLBACK_BENCH_COLS", 4096),
    );
    let n = env("KULLBACK_BENCH_REPEAT", 3);
    let p = probs(&mut rng, rows, cols, 0.0);
    let q = probs(&mut rng, rows, cols, 0.0);
    let l = logits(&mut rng, rows * cols, 2.0, 0.0);
    let threads = super::threads::available();
    let cases: [(&str, Measure, Form, &[f32], Normalization); 7] = [
        (
            "kl probs",
            Measure::Kl,
            Form::Probs,
            &p,
            Normalization::Validate,
        ),
        (
            "entropy probs",
            Measure::Entropy,
            Form::Probs,
            &p,
            Normalization::Validate,
        ),
        (
            "cross probs",
            Measure::CrossEntropy,
            Form::Probs,
            &p,
            Normalization::Validate,
        ),
        (
            "js probs",
            Measure::Js,
            Form::Probs,
            &p,
            Normalization::Validate,
        ),
        (
            "kl probs renorm",
            Measure::Kl,
            Form::Probs,
            &p,
            Normalization::Renormalize,
        ),
        (
            "kl logits",
            Measure::Kl,
            Form::Logits,
            &l,
            Normalization::Validate,
        ),
        (
            "js logits",
            Measure::Js,
            Form::Logits,
            &l,
            Normalization::Validate,
        ),
    ];
    let only = std::env::var("KULLBACK_BENCH").ok();
    for (name, m, form, pd, norm) in cases {
        if only.as_ref().is_some_and(|o| o != name) {
            continue;
        }
        let pb = Batch::new(pd, rows, cols).form(form);
        let qb = Batch::new(&q, rows, cols);
        let opts = Options::default().normalization(norm);
        let job = Job::measure(m, &pb, m.needs_q().then_some(&qb), &opts).expect("job");
        for isa in Isa::available() {
            for t in [1, threads] {
                let _ = run_with(&job, t, isa);
                let start = std::time::Instant::now();
                for _ in 0..n {
                    std::hint::black_box(run_with(&job, t, isa));
                }
                let s = start.elapsed().as_secs_f64() / n as f64;
                eprintln!(
                    "{name:16} {isa:?} {t} threads: {:.3} ms, {:.2} G elements/s",
                    s * 1e3,
                    (rows * cols) as f64 / s / 1e9
                );
            }
        }
    }
}

/// Short rows of probabilities (the one-call row kernels where the machine
/// has them): every width up to past a vector, zeros, rows whose sum fails
/// the check, broadcast rows; statuses and aux values as on the baseline
/// kernels (aux values within f32 rounding), values within the bound of the f64 reference.
#[test]
fn short_rows_match_the_general_path() {
    let mut rng = Rng::new(77);
    for cols in (1usize..=34).chain([100, 511, 512, 513]) {
        let rows = 9;
        for zeros in [0.0, 0.2] {
            let mut p = probs(&mut rng, rows, cols, zeros);
            let q = probs(&mut rng, rows, cols, zeros);
            // row 3 sums to 1.5: a P_SUM status under Validate
            for x in &mut p[3 * cols..4 * cols] {
                *x *= 1.5;
            }
            for m in [Measure::Entropy, Measure::CrossEntropy, Measure::Kl] {
                for q_rows in [rows, 1] {
                    let pb = Batch::new(&p, rows, cols);
                    let qb = Batch::new(&q[..q_rows * cols], q_rows, cols);
                    let opts = Options::default();
                    let job = Job::measure(m, &pb, m.needs_q().then_some(&qb), &opts).expect("job");
                    let base = run_with(&job, 1, Isa::Base);
                    for recs in run_all(&job) {
                        for (r, (rec, b)) in recs.iter().zip(&base).enumerate() {
                            let what = format!("{m:?} {cols} cols row {r} q_rows {q_rows}");
                            assert_eq!(rec.word(), b.word(), "{what}");
                            // row sums: the same within f32 rounding (other order)
                            assert!((rec.aux_p as f64 - b.aux_p as f64).abs() <= 1e-6, "{what}");
                            if rec.word() != 0 {
                                assert!(rec.value.is_nan(), "{what}");
                                continue;
                            }
                            let pr = &p[r * cols..][..cols];
                            let qr = &q[(if q_rows == 1 { 0 } else { r }) * cols..][..cols];
                            let (pp, lp) = ref_dist(Form::Probs, pr, false);
                            let (qq, lq) = ref_dist(Form::Probs, qr, false);
                            let want =
                                ref_value(m, (&pp, &lp), m.needs_q().then_some((&qq[..], &lq[..])));
                            assert!(close(rec.value, want), "{what}: {} vs {want}", rec.value);
                            assert!((rec.aux_q as f64 - b.aux_q as f64).abs() <= 1e-6, "{what}");
                        }
                    }
                }
            }
        }
    }
}

/// Short rows summed 8 side by side (whole-vector widths unrolled): widths
/// 1..=17, 64 and 100 over 37 rows (whole groups of 8 and a part group),
/// zeros, a subnormal, a NaN row, a negative value, a row failing the sum
/// check, and a broadcast q: statuses as on the baseline kernels, values
/// within the bound of the f64 reference, bit-identical over thread counts
/// (`run_all`).
#[test]
fn short_rows_side_by_side() {
    let mut rng = Rng::new(4242);
    for cols in (1usize..=17).chain([24, 32, 64, 100]) {
        let rows = 37;
        let mut p = probs(&mut rng, rows, cols, 0.1);
        let mut q = probs(&mut rng, rows, cols, 0.1);
        for x in &mut p[9 * cols..10 * cols] {
            *x *= 1.5;
        }
        p[13 * cols + cols / 2] = f32::NAN;
        q[21 * cols] = -0.25;
        p[30 * cols + cols - 1] = 1e-40;
        for m in [Measure::Entropy, Measure::CrossEntropy, Measure::Kl] {
            for q_rows in [rows, 1] {
                let pb = Batch::new(&p, rows, cols);
                let qb = Batch::new(&q[..q_rows * cols], q_rows, cols);
                let opts = Options::default();
                let job = Job::measure(m, &pb, m.needs_q().then_some(&qb), &opts).expect("job");
                let base = run_with(&job, 1, Isa::Base);
                for recs in run_all(&job) {
                    for (r, (rec, b)) in recs.iter().zip(&base).enumerate() {
                        let what = format!("{m:?} {cols} cols row {r} q_rows {q_rows}");
                        assert_eq!(rec.word(), b.word(), "{what}");
                        assert!((rec.aux_p as f64 - b.aux_p as f64).abs() <= 1e-6, "{what}");
                        if rec.word() != 0 {
                            assert!(rec.value.is_nan(), "{what}");
                            continue;
                        }
                        let pr = &p[r * cols..][..cols];
                        let qr = &q[(if q_rows == 1 { 0 } else { r }) * cols..][..cols];
                        let (pp, lp) = ref_dist(Form::Probs, pr, false);
                        let (qq, lq) = ref_dist(Form::Probs, qr, false);
                        let want =
                            ref_value(m, (&pp, &lp), m.needs_q().then_some((&qq[..], &lq[..])));
                        assert!(close(rec.value, want), "{what}: {} vs {want}", rec.value);
                        assert!((rec.aux_q as f64 - b.aux_q as f64).abs() <= 1e-6, "{what}");
                    }
                }
            }
        }
    }
}
