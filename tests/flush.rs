//! The CPU path on hardware that flushes subnormals: the cases of tests/edge.rs
//! and the SciPy corpus (tests/conformance.rs) with MXCSR's FTZ (results
//! below f32::MIN_POSITIVE flushed to 0) and DAZ (subnormal inputs read as 0)
//! set on every thread, the stand-in for GPUs and fast-math builds that flush.
//! The library decides zeros and subnormals from the bits and scales by powers
//! of two, so the documented results hold there too.
//!
//! The flags are set before `main` (an `.init_array` entry) on the main
//! thread; every thread started later inherits them (POSIX: the floating-point
//! environment is inherited by `pthread_create`), the test harness's threads
//! and rayon's workers included. `flags_reach_every_worker` checks that.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]
#![allow(
    clippy::duplicate_mod,
    reason = "edge.rs and conformance.rs each bring tests/common, as in their own binaries"
)]

#[path = "conformance.rs"]
mod conformance;
#[path = "edge.rs"]
mod edge;

use std::arch::asm;

/// MXCSR's flush-to-zero bit.
const FTZ: u32 = 1 << 15;
/// MXCSR's denormals-are-zero bit.
const DAZ: u32 = 1 << 6;

fn mxcsr() -> u32 {
    let mut v = 0u32;
    // SAFETY: stmxcsr stores the 32-bit control word at the address given.
    unsafe { asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack)) };
    v
}

extern "C" fn set_flush() {
    let v = mxcsr() | FTZ | DAZ;
    // SAFETY: ldmxcsr loads a valid control word (the current one with two
    // mode bits set); no exception is unmasked.
    unsafe { asm!("ldmxcsr [{}]", in(reg) &v, options(nostack)) };
}

#[used]
#[unsafe(link_section = ".init_array")]
static SET_FLUSH: extern "C" fn() = set_flush;

#[test]
fn flags_reach_every_worker() {
    let both = FTZ | DAZ;
    assert_eq!(mxcsr() & both, both, "test thread");
    // the library's workers are rayon's global pool
    for (i, v) in rayon_core::broadcast(|_| mxcsr()).into_iter().enumerate() {
        assert_eq!(v & both, both, "worker {i}");
    }
    // and the hardware flushes: a subnormal input reads as 0, a subnormal
    // result becomes 0
    let tiny = std::hint::black_box(f32::from_bits(1));
    assert_eq!(tiny * std::hint::black_box(1.0f32), 0.0);
    let small = std::hint::black_box(f32::MIN_POSITIVE);
    assert_eq!(small * std::hint::black_box(0.5f32), 0.0);
}

/// KL with subnormal values beside normal ones on the CPU: the f64 value of
/// the documented rules (the cases of edge.rs cover the rest).
#[test]
fn subnormal_terms_on_the_cpu() {
    use kullback::{Backend, Batch, Context, Normalization, Options};
    let ctx = Context::with_backend(Backend::Cpu).expect("cpu context");
    let tiny = f32::from_bits(3);
    // long enough for the vector loops (two blocks), the subnormals at the end
    let cols = 5000;
    let mut p = vec![1.0f32 / 4096.0; cols];
    let mut q = p.clone();
    p[4096..].fill(0.0);
    q[4096..].fill(tiny);
    p[cols - 1] = tiny;
    q[0] = 2.0 / 4096.0;
    q[1] = 0.0 / 4096.0 + f32::MIN_POSITIVE;
    let o = Options::default().normalization(Normalization::AsGiven);
    let out = ctx
        .kl(&Batch::new(&p, 1, cols), &Batch::new(&q, 1, cols), &o)
        .expect("kl");
    let want: f64 = p
        .iter()
        .zip(&q)
        .filter(|(a, _)| **a > 0.0)
        .map(|(&a, &b)| a as f64 * (a as f64 / b as f64).ln())
        .sum();
    let got = out.values[0] as f64;
    assert!(
        (got - want).abs() <= 2e-6 + 2e-5 * want.abs(),
        "{got} vs {want}"
    );
}
