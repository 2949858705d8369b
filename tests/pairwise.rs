//! All pairs (issue 17): `Context::pairwise`, `pairwise_top_k` and
//! `pairwise_tiles` on every backend against the f64 oracle of tests/common
//! (`ref_dist` for the forms and normalisations, `pair_row` for each pair,
//! inputs from its seeded generator), over the shapes of
//! the acceptance: 1×1×1, 7×5×3, 33×65×257, 1000×1000×256 (a sample
//! of its pairs), 3×2×1,000,003, 70,001×2×5, near-identical rows (KL ≤ 0.01,
//! where a matrix-product form cancels), zeros, one-hot rows, +inf pairs,
//! subnormals and logits; nearest-k equal to a stable sort of each backend's
//! own matrix; tiles equal to the matrix; the chunked GPU path (a small
//! binding cap).

mod common;

use common::{Bk, Rng, close, ref_dist};
use kullback::{
    Arg, BadValue, Base, Batch, Error, Form, Measure, Normalization, PairwiseOptions, Ran, Setting,
    TileShape,
};

const MEASURES: [Measure; 5] = [
    Measure::Kl,
    Measure::CrossEntropy,
    Measure::Js,
    Measure::Hellinger,
    Measure::TotalVariation,
];

// ------------------------------------------------------------------ reference

/// One argument: f32 rows and their form.
type In<'a> = common::Input<'a>;

fn batch<'a>(x: &In<'a>, cols: usize) -> Batch<'a> {
    Batch::new(x.data, x.rows, cols).form(x.form)
}

/// Every row of `x` as (p, ln p) in f64.
fn ref_rows(x: In<'_>, cols: usize, norm: Normalization) -> Vec<(Vec<f64>, Vec<f64>)> {
    x.data
        .chunks(cols)
        .map(|r| ref_dist(r, x.form, norm))
        .collect()
}

/// The expected D[i, j] (in `base`), for the pairs `pairs`.
fn expected(
    m: Measure,
    p: &[(Vec<f64>, Vec<f64>)],
    q: &[(Vec<f64>, Vec<f64>)],
    self_mode: bool,
    base: Base,
    pairs: &[(usize, usize)],
) -> Vec<f64> {
    let lb = common::ln_base(base);
    pairs
        .iter()
        .map(|&(i, j)| {
            if self_mode && i == j && m != Measure::CrossEntropy {
                return 0.0;
            }
            let (a, b) = (&p[i], &q[j]);
            common::pair_row(m, (&a.0, &a.1), (&b.0, &b.1)) / lb
        })
        .collect()
}

