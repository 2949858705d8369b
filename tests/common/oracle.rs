//! The one f64 oracle of the tests: each measure, the negative
//! log-likelihood (ignored rows, class weights, label smoothing), bases and
//! reductions, computed in plain f64 from the very f32 values the library
//! reads.
//!
//! It is written from the convention table of the crate docs (README's
//! "Conventions"), not from the library's code: f64 throughout, log-sum-exp
//! relative to the row maximum, the zero rules decided on exact zeros (a
//! probability of 0, a log-probability or logit of -inf), sums compensated
//! so that the oracle's own error stays far below the tolerance.
//!
//! The integration tests reach it as `common::oracle` (re-exported by
//! tests/common), the crate's unit tests as `crate::test_support::oracle`
//! (src/lib.rs includes this file; it names the library as `kullback`, which
//! the crate root declares for its tests with `extern crate self as kullback`).

#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by every test binary and the unit tests, each using a part of it"
)]

use kullback::{Base, Form, Measure, Normalization, Reduction};

/// The crate's accuracy bound (crate docs, "Accuracy"): abs 2e-6 + rel 2e-5 · |expected|.
pub const ABS_TOL: f64 = 2e-6;
/// See [`ABS_TOL`].
pub const REL_TOL: f64 = 2e-5;

/// Whether `got` matches `expected` within `abs + rel·|expected|`. An infinite
/// expectation must be met exactly, a NaN expectation by a NaN.
pub fn close_tol(got: f64, expected: f64, abs: f64, rel: f64) -> bool {
    if expected.is_nan() {
        return got.is_nan();
    }
    if expected.is_infinite() {
        return got == expected;
    }
    got.is_finite() && (got - expected).abs() <= abs + rel * expected.abs()
}

/// [`close_tol`] with the crate's bound.
pub fn close(got: f64, expected: f64) -> bool {
    close_tol(got, expected, ABS_TOL, REL_TOL)
}

/// ln(base) in f64.
pub fn ln_base(base: Base) -> f64 {
    match base {
        Base::E => 1.0,
        Base::Two => 2f64.ln(),
        Base::Ten => 10f64.ln(),
        Base::Custom(b) => b.ln(),
    }
}

/// One argument as the library receives it: f32 values, its rows (1 for a row
/// compared with every row of the other argument) and its form.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// Row-major values.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Form.
    pub form: Form,
}

impl<'a> Input<'a> {
    /// An input.
    pub fn new(data: &'a [f32], rows: usize, form: Form) -> Self {
        Input { data, rows, form }
    }
    /// A single row of `form`.
    pub fn row(data: &'a [f32], form: Form) -> Self {
        Input {
            data,
            rows: 1,
            form,
        }
    }
    /// Row `r` of `cols` values (row 0 for a one-row input: it is broadcast).
    pub fn row_of(&self, r: usize, cols: usize) -> &'a [f32] {
        let r = if self.rows == 1 { 0 } else { r };
        &self.data[r * cols..(r + 1) * cols]
    }
}

/// ln Σ exp(x) in f64, relative to the maximum; -inf for an all -inf row.
pub fn log_sum_exp(x: &[f64]) -> f64 {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + x.iter().map(|&v| (v - m).exp()).sum::<f64>().ln()
}

/// `v as f64`, from the bits for zeros and subnormals: exact even in a
/// process that reads subnormals as zero (tests/flush.rs sets MXCSR's DAZ).
pub fn widen(v: f32) -> f64 {
    let b = v.to_bits();
    if b & 0x7f80_0000 != 0 {
        return v as f64;
    }
    let m = (b & 0x007f_ffff) as f64 * 2f64.powi(-149);
    if b >> 31 != 0 { -m } else { m }
}

/// One row's (p, ln p) in f64 per form and normalisation. ln p = -inf exactly
/// where the input is a zero probability, a -inf log-probability or a -inf logit.
pub fn ref_dist(x: &[f32], form: Form, norm: Normalization) -> (Vec<f64>, Vec<f64>) {
    let x: Vec<f64> = x.iter().map(|&v| widen(v)).collect();
    if form == Form::Probs {
        let p: Vec<f64> = if norm == Normalization::Renormalize {
            let s: f64 = x.iter().sum();
            x.iter().map(|v| v / s).collect()
        } else {
            x
        };
        let lp = p.iter().map(|v| v.ln()).collect();
        (p, lp)
    } else if form == Form::LogProbs || form == Form::Logits {
        let lp: Vec<f64> = if form == Form::Logits || norm == Normalization::Renormalize {
            // (x - m) - ln s, with ln s = ln Σ e^(x - m) formed on its own:
            // never lse - m (m + ln s loses ln s when |m| is large: 3.4e38).
            let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let ls = x.iter().map(|&v| (v - m).exp()).sum::<f64>().ln();
            x.iter().map(|v| (v - m) - ls).collect()
        } else {
            x
        };
        let p = lp.iter().map(|v| v.exp()).collect();
        (p, lp)
    } else {
        panic!("not covered here: {form:?}")
    }
}

