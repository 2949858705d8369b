//! Stored reference values: SciPy / NumPy / PyTorch in float64, computed from
//! the very float32 inputs stored beside them (tests/data/make_reference.py,
//! listed in tests/data/manifest.json). Every case runs on the CPU, on the GPU
//! and on a GPU whose bindings are capped at 64 KiB (the chunked path), under
//! every reduction: none against the stored per-row values, sum and mean
//! against the stored totals.

mod common;

use common::*;
use kullback::{
    Base, Batch, Form, Measure, NllOptions, Normalization, Options, Reduction, Targets,
};
use serde_json::Value;

const CAP: u64 = 64 * 1024;

struct Case {
    name: String,
    measure: String,
    p_form: Option<Form>,
    q_form: Option<Form>,
    norm: Normalization,
    base: Base,
    cols: usize,
    p_rows: Option<usize>,
    q_rows: Option<usize>,
    ignore: Option<i64>,
    smoothing: f32,
    files: Value,
    abs: f64,
    rel: f64,
}

fn form(v: &Value) -> Option<Form> {
    v.as_str().map(|s| match s {
        "probs" => Form::Probs,
        "log_probs" => Form::LogProbs,
        "logits" => Form::Logits,
        other => panic!("form {other}"),
    })
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(data_dir().join("manifest.json")).expect("manifest.json");
    let m: Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    m["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            measure: c["measure"].as_str().unwrap().to_string(),
            p_form: form(&c["p_form"]),
            q_form: form(&c["q_form"]),
            norm: match c["normalization"].as_str().unwrap() {
                "validate" => Normalization::Validate,
                "renormalize" => Normalization::Renormalize,
                "as_given" => Normalization::AsGiven,
                other => panic!("normalization {other}"),
            },
            base: match c["base"].as_str().unwrap() {
                "e" => Base::E,
                "2" => Base::Two,
                "10" => Base::Ten,
                other => Base::Custom(other.parse().unwrap()),
            },
            cols: c["cols"].as_u64().unwrap() as usize,
            p_rows: c["p_rows"].as_u64().map(|v| v as usize),
            q_rows: c["q_rows"].as_u64().map(|v| v as usize),
            ignore: c["ignore_index"].as_i64(),
            smoothing: c["label_smoothing"].as_f64().unwrap() as f32,
            files: c["files"].clone(),
            abs: c["abs_tol"].as_f64().unwrap(),
            rel: c["rel_tol"].as_f64().unwrap(),
        })
        .collect()
}

fn measure_of(name: &str) -> Option<Measure> {
    match name {
        "entropy" => Some(Measure::Entropy),
        "cross_entropy" => Some(Measure::CrossEntropy),
        "kl" => Some(Measure::Kl),
        "js" => Some(Measure::Js),
        _ => None,
    }
}

/// Runs one case on one backend under every reduction; the failures, labelled.
fn run_case(c: &Case, bk: &Bk) -> Vec<String> {
    let file = |k: &str| c.files[k].as_str().map(str::to_string);
    let expected = read_f64(&file("expected").unwrap());
    let reduced = read_f64(&file("reduced").unwrap());
    let counted = reduced[2];
    let mut failures = Vec::new();
    for reduction in REDUCTIONS {
        let label = format!("{} [{}, {reduction:?}]", c.name, bk.name);
        // The stored totals are the ones the check uses (sanity of the data).
        let exp = reduced_expectation(&expected, reduction, counted, c.abs, c.rel);
        if reduction != Reduction::None {
            let stored = reduced[if reduction == Reduction::Sum { 0 } else { 1 }];
            assert!(
                close_tol(stored, exp[0].0, 0.0, 1e-9),
                "{label}: stored total {stored} vs Σ of stored rows {}",
                exp[0].0
            );
        }
        let result = if let Some(measure) = measure_of(&c.measure) {
            let (p, _) = read_f32(&file("p").unwrap());
            let q = file("q").map(|f| read_f32(&f).0);
            let pb = Batch::new(&p, c.p_rows.unwrap(), c.cols).form(c.p_form.unwrap());
            let qb = q
                .as_ref()
                .map(|q| Batch::new(q, c.q_rows.unwrap(), c.cols).form(c.q_form.unwrap()));
            let opts = Options::default()
                .reduction(reduction)
                .base(c.base)
                .normalization(c.norm);
            bk.ctx.evaluate(measure, &pb, qb.as_ref(), &opts)
        } else {
            let (q, _) = read_f32(&file("q").unwrap());
            let t = read_i64(&file("targets").unwrap());
            let w = file("weights").map(|f| read_f32(&f).0);
            let qb = Batch::new(&q, c.q_rows.unwrap(), c.cols).form(c.q_form.unwrap());
            let mut opts = NllOptions::default()
                .reduction(reduction)
                .base(c.base)
                .normalization(c.norm)
                .label_smoothing(c.smoothing);
            if let Some(i) = c.ignore {
                opts = opts.ignore_index(i);
            }
            if let Some(w) = &w {
                opts = opts.weights(w);
            }
            // Each reduction passes the targets as another integer type.
            let t32: Vec<i32> = t.iter().map(|&v| v as i32).collect();
            let tu: Vec<u32> = t.iter().map(|&v| v as u32).collect();
            let targets: Targets<'_> = match reduction {
                Reduction::None => (&t).into(),
                Reduction::Sum => (&t32).into(),
                Reduction::Mean if t.iter().all(|&v| v >= 0) && c.ignore.is_none() => (&tu).into(),
                Reduction::Mean => (&t32).into(),
                other => panic!("not covered here: {other:?}"),
            };
            bk.ctx.nll(&qb, targets, &opts)
        };
        match result {
            Err(e) => failures.push(format!("{label}: error {e:?}")),
            Ok(out) => {
                if let Err(e) = check_output(&out, &expected, counted, reduction, c.abs, c.rel) {
                    failures.push(format!("{label}: {e}"));
                    continue;
                }
                if out.backend != bk.ctx.backend() {
                    failures.push(format!("{label}: ran on {:?}", out.backend));
                }
                let want_ppl = c.measure == "nll" && reduction == Reduction::Mean;
                match (want_ppl, out.perplexity) {
                    (false, None) => {}
                    (false, Some(x)) => failures.push(format!("{label}: perplexity {x} given")),
                    (true, None) => failures.push(format!("{label}: no perplexity")),
                    (true, Some(ppl)) => {
                        let (mean, tol) = exp[0];
                        let lb = ln_base(c.base);
                        let want = (mean * lb).exp();
                        // exp(mean in nats): an error δ in the mean is a relative error δ·ln b.
                        let ok = if want.is_nan() {
                            ppl.is_nan()
                        } else {
                            close_tol(ppl, want, 0.0, tol * lb * 1.01 + 1e-6)
                        };
                        if !ok {
                            failures.push(format!("{label}: perplexity {ppl}, expected {want}"));
                        }
                    }
                }
            }
        }
    }
    failures
}

