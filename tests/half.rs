//! Half-precision inputs (`half::f16`, `half::bf16`): every per-row case of
//! the SciPy corpus (tests/data/manifest.json) rounded to each format, on
//! every backend, against the f64 oracle computed from the same half values;
//! and the half path equals the f32 path on the widened values bit for bit
//! (the same kernels read the same f32s), errors included.

mod common;

use common::*;
use kullback::half::{bf16, f16};
use kullback::{
    Base, Batch, Form, Measure, NllOptions, Normalization, Options, Output, Targets, Values,
};
use serde_json::Value;

/// Cases whose half and widened calls gave the same error (counted, printed).
static ERRORS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[derive(Clone, Copy, Debug)]
enum Half {
    F16,
    BF16,
}

/// The values rounded to `h` (nearest, ties to even), and widened back.
fn round(v: &[f32], h: Half) -> (Vec<f16>, Vec<bf16>, Vec<f32>) {
    match h {
        Half::F16 => {
            let x: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
            let w = x.iter().map(|x| x.to_f32()).collect();
            (x, Vec::new(), w)
        }
        Half::BF16 => {
            let x: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
            let w = x.iter().map(|x| x.to_f32()).collect();
            (Vec::new(), x, w)
        }
    }
}

/// The half values as the library takes them.
fn values<'a>(h: Half, r: &'a (Vec<f16>, Vec<bf16>, Vec<f32>)) -> Values<'a> {
    match h {
        Half::F16 => Values::from(&r.0),
        Half::BF16 => Values::from(&r.1),
    }
}

/// The unit roundoff the half path adds to the row-sum tolerance (see `Values::F16`).
fn allowance(h: Half, form: Form, cols: usize) -> f32 {
    let u = match h {
        Half::F16 => 1.0 / 2048.0,
        Half::BF16 => 1.0 / 256.0,
    };
    if form == Form::LogProbs {
        u * (1.0 + (cols as f32).ln())
    } else {
        u
    }
}

fn form(v: &Value) -> Option<Form> {
    v.as_str().map(|s| match s {
        "probs" => Form::Probs,
        "log_probs" => Form::LogProbs,
        "logits" => Form::Logits,
        other => panic!("form {other}"),
    })
}

fn norm(v: &Value) -> Normalization {
    match v.as_str().unwrap() {
        "validate" => Normalization::Validate,
        "renormalize" => Normalization::Renormalize,
        "as_given" => Normalization::AsGiven,
        other => panic!("normalization {other}"),
    }
}

fn base(v: &Value) -> Base {
    match v.as_str().unwrap() {
        "e" => Base::E,
        "2" => Base::Two,
        "10" => Base::Ten,
        other => Base::Custom(other.parse().unwrap()),
    }
}

/// Compares a half call with the f32 call on the widened values (bits, or
/// the same error) and with the oracle; the failures, labelled.
fn compare(
    label: &str,
    half: kullback::Result<Output>,
    wide: kullback::Result<Output>,
    oracle: impl FnOnce() -> Vec<f64>,
    (abs, rel): (f64, f64),
) -> Vec<String> {
    match (half, wide) {
        (Ok(h), Ok(w)) => {
            let bits = |o: &Output| o.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            if bits(&h) != bits(&w) {
                return vec![format!(
                    "{label}: half {:?} != widened f32 {:?}",
                    h.values, w.values
                )];
            }
            let want = oracle();
            let bad: Vec<String> = h
                .values
                .iter()
                .zip(&want)
                .enumerate()
                .filter(|(_, (g, e))| !close_tol(**g as f64, **e, abs, rel))
                .take(3)
                .map(|(i, (g, e))| format!("{label}: row {i}: {g:e}, oracle {e:e}"))
                .collect();
            bad
        }
        // the same error (Error has no PartialEq: its Debug form holds every field)
        (Err(h), Err(w)) if format!("{h:?}") == format!("{w:?}") => {
            ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if std::env::var_os("HALF_SHOW").is_some() {
                println!("{label}: {h}");
            }
            Vec::new()
        }
        (h, w) => vec![format!("{label}: half {h:?}, widened f32 {w:?}")],
    }
}