/// Checks `got` (an M × N matrix) at `pairs` against the reference;
/// returns the worst error in units of the bound.
#[allow(
    clippy::too_many_arguments,
    reason = "one comparison's full description"
)]
fn check_pairs(
    label: &str,
    got: &[f32],
    n: usize,
    m: Measure,
    p: &[(Vec<f64>, Vec<f64>)],
    q: &[(Vec<f64>, Vec<f64>)],
    self_mode: bool,
    base: Base,
    pairs: &[(usize, usize)],
) -> f64 {
    let want = expected(m, p, q, self_mode, base, pairs);
    let mut worst = 0.0f64;
    let mut bad = Vec::new();
    for (&(i, j), &w) in pairs.iter().zip(&want) {
        let g = got[i * n + j];
        assert!(!g.is_nan(), "{label}: D[{i}, {j}] is NaN");
        if !close(g as f64, w) {
            bad.push(format!("D[{i}, {j}] = {g:e}, want {w:e}"));
        }
        if w.is_finite() {
            let bound = common::ABS_TOL + common::REL_TOL * w.abs();
            worst = worst.max((g as f64 - w).abs() / bound);
        }
    }
    assert!(
        bad.is_empty(),
        "{label}: {} of {} pairs off:\n{}",
        bad.len(),
        pairs.len(),
        bad.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
    worst
}

fn all_pairs(m: usize, n: usize) -> Vec<(usize, usize)> {
    (0..m).flat_map(|i| (0..n).map(move |j| (i, j))).collect()
}

/// A sample of pairs: `s` rows × `s` columns picked at random, plus the
/// corners.
fn sample_pairs(rng: &mut Rng, m: usize, n: usize, s: usize) -> Vec<(usize, usize)> {
    let rows: Vec<usize> = (0..s).map(|_| rng.below(m)).chain([0, m - 1]).collect();
    let cols: Vec<usize> = (0..s).map(|_| rng.below(n)).chain([0, n - 1]).collect();
    rows.iter()
        .flat_map(|&i| cols.iter().map(move |&j| (i, j)))
        .collect()
}

/// Runs every measure on every backend for p against q (and p against
/// itself) and checks `pairs` (None: all).
#[allow(clippy::too_many_arguments, reason = "one case's full description")]
fn check_case(
    label: &str,
    bks: &[Bk],
    p: In<'_>,
    q: In<'_>,
    cols: usize,
    norm: Normalization,
    pairs: Option<&[(usize, usize)]>,
    self_too: bool,
) {
    let opts = PairwiseOptions::default().normalization(norm);
    let pr = ref_rows(p, cols, norm);
    let qr = ref_rows(q, cols, norm);
    for bk in bks {
        for m in MEASURES {
            let d = bk
                .ctx
                .pairwise(m, &batch(&p, cols), Some(&batch(&q, cols)), &opts)
                .unwrap_or_else(|e| panic!("{label} {} {m:?}: {e}", bk.name));
            assert_eq!((d.rows, d.cols), (p.rows, q.rows));
            assert_eq!(d.backend, bk.ctx.backend(), "{label}");
            let all;
            let ps = match pairs {
                Some(s) => s,
                None => {
                    all = all_pairs(p.rows, q.rows);
                    &all
                }
            };
            let lbl = format!("{label} {} {m:?}", bk.name);
            check_pairs(&lbl, &d.values, q.rows, m, &pr, &qr, false, Base::E, ps);
            if self_too {
                let d = bk
                    .ctx
                    .pairwise(m, &batch(&p, cols), None, &opts)
                    .unwrap_or_else(|e| panic!("{label} self {} {m:?}: {e}", bk.name));
                let all;
                let ps = match pairs {
                    Some(s) => s.iter().map(|&(i, j)| (i, j % p.rows)).collect::<Vec<_>>(),
                    None => {
                        all = all_pairs(p.rows, p.rows);
                        all.clone()
                    }
                };
                let lbl = format!("{label} self {} {m:?}", bk.name);
                check_pairs(&lbl, &d.values, p.rows, m, &pr, &pr, true, Base::E, &ps);
                check_symmetric(&lbl, m, &d.values, p.rows);
            }
        }
    }
}

/// p against itself: a symmetric measure's matrix is symmetric bit for
/// bit with a zero diagonal; KL's diagonal is 0.
fn check_symmetric(label: &str, m: Measure, d: &[f32], n: usize) {
    for i in 0..n {
        if m != Measure::CrossEntropy {
            assert_eq!(d[i * n + i].to_bits(), 0, "{label}: D[{i}, {i}]");
        }
        if matches!(
            m,
            Measure::Js | Measure::Hellinger | Measure::TotalVariation
        ) {
            for j in 0..i {
                assert_eq!(
                    d[i * n + j].to_bits(),
                    d[j * n + i].to_bits(),
                    "{label}: D[{i}, {j}] vs D[{j}, {i}]"
                );
            }
        }
    }
}

// ------------------------------------------------------------------ inputs

/// Gamma(a, 1) for a ≥ 1 (Marsaglia-Tsang).
fn gamma(rng: &mut Rng, a: f64) -> f64 {
    let d = a - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = rng.normal();
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = rng.uniform();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Dirichlet(alpha) rows, normalised in f64, rounded to f32.
fn dirichlet(rng: &mut Rng, rows: usize, cols: usize, alpha: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let g: Vec<f64> = (0..cols).map(|_| gamma(rng, alpha)).collect();
        let s: f64 = g.iter().sum();
        out.extend(g.iter().map(|v| (v / s) as f32));
    }
    out
}

fn probs(rng: &mut Rng, rows: usize, cols: usize, zeros: f64) -> Vec<f32> {
    common::rand_probs(rng, rows, cols, zeros)
}

// ------------------------------------------------------------------ cases

#[test]
fn one_by_one_by_one() {
    let bks = common::backends_with_cap(64 * 1024);
    let p = [1.0f32];
    let q = [1.0f32];
    check_case(
        "1x1x1",
        &bks,
        In::new(&p, 1, Form::Probs),
        In::new(&q, 1, Form::Probs),
        1,
        Normalization::Validate,
        None,
        true,
    );
}

#[test]
fn small_shapes_every_form_and_normalisation() {
    let bks = common::backends_with_cap(64 * 1024);
    let mut rng = Rng::new(17);
    // every form and normalisation on 7 x 5 x 3; on 33 x 65 x 257 (tiles with
    // ragged edges, several column runs) a cover of them
    let all: Vec<(Form, Form, Normalization)> = [
        (Form::Probs, Form::Probs),
        (Form::LogProbs, Form::Probs),
        (Form::Logits, Form::LogProbs),
        (Form::Probs, Form::Logits),
    ]
    .into_iter()
    .flat_map(|(a, b)| {
        [
            Normalization::Validate,
            Normalization::Renormalize,
            Normalization::AsGiven,
        ]
        .map(move |n| (a, b, n))
    })
    .collect();
    let cover = [
        (Form::Probs, Form::Probs, Normalization::Validate),
        (Form::Probs, Form::Probs, Normalization::Renormalize),
        (Form::LogProbs, Form::Probs, Normalization::AsGiven),
        (Form::Logits, Form::LogProbs, Normalization::Renormalize),
        (Form::Probs, Form::Logits, Normalization::Validate),
    ];
    for (&(m, n, k), cases) in [(7usize, 5usize, 3usize), (33, 65, 257)]
        .iter()
        .zip([&all[..], &cover[..]])
    {
        for &(pf, qf, norm) in cases {
            let mut p = common::rand_form(&mut rng, m, k, pf, 0.2);
            let mut q = common::rand_form(&mut rng, n, k, qf, 0.2);
            if norm == Normalization::Renormalize {
                // counts, not probabilities
                for x in p.iter_mut().filter(|_| pf == Form::Probs) {
                    *x *= 37.0;
                }
                for x in q.iter_mut().filter(|_| qf == Form::Probs) {
                    *x *= 0.01;
                }
            }
            let label = format!("{m}x{n}x{k} {pf:?}/{qf:?} {norm:?}");
            check_case(
                &label,
                &bks,
                In::new(&p, m, pf),
                In::new(&q, n, qf),
                k,
                norm,
                None,
                pf == qf || m == 7,
            );
        }
    }
}

#[test]
fn thousand_by_thousand_by_256_sampled() {
    let bks = common::backends();
    let mut rng = Rng::new(1000);
    let (m, n, k) = (1000, 1000, 256);
    let p = probs(&mut rng, m, k, 0.05);
    let q = probs(&mut rng, n, k, 0.05);
    let pairs = sample_pairs(&mut rng, m, n, 30);
    check_case(
        "1000x1000x256",
        &bks,
        In::new(&p, m, Form::Probs),
        In::new(&q, n, Form::Probs),
        k,
        Normalization::Validate,
        Some(&pairs),
        false,
    );
}

#[test]
fn long_rows_3x2x1000003() {
    // (the GPU cuts such rows in column chunks whatever its binding cap)
    let bks = common::backends();
    let mut rng = Rng::new(3);
    let k = 1_000_003;
    let p = probs(&mut rng, 3, k, 0.1);
    let q = probs(&mut rng, 2, k, 0.0);
    check_case(
        "3x2x1000003",
        &bks,
        In::new(&p, 3, Form::Probs),
        In::new(&q, 2, Form::Probs),
        k,
        Normalization::Validate,
        None,
        false,
    );
}

#[test]
fn many_rows_70001x2x5() {
    let bks = common::backends_with_cap(64 * 1024);
    let mut rng = Rng::new(5);
    let p = probs(&mut rng, 70_001, 5, 0.2);
    let q = probs(&mut rng, 2, 5, 0.0);
    check_case(
        "70001x2x5",
        &bks,
        In::new(&p, 70_001, Form::Probs),
        In::new(&q, 2, Form::Probs),
        5,
        Normalization::Validate,
        None,
        false,
    );
}

/// Rows whose divergences are all about 0.01 (Dirichlet(100) over 256) or
/// far less (one row slightly perturbed): where −H(P) − P·log Qᵀ cancels.
#[test]
fn near_identical_rows() {
    let bks = common::backends();
    let mut rng = Rng::new(100);
    let k = 256;
    for alpha in [10.0, 100.0, 1000.0] {
        let p = dirichlet(&mut rng, 48, k, alpha);
        let q = dirichlet(&mut rng, 40, k, alpha);
        let pr = ref_rows(In::new(&p, 48, Form::Probs), k, Normalization::Validate);
        let qr = ref_rows(In::new(&q, 40, Form::Probs), k, Normalization::Validate);
        for bk in &bks {
            for m in MEASURES {
                let d = bk
                    .ctx
                    .pairwise(
                        m,
                        &Batch::new(&p, 48, k),
                        Some(&Batch::new(&q, 40, k)),
                        &Default::default(),
                    )
                    .expect("pairwise");
                let label = format!("dirichlet({alpha}) {} {m:?}", bk.name);
                let worst = check_pairs(
                    &label,
                    &d.values,
                    40,
                    m,
                    &pr,
                    &qr,
                    false,
                    Base::E,
                    &all_pairs(48, 40),
                );
                eprintln!("{label}: worst error {worst:.3} of the bound");
            }
        }
    }
    // one row and its perturbations: KL from 0 to 1e-4
    let base = dirichlet(&mut rng, 1, k, 50.0);
    let mut q = Vec::new();
    for r in 0..16 {
        let eps = r as f64 * 1e-3;
        let row: Vec<f64> = base
            .iter()
            .map(|&x| x as f64 * (1.0 + eps * rng.normal()))
            .collect();
        let s: f64 = row.iter().sum();
        q.extend(row.iter().map(|v| (v / s) as f32));
    }
    check_case(
        "perturbed",
        &bks,
        In::new(&base, 1, Form::Probs),
        In::new(&q, 16, Form::Probs),
        k,
        Normalization::Validate,
        None,
        false,
    );
}

/// Zeros, one-hot rows, +inf pairs (p > 0 where q = 0), subnormals.
#[test]
fn zeros_one_hot_infinities_subnormals() {
    let bks = common::backends_with_cap(64 * 1024);
    let k = 6;
    let sub = 1e-40f32;
    #[rustfmt::skip]
    let p = vec![
        1.0, 0.0, 0.0, 0.0, 0.0, 0.0,            // one-hot
        0.0, 0.0, 0.0, 0.0, 0.0, 1.0,            // one-hot
        0.5, 0.5, 0.0, 0.0, 0.0, 0.0,
        sub, 1.0 - sub, 0.0, 0.0, 0.0, 0.0,      // a subnormal p
        0.2, 0.2, 0.2, 0.2, 0.1, 0.1,
        0.0, 0.25, 0.25, 0.25, 0.25, 0.0,
    ];
    #[rustfmt::skip]
    let q = vec![
        1.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.2, 0.2, 0.2, 0.2, 0.2, 0.0,            // q = 0 where a one-hot p is 1: +inf
        sub, 0.5, 0.5 - sub, 0.0, 0.0, 0.0,      // a subnormal q
        0.1, 0.1, 0.2, 0.2, 0.2, 0.2,
        1e-38, 1.0, 0.0, 0.0, 0.0, 0.0,
    ];
    for norm in [Normalization::Validate, Normalization::AsGiven] {
        check_case(
            &format!("zeros {norm:?}"),
            &bks,
            In::new(&p, 6, Form::Probs),
            In::new(&q, 5, Form::Probs),
            k,
            norm,
            None,
            true,
        );
    }
    // +inf pairs are exactly +inf (−inf below base 1), never NaN
    for bk in &bks {
        let d = bk
            .ctx
            .pairwise(
                Measure::Kl,
                &Batch::new(&p, 6, k),
                Some(&Batch::new(&q, 5, k)),
                &Default::default(),
            )
            .expect("kl");
        assert_eq!(d.values[5 + 1], f32::INFINITY, "{}", bk.name);
        let d = bk
            .ctx
            .pairwise(
                Measure::CrossEntropy,
                &Batch::new(&p, 6, k),
                Some(&Batch::new(&q, 5, k)),
                &PairwiseOptions::default().base(Base::Custom(0.5)),
            )
            .expect("ce");
        assert_eq!(d.values[5 + 1], f32::NEG_INFINITY, "{}", bk.name);
    }
}

/// Logits (large offsets, masked classes) and log-probabilities, both
/// normalised per row; p against q and against itself.
#[test]
fn logits() {
    let bks = common::backends_with_cap(64 * 1024);
    let mut rng = Rng::new(9);
    let (m, n, k) = (20, 13, 40);
    let mut p = common::rand_logits(&mut rng, m, k, 4.0, 1e4);
    let q = common::rand_logits(&mut rng, n, k, 2.0, -50.0);
    for r in 0..m {
        if r % 3 == 0 {
            p[r * k + r % k] = f32::NEG_INFINITY; // a masked class
        }
    }
    check_case(
        "logits",
        &bks,
        In::new(&p, m, Form::Logits),
        In::new(&q, n, Form::Logits),
        k,
        Normalization::Validate,
        None,
        true,
    );
}

#[test]
fn bases() {
    let bks = common::backends();
    let mut rng = Rng::new(2);
    let (m, n, k) = (5, 6, 9);
    let p = probs(&mut rng, m, k, 0.3);
    let q = probs(&mut rng, n, k, 0.0);
    let pr = ref_rows(In::new(&p, m, Form::Probs), k, Normalization::Validate);
    let qr = ref_rows(In::new(&q, n, Form::Probs), k, Normalization::Validate);
    for bk in &bks {
        for m_ in [Measure::Kl, Measure::CrossEntropy, Measure::Js] {
            for base in [Base::Two, Base::Ten, Base::Custom(0.5)] {
                let d = bk
                    .ctx
                    .pairwise(
                        m_,
                        &Batch::new(&p, m, k),
                        Some(&Batch::new(&q, n, k)),
                        &PairwiseOptions::default().base(base),
                    )
                    .expect("pairwise");
                check_pairs(
                    &format!("{} {m_:?} {base:?}", bk.name),
                    &d.values,
                    n,
                    m_,
                    &pr,
                    &qr,
                    false,
                    base,
                    &all_pairs(m, n),
                );
            }
        }
        for m_ in [Measure::Hellinger, Measure::TotalVariation] {
            let e = bk.ctx.pairwise(
                m_,
                &Batch::new(&p, m, k),
                None,
                &PairwiseOptions::default().base(Base::Two),
            );
            assert!(
                matches!(
                    e,
                    Err(Error::InvalidOption {
                        option: Setting::Base,
                        ..
                    })
                ),
                "{m_:?}: {e:?}"
            );
        }
    }
}

/// f64 input is read through the crate's checked conversion: the same bits
/// as f32 input, and an f64 value that would change in f32 is an error.
#[test]
fn f64_input() {
    let bks = common::backends();
    let mut rng = Rng::new(64);
    let (m, n, k) = (9, 7, 33);
    let p = probs(&mut rng, m, k, 0.1);
    let q = probs(&mut rng, n, k, 0.0);
    let p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
    let q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
    for bk in &bks {
        for m_ in MEASURES {
            let a = bk
                .ctx
                .pairwise(
                    m_,
                    &Batch::new(&p, m, k),
                    Some(&Batch::new(&q, n, k)),
                    &Default::default(),
                )
                .expect("f32");
            let b = bk
                .ctx
                .pairwise(
                    m_,
                    &Batch::new(&p64, m, k),
                    Some(&Batch::new(&q64, n, k)),
                    &Default::default(),
                )
                .expect("f64");
            assert_eq!(bits(&a.values), bits(&b.values), "{} {m_:?}", bk.name);
        }
        let mut bad = q64.clone();
        bad[3 * k + 4] = 1e-300;
        let e = bk.ctx.pairwise(
            Measure::Kl,
            &Batch::new(&p64, m, k),
            Some(&Batch::new(&bad, n, k)),
            &Default::default(),
        );
        assert!(
            matches!(
                e,
                Err(Error::BadValue {
                    arg: Arg::Q,
                    row: 3,
                    col: Some(4),
                    ..
                })
            ),
            "{}: {e:?}",
            bk.name
        );
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Bad input: the same errors as the per-row measures, naming the argument,
/// row and column; p's first bad row before any of q's.
#[test]
fn bad_input_names_argument_row_and_column() {
    let bks = common::backends_with_cap(64 * 1024);
    let mut rng = Rng::new(4);
    let (m, n, k) = (6, 5, 7);
    let p = probs(&mut rng, m, k, 0.0);
    let q = probs(&mut rng, n, k, 0.0);
    let run = |bk: &Bk, p: &[f32], pf: Form, q: &[f32], qf: Form, norm: Normalization| {
        bk.ctx.pairwise(
            Measure::Kl,
            &Batch::new(p, m, k).form(pf),
            Some(&Batch::new(q, n, k).form(qf)),
            &PairwiseOptions::default().normalization(norm),
        )
    };
    // (what, p, its form, q, its form, normalisation, the error expected)
    type Want = fn(&Error) -> bool;
    type Case<'a> = (
        &'a str,
        &'a [f32],
        Form,
        &'a [f32],
        Form,
        Normalization,
        Want,
    );
    let v = Normalization::Validate;
    let mut bp = p.clone();
    bp[4 * k + 2] = f32::NAN;
    bp[5 * k + 1] = -1.0;
    let mut bq = q.clone();
    bq[k + 3] = f32::INFINITY;
    let mut sp = p.clone();
    sp[2 * k] += 0.01;
    let mut zq = q.clone();
    zq[3 * k..4 * k].fill(0.0);
    let mut lq = common::log_of(&q);
    lq[2 * k + 5] = 0.5;
    let mut mq = common::log_of(&q);
    mq[4 * k..5 * k].fill(f32::NEG_INFINITY);
    let probs = Form::Probs;
    let cases: [Case<'_>; 6] = [
        ("p's NaN before q's inf", &bp, probs, &bq, probs, v, |e| {
            matches!(
                e,
                Error::BadValue {
                    arg: Arg::P,
                    row: 4,
                    col: Some(2),
                    what: BadValue::Nan
                }
            )
        }),
        ("q's inf", &p, probs, &bq, probs, v, |e| {
            matches!(
                e,
                Error::BadValue {
                    arg: Arg::Q,
                    row: 1,
                    col: Some(3),
                    what: BadValue::Infinite
                }
            )
        }),
        ("p's row sum", &sp, probs, &q, probs, v, |e| {
            matches!(
                e,
                Error::NotNormalized {
                    arg: Arg::P,
                    row: 2,
                    ..
                }
            )
        }),
        (
            "q's zero row",
            &p,
            probs,
            &zq,
            probs,
            Normalization::Renormalize,
            |e| {
                matches!(
                    e,
                    Error::CannotNormalize {
                        arg: Arg::Q,
                        row: 3,
                        ..
                    }
                )
            },
        ),
        ("q's positive log", &p, probs, &lq, Form::LogProbs, v, |e| {
            matches!(
                e,
                Error::BadValue {
                    arg: Arg::Q,
                    row: 2,
                    col: Some(5),
                    what: BadValue::PositiveLog
                }
            )
        }),
        ("q's masked row", &p, probs, &mq, Form::Logits, v, |e| {
            matches!(
                e,
                Error::CannotNormalize {
                    arg: Arg::Q,
                    row: 4,
                    ..
                }
            )
        }),
    ];
    for bk in &bks {
        for (what, p, pf, q, qf, norm, want) in &cases {
            let e = run(bk, p, *pf, q, *qf, *norm).expect_err(what);
            assert!(want(&e), "{} {what}: {e}", bk.name);
        }
    }
    // shapes and options
    let ctx = common::cpu();
    let e = ctx.pairwise(
        Measure::Kl,
        &Batch::new(&p, m, k),
        Some(&Batch::new(&q[..n * (k - 1)], n, k - 1)),
        &Default::default(),
    );
    assert!(matches!(e, Err(Error::ShapeMismatch { .. })), "{e:?}");
    let e = ctx.pairwise(
        Measure::Entropy,
        &Batch::new(&p, m, k),
        None,
        &Default::default(),
    );
    assert!(matches!(e, Err(Error::Unsupported(_))), "{e:?}");
}

/// Nearest-k equals a stable sort (by value, then index) of each backend's
/// own matrix, with ties, +inf values and self exclusion.
#[test]
fn top_k_is_a_sort_of_the_matrix() {
    let bks = common::backends_with_cap(64 * 1024);
    let mut rng = Rng::new(21);
    let (m, n, k) = (37, 300, 12);
    let mut p = probs(&mut rng, m, k, 0.3);
    let mut q = probs(&mut rng, n, k, 0.3);
    // exact ties: repeated rows of q; a row of p equal to one of q
    for r in (10..n).step_by(7) {
        let src = q[..k].to_vec();
        q[r * k..(r + 1) * k].copy_from_slice(&src);
    }
    let row = q[5 * k..6 * k].to_vec();
    p[..k].copy_from_slice(&row);
    for bk in &bks {
        for m_ in MEASURES {
            for (qq, self_mode) in [(Some(&q[..]), false), (None, true)] {
                let nn = if self_mode { m } else { n };
                let qb = qq.map(|v| Batch::new(v, n, k));
                let d = bk
                    .ctx
                    .pairwise(m_, &Batch::new(&p, m, k), qb.as_ref(), &Default::default())
                    .expect("matrix");
                for (kk, excl) in [
                    (1usize, false),
                    (7, false),
                    (nn.min(256), false),
                    (5, self_mode),
                ] {
                    if excl && kk > nn - 1 {
                        continue;
                    }
                    let opts = PairwiseOptions::default().exclude_self(excl);
                    let t = bk
                        .ctx
                        .pairwise_top_k(m_, &Batch::new(&p, m, k), qb.as_ref(), kk, &opts)
                        .unwrap_or_else(|e| panic!("{} {m_:?} k {kk}: {e}", bk.name));
                    assert_eq!((t.rows, t.k), (m, kk));
                    for i in 0..m {
                        let mut row: Vec<(f32, u32)> = (0..nn)
                            .filter(|&j| !(excl && j == i))
                            .map(|j| (d.values[i * nn + j], j as u32))
                            .collect();
                        row.sort_by(|a, b| a.0.total_cmp(&b.0)); // stable: ties keep index order
                        let want: Vec<(u32, u32)> =
                            row[..kk].iter().map(|&(v, j)| (v.to_bits(), j)).collect();
                        let got: Vec<(u32, u32)> = (0..kk)
                            .map(|t_| (t.values[i * kk + t_].to_bits(), t.indices[i * kk + t_]))
                            .collect();
                        assert_eq!(
                            got, want,
                            "{} {m_:?} self {self_mode} k {kk} excl {excl} row {i}",
                            bk.name
                        );
                    }
                }
            }
        }
        // k out of range
        let e = bk.ctx.pairwise_top_k(
            Measure::Js,
            &Batch::new(&p, m, k),
            Some(&Batch::new(&q, n, k)),
            0,
            &Default::default(),
        );
        assert!(matches!(
            e,
            Err(Error::InvalidOption {
                option: Setting::TopK,
                ..
            })
        ));
        let e = bk.ctx.pairwise_top_k(
            Measure::Js,
            &Batch::new(&p, m, k),
            Some(&Batch::new(&q[..20 * k], 20, k)),
            21,
            &Default::default(),
        );
        assert!(matches!(
            e,
            Err(Error::InvalidOption {
                option: Setting::TopK,
                ..
            })
        ));
        let e = bk.ctx.pairwise_top_k(
            Measure::Js,
            &Batch::new(&p, m, k),
            None,
            37,
            &PairwiseOptions::default().exclude_self(true),
        );
        assert!(matches!(
            e,
            Err(Error::InvalidOption {
                option: Setting::TopK,
                ..
            })
        ));
        let e = bk.ctx.pairwise_top_k(
            Measure::Js,
            &Batch::new(&p, m, k),
            Some(&Batch::new(&q, n, k)),
            257,
            &Default::default(),
        );
        assert!(matches!(
            e,
            Err(Error::InvalidOption {
                option: Setting::TopK,
                ..
            })
        ));
    }
}

/// The tiles of `pairwise_tiles` are the matrix of `pairwise`, bit for bit,
/// for several tile shapes; an error of the callback stops the call.
#[test]
fn tiles_equal_the_matrix() {
    let bks = common::backends_with_cap(64 * 1024);
    let mut rng = Rng::new(33);
    let (m, n, k) = (45, 70, 19);
    let p = probs(&mut rng, m, k, 0.2);
    let q = probs(&mut rng, n, k, 0.2);
    for bk in &bks {
        for m_ in MEASURES {
            for (qq, nn) in [(Some(&q[..]), n), (None, m)] {
                let qb = qq.map(|v| Batch::new(v, n, k));
                let d = bk
                    .ctx
                    .pairwise(m_, &Batch::new(&p, m, k), qb.as_ref(), &Default::default())
                    .expect("matrix");
                for shape in [
                    TileShape::new(7, 13),
                    TileShape::full_rows(16),
                    TileShape::default(),
                ] {
                    let mut got = vec![f32::NAN; m * nn];
                    let mut count = 0;
                    let ran = bk
                        .ctx
                        .pairwise_tiles(
                            m_,
                            &Batch::new(&p, m, k),
                            qb.as_ref(),
                            &Default::default(),
                            shape,
                            |t| {
                                assert!(t.rows.len() <= shape.rows && t.cols.len() <= shape.cols);
                                assert_eq!(t.values.len(), t.rows.len() * t.cols.len());
                                for (r, i) in t.rows.clone().enumerate() {
                                    let w = t.cols.len();
                                    got[i * nn + t.cols.start..i * nn + t.cols.end]
                                        .copy_from_slice(&t.values[r * w..(r + 1) * w]);
                                }
                                count += 1;
                                Ok::<(), Error>(())
                            },
                        )
                        .expect("tiles");
                    assert_eq!(ran, bk.ctx.backend());
                    assert!(count >= 1);
                    assert_eq!(bits(&got), bits(&d.values), "{} {m_:?} {shape:?}", bk.name);
                }
            }
        }
        // single-value tiles of a small matrix
        let (p6, q5) = (Batch::new(&p[..6 * k], 6, k), Batch::new(&q[..5 * k], 5, k));
        let d = bk
            .ctx
            .pairwise(Measure::Kl, &p6, Some(&q5), &Default::default())
            .expect("matrix");
        let mut got = Vec::new();
        bk.ctx
            .pairwise_tiles(
                Measure::Kl,
                &p6,
                Some(&q5),
                &Default::default(),
                TileShape::new(1, 1),
                |t| {
                    assert_eq!((t.rows.len(), t.cols.len()), (1, 1));
                    got.push(t.values[0]);
                    Ok::<(), Error>(())
                },
            )
            .expect("tiles");
        assert_eq!(bits(&got), bits(&d.values), "{} 1x1 tiles", bk.name);
        // the callback's error stops the call
        let mut calls = 0;
        let r = bk.ctx.pairwise_tiles(
            Measure::Js,
            &Batch::new(&p, m, k),
            None,
            &Default::default(),
            TileShape::new(8, 8),
            |_| {
                calls += 1;
                if calls == 2 {
                    Err(Error::Unsupported("stop".into()))
                } else {
                    Ok(())
                }
            },
        );
        assert!(r.is_err() && calls == 2);
    }
}

/// The same input on the same backend gives the same bits, every call;
/// results do not depend on how the CPU splits the work (bands, tiles).
#[test]
fn deterministic() {
    let bks = common::backends();
    let mut rng = Rng::new(77);
    let (m, n, k) = (130, 90, 300);
    let p = probs(&mut rng, m, k, 0.1);
    let q = probs(&mut rng, n, k, 0.1);
    for bk in &bks {
        for m_ in MEASURES {
            let a = bk
                .ctx
                .pairwise(
                    m_,
                    &Batch::new(&p, m, k),
                    Some(&Batch::new(&q, n, k)),
                    &Default::default(),
                )
                .expect("a");
            let b = bk
                .ctx
                .pairwise(
                    m_,
                    &Batch::new(&p, m, k),
                    Some(&Batch::new(&q, n, k)),
                    &Default::default(),
                )
                .expect("b");
            assert_eq!(bits(&a.values), bits(&b.values), "{} {m_:?}", bk.name);
        }
    }
}

#[test]
fn ran_on_the_backend_asked() {
    for bk in common::backends() {
        let p = [0.5f32, 0.5];
        let d = bk
            .ctx
            .pairwise(
                Measure::Js,
                &Batch::new(&p, 1, 2),
                None,
                &Default::default(),
            )
            .expect("js");
        assert_eq!(d.backend, bk.ctx.backend());
        assert_eq!(d.adapter.is_some(), d.backend == Ran::Gpu);
    }
}
