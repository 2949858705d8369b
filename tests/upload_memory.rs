//! The staging ring bounds the host memory an upload adds: the peak resident
//! memory of a call over 2 × 96 MiB of input, on a device without
//! `MAPPABLE_PRIMARY_BUFFERS` (every upload through the ring), stays within
//! the device's copy of the input (host memory on a software adapter) plus
//! the ring and a small constant; a whole-size `write_buffer` would add the
//! input's size again. One test in this binary, so no other test's memory is
//! counted.

use kullback::wgpu;
use kullback::{Batch, Context, ContextOptions, Options};

mod common;

const MIB: u64 = 1 << 20;

/// (current, peak) resident bytes of this process.
fn rss() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").expect("status");
    let kib = |key: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in /proc/self/status"))
    };
    (kib("VmRSS:") * 1024, kib("VmHWM:") * 1024)
}

#[test]
fn the_ring_bounds_what_an_upload_adds() {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    let Some(adapter) = common::gpu_or_skip(adapters.into_iter().next().ok_or("no adapter")) else {
        return;
    };
    let software = adapter.get_info().device_type == wgpu::DeviceType::Cpu;
    let desc = wgpu::DeviceDescriptor {
        label: Some("ring-memory"),
        required_limits: adapter.limits(),
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc)).expect("device");
    let ctx =
        Context::from_device_with_options(device, queue, ContextOptions::default().pool_bytes(0))
            .expect("context");
    let cols = 4096;
    let rows = (96 * MIB / 4 / cols as u64) as usize;
    let mut rng = common::Rng::new(0x0001_1e55);
    let p = common::rand_probs(&mut rng, rows, cols, 0.0);
    let q = common::rand_probs(&mut rng, rows, cols, 0.0);
    let opts = Options::default();
    let small = 8 * cols;
    ctx.kl(
        &Batch::new(&p[..small], 8, cols),
        &Batch::new(&q[..small], 8, cols),
        &opts,
    )
    .expect("warm call");
    // reset the peak (VmHWM) to the current resident size
    if std::fs::write("/proc/self/clear_refs", "5").is_err() {
        println!("note: /proc/self/clear_refs not writable; peak memory not checked");
        return;
    }
    let (base, _) = rss();
    let out = ctx
        .kl(
            &Batch::new(&p[..], rows, cols),
            &Batch::new(&q[..], rows, cols),
            &opts,
        )
        .expect("kl");
    assert_eq!(out.values.len(), rows);
    let (_, peak) = rss();
    let input = 2 * 96 * MIB;
    // a software adapter's device memory is this process's memory
    let device = if software { input } else { 0 };
    // (a whole-size staging copy would add another 192 MiB)
    let allowed = device + 48 * MIB + 96 * MIB;
    println!(
        "peak growth {} MiB over a {} MiB input (device copy {} MiB, allowed {} MiB)",
        (peak - base) / MIB,
        input / MIB,
        device / MIB,
        allowed / MIB
    );
    assert!(
        peak.saturating_sub(base) <= allowed,
        "the call's peak grew by {} MiB, more than {} MiB (device copy + ring + 96 MiB)",
        (peak - base) / MIB,
        allowed / MIB
    );
}
