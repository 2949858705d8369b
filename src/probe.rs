//! The CPU rate `Backend::Auto` measures instead of assuming (once per
//! process; the adapter's upload rate is measured in `gpu::upload`). Short:
//! a decision that costs more than the calls it places would defeat its
//! purpose.

use std::sync::OnceLock;
use std::time::Instant;

use crate::batch::Batch;
use crate::measure::{Form, Measure};

/// Columns × rows of the CPU probe: 2 × 8 MiB of probabilities (KL), read as
/// 8 MiB of logits too (entropy of logits: one exp per element).
const PROBE_COLS: usize = 4096;
const PROBE_ROWS: usize = 512;

/// Input bytes per second of the CPU backend on this machine for
/// (probabilities, logits): the faster of two runs each (the first warms the
/// threads and pages), ~10 ms in all on a 2-core machine, 16 MiB of input.
/// `eval` runs a measure on the CPU backend (`true`: it succeeded).
pub(crate) fn cpu_rates(
    eval: &dyn Fn(Measure, &Batch, Option<&Batch>) -> bool,
) -> Option<(f64, f64)> {
    static RATES: OnceLock<Option<(f64, f64)>> = OnceLock::new();
    *RATES.get_or_init(|| {
        let n = PROBE_ROWS * PROBE_COLS;
        let mut p = crate::error::try_vec(n, "the CPU probe").ok()?;
        p.extend((0..n).map(|i| (1 + (i * 2_654_435_761) % 1013) as f32));
        let row_sums: Vec<f32> = p.chunks(PROBE_COLS).map(|r| r.iter().sum()).collect();
        for (r, row) in p.chunks_mut(PROBE_COLS).enumerate() {
            row.iter_mut().for_each(|x| *x /= row_sums[r]);
        }
        let mut q = p.clone();
        q.reverse();
        let time = |f: &dyn Fn() -> bool| -> Option<f64> {
            let mut best = f64::INFINITY;
            for _ in 0..2 {
                let t = Instant::now();
                if !f() {
                    return None;
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            Some(best)
        };
        let (rows, cols) = (PROBE_ROWS, PROBE_COLS);
        let kl = time(&|| {
            let (bp, bq) = (
                Batch::new(&p[..], rows, cols),
                Batch::new(&q[..], rows, cols),
            );
            eval(Measure::Kl, &bp, Some(&bq))
        })?;
        let lse = time(&|| {
            let b = Batch::new(&p[..], rows, cols).form(Form::Logits);
            eval(Measure::Entropy, &b, None)
        })?;
        let bytes = (n * 4) as f64;
        let rates = (2.0 * bytes / kl, bytes / lse);
        log::debug!(
            "kullback: CPU probe: {:.2} GB/s of probabilities, {:.2} GB/s of logits",
            rates.0 / 1e9,
            rates.1 / 1e9
        );
        Some(rates)
    })
}
