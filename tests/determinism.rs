//! Same input, same backend, same device: bit-identical output, every run (and
//! from a second context on the same backend).

mod common;

use common::*;
use kullback::{Base, Batch, Form, NllOptions, Normalization, Options, Output};

fn bits(out: &Output) -> Vec<u32> {
    out.values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn two_runs_are_bit_identical() {
    let mut rng = Rng::new(11);
    // Multi-block rows (> 2048 columns), many rows, and a one-row batch of 100,003.
    let shapes = [(64, 3001), (2000, 17), (1, 100_003)];
    let mut f = Vec::new();
    let mut compared = 0usize;
    for (rows, cols) in shapes {
        for form in FORMS {
            let p = rand_form(&mut rng, rows, cols, form, 0.1);
            let q = rand_form(&mut rng, rows, cols, form, 0.0);
            let t = rand_targets(&mut rng, rows, cols);
            let mut bks = backends_with_cap(64 * 1024);
            // A second context on each backend: the same device kind, the same bits.
            bks.push(Bk {
                name: "cpu#2".into(),
                ctx: cpu(),
            });
            let mut firsts: Vec<(String, Vec<Vec<u32>>)> = Vec::new();
            for bk in &bks {
                let mut outs = Vec::new();
                for reduction in REDUCTIONS {
                    let norms: &[Normalization] = if form == Form::Logits {
                        &[Normalization::Validate]
                    } else {
                        &[Normalization::Validate, Normalization::Renormalize]
                    };
                    for &norm in norms {
                        let o = Options::default()
                            .reduction(reduction)
                            .normalization(norm)
                            .base(Base::Two);
                        for m in MEASURES {
                            let run = || {
                                eval(
                                    &bk.ctx,
                                    m,
                                    Input::new(&p, rows, form),
                                    Some(Input::new(&q, rows, form)),
                                    cols,
                                    &o,
                                )
                            };
                            let label = format!(
                                "{rows}x{cols} {m:?} {form:?} {norm:?} {reduction:?} [{}]",
                                bk.name
                            );
                            match (run(), run()) {
                                (Ok(a), Ok(b)) => {
                                    compared += 1;
                                    if bits(&a) != bits(&b) {
                                        f.push(format!(
                                            "{label}: {:?} then {:?}",
                                            a.values, b.values
                                        ));
                                    }
                                    if a.values.iter().all(|v| *v == 0.0)
                                        && m != kullback::Measure::Entropy
                                    {
                                        f.push(format!("{label}: all zero, suspicious"));
                                    }
                                    outs.push(bits(&a));
                                }
                                (a, b) => f.push(format!("{label}: {a:?} / {b:?}")),
                            }
                        }
                    }
                    let qb = Batch::new(&q, rows, cols).form(form);
                    let o = NllOptions::default()
                        .reduction(reduction)
                        .label_smoothing(0.1);
                    let label = format!("{rows}x{cols} nll {form:?} {reduction:?} [{}]", bk.name);
                    match (bk.ctx.nll(&qb, &t, &o), bk.ctx.nll(&qb, &t, &o)) {
                        (Ok(a), Ok(b)) => {
                            compared += 1;
                            if bits(&a) != bits(&b) {
                                f.push(format!("{label}: {:?} then {:?}", a.values, b.values));
                            }
                            outs.push(bits(&a));
                        }
                        (a, b) => f.push(format!("{label}: {a:?} / {b:?}")),
                    }
                }
                firsts.push((bk.name.clone(), outs));
            }
            // The two CPU contexts agree bit for bit.
            let cpu1 = firsts.iter().find(|(n, _)| n == "cpu");
            let cpu2 = firsts.iter().find(|(n, _)| n == "cpu#2");
            if let (Some(a), Some(b)) = (cpu1, cpu2) {
                if a.1 != b.1 {
                    f.push(format!("{rows}x{cols} {form:?}: two CPU contexts differ"));
                }
            }
        }
    }
    assert!(compared > 0 || !f.is_empty(), "nothing compared");
    report("determinism", &f);
}

#[test]
fn two_gpu_contexts_are_bit_identical() {
    let Some(a) = gpu() else { return };
    let b = kullback::Context::with_backend(kullback::Backend::Gpu).expect("second GPU context");
    let mut rng = Rng::new(12);
    let (rows, cols) = (33, 5000);
    let p = rand_form(&mut rng, rows, cols, Form::Logits, 0.0);
    let q = rand_form(&mut rng, rows, cols, Form::Logits, 0.0);
    for reduction in REDUCTIONS {
        let o = Options::default().reduction(reduction);
        let pb = Batch::new(&p, rows, cols).form(Form::Logits);
        let qb = Batch::new(&q, rows, cols).form(Form::Logits);
        let x = a.kl(&pb, &qb, &o).expect("kl on the first context");
        let y = b.kl(&pb, &qb, &o).expect("kl on the second context");
        assert_eq!(
            bits(&x),
            bits(&y),
            "{reduction:?}: {:?} vs {:?}",
            x.values,
            y.values
        );
        let want = ref_measure(
            kullback::Measure::Kl,
            Input::new(&p, rows, Form::Logits),
            Some(Input::new(&q, rows, Form::Logits)),
            cols,
            Normalization::Validate,
            Base::E,
        );
        assert_output(
            "second GPU context",
            &y,
            &want,
            rows as f64,
            reduction,
            ABS_TOL,
            REL_TOL,
        );
    }
}
