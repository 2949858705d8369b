//! The machine's read bandwidth, measured so that it is at least as fast as
//! the best plain read loop on the machine: a sum with the widest vectors the
//! CPU has (AVX-512, AVX2 or SSE2, chosen at run time), eight independent
//! vector accumulators (the loop is bound by memory, not by add latency, and
//! leaves registers for the loads), one thread per core kept across passes
//! (no spawn inside a timed pass), a warm-up pass, 1 GiB per pass (far beyond
//! the caches), the median of the passes.

use std::sync::Barrier;
use std::time::Instant;

/// Eight accumulators of `W` lanes each: `acc[j] += a[j] (+ b[j])` over
/// blocks of `8 * W` values; compiled once per instruction set below, where
/// it becomes eight vector adds per block with the loads folded in.
#[inline(always)]
fn sum_blocks<const N: usize>(a: &[f32], b: Option<&[f32]>) -> f32 {
    let mut acc = [0.0f32; N];
    match b {
        None => {
            for c in a.chunks_exact(N) {
                for j in 0..N {
                    acc[j] += c[j];
                }
            }
        }
        Some(b) => {
            for (x, y) in a.chunks_exact(N).zip(b.chunks_exact(N)) {
                for j in 0..N {
                    acc[j] += x[j] + y[j];
                }
            }
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn sum_avx512(a: &[f32], b: Option<&[f32]>) -> f32 {
    sum_blocks::<128>(a, b) // 8 zmm
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sum_avx2(a: &[f32], b: Option<&[f32]>) -> f32 {
    sum_blocks::<64>(a, b) // 8 ymm
}

fn sum_baseline(a: &[f32], b: Option<&[f32]>) -> f32 {
    sum_blocks::<32>(a, b) // 8 xmm (SSE2) or what the target has
}

/// A read loop over one or two streams.
type ReadLoop = fn(&[f32], Option<&[f32]>) -> f32;

/// The widest read loop this CPU runs, and its name.
pub(crate) fn read_loop() -> (ReadLoop, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return (|a, b| unsafe { sum_avx512(a, b) }, "avx512");
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return (|a, b| unsafe { sum_avx2(a, b) }, "avx2");
        }
    }
    (sum_baseline, "baseline")
}

/// Read bandwidth in bytes/s over `streams` (1 or 2) buffers read side by
/// side (as the kernels read p and q), on every core: the median of `passes`
/// timed passes after one warm-up pass. Returns (bytes/s, instruction set).
pub(crate) fn read_bandwidth(streams: usize, passes: usize) -> (f64, &'static str) {
    const BLOCK: usize = 128;
    let total = 1usize << 30;
    let n = total / 4 / streams / BLOCK * BLOCK;
    let bufs: Vec<Vec<f32>> = (0..streams).map(|s| vec![1.0 + s as f32; n]).collect();
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per = n.div_ceil(threads).div_ceil(BLOCK) * BLOCK;
    let (read, isa) = read_loop();
    let start = Barrier::new(threads + 1);
    let end = Barrier::new(threads + 1);
    let rounds = passes.max(1) + 1;
    let mut rates = Vec::with_capacity(rounds);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (bufs, start, end) = (&bufs, &start, &end);
            s.spawn(move || {
                let (lo, hi) = ((t * per).min(n), ((t + 1) * per).min(n));
                let a = &bufs[0][lo..hi];
                let b = bufs.get(1).map(|b| &b[lo..hi]);
                for _ in 0..rounds {
                    start.wait();
                    std::hint::black_box(read(std::hint::black_box(a), b));
                    end.wait();
                }
            });
        }
        for round in 0..rounds {
            start.wait();
            let t0 = Instant::now();
            end.wait();
            let dt = t0.elapsed().as_secs_f64();
            if round > 0 {
                rates.push((n * streams * 4) as f64 / dt);
            }
        }
    });
    (crate::median(&mut rates), isa)
}