fn run(h: Half) {
    let text = std::fs::read_to_string(data_dir().join("manifest.json")).expect("manifest.json");
    let m: Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let cases = m["cases"].as_array().expect("cases");
    let mut failures = Vec::new();
    let mut ran = 0;
    for bk in backends() {
        for c in cases {
            let name = c["name"].as_str().unwrap();
            let file = |k: &str| c["files"][k].as_str().map(str::to_string);
            let cols = c["cols"].as_u64().unwrap() as usize;
            let (nz, b) = (norm(&c["normalization"]), base(&c["base"]));
            let tol = (
                c["abs_tol"].as_f64().unwrap(),
                c["rel_tol"].as_f64().unwrap(),
            );
            let label = format!("{name} [{h:?}, {}]", bk.name);
            let measure = match c["measure"].as_str().unwrap() {
                "entropy" => Some(Measure::Entropy),
                "cross_entropy" => Some(Measure::CrossEntropy),
                "kl" => Some(Measure::Kl),
                "js" => Some(Measure::Js),
                "nll" => None,
                other => panic!("measure {other}"),
            };
            ran += 1;
            if let Some(measure) = measure {
                let (pf, p_rows) = (
                    form(&c["p_form"]).unwrap(),
                    c["p_rows"].as_u64().unwrap() as usize,
                );
                let p = round(&read_f32(&file("p").unwrap()).0, h);
                let q = file("q").map(|f| round(&read_f32(&f).0, h));
                let qf = form(&c["q_form"]);
                let q_rows = c["q_rows"].as_u64().map(|v| v as usize);
                let extra = allowance(h, pf, cols).max(qf.map_or(0.0, |f| allowance(h, f, cols)));
                let opts = Options::default().base(b).normalization(nz);
                let wide_opts = opts.tolerance(opts.tolerance + extra);
                let hp = Batch::new(values(h, &p), p_rows, cols).form(pf);
                let hq = q
                    .as_ref()
                    .map(|q| Batch::new(values(h, q), q_rows.unwrap(), cols).form(qf.unwrap()));
                let wp = Batch::new(&p.2, p_rows, cols).form(pf);
                let wq = q
                    .as_ref()
                    .map(|q| Batch::new(&q.2, q_rows.unwrap(), cols).form(qf.unwrap()));
                let half = bk.ctx.evaluate(measure, &hp, hq.as_ref(), &opts);
                let wide = bk.ctx.evaluate(measure, &wp, wq.as_ref(), &wide_opts);
                let oracle = || {
                    let qi = q
                        .as_ref()
                        .map(|q| Input::new(&q.2, q_rows.unwrap(), qf.unwrap()));
                    ref_measure(measure, Input::new(&p.2, p_rows, pf), qi, cols, nz, b)
                };
                failures.extend(compare(&label, half, wide, oracle, tol));
            } else {
                let (qf, q_rows) = (
                    form(&c["q_form"]).unwrap(),
                    c["q_rows"].as_u64().unwrap() as usize,
                );
                let q = round(&read_f32(&file("q").unwrap()).0, h);
                let t = read_i64(&file("targets").unwrap());
                let w = file("weights").map(|f| read_f32(&f).0);
                let ignore = c["ignore_index"].as_i64();
                let eps = c["label_smoothing"].as_f64().unwrap() as f32;
                let mut opts = NllOptions::default()
                    .base(b)
                    .normalization(nz)
                    .label_smoothing(eps);
                if let Some(i) = ignore {
                    opts = opts.ignore_index(i);
                }
                if let Some(w) = &w {
                    opts = opts.weights(w);
                }
                let wide_opts =
                    opts.tolerance(kullback::DEFAULT_TOLERANCE + allowance(h, qf, cols));
                let targets: Targets<'_> = (&t).into();
                let half = bk.ctx.nll(
                    &Batch::new(values(h, &q), q_rows, cols).form(qf),
                    targets,
                    &opts,
                );
                let wide = bk.ctx.nll(
                    &Batch::new(&q.2, q_rows, cols).form(qf),
                    targets,
                    &wide_opts,
                );
                let oracle = || {
                    ref_nll(
                        Input::new(&q.2, q_rows, qf),
                        cols,
                        &t,
                        ignore,
                        w.as_deref(),
                        eps as f64,
                        nz,
                        b,
                    )
                    .0
                };
                failures.extend(compare(&label, half, wide, oracle, tol));
            }
        }
    }
    assert!(ran > 0, "no case ran");
    println!(
        "{h:?}: {ran} case runs; {} of all ended in the same error on both paths",
        ERRORS.load(std::sync::atomic::Ordering::Relaxed)
    );
    report(&format!("{h:?} inputs over the SciPy corpus"), &failures);
}

