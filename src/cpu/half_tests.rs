//! Half-precision operands on the CPU: widened in the hand-written loops'
//! loads or converted a segment at a time, they give the records of the f32
//! path on the widened values bit for bit, on every instruction set and
//! thread count, whatever mix of formats p and q come in.

use super::tests::bits;
use super::{block::Isa, run_with};
use crate::job::Job;
use crate::test_support::random::{Rng, rand_probs};
use crate::{Batch, Form, Measure, NllOptions, Normalization, Options, Values};

/// A half format, or f32.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fmt {
    F32,
    F16,
    BF16,
}

/// Values stored in one format, and the f32s they widen to.
struct Stored {
    f16: Vec<half::f16>,
    bf16: Vec<half::bf16>,
    wide: Vec<f32>,
    fmt: Fmt,
}

impl Stored {
    fn new(v: &[f32], fmt: Fmt) -> Stored {
        let f16: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
        let bf16: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
        let wide = match fmt {
            Fmt::F32 => v.to_vec(),
            // `half`'s own widening: an independent reference for ours
            Fmt::F16 => f16.iter().map(|x| x.to_f32()).collect(),
            Fmt::BF16 => bf16.iter().map(|x| x.to_f32()).collect(),
        };
        Stored {
            f16,
            bf16,
            wide,
            fmt,
        }
    }
    fn values(&self, n: usize) -> Values<'_> {
        match self.fmt {
            Fmt::F32 => Values::from(&self.wide[..n]),
            Fmt::F16 => Values::from(&self.f16[..n]),
            Fmt::BF16 => Values::from(&self.bf16[..n]),
        }
    }
}

/// Probability rows, mostly ordinary (the widening loads' path), with a zero,
/// a NaN, a negative value, an infinity, half subnormals (f16: 3e-6; bf16:
/// 1e-39, an f32 subnormal too) and an f32 subnormal in rows of their own.
fn values(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut v = rand_probs(&mut rng, rows, cols, 0.0);
    let specials = [0.0, f32::NAN, -0.25, f32::INFINITY, 3e-6, 1e-39, 1e-41];
    for (k, &x) in specials.iter().enumerate() {
        let r = 1 + 2 * k;
        if r < rows {
            v[r * cols + (7 * k + 3) % cols] = x;
        }
    }
    v
}

/// What the row-sum check of values stored as `f` allows on top of the
/// tolerance (`Values::F16`): the unit roundoff, × (1 + ln cols) for
/// log-probabilities.
fn allowance(f: Fmt, form: Form, cols: usize) -> f32 {
    let u = match f {
        Fmt::F32 => return 0.0,
        Fmt::F16 => 1.0 / 2048.0,
        Fmt::BF16 => 1.0 / 256.0,
    };
    if form == Form::LogProbs {
        u * (1.0 + (cols.max(1) as f32).ln())
    } else {
        u
    }
}

/// `m` of p and q (q of `qrows` rows in `form`; none for entropy).
fn measure_job<'a>(
    m: Measure,
    (p, q): (&'a Stored, &'a Stored),
    (rows, cols, qrows, form): (usize, usize, usize, Form),
    o: &Options,
) -> crate::Result<Job<'a>> {
    let pb = Batch::new(p.values(rows * cols), rows, cols);
    let qb = Batch::new(q.values(qrows * cols), qrows, cols).form(form);
    let q = (m != Measure::Entropy).then_some(qb);
    Job::measure(m, &pb, q.as_ref(), o)
}

/// The NLL of targets `t` under logits `l`.
fn nll_job<'a>(
    l: &'a Stored,
    (rows, cols): (usize, usize),
    t: &[i64],
    o: &NllOptions<'_>,
) -> Job<'a> {
    let b = Batch::new(l.values(rows * cols), rows, cols).form(Form::Logits);
    Job::nll(&b, t.into(), o).expect("nll")
}

fn check(a: &Job<'_>, b: &Job<'_>, what: &str) {
    for isa in Isa::available() {
        let want = bits(&run_with(b, 1, isa));
        for t in [1, 2, 8] {
            assert_eq!(
                bits(&run_with(a, t, isa)),
                want,
                "{what} {isa:?} {t} threads"
            );
        }
    }
}

/// Every measure, normalisation and q form; p and q in every pair of
/// formats with a half one; shapes that hit short rows, whole and partial
/// blocks and segments, rows split over threads, and a row tail that is not
/// a whole step.
#[test]
fn half_records_equal_f32_on_widened_values() {
    use Fmt::*;
    let pairs = [
        (F16, F16),
        (BF16, BF16),
        (F16, F32),
        (F32, BF16),
        (BF16, F16),
    ];
    for &(rows, cols) in &[
        (1usize, 1usize),
        (300, 7),
        (40, 512),
        (16, 4096),
        (15, 4096 + 16 * 5 + 3),
        (2, 70_001),
    ] {
        let p32 = values(rows, cols, 3);
        let q32 = values(rows, cols, 5);
        for (pf, qf) in pairs {
            let p = Stored::new(&p32, pf);
            let q = Stored::new(&q32, qf);
            let pw = Stored::new(&p.wide, F32);
            let qw = Stored::new(&q.wide, F32);
            for norm in [Normalization::Validate, Normalization::Renormalize] {
                let o = Options::default().normalization(norm);
                for m in Measure::ALL {
                    for (qrows, form) in [
                        (rows, Form::Probs),
                        (1, Form::Probs),
                        (rows, Form::LogProbs),
                    ] {
                        let shape = (rows, cols, qrows, form);
                        let a = measure_job(m, (&p, &q), shape, &o);
                        // the f32 call gets the tolerance the half one adds
                        let qu = if m == Measure::Entropy {
                            0.0
                        } else {
                            allowance(qf, form, cols)
                        };
                        let ow =
                            o.tolerance(o.tolerance + allowance(pf, Form::Probs, cols).max(qu));
                        let b = measure_job(m, (&pw, &qw), shape, &ow);
                        let (a, b) = match (a, b) {
                            (Ok(a), Ok(b)) => (a, b),
                            // the f32 path's error (a base, a form the
                            // measure refuses) is the half path's too
                            (Err(a), Err(b)) => {
                                assert_eq!(format!("{a}"), format!("{b}"));
                                continue;
                            }
                            (a, b) => panic!("{a:?} vs {b:?}"),
                        };
                        let what = format!(
                            "{rows}x{cols} {pf:?}/{qf:?} {m:?} {norm:?} q {qrows} {form:?}"
                        );
                        check(&a, &b, &what);
                    }
                }
            }
        }
        // the NLL of half logits, with and without smoothing
        let t: Vec<i64> = (0..rows as i64).map(|r| (r * 7) % cols as i64).collect();
        let l32: Vec<f32> = p32.iter().map(|&x| 3.0 * x.ln()).collect();
        for f in [F16, BF16] {
            let l = Stored::new(&l32, f);
            let lw = Stored::new(&l.wide, F32);
            for eps in [0.0, 0.2] {
                let o = NllOptions::default().label_smoothing(eps);
                let ow = o.tolerance(o.common.tolerance + allowance(f, Form::Logits, cols));
                let (a, b) = (
                    nll_job(&l, (rows, cols), &t, &o),
                    nll_job(&lw, (rows, cols), &t, &ow),
                );
                check(&a, &b, &format!("nll {rows}x{cols} {f:?} {eps}"));
            }
        }
    }
}
