//! A pinned digest of a few hundred outputs per backend: every measure, input
//! form, normalisation and reduction over shapes that reach every code path
//! (short rows, one block, several blocks, long rows), the negative
//! log-likelihood with its options, special values and errors. The digest is
//! a hash of the output bits (and of each error's message), compared with the
//! value pinned below: a change of shape of the code must leave it as it is;
//! a commit that changes bits on purpose re-pins it and says why.
//!
//! The CPU runs with `KULLBACK_CPU_ISA=avx2` (set before anything runs: this
//! binary holds this one test), so the pin does not depend on the machine's
//! best instruction set; the GPU pin is that of lavapipe (llvmpipe), and on any
//! other adapter the test checks that a second run gives the same digest.

mod common;

use common::*;
use kullback::{Base, Batch, Context, Form, Measure, NllOptions, Normalization, Options};

/// Digests of today's bits. Re-pinned:
/// - GPU 0x0fa2_aadf_c584_da34 -> 0x04b1_32d5_9fd4_232f (issue 16): rows of
///   up to 1,024 loads spread over up to 32 threads, vec4 loads where rows
///   start on 16-byte boundaries, batch totals read coalesced: the same
///   values summed in another order.
/// - GPU 0x04b1_32d5_9fd4_232f -> 0x51e7_c99a_befd_52ff (issue 16 §2): the
///   online log-sum-exp raises a row's running maximum once per block of
///   four values (and probabilities being renormalised their power of two),
///   rather than at each new maximum, and the NLL's smoothing weight per
///   class is ε / cols once per row (times w_c) rather than w_c ε / cols per
///   element: 22 of the 429 outputs moved, by at most 3.6e-7 relative; the
///   errors are the same.
const CPU_AVX2: u64 = 0x85df_d5c9_cd05_5ca6;
const GPU_LLVMPIPE: u64 = 0x51e7_c99a_befd_52ff;

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

fn record(h: &mut Fnv, case: usize, out: kullback::Result<kullback::Output>) {
    h.u64(case as u64);
    // DIGEST_DUMP=1 prints each case's output, to find what a change moved
    if std::env::var_os("DIGEST_DUMP").is_some() {
        match &out {
            Ok(o) => eprintln!(
                "case {case}: {:?} {:?}",
                o.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                o.counted
            ),
            Err(e) => eprintln!("case {case}: {e}"),
        }
    }
    if let Err(e) = &out {
        if std::env::var_os("DIGEST_ERRORS").is_some() {
            eprintln!("case {case}: {e}");
        }
    }
    match out {
        Ok(o) => {
            for v in &o.values {
                h.u64(v.to_bits() as u64);
            }
            h.u64(o.counted.to_bits());
            h.u64(o.perplexity.map_or(0, f64::to_bits));
        }
        Err(e) => h.bytes(e.to_string().as_bytes()),
    }
}

const SHAPES: [(usize, usize); 7] = [
    (1, 1),
    (3, 5),
    (64, 16),
    (7, 33),
    (4, 257),
    (2, 4100),
    (2, 9000),
];

const NORMS: [Normalization; 3] = [
    Normalization::Validate,
    Normalization::Renormalize,
    Normalization::AsGiven,
];