#[test]
fn f16_inputs_over_the_corpus() {
    run(Half::F16);
}

#[test]
fn bf16_inputs_over_the_corpus() {
    run(Half::BF16);
}

/// A valid f32 row of 2,000 columns rounded to each format passes the
/// default row-sum check (its sum moves by up to 3.4e-4 in f16 and 2.8e-3 in
/// bf16, beyond the f32 default of 1e-3 for bf16).
#[test]
fn rounded_rows_pass_the_default_check() {
    let mut rng = Rng::new(0x4a1f);
    let (rows, cols) = (64, 2000);
    let p = rand_probs(&mut rng, rows, cols, 0.1);
    for h in [Half::F16, Half::BF16] {
        let r = round(&p, h);
        for bk in backends() {
            let out = bk
                .ctx
                .entropy(&Batch::new(values(h, &r), rows, cols), &Options::default());
            assert!(out.is_ok(), "{h:?} [{}]: {:?}", bk.name, out.err());
        }
    }
}

/// The same for all pairs (p against q, and p against itself, under the
/// default `Validate`): each argument's row-sum check allows its format's
/// roundoff, as the per-row measures' does (before, the pairwise check took
/// the f32 tolerance alone and refused these bf16 rows).
#[test]
fn rounded_rows_pass_the_pairwise_check() {
    use kullback::PairwiseOptions;
    let mut rng = Rng::new(0x4a20);
    // uniform rows of 1/2024: bf16 rounds every value the same way, so the
    // widened rows sum to 1 - 3.7e-3, beyond the f32 tolerance (1e-3)
    let (m, n, cols) = (6, 5, 2024);
    let p = vec![1.0 / cols as f32; m * cols];
    let q = rand_probs(&mut rng, n, cols, 0.0);
    for h in [Half::F16, Half::BF16] {
        let (hp, hq) = (round(&p, h), round(&q, h));
        let (pb, qb) = (
            Batch::new(values(h, &hp), m, cols),
            Batch::new(values(h, &hq), n, cols),
        );
        let opts = PairwiseOptions::default();
        for bk in backends() {
            for q in [Some(&qb), None] {
                let out = bk.ctx.pairwise(Measure::Js, &pb, q, &opts);
                assert!(out.is_ok(), "{h:?} [{}]: {:?}", bk.name, out.err());
            }
            // the same values given as f32 are held to the f32 tolerance
            if let Half::BF16 = h {
                let wide = Batch::new(&hp.2, m, cols);
                let e = bk.ctx.pairwise(Measure::Js, &wide, Some(&qb), &opts);
                assert!(
                    e.is_err(),
                    "[{}]: widened bf16 rows pass the f32 check",
                    bk.name
                );
            }
        }
    }
}