/// Neumaier-compensated sum.
pub fn sum_f64(x: &[f64]) -> f64 {
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for &v in x {
        let t = s + v;
        if s.abs() >= v.abs() {
            c += (s - t) + v;
        } else {
            c += (v - t) + s;
        }
        s = t;
    }
    s + c
}

/// p = 0 exactly where ln p = -inf: a zero probability, a -inf log-probability
/// or logit. A finite logit far below the row maximum is p > 0 even where
/// exp(ln p) underflows in f64 (over a q of 0 it still gives +inf).
fn zero(lp: f64) -> bool {
    lp == f64::NEG_INFINITY
}

/// A row as the measures see it: probabilities and their logs.
pub type Dist<'a> = (&'a [f64], &'a [f64]);

/// Entropy of one row, in nats: Σ −p ln p (0 where p = 0).
pub fn entropy_row((pp, lp): Dist<'_>) -> f64 {
    let t: Vec<f64> = (0..pp.len())
        .map(|i| if zero(lp[i]) { 0.0 } else { -pp[i] * lp[i] })
        .collect();
    sum_f64(&t)
}

/// Σ over p's support of `term(i)`; +inf where p > 0 meets q = 0.
fn over_support(lp: &[f64], lq: &[f64], term: impl Fn(usize) -> f64) -> f64 {
    let mut t = Vec::with_capacity(lp.len());
    for i in 0..lp.len() {
        if zero(lp[i]) {
            continue; // p = 0: 0 whatever q is
        }
        if zero(lq[i]) {
            return f64::INFINITY;
        }
        t.push(term(i));
    }
    sum_f64(&t)
}

/// Cross-entropy of one pair of rows, in nats: Σ −p ln q.
pub fn cross_entropy_row((pp, lp): Dist<'_>, (_, lq): Dist<'_>) -> f64 {
    over_support(lp, lq, |i| -pp[i] * lq[i])
}

/// Kullback-Leibler divergence of one pair of rows, in nats: Σ p (ln p − ln q).
pub fn kl_row((pp, lp): Dist<'_>, (_, lq): Dist<'_>) -> f64 {
    over_support(lp, lq, |i| pp[i] * (lp[i] - lq[i]))
}

/// Jensen-Shannon divergence of one pair of rows, in nats:
/// ½ KL(P‖M) + ½ KL(Q‖M), M = ½(P + Q); finite (at most ln 2).
pub fn js_row((pp, lp): Dist<'_>, (qq, lq): Dist<'_>) -> f64 {
    let mut t = Vec::with_capacity(2 * pp.len());
    for i in 0..pp.len() {
        let (pz, qz) = (zero(lp[i]), zero(lq[i]));
        if pz && qz {
            continue;
        }
        // ln m = ln(½(p + q)) = logaddexp(ln p, ln q) - ln 2.
        let (a, b) = if lp[i] > lq[i] {
            (lp[i], lq[i])
        } else {
            (lq[i], lp[i])
        };
        let lm = a + (b - a).exp().ln_1p() - 2f64.ln();
        if !pz {
            t.push(0.5 * pp[i] * (lp[i] - lm));
        }
        if !qz {
            t.push(0.5 * qq[i] * (lq[i] - lm));
        }
    }
    sum_f64(&t)
}

/// Squared Hellinger distance of one pair of rows: ½ Σ (√p − √q)² (a zero's
/// term is ½ the other side); finite, at most 1.
pub fn hellinger_row((pp, _): Dist<'_>, (qq, _): Dist<'_>) -> f64 {
    let t: Vec<f64> = (0..pp.len())
        .map(|i| 0.5 * (pp[i].sqrt() - qq[i].sqrt()).powi(2))
        .collect();
    sum_f64(&t)
}

/// Total variation distance of one pair of rows: ½ Σ |p − q|; finite, at
/// most 1.
pub fn tv_row((pp, _): Dist<'_>, (qq, _): Dist<'_>) -> f64 {
    let t: Vec<f64> = (0..pp.len()).map(|i| 0.5 * (pp[i] - qq[i]).abs()).collect();
    sum_f64(&t)
}

/// One pair of rows of a measure between two distributions, in nats, from
/// their (p, ln p).
pub fn pair_row(measure: Measure, p: Dist<'_>, q: Dist<'_>) -> f64 {
    if measure == Measure::CrossEntropy {
        cross_entropy_row(p, q)
    } else if measure == Measure::Kl {
        kl_row(p, q)
    } else if measure == Measure::Js {
        js_row(p, q)
    } else if measure == Measure::Hellinger {
        hellinger_row(p, q)
    } else if measure == Measure::TotalVariation {
        tv_row(p, q)
    } else {
        panic!("not covered here: {measure:?}")
    }
}

/// One row of `measure` in nats, from the f32 row `p` (and `q`, for every
/// measure but entropy) in their forms.
pub fn ref_row(
    measure: Measure,
    p: (&[f32], Form),
    q: Option<(&[f32], Form)>,
    norm: Normalization,
) -> f64 {
    let (pp, lp) = ref_dist(p.0, p.1, norm);
    if measure == Measure::Entropy {
        return entropy_row((&pp, &lp));
    }
    let q = q.unwrap_or_else(|| panic!("{measure:?} needs q"));
    let (qq, lq) = ref_dist(q.0, q.1, norm);
    pair_row(measure, (&pp, &lp), (&qq, &lq))
}