fn digest(ctx: &Context) -> (u64, usize) {
    let mut h = Fnv::new();
    let mut case = 0usize;
    let mut rng = Rng::new(2026);
    for (si, &(rows, cols)) in SHAPES.iter().enumerate() {
        let data = |rng: &mut Rng, form: Form| rand_form(rng, rows, cols, form, 0.1);
        for (ni, &norm) in NORMS.iter().enumerate() {
            let reduction = REDUCTIONS[(si + ni + case) % 3];
            let base = [Base::E, Base::Two, Base::Custom(0.5)][(si + ni) % 3];
            let opts = Options::default()
                .reduction(reduction)
                .normalization(norm)
                .base(base);
            for form in FORMS {
                let p = data(&mut rng, form);
                let out = ctx.entropy(&Batch::new(&p, rows, cols).form(form), &opts);
                record(&mut h, case, out);
                case += 1;
            }
            for m in [Measure::CrossEntropy, Measure::Kl, Measure::Js] {
                for (pf, qf, q_rows) in [
                    (Form::Probs, Form::Probs, rows),
                    (Form::Probs, Form::Logits, rows),
                    (Form::Logits, Form::Logits, 1),
                    (Form::LogProbs, Form::Probs, rows),
                ] {
                    let p = data(&mut rng, pf);
                    let q = rand_form(&mut rng, q_rows, cols, qf, 0.1);
                    let out = ctx.evaluate(
                        m,
                        &Batch::new(&p, rows, cols).form(pf),
                        Some(&Batch::new(&q, q_rows, cols).form(qf)),
                        &opts,
                    );
                    record(&mut h, case, out);
                    case += 1;
                }
            }
        }
        // negative log-likelihood: plain, ignored rows, weights, smoothing
        let logits = rand_logits(&mut rng, rows, cols, 3.0, 0.0);
        let mut targets = rand_targets(&mut rng, rows, cols);
        targets[0] = -100;
        let weights: Vec<f32> = (0..cols).map(|c| 0.5 + (c % 3) as f32).collect();
        for (k, reduction) in REDUCTIONS.into_iter().enumerate() {
            let mut o = NllOptions::default()
                .reduction(reduction)
                .ignore_index(-100);
            if k > 0 {
                o = o.weights(&weights);
            }
            if k == 2 {
                o = o.label_smoothing(0.1);
            }
            for form in [Form::Logits, Form::LogProbs] {
                let q = if form == Form::Logits {
                    logits.clone()
                } else {
                    rand_form(&mut rng, rows, cols, form, 0.0)
                };
                let out = ctx.nll(&Batch::new(&q, rows, cols).form(form), &targets, &o);
                record(&mut h, case, out);
                case += 1;
            }
        }
    }
    // special values: zeros meeting zeros, subnormals, infinities, bad values
    let specials: [(&[f32], &[f32]); 6] = [
        (&[0.5, 0.5, 0.0], &[0.5, 0.0, 0.5]),
        (&[1e-40, 1.0, 0.0], &[0.0, 1.0, 1e-40]),
        (&[0.25, 0.75, 0.0], &[f32::NAN, 0.5, 0.5]),
        (&[-0.5, 1.5, 0.0], &[0.5, 0.5, 0.0]),
        (&[1e-45, 3e-45, 0.0], &[3e38, 3e38, 1.0]),
        (&[0.0, 0.0, 1.0], &[0.0, 0.0, 1.0]),
    ];
    for (p, q) in specials {
        for m in MEASURES {
            for norm in NORMS {
                let out = ctx.evaluate(
                    m,
                    &Batch::new(p, 1, 3),
                    Some(&Batch::new(q, 1, 3)),
                    &Options::default().normalization(norm),
                );
                record(&mut h, case, out);
                case += 1;
            }
        }
    }
    (h.0, case)
}

#[test]
fn outputs_match_the_pinned_digest() {
    // SAFETY: this binary's one test sets the variable before any thread of
    // the library (or anything else that reads the environment) runs.
    unsafe { std::env::set_var("KULLBACK_CPU_ISA", "avx2") };
    let cpu = cpu();
    let (d, n) = digest(&cpu);
    eprintln!("cpu (avx2): {n} outputs, digest {d:#018x}");
    let cpu_ok = d == CPU_AVX2;
    if let Some(gpu) = gpu() {
        let (d, n) = digest(&gpu);
        let name = gpu.adapter_name().unwrap_or("").to_string();
        eprintln!("gpu ({name}): {n} outputs, digest {d:#018x}");
        if name.starts_with("llvmpipe") {
            assert_eq!(
                d, GPU_LLVMPIPE,
                "GPU digest of {n} outputs changed on {name}"
            );
        } else {
            assert_eq!(digest(&gpu).0, d, "a second run on {name} gave other bits");
        }
    }
    assert!(cpu_ok, "CPU digest changed");
}
