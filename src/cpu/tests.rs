//! The CPU backend against the tests' f64 oracle (tests/common/oracle.rs,
//! through `crate::test_support`), from the same f32 inputs, within the
//! crate's bound (abs 2e-6 + rel 2e-5), on every instruction set and thread
//! count tried.

use super::block::Isa;
use super::run_with;
use crate::batch::{Batch, Targets};
use crate::job::Job;
use crate::measure::Form::{LogProbs, Logits, Probs};
use crate::measure::Measure::{CrossEntropy, Entropy, Js, Kl};
use crate::measure::Normalization::{AsGiven, Renormalize, Validate};
use crate::measure::{Base, Form, Measure, NllOptions, Normalization, Options};
use crate::record::{Record, code, status_word};
use crate::test_support::oracle::{
    Input, close, ln_base, log_sum_exp, nll_row, ref_measure, ref_row,
};
use crate::test_support::random::{Rng, rand_form, rand_logits, rand_probs};

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

/// An operand as a batch of `cols` columns.
fn batch<'a>(x: Input<'a>, cols: usize) -> Batch<'a> {
    Batch::new(x.data, x.rows, cols).form(x.form)
}

/// A single row of probabilities.
fn row(x: &[f32]) -> Input<'_> {
    Input::row(x, Probs)
}

/// The job of `m` over `p` (and `q` when `m` reads it).
fn job<'a>(m: Measure, p: Input<'a>, q: Input<'a>, cols: usize, opts: &Options) -> Job<'a> {
    let (pb, qb) = (batch(p, cols), batch(q, cols));
    Job::measure(m, &pb, m.needs_q().then_some(&qb), opts).expect("job")
}

/// Checks `m` over `p` and `q` (`rows × cols`, either one row) against the
/// oracle: every record OK and within the bound.
fn check_measure(m: Measure, p: Input<'_>, q: Input<'_>, cols: usize, norm: Normalization) {
    let job = job(m, p, q, cols, &Options::default().normalization(norm));
    let rows = job.call.rows;
    let want = ref_measure(m, p, Some(q), cols, norm, Base::E);
    let (pf, qf) = (p.form, q.form);
    for recs in run_all(&job) {
        assert_eq!(recs.len(), rows);
        for (r, (rec, &want)) in recs.iter().zip(&want).enumerate() {
            assert_eq!(
                rec.word(),
                0,
                "{m:?} {pf:?}/{qf:?} {norm:?} row {r}: {rec:?}"
            );
            assert!(
                close(rec.value as f64, want),
                "{m:?} {pf:?}/{qf:?} {norm:?} row {r} of {rows}x{cols}: got {}, want {want}",
                rec.value
            );
        }
    }
}

const MEASURES: [Measure; 4] = [Entropy, CrossEntropy, Kl, Js];
const FORMS: [Form; 3] = [Probs, LogProbs, Logits];

