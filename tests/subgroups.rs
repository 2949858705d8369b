//! The GPU reductions with subgroup operations (where the device has
//! `wgpu::Features::SUBGROUP`: lavapipe offers them, at subgroup size 8) give
//! the same bits as the tree in workgroup memory alone: per-row results over
//! short rows (several rows per workgroup), one-block rows, long rows (partial
//! states merged by the separate merge pass), two-pass normalisation, online
//! (logits) states, the negative log-likelihood, special values and errors,
//! and batch totals over one and several levels. The values themselves are
//! checked against float64 by the other GPU tests, which run with subgroups
//! on where the adapter has them (`ContextOptions::subgroups`, default on).

mod common;

use common::*;
use kullback::{
    Backend, Batch, Context, ContextOptions, Form, Measure, NllOptions, Normalization, Options,
    Reduction,
};

fn context(subgroups: bool) -> Option<Context> {
    gpu_or_skip(Context::with_options(
        ContextOptions::default()
            .backend(Backend::Gpu)
            .subgroups(subgroups),
    ))
}

/// Whether the adapter the context runs on offers subgroups to wgpu.
fn adapter_offers_subgroups(ctx: &Context) -> bool {
    use kullback::wgpu;
    let name = ctx.adapter_name().unwrap_or_default().to_string();
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .filter(|a| a.get_info().name == name)
        .any(|a| a.features().contains(wgpu::Features::SUBGROUP))
}

fn bits(out: kullback::Result<kullback::Output>) -> Result<Vec<u32>, String> {
    out.map(|o| o.values.iter().map(|v| v.to_bits()).collect())
        .map_err(|e| e.to_string())
}

#[test]
fn subgroup_reductions_give_the_trees_bits() {
    let (Some(on), Some(off)) = (context(true), context(false)) else {
        return;
    };
    assert!(!off.uses_subgroups(), "subgroups(false) still uses them");
    let offered = adapter_offers_subgroups(&on);
    assert_eq!(
        on.uses_subgroups(),
        offered,
        "subgroups(true) on {:?}, which offers them: {offered}",
        on.adapter_name()
    );
    eprintln!(
        "adapter {:?}: subgroups {}",
        on.adapter_name(),
        if offered {
            "offered and used"
        } else {
            "not offered: both contexts run the tree"
        }
    );
    let mut rng = Rng::new(16);
    let mut cases = 0;
    let mut same = |label: String, a: kullback::Result<kullback::Output>, b| {
        assert_eq!(bits(a), bits(b), "{label}: subgroups on and off differ");
        cases += 1;
    };
    // rows x cols: several rows per workgroup (1 to 32 threads per row), one
    // block, long rows merged by the merge pass (scalar: odd columns; vec4),
    // and enough rows for a two-level batch total
    let shapes = [
        (1, 1),
        (3, 5),
        (64, 16),
        (7, 33),
        (300, 100),
        (4, 257),
        (2, 9000),
        (3, 70_001),
        (2, 40_000),
        (20_000, 3),
    ];
    for &(rows, cols) in &shapes {
        for reduction in [Reduction::None, Reduction::Sum, Reduction::Mean] {
            for norm in [Normalization::AsGiven, Normalization::Renormalize] {
                let opts = Options::default().reduction(reduction).normalization(norm);
                // per-row values do not depend on the reduction: totals of one measure
                let measures: &[Measure] = if reduction == Reduction::None {
                    &[Measure::Kl, Measure::Js, Measure::CrossEntropy]
                } else {
                    &[Measure::Kl]
                };
                for &m in measures {
                    for (pf, qf) in [(Form::Probs, Form::Probs), (Form::Logits, Form::Logits)] {
                        let p = rand_form(&mut rng, rows, cols, pf, 0.1);
                        let q = rand_form(&mut rng, rows, cols, qf, 0.1);
                        let pb = Batch::new(&p, rows, cols).form(pf);
                        let qb = Batch::new(&q, rows, cols).form(qf);
                        same(
                            format!("{m:?} {pf:?}/{qf:?} {rows}x{cols} {reduction:?} {norm:?}"),
                            on.evaluate(m, &pb, Some(&qb), &opts),
                            off.evaluate(m, &pb, Some(&qb), &opts),
                        );
                    }
                }
                let p = rand_form(&mut rng, rows, cols, Form::LogProbs, 0.1);
                let pb = Batch::new(&p, rows, cols).form(Form::LogProbs);
                same(
                    format!("entropy {rows}x{cols} {reduction:?} {norm:?}"),
                    on.entropy(&pb, &opts),
                    off.entropy(&pb, &opts),
                );
            }
            let logits = rand_logits(&mut rng, rows, cols, 3.0, 0.0);
            let mut targets = rand_targets(&mut rng, rows, cols);
            targets[0] = -100;
            let o = NllOptions::default()
                .reduction(reduction)
                .ignore_index(-100)
                .label_smoothing(0.1);
            let qb = Batch::new(&logits, rows, cols).form(Form::Logits);
            same(
                format!("nll {rows}x{cols} {reduction:?}"),
                on.nll(&qb, &targets, &o),
                off.nll(&qb, &targets, &o),
            );
        }
    }
    // special values in a long row and among many rows: zeros, subnormals,
    // +inf terms, and a bad value (the first bad row and column must survive
    // the reduction)
    for &(rows, cols) in &[(2, 70_001), (20_000, 3)] {
        for bad in [None, Some(f32::NAN), Some(-0.5)] {
            let mut p = rand_form(&mut rng, rows, cols, Form::Probs, 0.2);
            let mut q = rand_form(&mut rng, rows, cols, Form::Probs, 0.2);
            let n = rows * cols;
            p[n / 3] = 1e-40;
            q[n / 3 + 1] = 1e-42;
            q[n / 2] = 0.0;
            p[n / 2] = 0.25;
            if let Some(v) = bad {
                p[n - 2] = v;
                q[n / 4] = v;
            }
            for reduction in [Reduction::None, Reduction::Sum, Reduction::Mean] {
                let opts = Options::default()
                    .reduction(reduction)
                    .normalization(Normalization::AsGiven);
                let pb = Batch::new(&p, rows, cols);
                let qb = Batch::new(&q, rows, cols);
                for m in [Measure::Kl, Measure::Js] {
                    same(
                        format!("{m:?} specials {bad:?} {rows}x{cols} {reduction:?}"),
                        on.evaluate(m, &pb, Some(&qb), &opts),
                        off.evaluate(m, &pb, Some(&qb), &opts),
                    );
                }
            }
        }
    }
    eprintln!("{cases} outputs bit-identical with and without subgroups");
}
