//! The GPU and the CPU agree within the tolerance on random batches of every
//! measure, form, normalisation and reduction (and both agree with the f64
//! reference). Skipped with a note when there is no GPU adapter, unless
//! KULLBACK_REQUIRE_GPU=1.

mod common;

use common::*;
use kullback::{Base, Batch, NllOptions, Normalization, Options, Output, Reduction};

/// |gpu − cpu| within twice the bound around the CPU value (each side is
/// within the bound of the true value).
fn agree(label: &str, g: &Output, c: &Output, f: &mut Vec<String>) {
    if g.values.len() != c.values.len() {
        f.push(format!(
            "{label}: {} vs {} values",
            g.values.len(),
            c.values.len()
        ));
        return;
    }
    // A sum's bound is the rows' bounds summed.
    let rows = if c.reduction == Reduction::Sum {
        c.rows as f64
    } else {
        1.0
    };
    for (i, (&a, &b)) in g.values.iter().zip(&c.values).enumerate() {
        if !close_tol(a as f64, b as f64, 2.0 * ABS_TOL * rows, 2.0 * REL_TOL) {
            f.push(format!("{label} [{i}]: gpu {a:e}, cpu {b:e}"));
        }
    }
    if !close_tol(g.counted, c.counted, 0.0, 1e-6) {
        f.push(format!(
            "{label}: counted gpu {} cpu {}",
            g.counted, c.counted
        ));
    }
}

#[test]
fn gpu_and_cpu_agree_on_random_batches() {
    let Some(gpu) = gpu() else { return };
    let capped = gpu_capped(64 * 1024).expect("capped GPU context");
    let cpu = cpu();
    let mut rng = Rng::new(21);
    let mut f = Vec::new();
    let mut compared = 0;
    for &(rows, cols) in &[(1, 1), (7, 3), (40, 300), (5, 5000), (3, 33_000)] {
        for pf in FORMS {
            for qf in FORMS {
                let p = rand_form(&mut rng, rows, cols, pf, 0.15);
                let q = rand_form(&mut rng, rows, cols, qf, 0.05);
                for norm in [
                    Normalization::Validate,
                    Normalization::Renormalize,
                    Normalization::AsGiven,
                ] {
                    // Every reduction under Validate; per-row values under the others.
                    let reductions: &[Reduction] = if norm == Normalization::Validate {
                        &REDUCTIONS
                    } else {
                        &[Reduction::None]
                    };
                    for &reduction in reductions {
                        let o = Options::default()
                            .reduction(reduction)
                            .normalization(norm)
                            .base(Base::Ten);
                        for m in MEASURES {
                            let pi = Input::new(&p, rows, pf);
                            let qi = Some(Input::new(&q, rows, qf));
                            let label =
                                format!("{rows}x{cols} {m:?} {pf:?}/{qf:?} {norm:?} {reduction:?}");
                            let c = eval(&cpu, m, pi, qi, cols, &o);
                            for (name, ctx) in [("gpu", &gpu), ("gpu-cap", &capped)] {
                                match (eval(ctx, m, pi, qi, cols, &o), &c) {
                                    (Ok(g), Ok(c)) => {
                                        compared += 1;
                                        agree(&format!("{label} {name}"), &g, c, &mut f);
                                    }
                                    (Err(a), Err(b)) if a.to_string() == b.to_string() => {}
                                    (g, c) => {
                                        f.push(format!("{label} {name}: gpu {g:?}, cpu {c:?}"))
                                    }
                                }
                            }
                        }
                    }
                }
            }
            // NLL with weights, smoothing and ignored rows.
            let q = rand_form(&mut rng, rows, cols, pf, 0.0);
            let mut t = rand_targets(&mut rng, rows, cols);
            t[0] = -100;
            let w: Vec<f32> = (0..cols).map(|_| rng.uniform() as f32 + 0.1).collect();
            for reduction in REDUCTIONS {
                let o = NllOptions::default()
                    .reduction(reduction)
                    .ignore_index(-100)
                    .weights(&w)
                    .label_smoothing(0.05);
                let qb = Batch::new(&q, rows, cols).form(pf);
                let label = format!("{rows}x{cols} nll {pf:?} {reduction:?}");
                let c = cpu.nll(&qb, &t, &o);
                for (name, ctx) in [("gpu", &gpu), ("gpu-cap", &capped)] {
                    match (ctx.nll(&qb, &t, &o), &c) {
                        (Ok(g), Ok(c)) => {
                            compared += 1;
                            agree(&format!("{label} {name}"), &g, c, &mut f);
                        }
                        (g, c) => f.push(format!("{label} {name}: gpu {g:?}, cpu {c:?}")),
                    }
                }
            }
        }
    }
    assert!(compared > 0 || !f.is_empty());
    report("gpu vs cpu", &f);
}