#[test]
fn every_measure_and_form_pair() {
    let mut rng = Rng::new(1);
    for cols in [1usize, 7, 16, 300, 5000] {
        let rows = 3;
        for pf in FORMS {
            for qf in FORMS {
                let p = rand_form(&mut rng, rows, cols, pf, 0.1);
                let q = rand_form(&mut rng, rows, cols, qf, 0.1);
                for m in MEASURES {
                    for norm in [Validate, Renormalize, AsGiven] {
                        if m == Entropy && qf != Probs {
                            continue;
                        }
                        let (p, q) = (Input::new(&p, rows, pf), Input::new(&q, rows, qf));
                        check_measure(m, p, q, cols, norm);
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
    let p = rand_probs(&mut rng, 2, cols, 0.0);
    let q: Vec<f32> = p
        .iter()
        .map(|&x| x * (1.0 + 1e-3 * rng.normal() as f32))
        .collect();
    for m in [Kl, Js, CrossEntropy] {
        for norm in [Renormalize, AsGiven] {
            check_measure(
                m,
                Input::new(&p, 2, Probs),
                Input::new(&q, 2, Probs),
                cols,
                norm,
            );
        }
    }
}

#[test]
fn renormalize_large_counts() {
    let mut rng = Rng::new(3);
    let cols = 3000;
    let counts = |rng: &mut Rng| -> Vec<f32> {
        (0..2 * cols)
            .map(|i| {
                let scale = if i % 3 == 0 { 4e6 } else { 10.0 };
                (rng.uniform() * scale).round() as f32
            })
            .collect()
    };
    let p = counts(&mut rng);
    let q: Vec<f32> = counts(&mut rng).iter().map(|&x| x + 1.0).collect();
    // near one-hot with a huge count
    let mut one_hot = vec![1.0f32; cols];
    one_hot[17] = 3e9;
    let twos = vec![2.0f32; cols];
    for (p, q, rows) in [(&p, &q, 2), (&one_hot, &twos, 1)] {
        for m in MEASURES {
            let (p, q) = (Input::new(p, rows, Probs), Input::new(q, rows, Probs));
            check_measure(m, p, q, cols, Renormalize);
        }
    }
}

#[test]
fn large_logits() {
    let mut rng = Rng::new(4);
    let cols = 5000;
    for offset in [7000.0, -7000.0, 3000.0] {
        let p = rand_logits(&mut rng, 2, cols, 2.0, offset);
        let q = rand_logits(&mut rng, 2, cols, 2.0, -offset);
        let (p, q) = (Input::new(&p, 2, Logits), Input::new(&q, 2, Logits));
        for m in MEASURES {
            for norm in [Validate, Renormalize] {
                check_measure(m, p, q, cols, norm);
                let qp = rand_probs(&mut rng, 2, cols, 0.0);
                check_measure(m, p, Input::new(&qp, 2, Probs), cols, norm);
            }
        }
    }
}

#[test]
fn broadcast_one_row_operands() {
    let mut rng = Rng::new(5);
    let cols = 777;
    let many = rand_probs(&mut rng, 5, cols, 0.05);
    let one = rand_probs(&mut rng, 1, cols, 0.0);
    let l1 = rand_logits(&mut rng, 1, cols, 2.0, 0.0);
    let (many, one, l1) = (
        Input::new(&many, 5, Probs),
        Input::row(&one, Probs),
        Input::row(&l1, Logits),
    );
    for m in [CrossEntropy, Kl, Js] {
        for (p, q) in [(many, one), (one, many), (many, l1)] {
            check_measure(m, p, q, cols, Validate);
        }
    }
}

#[test]
fn one_column() {
    for m in MEASURES {
        for (pf, qf, p, q) in [
            (Probs, Probs, 1.0f32, 1.0f32),
            (LogProbs, Logits, 0.0, 12.5),
            (Logits, Logits, -3.0, 4.0),
        ] {
            if m == Entropy && qf != Probs {
                continue;
            }
            check_measure(m, Input::row(&[p], pf), Input::row(&[q], qf), 1, Validate);
        }
    }
}

#[test]
fn a_million_columns() {
    let mut rng = Rng::new(6);
    let cols = 1_000_003;
    let p = rand_probs(&mut rng, 3, cols, 0.01);
    let q = rand_probs(&mut rng, 3, cols, 0.0);
    let l = rand_logits(&mut rng, 2, cols, 4.0, 100.0);
    let (p3, q3) = (Input::new(&p, 3, Probs), Input::new(&q, 3, Probs));
    let (l2, q2) = (
        Input::new(&l, 2, Logits),
        Input::new(&q[..2 * cols], 2, Probs),
    );
    let (l1, q1) = (
        Input::row(&l[..cols], Logits),
        Input::row(&q[..cols], Probs),
    );
    for (m, p, q, norm) in [
        (Kl, p3, q3, Validate),
        (Entropy, p3, q3, Validate),
        (Js, p3, q3, Validate),
        (Kl, p3, q3, Renormalize),
        (Entropy, l2, q2, Validate),
        (Kl, l1, q1, Validate),
    ] {
        check_measure(m, p, q, cols, norm);
    }
}

/// The records of `m` over `p` (and `q`) of `cols` columns on the first
/// instruction set, after checking that every other one gives the same
/// status words and values within the bound.
fn records(
    m: Measure,
    p: Input<'_>,
    q: Input<'_>,
    cols: usize,
    norm: Normalization,
) -> Vec<Record> {
    let job = job(m, p, q, cols, &Options::default().normalization(norm));
    let mut all = run_all(&job);
    let first = all.remove(0);
    for other in all {
        // another instruction set: same status words, values within tolerance
        for (a, b) in first.iter().zip(&other) {
            assert_eq!(a.word(), b.word());
            assert!(a.value.is_nan() && b.value.is_nan() || close(b.value as f64, a.value as f64));
        }
    }
    first
}

/// What a case expects of the value of its first record.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// Nothing beyond the status word.
    Any,
    /// Finite.
    Finite,
    /// Exactly this value.
    Exactly(f32),
    /// Within the bound of this f64 value.
    Close(f64),
    /// NaN (a row with a problem has no value).
    Nan,
}

/// One call and what its first record must hold: the status word, the
/// value, and the aux values (row sums, log-sum-exps) as (value, tolerance):
/// within the tolerance, or exactly for a tolerance of 0.
struct Case<'a> {
    what: &'a str,
    m: Measure,
    p: Input<'a>,
    q: Input<'a>,
    cols: usize,
    norm: Normalization,
    word: u64,
    value: Want,
    aux_p: Option<(f64, f64)>,
    aux_q: Option<(f64, f64)>,
}

impl<'a> Case<'a> {
    /// A case of single rows of `p` and `q` (their lengths: `p`'s), an OK
    /// status word and any value.
    fn new(what: &'a str, m: Measure, p: Input<'a>, q: Input<'a>, norm: Normalization) -> Self {
        let cols = p.data.len();
        Case {
            what,
            m,
            p,
            q,
            cols,
            norm,
            word: 0,
            value: Want::Any,
            aux_p: None,
            aux_q: None,
        }
    }
    fn word(self, col: usize, c: u32) -> Self {
        Case {
            word: status_word(col, c),
            ..self
        }
    }
    /// A row-level problem (no column).
    fn row_word(self, c: u32) -> Self {
        self.word(code::COL_NONE as usize, c)
    }
    fn value(self, value: Want) -> Self {
        Case { value, ..self }
    }
    fn aux_p(self, v: f64, tol: f64) -> Self {
        Case {
            aux_p: Some((v, tol)),
            ..self
        }
    }
    fn aux_q(self, v: f64, tol: f64) -> Self {
        Case {
            aux_q: Some((v, tol)),
            ..self
        }
    }
}

/// Runs every case of a table and checks what it expects.
fn check_cases(cases: &[Case<'_>]) {
    for c in cases {
        let r = records(c.m, c.p, c.q, c.cols, c.norm)[0];
        let what = format!("{} ({:?}, {:?}): {r:?}", c.what, c.m, c.norm);
        assert_eq!(r.word(), c.word, "{what}");
        match c.value {
            Want::Any => {}
            Want::Finite => assert!(r.value.is_finite(), "{what}"),
            Want::Exactly(v) => assert_eq!(r.value, v, "{what}"),
            Want::Close(v) => assert!(close(r.value as f64, v), "{what}: want {v}"),
            Want::Nan => assert!(r.value.is_nan(), "{what}"),
        }
        for (name, got, want) in [("aux_p", r.aux_p, c.aux_p), ("aux_q", r.aux_q, c.aux_q)] {
            match want {
                None => {}
                Some((v, 0.0)) => assert_eq!(got as f64, v, "{what}: {name}"),
                Some((v, tol)) => assert!((got as f64 - v).abs() < tol, "{what}: {name}, want {v}"),
            }
        }
    }
}

#[test]
fn zero_rules() {
    use Want::*;
    let inf = f32::INFINITY;
    let p = [0.5f32, 0.5, 0.0];
    let q = [0.25f32, 0.75, 0.0];
    let q0 = [0.0f32, 1.0, 0.0];
    let ninf = f32::NEG_INFINITY;
    let lq = [ninf, 0.0, ninf];
    let (a, b) = ([0.5f32, 0.5, 0.0, 0.0], [0.0f32, 0.0, 0.25, 0.75]);
    let (one_hot, one) = ([0.0f32, 1.0, 0.0], [1.0f32]);
    let (masked, hot) = ([0.0f32, ninf], [1.0f32, 0.0]);
    #[rustfmt::skip]
    let cases = [
        // p = 0 where q = 0: the term is 0
        Case::new("CE p = 0 = q", CrossEntropy, row(&p), row(&q), Validate).value(Finite),
        Case::new("KL p = 0 = q", Kl, row(&p), row(&q), Validate).value(Finite),
        Case::new("JS p = 0 = q", Js, row(&p), row(&q), Validate).value(Finite),
        // p > 0 where q = 0: +inf (not for JS, which stays finite)
        Case::new("CE p > 0 = q", CrossEntropy, row(&p), row(&q0), Validate).value(Exactly(inf)),
        Case::new("KL p > 0 = q", Kl, row(&p), row(&q0), Validate).value(Exactly(inf)),
        // log q = -inf and a masked logit are q = 0 too
        Case::new("KL log q = -inf", Kl, row(&p), Input::row(&lq, LogProbs), Validate).value(Exactly(inf)),
        Case::new("KL masked q logit", Kl, row(&p), Input::row(&lq, Logits), Validate).value(Exactly(inf)),
        // disjoint supports: JS = ln 2 (never above it: checked below)
        Case::new("JS disjoint", Js, row(&a), row(&b), Validate).value(Close(std::f64::consts::LN_2)),
        // entropy of a one-hot is 0, of p = 0 entries nothing
        Case::new("H one-hot", Entropy, row(&one_hot), row(&one), Validate).value(Exactly(0.0)),
        // masked logits in p: p = 0 whatever q is (even q = 0)
        Case::new("KL masked p logit", Kl, Input::row(&masked, Logits), row(&hot), Validate).value(Exactly(0.0)),
    ];
    check_cases(&cases);
    let r = records(Js, row(&a), row(&b), 4, Validate);
    assert!(r[0].value <= std::f32::consts::LN_2 * (1.0 + 1e-6));
}

#[test]
fn subnormal_inputs() {
    let tiny = [1e-40f32, 3e-44, f32::from_bits(1)];
    for &t in &tiny {
        assert!(t > 0.0 && !t.is_normal());
        let p = [t, 0.5, 0.5 - t, 0.0];
        let q = [0.25f32, t, 0.75, 0.0];
        for m in MEASURES {
            check_measure(m, row(&p), row(&q), 4, Validate);
        }
        let q0 = [0.0f32, 0.5, 0.5, 0.0];
        let (half, tq) = ([0.5f32, 0.5], [t, 1.0]);
        let want = 0.5 * (0.5 / t as f64).ln() + 0.5 * 0.5f64.ln();
        #[rustfmt::skip]
        let cases = [
            // a subnormal is not zero: p > 0 against a q of exactly 0 is +inf
            Case::new("subnormal p over q = 0", Kl, row(&p), row(&q0), Validate)
                .value(Want::Exactly(f32::INFINITY)),
            // a subnormal q is not zero either: finite, the value
            Case::new("subnormal q", Kl, row(&half), row(&tq), AsGiven).value(Want::Close(want)),
        ];
        check_cases(&cases);
    }
    // subnormals in a vector chunk (many columns)
    let mut rng = Rng::new(7);
    let cols = 100;
    let mut p = rand_probs(&mut rng, 1, cols, 0.0);
    let mut q = rand_probs(&mut rng, 1, cols, 0.0);
    for i in (0..cols).step_by(3) {
        p[i] = 1e-40;
        q[(i + 1) % cols] = 3e-44;
    }
    for m in MEASURES {
        check_measure(m, row(&p), row(&q), cols, AsGiven);
    }
}

#[test]
fn bad_values_name_the_first_column() {
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
            if m == Entropy && !in_p {
                continue;
            }
            let what = format!("{m:?} col {col} {x}");
            check_cases(&[Case::new(&what, m, row(&p), row(&q), Validate)
                .word(col, c)
                .value(Want::Nan)]);
        }
    }
    // -0.0 is a zero, not a negative value
    let mut neg_zero = base.clone();
    neg_zero[7] = -0.0;
    neg_zero[8] += 1.0 / cols as f32;
    // the smallest column wins, and p's code at a column shared with q
    let mut p_nan50 = base.clone();
    p_nan50[50] = f32::NAN;
    let mut q_first = base.clone();
    q_first[20] = -1.0;
    q_first[60] = f32::NAN;
    let mut q_shared = base.clone();
    q_shared[50] = f32::NAN;
    q_shared[60] = f32::NAN;
    // log forms: +inf and NaN are bad, -inf is not; log-probs above 0 are bad
    let mut lp = vec![(1.0 / cols as f32).ln(); cols];
    lp[9] = 0.5;
    let mut lg_inf = vec![0.0f32; cols];
    lg_inf[77] = f32::INFINITY;
    let mut lg_nan = lg_inf.clone();
    lg_nan[77] = f32::NAN;
    lg_nan[78] = 1e30;
    // bad values in the first pass of the two-pass plan, and in a long row
    let long = 70_000;
    let mut p_long = vec![1.0f32; long];
    p_long[65_537] = f32::NAN;
    p_long[69_999] = -2.0;
    let q_long = vec![1.0f32; long];
    #[rustfmt::skip]
    let cases = [
        Case::new("-0.0 is a zero", Kl, row(&neg_zero), row(&base), Validate),
        Case::new("smallest column wins", Kl, row(&p_nan50), row(&q_first), Validate).word(20, code::Q_NEGATIVE),
        Case::new("p's code at a shared column", Kl, row(&p_nan50), row(&q_shared), Validate).word(50, code::P_NAN),
        Case::new("log-prob above 0", Entropy, Input::row(&lp, LogProbs), row(&base), Validate).word(9, code::P_POSITIVE_LOG),
        Case::new("+inf logit", Kl, row(&base), Input::row(&lg_inf, Logits), Validate).word(77, code::Q_INFINITE),
        Case::new("NaN logit", Kl, row(&base), Input::row(&lg_nan, Logits), Validate).word(77, code::Q_NAN),
        Case::new("two passes, long row", Kl, row(&p_long), row(&q_long), Renormalize).word(65_537, code::P_NAN),
    ];
    check_cases(&cases);
}

#[test]
fn row_level_problems() {
    use code::*;
    let p = [0.5f32, 0.6];
    let q = [0.5f32, 0.5];
    let lp = [0.5f32.ln(), 0.6f32.ln()];
    let within = [0.5f32, 0.5004];
    let all_masked = [f32::NEG_INFINITY; 3];
    let ok = [0.0f32; 3];
    let (masked, ok) = (Input::row(&all_masked, Logits), Input::row(&ok, Logits));
    let nan = [f32::NAN, 0.0];
    #[rustfmt::skip]
    let mut cases = vec![
        // unnormalised under Validate: the sum is in aux
        Case::new("p sums to 1.1", Kl, row(&p), row(&q), Validate).row_word(P_SUM).aux_p(1.1, 1e-6),
        Case::new("q sums to 1.1", Kl, row(&q), row(&p), Validate).row_word(Q_SUM).aux_q(1.1, 1e-6),
        // log-probs are validated too
        Case::new("log-probs sum to 1.1", Entropy, Input::row(&lp, LogProbs), row(&q), Validate).row_word(P_SUM),
        // within tolerance passes, and as given is not checked
        Case::new("within tolerance", Kl, row(&within), row(&q), Validate),
        Case::new("as given", Kl, row(&p), row(&q), AsGiven),
        // an element problem comes before a row problem
        Case::new("NaN before the sum", Kl, row(&nan), row(&q), Validate).word(0, P_NAN),
    ];
    // a zero row cannot be renormalised (a subnormal sum can: the hardening
    // issue, item 10; tests/hardening_numerics.rs checks its values)
    let zeros = [[0.0f32, 0.0], [-0.0, 0.0]];
    for z in &zeros {
        cases.push(Case::new("zero p", Kl, row(z), row(&q), Renormalize).row_word(P_ZERO_SUM));
        cases.push(Case::new("zero q", Kl, row(&q), row(z), Renormalize).row_word(Q_ZERO_SUM));
    }
    let tiny = [[1e-40f32, 0.0], [1e-45, 3e-45]];
    for t in &tiny {
        cases.push(Case::new("subnormal sum", Kl, row(t), row(&q), Renormalize));
    }
    // all -inf logits
    for norm in [Validate, Renormalize] {
        cases.push(Case::new("masked p", Entropy, masked, row(&q), norm).row_word(P_ALL_MASKED));
        cases.push(Case::new("masked q", Js, ok, masked, norm).row_word(Q_ALL_MASKED));
    }
    check_cases(&cases);
}

#[test]
fn js_validate_next_to_logits_checks_the_probabilities() {
    // Jensen-Shannon with logits takes two passes; the probabilities beside
    // them are still validated as given, not silently divided.
    let l = [0.0f32, 1.0, 2.0];
    let bad = [0.2f32, 0.2, 0.2];
    let counts = [2.0f32, 2.0, 4.0];
    let lse = log_sum_exp(&[0.0, 1.0, 2.0]);
    let logits = Input::row(&l, Logits);
    // aux of normalised operands: the log-sum-exp and the row sum
    #[rustfmt::skip]
    let cases = [
        Case::new("q sums to 0.6", Js, logits, row(&bad), Validate).row_word(code::Q_SUM).aux_q(0.6, 1e-6),
        Case::new("renormalised", Js, logits, row(&counts), Renormalize).aux_p(lse, 1e-6).aux_q(8.0, 0.0),
    ];
    check_cases(&cases);
    check_measure(Js, logits, row(&bad), 3, AsGiven);
}

#[test]
fn log_base() {
    let p = [0.25f32, 0.75];
    for base in [Base::Two, Base::Ten] {
        let opts = Options::default().base(base);
        let pb = Batch::row(&p);
        let job = Job::measure(Entropy, &pb, None, &opts).expect("job");
        let r = run_all(&job);
        let want = ref_row(Entropy, (&p, Probs), None, Validate) / ln_base(base);
        assert!(close(r[0][0].value as f64, want));
    }
}

#[test]
fn nll_forms_ignore_weights_smoothing() {
    let mut rng = Rng::new(8);
    let rows = 6;
    for cols in [1usize, 10, 5000] {
        let targets: Vec<i64> = (0..rows)
            .map(|i| if i == 2 { -100 } else { rng.below(cols) as i64 })
            .collect();
        let weights: Vec<f32> = (0..cols).map(|_| rng.uniform() as f32 * 2.0).collect();
        for form in FORMS {
            let q = rand_form(&mut rng, rows, cols, form, 0.1);
            for norm in [Validate, Renormalize] {
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
                                let qr = &q[r * cols..(r + 1) * cols];
                                let want = nll_row(qr, form, t, w, eps as f64, norm);
                                assert_eq!(rec.word(), 0, "{form:?} {norm:?} {eps} row {r}");
                                assert!(
                                    close(rec.value as f64, want),
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
    for (t, eps, want) in [
        (0i64, 0.0f32, f32::INFINITY),
        (1, 0.0, 0.0),
        // smoothing puts mass on every class: q = 0 anywhere is +inf
        (1, 0.1, f32::INFINITY),
    ] {
        let opts = NllOptions::default().label_smoothing(eps);
        let job = Job::nll(&qb, Targets::from(&[t][..]), &opts).expect("job");
        assert_eq!(run_all(&job)[0][0].value, want, "target {t} eps {eps}");
    }
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
        let p = rand_probs(&mut rng, rows, cols, 0.01);
        let q = rand_logits(&mut rng, rows, cols, 2.0, 0.0);
        for m in MEASURES {
            for norm in [Validate, Renormalize] {
                let (p, q) = (Input::new(&p, rows, Probs), Input::new(&q, rows, Logits));
                let job = job(m, p, q, cols, &Options::default().normalization(norm));
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
    let p = rand_probs(&mut rng, rows, cols, 0.0);
    let q = rand_probs(&mut rng, rows, cols, 0.0);
    let l = rand_logits(&mut rng, rows, cols, 2.0, 0.0);
    let threads = super::threads::available();
    let (p, q, l) = (
        Input::new(&p, rows, Probs),
        Input::new(&q, rows, Probs),
        Input::new(&l, rows, Logits),
    );
    #[rustfmt::skip]
    let cases = [
        ("kl probs", Kl, p, Validate),
        ("entropy probs", Entropy, p, Validate),
        ("cross probs", CrossEntropy, p, Validate),
        ("js probs", Js, p, Validate),
        ("kl probs renorm", Kl, p, Renormalize),
        ("kl logits", Kl, l, Validate),
        ("js logits", Js, l, Validate),
    ];
    let only = std::env::var("KULLBACK_BENCH").ok();
    for (name, m, pd, norm) in cases {
        if only.as_ref().is_some_and(|o| o != name) {
            continue;
        }
        let job = job(m, pd, q, cols, &Options::default().normalization(norm));
        let isas = Isa::available();
        for t in [1, threads] {
            // the instruction sets alternate inside each round (timings on a
            // shared machine move 2x within minutes): medians per set and
            // the median of the per-round ratios to the first set
            let mut times = vec![Vec::new(); isas.len()];
            for isa in &isas {
                let _ = run_with(&job, t, *isa);
            }
            for _ in 0..n {
                for (k, isa) in isas.iter().enumerate() {
                    let start = std::time::Instant::now();
                    std::hint::black_box(run_with(&job, t, *isa));
                    times[k].push(start.elapsed().as_secs_f64());
                }
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            for (k, isa) in isas.iter().enumerate() {
                let mut ratio: Vec<f64> = (0..n).map(|r| times[0][r] / times[k][r]).collect();
                let ratio = median(&mut ratio);
                let s = median(&mut times[k].clone());
                eprintln!(
                    "{name:16} {isa:?} {t} threads: median {:.3} ms, {:.2} G elements/s, {ratio:.2}x {:?}",
                    s * 1e3,
                    (rows * cols) as f64 / s / 1e9,
                    isas[0]
                );
            }
        }
    }
}

/// Short rows of probabilities `p` and `q` (`rows × cols`) of entropy,
/// cross-entropy and KL, q of every row and q broadcast: statuses as on the
/// baseline kernels, aux values within f32 rounding of theirs (another
/// order), values within the bound of the oracle, bit-identical over thread
/// counts (`run_all`).
fn check_short_rows(p: &[f32], q: &[f32], rows: usize, cols: usize) {
    for m in [Entropy, CrossEntropy, Kl] {
        for q_rows in [rows, 1] {
            let (pi, qi) = (
                Input::new(p, rows, Probs),
                Input::new(&q[..q_rows * cols], q_rows, Probs),
            );
            let job = job(m, pi, qi, cols, &Options::default());
            let base = run_with(&job, 1, Isa::Base);
            let want = ref_measure(m, pi, Some(qi), cols, Validate, Base::E);
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
                    let want = want[r];
                    assert!(
                        close(rec.value as f64, want),
                        "{what}: {} vs {want}",
                        rec.value
                    );
                    assert!((rec.aux_q as f64 - b.aux_q as f64).abs() <= 1e-6, "{what}");
                }
            }
        }
    }
}

/// Short rows of probabilities (the one-call row kernels where the machine
/// has them): every width up to past a vector, zeros, rows whose sum fails
/// the check, broadcast rows ([`check_short_rows`]).
#[test]
fn short_rows_match_the_general_path() {
    let mut rng = Rng::new(77);
    for cols in (1usize..=34).chain([100, 511, 512, 513]) {
        let rows = 9;
        for zeros in [0.0, 0.2] {
            let mut p = rand_probs(&mut rng, rows, cols, zeros);
            let q = rand_probs(&mut rng, rows, cols, zeros);
            // row 3 sums to 1.5: a P_SUM status under Validate
            for x in &mut p[3 * cols..4 * cols] {
                *x *= 1.5;
            }
            check_short_rows(&p, &q, rows, cols);
        }
    }
}

/// Short rows summed 8 (AVX2) or 16 (AVX-512) side by side, whole-vector
/// widths unrolled: widths 1..=17, 24, 31..=33, 47, 48, 63, 64 and 100 over
/// 37 rows (whole groups and a part group), zeros, a subnormal, a NaN row, a
/// negative value, a row failing the sum check, and a broadcast q
/// ([`check_short_rows`]).
#[test]
fn short_rows_side_by_side() {
    let mut rng = Rng::new(4242);
    for cols in (1usize..=17).chain([24, 31, 32, 33, 47, 48, 63, 64, 100]) {
        let rows = 37;
        let mut p = rand_probs(&mut rng, rows, cols, 0.1);
        let mut q = rand_probs(&mut rng, rows, cols, 0.1);
        for x in &mut p[9 * cols..10 * cols] {
            *x *= 1.5;
        }
        p[13 * cols + cols / 2] = f32::NAN;
        q[21 * cols] = -0.25;
        p[30 * cols + cols - 1] = 1e-40;
        check_short_rows(&p, &q, rows, cols);
    }
}

/// The CPU's per-row values decoded a chunk at a time by the workers
/// (`super::values`) against the records path and its decoder: the same
/// values bit for bit, or the same error (the first bad row's, wherever the
/// workers' parts and chunks split the rows), on every instruction set and
/// thread count.
#[test]
fn chunked_values_match_the_records_decoder() {
    use crate::record::decode_output;
    let mut rng = Rng::new(515);
    let (rows, cols) = (1200, 16);
    let q = rand_probs(&mut rng, rows, cols, 0.0);
    // no bad row; one in the second worker's part; two in different parts
    // (the earliest wins); two on either side of a chunk boundary
    for bad_rows in [&[][..], &[900], &[1000, 300], &[255, 256]] {
        let mut p = rand_probs(&mut rng, rows, cols, 0.1);
        for &r in bad_rows {
            p[r * cols + 5] = f32::NAN;
        }
        let (pi, qi) = (Input::new(&p, rows, Probs), Input::new(&q, rows, Probs));
        for m in [Kl, Js] {
            let job = job(m, pi, qi, cols, &Options::default());
            let desc = job.call.output_desc();
            for isa in Isa::available() {
                let want = decode_output(&run_with(&job, 1, isa), &desc);
                let plan = super::plan::Plan::new(&job, isa);
                for threads in [1, 2, 3] {
                    let got = super::values(&plan, threads, &desc.ctx);
                    let what = format!("{m:?} {isa:?} {threads} threads, bad rows {bad_rows:?}");
                    match (&got, &want) {
                        (Ok(g), Ok(w)) => {
                            let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                            assert_eq!(b(g), b(&w.values), "{what}");
                        }
                        (Err(g), Err(w)) => assert_eq!(g.to_string(), w.to_string(), "{what}"),
                        _ => panic!("{what}: {got:?} vs {want:?}"),
                    }
                }
            }
        }
    }
}
