//! Issue 14 item 3, judged by the process's resident memory (not by what
//! the pool counts): after each call of 32-160 MiB of input, the process
//! falls back to within the pool's cap plus a small constant of where it
//! was before the calls. One test in this binary, so no other test's memory
//! is counted.

mod common;

use kullback::{Backend, Batch, Context, ContextOptions, Options};

/// Resident bytes of this process (/proc/self/statm).
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

const MIB: u64 = 1 << 20;

#[test]
fn resident_memory_falls_back_after_each_call() {
    let cap = 32 * MIB;
    let Some(ctx) = common::gpu_or_skip(Context::with_options(
        ContextOptions::default()
            .backend(Backend::Gpu)
            .pool_bytes(cap),
    )) else {
        return;
    };
    let cols = 1000;
    let max_rows = (80 * MIB / 4 / cols as u64) as usize;
    let mk = |seed| common::rand_counts(&mut common::Rng::new(seed), max_rows * cols, 1, 1000);
    let (p, q) = (mk(1), mk(2));
    let o = Options::default().normalization(kullback::Normalization::Renormalize);
    // warm: pipelines built, allocator arenas touched
    ctx.kl(
        &Batch::new(&p[..cols * 10], 10, cols),
        &Batch::new(&q[..cols * 10], 10, cols),
        &o,
    )
    .expect("warm call");
    let base = rss();
    let slack = 48 * MIB;
    let mut seen = Vec::new();
    for mib in [16u64, 24, 32, 48, 64, 80, 40] {
        let rows = (mib * MIB / 4 / cols as u64) as usize;
        let n = rows * cols;
        let out = ctx
            .kl(
                &Batch::new(&p[..n], rows, cols),
                &Batch::new(&q[..n], rows, cols),
                &o,
            )
            .expect("kl");
        assert_eq!(out.values.len(), rows);
        drop(out);
        let now = rss();
        seen.push((2 * mib, now.saturating_sub(base) / MIB));
        assert!(
            now <= base + cap + slack,
            "after a call over {} MiB of input the process holds {} MiB more than before \
             (cap {} MiB + {} MiB); so far (input MiB, growth MiB): {seen:?}",
            2 * mib,
            now.saturating_sub(base) / MIB,
            cap / MIB,
            slack / MIB
        );
    }
    ctx.trim();
    assert_eq!(ctx.kept_bytes(), 0);
    eprintln!("(input MiB, resident growth MiB) per call: {seen:?}");
}
