//! The one seeded generator of the tests, and the inputs drawn from it.
//!
//! Every test (the integration tests under tests/ and the unit tests inside
//! src/) draws its random inputs here, so a failing case is reproduced from
//! its seed alone. The crate's unit tests include this file through
//! `crate::test_support` (src/lib.rs), so it names the library as `kullback`
//! (the crate root declares `extern crate self as kullback` for its tests).
//!
//! [`Rng`], [`rand_probs`], [`rand_logits`], [`log_of`], [`rand_form`] and
//! [`rand_targets`] feed tests/digest.rs, which pins the outputs they lead
//! to: their draws must stay as they are, bit for bit.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by every test binary and the unit tests, each using a part of it"
)]

use kullback::Form;

/// A small seeded generator (SplitMix64): the tests need no `rand`.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator with seed `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// 32 random bits (an f32's bit pattern, a seed of a 32-bit sweep).
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n
    }
}

/// Random probability rows (normalised in f64, then rounded to f32), about
/// `zero_frac` of the entries exactly 0 (never a whole row).
pub fn rand_probs(rng: &mut Rng, rows: usize, cols: usize, zero_frac: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let mut x: Vec<f64> = (0..cols)
            .map(|_| {
                if rng.uniform() < zero_frac {
                    0.0
                } else {
                    -rng.uniform().ln() * rng.uniform()
                }
            })
            .collect();
        if x.iter().all(|&v| v == 0.0) {
            x[rng.below(cols)] = 1.0;
        }
        let s: f64 = x.iter().sum();
        out.extend(x.iter().map(|v| (v / s) as f32));
    }
    out
}

/// Random probability rows as [`rand_probs`] draws them, with exact zeros
/// where `zero(row, col)` says (a row of only zeros gets a 1 in column 0).
pub fn rand_probs_where(
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    zero: impl Fn(usize, usize) -> bool,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let mut x: Vec<f64> = (0..cols)
            .map(|c| {
                if zero(r, c) {
                    0.0
                } else {
                    -rng.uniform().ln() * rng.uniform()
                }
            })
            .collect();
        if x.iter().all(|&v| v == 0.0) {
            x[0] = 1.0;
        }
        let s: f64 = x.iter().sum();
        out.extend(x.iter().map(|v| (v / s) as f32));
    }
    out
}

/// Random f64 probability rows summing to 1 in f64 (most values change when
/// rounded to f32): about `zero_frac` of the entries exactly 0 and
/// `tiny_frac` exactly `tiny` (a value that stays non-zero in f32, such as
/// 1e-30 or the subnormal 1e-40; the others are divided so that the row sums
/// to 1 within `tiny`s); never a row of zeros.
pub fn rand_probs_f64(
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    zero_frac: f64,
    tiny_frac: f64,
    tiny: f64,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let mut x: Vec<(f64, bool)> = (0..cols)
            .map(|_| {
                let u = rng.uniform();
                if u < zero_frac {
                    (0.0, false)
                } else if u < zero_frac + tiny_frac {
                    (tiny, true)
                } else {
                    (0.05 + rng.uniform(), false)
                }
            })
            .collect();
        if x.iter().all(|&(v, is_tiny)| v == 0.0 || is_tiny) {
            x[0] = (1.0, false);
        }
        let s: f64 = x.iter().filter(|(_, t)| !t).map(|(v, _)| v).sum();
        out.extend(x.iter().map(|&(v, t)| if t { v } else { v / s }));
    }
    out
}

/// Random logits: offset + scale · N(0, 1), rounded to f32.
pub fn rand_logits(rng: &mut Rng, rows: usize, cols: usize, scale: f64, offset: f64) -> Vec<f32> {
    (0..rows * cols)
        .map(|_| (offset + scale * rng.normal()) as f32)
        .collect()
}

/// Random f64 logits uniform in [-half_range, half_range], about `mask_frac`
/// of them -inf (masked); column 0 is never masked, so every row can be
/// normalised.
pub fn rand_logits_f64(
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    half_range: f64,
    mask_frac: f64,
) -> Vec<f64> {
    (0..rows * cols)
        .map(|i| {
            if i % cols != 0 && rng.uniform() < mask_frac {
                f64::NEG_INFINITY
            } else {
                (2.0 * rng.uniform() - 1.0) * half_range
            }
        })
        .collect()
}

/// Random counts: whole numbers in [lo, hi], as f32 (rows for
/// `Normalization::Renormalize`).
pub fn rand_counts(rng: &mut Rng, n: usize, lo: u64, hi: u64) -> Vec<f32> {
    (0..n)
        .map(|_| (lo + rng.next_u64() % (hi - lo + 1)) as f32)
        .collect()
}

/// ln of each probability, rounded to f32 (0 becomes -inf).
pub fn log_of(p: &[f32]) -> Vec<f32> {
    p.iter().map(|&v| (v as f64).ln() as f32).collect()
}

/// Random rows in `form`: probabilities with about `zero_frac` zeros, their
/// logs, or logits with scale 3 (no masked classes).
pub fn rand_form(rng: &mut Rng, rows: usize, cols: usize, form: Form, zero_frac: f64) -> Vec<f32> {
    if form == Form::Probs {
        rand_probs(rng, rows, cols, zero_frac)
    } else if form == Form::LogProbs {
        log_of(&rand_probs(rng, rows, cols, zero_frac))
    } else if form == Form::Logits {
        rand_logits(rng, rows, cols, 3.0, 0.0)
    } else {
        panic!("not covered here: {form:?}")
    }
}

/// Random class targets in [0, classes).
pub fn rand_targets(rng: &mut Rng, n: usize, classes: usize) -> Vec<i64> {
    (0..n).map(|_| rng.below(classes) as i64).collect()
}
