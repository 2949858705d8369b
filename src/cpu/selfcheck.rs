//! A check, once per process, that the kernels of an instruction set agree
//! with those of a reference set before the backend trusts them: AVX-512
//! loops are chosen at run time on machines this project's CI does not have,
//! so a machine that runs them first compares them with the AVX2 loops on a
//! battery of rows (every measure and form; zeros, subnormals, bad values,
//! rows of one block and of several) and falls back to AVX2 if any record
//! differs in its status or beyond twice the accuracy bound.

use super::block::Isa;
use crate::batch::{Batch, Targets};
use crate::job::Job;
use crate::measure::{Form, Measure, NllOptions, Normalization, Options};
use crate::record::Record;

/// Two backends each within abs 2e-6 + rel 2e-5 of float64 are within twice
/// that of each other.
fn close(a: f32, b: f32) -> bool {
    if a.is_nan() || b.is_nan() || a.is_infinite() || b.is_infinite() {
        return a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    }
    ((a - b).abs() as f64) <= 4e-6 + 4e-5 * (b.abs() as f64)
}

fn same(a: &[Record], b: &[Record]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.code == y.code
                && x.column == y.column
                && x.index == y.index
                && close(x.value, y.value)
        })
}

/// Rows of `cols` values with the specials the kernels treat apart.
fn rows(n: usize, cols: usize, seed: u32, form: Form) -> Vec<f32> {
    let mut s = seed | 1;
    let mut v: Vec<f32> = (0..n * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 + 1e-3
        })
        .collect();
    for (r, row) in v.chunks_mut(cols).enumerate() {
        let sum: f32 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= sum);
        match r % 5 {
            1 => row[r % cols] = 0.0,
            2 => row[(r * 7) % cols] = 1e-40,
            3 if r > 5 => row[cols / 2] = f32::NAN,
            4 if r > 5 => row[cols - 1] = -0.25,
            _ => {}
        }
        if form != Form::Probs {
            row.iter_mut().for_each(|x| *x = x.ln());
        }
    }
    v
}

/// Whether the kernels for `isa` give the records of those for `reference`.
pub(super) fn agrees(isa: Isa, reference: Isa) -> bool {
    let run = |job: &Job<'_>, isa: Isa| {
        let mut out = Vec::new();
        super::fill(job, 1, isa, &mut out).map(|()| out).ok()
    };
    let check = |job: &Job<'_>| match (run(job, isa), run(job, reference)) {
        (Some(a), Some(b)) => same(&a, &b),
        _ => false,
    };
    for (n, cols) in [(11usize, 16usize), (11, 37), (6, 1000), (4, 9000)] {
        for (pf, qf, norm) in [
            (Form::Probs, Form::Probs, Normalization::AsGiven),
            (Form::Probs, Form::Probs, Normalization::Validate),
            (Form::Probs, Form::Logits, Normalization::Renormalize),
            (Form::LogProbs, Form::Logits, Normalization::AsGiven),
        ] {
            let p = rows(n, cols, 7, pf);
            let q = rows(n, cols, 11, qf);
            let opts = Options::default().normalization(norm);
            let (pb, qb) = (
                Batch::new(&p, n, cols).form(pf),
                Batch::new(&q, n, cols).form(qf),
            );
            for m in Measure::ALL {
                let job = Job::measure(m, &pb, m.needs_q().then_some(&qb), &opts);
                if !job.is_ok_and(|j| check(&j)) {
                    return false;
                }
            }
            let targets: Vec<i64> = (0..n as i64).map(|r| (r * 3) % cols as i64).collect();
            let nll = NllOptions::default().normalization(norm);
            let job = Job::nll(&qb, Targets::I64(&targets), &nll);
            if !job.is_ok_and(|j| check(&j)) {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check itself: kernels that agree pass it (the instruction sets of
    /// this machine against the baseline), and its comparison catches a
    /// status or a value that differs.
    #[test]
    fn agreeing_kernels_pass_and_differences_are_caught() {
        for isa in Isa::available() {
            assert!(agrees(isa, Isa::Base), "{isa:?}");
        }
        let r = Record {
            value: 1.0,
            ..Record::default()
        };
        assert!(same(&[r], &[r]));
        assert!(!same(&[r], &[Record { value: 1.001, ..r }]));
        assert!(!same(&[r], &[Record { code: 1, ..r }]));
        assert!(!same(&[r], &[]));
        assert!(close(f32::INFINITY, f32::INFINITY) && !close(f32::INFINITY, 1.0));
    }
}