fn run_measure(measure: &str) {
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| c.measure == measure)
        .collect();
    assert!(!cases.is_empty(), "no stored case of {measure}");
    let mut failures = Vec::new();
    for bk in backends_with_cap(CAP) {
        for c in &cases {
            failures.extend(run_case(c, &bk));
        }
    }
    report(&format!("stored {measure} cases"), &failures);
}

#[test]
fn stored_entropy() {
    run_measure("entropy");
}

#[test]
fn stored_cross_entropy() {
    run_measure("cross_entropy");
}

#[test]
fn stored_kl() {
    run_measure("kl");
}

#[test]
fn stored_js() {
    run_measure("js");
}

#[test]
fn stored_nll() {
    run_measure("nll");
}

/// The manifest holds what the tests claim to cover, and its files exist.
#[test]
fn manifest_covers_the_required_cases() {
    let cases = cases();
    for c in &cases {
        for f in c.files.as_object().unwrap().values() {
            let f = f.as_str().unwrap();
            assert!(data_dir().join(f).is_file(), "{}: missing {f}", c.name);
        }
    }
    let has = |pred: &dyn Fn(&Case) -> bool, what: &str| {
        assert!(cases.iter().any(pred), "no stored case: {what}");
    };
    for n in [1, 255, 256, 257] {
        has(
            &|c| c.cols == n && c.measure == "kl",
            &format!("KL with {n} columns"),
        );
    }
    has(
        &|c| c.name.starts_with("zeros"),
        "zero rules / one-hot / +inf",
    );
    has(
        &|c| c.name.starts_with("subnormal"),
        "subnormal probabilities",
    );
    has(&|c| c.base == Base::Two, "base 2");
    has(&|c| c.base == Base::Ten, "base 10");
    has(&|c| c.name.starts_with("counts"), "renormalised counts");
    has(
        &|c| c.measure == "kl" && c.q_form == Some(Form::LogProbs),
        "KL with q as log-probabilities",
    );
    has(
        &|c| c.name == "logits_big_kl",
        "KL from logits of magnitude 3000-7000",
    );
    has(
        &|c| c.name == "logits_big_entropy",
        "entropy from logits of magnitude 3000-7000",
    );
    has(&|c| c.name == "js_zeros", "JS on rows with zeros");
    has(
        &|c| c.name == "nll_logits_ignore",
        "NLL from logits with ignored rows",
    );
    has(&|c| c.name == "nll_probs_rows", "NLL from probabilities");
    has(
        &|c| c.name == "nll_weights_smoothing",
        "NLL with weights and smoothing",
    );
    has(
        &|c| c.q_rows == Some(1) && c.measure == "kl",
        "q with one row",
    );
    has(
        &|c| c.p_rows == Some(1) && c.measure == "kl",
        "p with one row",
    );
    has(&|c| c.name == "nll_all_ignored", "all-ignored NLL");
}