/// Half inputs through bindings capped at 64 KiB (rows split over chunks,
/// chunks that start inside a u32 of packed halves, scalar and vec4 loads):
/// the bits of the widened f32 call on the same context, and within the
/// crate's bound of the f64 oracle of the half values.
#[test]
fn half_inputs_on_chunked_bindings() {
    let Some(ctx) = gpu_capped(64 * 1024) else {
        return;
    };
    let mut rng = Rng::new(0x5eed);
    let mut checked = 0;
    for (rows, cols) in [(3usize, 40_001usize), (2000, 37), (64, 4096), (5, 70_000)] {
        let p = rand_probs(&mut rng, rows, cols, 0.1);
        let q = rand_probs(&mut rng, rows, cols, 0.0);
        for h in [Half::F16, Half::BF16] {
            let (hp, hq) = (round(&p, h), round(&q, h));
            let extra = allowance(h, Form::Probs, cols);
            for m in [Measure::Entropy, Measure::Kl, Measure::Js] {
                let o = Options::default();
                let wide_o = o.tolerance(o.tolerance + extra);
                let one = m == Measure::Entropy;
                let qb = Batch::new(values(h, &hq), rows, cols);
                let half = ctx
                    .evaluate(
                        m,
                        &Batch::new(values(h, &hp), rows, cols),
                        (!one).then_some(&qb),
                        &o,
                    )
                    .expect("half call");
                let wq = Batch::new(&hq.2, rows, cols);
                let wide = ctx
                    .evaluate(
                        m,
                        &Batch::new(&hp.2, rows, cols),
                        (!one).then_some(&wq),
                        &wide_o,
                    )
                    .expect("widened f32 call");
                let label = format!("{rows}x{cols} {h:?} {m:?}");
                let bits = |o: &Output| o.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&half), bits(&wide), "{label}: half vs widened f32");
                let want = ref_measure(
                    m,
                    Input::new(&hp.2, rows, Form::Probs),
                    Some(Input::new(&hq.2, rows, Form::Probs)),
                    cols,
                    Normalization::Validate,
                    Base::E,
                );
                for (r, (g, e)) in half.values.iter().zip(&want).enumerate() {
                    assert!(
                        close_tol(*g as f64, *e, 2e-6, 2e-5),
                        "{label} row {r}: {g:e}, oracle {e:e}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 24);
}

/// All pairs of half inputs: on the GPU the prep kernel reads them packed two
/// per u32 and widens them, so every D[i, j] (and every error) is the f32
/// call's on the widened values, bit for bit, and within the crate's bound
/// of float64 from the same half values. Odd column counts put a packed word
/// across two rows; the capped context splits rows and columns over
/// bindings (windows starting on either half of a word).
#[test]
fn half_pairwise_equals_widened_f32_and_f64() {
    use kullback::PairwiseOptions;
    let mut bks = backends_with_cap(64 * 1024);
    bks.retain(|b| b.name != "cpu");
    let mut rng = Rng::new(0x4a1f);
    let measures = [
        Measure::Kl,
        Measure::CrossEntropy,
        Measure::Js,
        Measure::Hellinger,
        Measure::TotalVariation,
    ];
    for bk in &bks {
        for (m_rows, n_rows, cols) in [(3usize, 4usize, 7usize), (5, 2, 16), (2, 3, 40_001)] {
            for form in [Form::Probs, Form::Logits] {
                let p = rand_form(&mut rng, m_rows, cols, form, 0.1);
                let q = rand_form(&mut rng, n_rows, cols, form, 0.0);
                let norm = if form == Form::Probs {
                    Normalization::Renormalize
                } else {
                    Normalization::Validate
                };
                let opts = PairwiseOptions::default().normalization(norm);
                for h in [Half::F16, Half::BF16] {
                    let (hp, hq) = (round(&p, h), round(&q, h));
                    let rp: Vec<_> = hp.2.chunks(cols).map(|r| ref_dist(r, form, norm)).collect();
                    let rq: Vec<_> = hq.2.chunks(cols).map(|r| ref_dist(r, form, norm)).collect();
                    for m in measures {
                        let label = format!(
                            "{m_rows}x{n_rows}x{cols} {form:?} {h:?} {m:?} [{}]",
                            bk.name
                        );
                        let hb = Batch::new(values(h, &hp), m_rows, cols).form(form);
                        let hqb = Batch::new(values(h, &hq), n_rows, cols).form(form);
                        let half = bk
                            .ctx
                            .pairwise(m, &hb, Some(&hqb), &opts)
                            .expect("half pairs");
                        let wb = Batch::new(&hp.2, m_rows, cols).form(form);
                        let wqb = Batch::new(&hq.2, n_rows, cols).form(form);
                        let wide = bk
                            .ctx
                            .pairwise(m, &wb, Some(&wqb), &opts)
                            .expect("f32 pairs");
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&half.values),
                            bits(&wide.values),
                            "{label}: half vs widened"
                        );
                        for (i, a) in rp.iter().enumerate() {
                            for (j, b) in rq.iter().enumerate() {
                                let want = pair_row(m, (&a.0, &a.1), (&b.0, &b.1));
                                let g = half.values[i * n_rows + j] as f64;
                                assert!(
                                    close_tol(g, want, 2e-6, 2e-5),
                                    "{label} D[{i}, {j}] = {g:e}, oracle {want:e}"
                                );
                            }
                        }
                        // p against itself
                        let s_half = bk.ctx.pairwise(m, &hb, None, &opts).expect("half self");
                        let s_wide = bk.ctx.pairwise(m, &wb, None, &opts).expect("f32 self");
                        assert_eq!(bits(&s_half.values), bits(&s_wide.values), "{label}: self");
                    }
                    // a bad value at an odd column of the last row: the same error
                    let label =
                        format!("{m_rows}x{n_rows}x{cols} {form:?} {h:?} NaN [{}]", bk.name);
                    let hqb = Batch::new(values(h, &hq), n_rows, cols).form(form);
                    let wqb = Batch::new(&hq.2, n_rows, cols).form(form);
                    let mut bad = hp.clone();
                    let at = (m_rows - 1) * cols + ((cols / 2) | 1);
                    match h {
                        Half::F16 => bad.0[at] = f16::NAN,
                        Half::BF16 => bad.1[at] = bf16::NAN,
                    }
                    bad.2[at] = f32::NAN;
                    let e_half = bk
                        .ctx
                        .pairwise(
                            Measure::Kl,
                            &Batch::new(values(h, &bad), m_rows, cols).form(form),
                            Some(&hqb),
                            &opts,
                        )
                        .expect_err("NaN half");
                    let e_wide = bk
                        .ctx
                        .pairwise(
                            Measure::Kl,
                            &Batch::new(&bad.2, m_rows, cols).form(form),
                            Some(&wqb),
                            &opts,
                        )
                        .expect_err("NaN f32");
                    assert_eq!(e_half.to_string(), e_wide.to_string(), "{label}");
                }
            }
        }
    }
}

/// The other all-pairs calls from half inputs: nearest-k (p against q, and
/// p against itself excluding each row's own index) and the tiled matrix
/// give the bits of the same calls on the widened f32 values, on every
/// backend (a capped GPU splits the windows inside packed words).
#[test]
fn half_top_k_and_tiles_equal_widened_f32() {
    use kullback::{PairwiseOptions, TileShape};
    let mut rng = Rng::new(0x70b1);
    let (m, n, cols, k) = (7usize, 9usize, 33usize, 4usize);
    let p = rand_probs(&mut rng, m, cols, 0.1);
    let q = rand_probs(&mut rng, n, cols, 0.0);
    let opts = PairwiseOptions::default().normalization(Normalization::Renormalize);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for bk in backends_with_cap(64 * 1024) {
        for h in [Half::F16, Half::BF16] {
            let (hp, hq) = (round(&p, h), round(&q, h));
            let (pb, qb) = (
                Batch::new(values(h, &hp), m, cols),
                Batch::new(values(h, &hq), n, cols),
            );
            let (wp, wq) = (Batch::new(&hp.2, m, cols), Batch::new(&hq.2, n, cols));
            for measure in [Measure::Js, Measure::Kl] {
                let label = format!("{h:?} {measure:?} [{}]", bk.name);
                let a = bk.ctx.pairwise_top_k(measure, &pb, Some(&qb), k, &opts);
                let b = bk.ctx.pairwise_top_k(measure, &wp, Some(&wq), k, &opts);
                let (a, b) = (a.expect("half top-k"), b.expect("f32 top-k"));
                assert_eq!(bits(&a.values), bits(&b.values), "{label}: top-k values");
                assert_eq!(a.indices, b.indices, "{label}: top-k indices");
                let own = opts.exclude_self(true);
                let a = bk
                    .ctx
                    .pairwise_top_k(measure, &pb, None, k, &own)
                    .expect("half self");
                let b = bk
                    .ctx
                    .pairwise_top_k(measure, &wp, None, k, &own)
                    .expect("f32 self");
                assert_eq!(
                    bits(&a.values),
                    bits(&b.values),
                    "{label}: self top-k values"
                );
                assert_eq!(a.indices, b.indices, "{label}: self top-k indices");
                let tiles = |pb: &Batch<'_>, qb: &Batch<'_>| {
                    let mut got = vec![f32::NAN; m * n];
                    bk.ctx
                        .pairwise_tiles(measure, pb, Some(qb), &opts, TileShape::new(3, 4), |t| {
                            let w = t.cols.len();
                            for (r, i) in t.rows.clone().enumerate() {
                                got[i * n + t.cols.start..i * n + t.cols.end]
                                    .copy_from_slice(&t.values[r * w..(r + 1) * w]);
                            }
                            Ok::<(), kullback::Error>(())
                        })
                        .expect("tiles");
                    got
                };
                assert_eq!(
                    bits(&tiles(&pb, &qb)),
                    bits(&tiles(&wp, &wq)),
                    "{label}: tiles"
                );
            }
        }
    }
}