/// The per-row values of `measure` in base `base` (nats / ln base), in f64,
/// from the f32 inputs. `q` is ignored for entropy.
pub fn ref_measure(
    measure: Measure,
    p: Input<'_>,
    q: Option<Input<'_>>,
    cols: usize,
    norm: Normalization,
    base: Base,
) -> Vec<f64> {
    let q = if measure == Measure::Entropy { None } else { q };
    let rows = p.rows.max(q.map_or(1, |q| q.rows));
    let lb = ln_base(base);
    (0..rows)
        .map(|r| {
            let pr = (p.row_of(r, cols), p.form);
            let qr = q.map(|q| (q.row_of(r, cols), q.form));
            ref_row(measure, pr, qr, norm) / lb
        })
        .collect()
}

/// The negative log-likelihood of class `target` (`None`: an ignored row, 0)
/// under the f32 row `q`, in nats, weighted and smoothed as PyTorch's
/// `F.cross_entropy`:
///   l = (1−ε)·w_t·(−ln q_t) + (ε/C)·Σ_c w_c·(−ln q_c).
/// A class with w_c = 0 (or ε = 0) contributes nothing even where q_c = 0.
pub fn nll_row(
    q: &[f32],
    form: Form,
    target: Option<usize>,
    weights: Option<&[f32]>,
    eps: f64,
    norm: Normalization,
) -> f64 {
    let Some(t) = target else { return 0.0 };
    let cols = q.len();
    let w = |c: usize| weights.map_or(1.0, |w| w[c] as f64);
    let (_, lq) = ref_dist(q, form, norm);
    let nl = |c: usize| {
        if zero(lq[c]) { f64::INFINITY } else { -lq[c] }
    };
    let mut terms = Vec::new();
    let wt = (1.0 - eps) * w(t);
    if wt > 0.0 {
        terms.push(wt * nl(t));
    }
    if eps > 0.0 {
        for c in 0..cols {
            if w(c) > 0.0 {
                terms.push(eps / cols as f64 * w(c) * nl(c));
            }
        }
    }
    if terms.iter().any(|v| v.is_infinite()) {
        f64::INFINITY
    } else {
        sum_f64(&terms)
    }
}

/// Per-row negative log-likelihood ([`nll_row`]) in base `base`, and Σ w_t
/// over the rows not ignored (what a mean divides by).
#[allow(
    clippy::too_many_arguments,
    reason = "mirrors NllOptions field by field"
)]
pub fn ref_nll(
    q: Input<'_>,
    cols: usize,
    targets: &[i64],
    ignore: Option<i64>,
    weights: Option<&[f32]>,
    eps: f64,
    norm: Normalization,
    base: Base,
) -> (Vec<f64>, f64) {
    let lb = ln_base(base);
    let mut counted = 0.0;
    let vals = targets
        .iter()
        .enumerate()
        .map(|(r, &t)| {
            let target = (ignore != Some(t)).then_some(t as usize);
            if let Some(t) = target {
                counted += weights.map_or(1.0, |w| w[t] as f64);
            }
            nll_row(q.row_of(r, cols), q.form, target, weights, eps, norm) / lb
        })
        .collect();
    (vals, counted)
}

/// The expected value and the allowed error of a reduction of per-row values
/// `rows` (already in the output's base) counted `counted` times. The bound
/// for a sum is the per-row bound summed: n·abs + rel·Σ|v|; a mean divides it
/// (and the sum) by `counted`; a mean over nothing counted is NaN.
pub fn reduced_expectation(
    rows: &[f64],
    reduction: Reduction,
    counted: f64,
    abs: f64,
    rel: f64,
) -> Vec<(f64, f64)> {
    let n = rows.len() as f64;
    let sum: f64 = rows.iter().sum();
    let mag: f64 = rows.iter().filter(|v| v.is_finite()).map(|v| v.abs()).sum();
    let tol = n * abs + rel * mag;
    match reduction {
        Reduction::None => rows.iter().map(|&v| (v, abs + rel * v.abs())).collect(),
        Reduction::Sum => vec![(sum, tol)],
        Reduction::Mean => {
            if counted == 0.0 {
                vec![(f64::NAN, 0.0)]
            } else {
                vec![(sum / counted, tol / counted)]
            }
        }
        #[allow(unreachable_patterns, reason = "non-exhaustive outside the crate")]
        other => panic!("not covered here: {other:?}"),
    }
}

/// The values of a reduction of per-row values `rows` counted `counted`
/// times ([`reduced_expectation`] without the bounds).
pub fn reduce(rows: &[f64], reduction: Reduction, counted: f64) -> Vec<f64> {
    reduced_expectation(rows, reduction, counted, 0.0, 0.0)
        .into_iter()
        .map(|(v, _)| v)
        .collect()
}
