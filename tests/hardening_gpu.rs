//! GPU hardening (issue 14 items 1, 3 and 13): a dropped future leaves the
//! context usable, GPU-resident calls reuse a caller's `Workspace`, and a
//! buffer of another device is an error rather than a silent wrong read.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};

use kullback::wgpu;
use kullback::{
    Batch, Context, Error, GpuBatch, GpuOutput, Measure, Options, Record, Reduction, Workspace,
    decode_output, output_bytes,
};

fn probs(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    common::rand_probs(&mut common::Rng::new(seed), rows, cols, 0.0)
}

fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut TaskContext::from_waker(Waker::noop()))
}

/// Futures dropped before any poll, after a poll, and after the device has
/// finished their work: the next 20 calls of the same size all succeed with
/// the same bits (before the fix: "Buffer 'kullback.readback' is still mapped").
#[test]
fn dropped_futures_leave_the_context_usable() {
    let Some(ctx) = common::gpu() else { return };
    let (rows, cols) = (64, 1000);
    let p = probs(rows, cols, 1);
    let q = probs(rows, cols, 2);
    let (pb, qb) = (Batch::new(&p, rows, cols), Batch::new(&q, rows, cols));
    for reduction in [Reduction::None, Reduction::Mean] {
        let o = Options::default().reduction(reduction);
        let want = ctx.kl(&pb, &qb, &o).expect("first call");
        // dropped before any poll
        drop(ctx.evaluate_async(Measure::Kl, &pb, Some(&qb), &o));
        // dropped after a poll that found it pending
        {
            let mut f = pin!(ctx.evaluate_async(Measure::Kl, &pb, Some(&qb), &o));
            assert!(poll_once(f.as_mut()).is_pending());
        }
        // dropped after the device finished (its map callback has run)
        {
            let mut f = pin!(ctx.evaluate_async(Measure::Kl, &pb, Some(&qb), &o));
            let _ = poll_once(f.as_mut());
            ctx.poll(kullback::PollMode::Wait).expect("poll");
        }
        // dropped with several in flight
        let many: Vec<_> = (0..3)
            .map(|_| ctx.evaluate_async(Measure::Kl, &pb, Some(&qb), &o))
            .collect();
        drop(many);
        for i in 0..20 {
            let got = ctx
                .kl(&pb, &qb, &o)
                .unwrap_or_else(|e| panic!("call {i} after dropped futures: {e}"));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.values), bits(&want.values), "call {i}");
        }
        // an async call still resolves
        let mut f = pin!(ctx.evaluate_async(Measure::Kl, &pb, Some(&qb), &o));
        let out = loop {
            if let Poll::Ready(r) = poll_once(f.as_mut()) {
                break r.expect("async call");
            }
            ctx.poll(kullback::PollMode::Wait).expect("poll");
        };
        assert_eq!(out.values, want.values);
    }
}

/// The host path's pool keeps at most `pool_bytes`; `trim` frees it all.
#[test]
fn pool_keeps_at_most_its_cap() {
    let Some(_) = common::gpu() else { return };
    let cap = 1 << 20;
    let ctx = Context::with_options(
        kullback::ContextOptions::default()
            .backend(kullback::Backend::Gpu)
            .pool_bytes(cap),
    )
    .expect("gpu context");
    for (rows, cols) in [(16, 1000), (64, 3000), (8, 100)] {
        let p = probs(rows, cols, 3);
        ctx.entropy(&Batch::new(&p, rows, cols), &Options::default())
            .expect("entropy");
        assert!(ctx.kept_bytes() <= cap, "{} > {cap}", ctx.kept_bytes());
    }
    assert!(ctx.kept_bytes() > 0, "small calls' buffers are kept");
    ctx.trim();
    assert_eq!(ctx.kept_bytes(), 0);
    let p = probs(4, 10, 3);
    ctx.entropy(&Batch::new(&p, 4, 10), &Options::default())
        .expect("a call after trim");
}

use common::{gpu_call, out_buffer, read_records, storage};

/// All of `src`, read back as records.
fn read(device: &wgpu::Device, queue: &wgpu::Queue, src: &wgpu::Buffer) -> Vec<Record> {
    read_records(device, queue, src, 0, src.size())
}

/// A workspace is reused across encodes (one per submission), keeps within
/// its cap, and gives the same bits as fresh scratch; `encode_commands`
/// records into an encoder of the context's own device.
#[test]
fn workspace_reuse_and_own_encoder() {
    let Some((device, queue)) = common::gpu_device(wgpu::Limits::default()) else {
        return;
    };
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    let (rows, cols) = (300, 700);
    let (p, q) = (probs(rows, cols, 5), probs(rows, cols, 6));
    let (pbuf, qbuf) = (storage(&device, &p), storage(&device, &q));
    let pg = GpuBatch::new(&pbuf, rows, cols);
    let qg = GpuBatch::new(&qbuf, rows, cols);
    let host = ctx
        .kl(
            &Batch::new(&p, rows, cols),
            &Batch::new(&q, rows, cols),
            &Options::default().reduction(Reduction::Sum),
        )
        .expect("host");
    let ws = Workspace::with_cap(4 << 20);
    let o = Options::default().reduction(Reduction::Sum);
    let out = out_buffer(&device, output_bytes(rows, o.reduction));
    let mut kept = Vec::new();
    for i in 0..10 {
        let target = GpuOutput::new(&out);
        let target = if i % 2 == 0 {
            target.workspace(&ws)
        } else {
            target
        };
        let cmds = ctx
            .encode_commands(&gpu_call(Measure::Kl, &pg, Some(&qg), &o, &target))
            .expect("encode");
        queue.submit([cmds]);
        let v = decode_output(&read(&device, &queue, &out), &o, cols).expect("decode");
        assert_eq!(v[0].to_bits(), host.values[0].to_bits(), "encode {i}");
        kept.push(ws.kept_bytes());
    }
    assert!(
        kept[0] > 0 && kept.iter().all(|&k| k == kept[0] && k <= 4 << 20),
        "{kept:?}"
    );
    ws.trim();
    assert_eq!(ws.kept_bytes(), 0);
}

/// A buffer created on another device (same instance) is refused with an
/// error before anything is recorded; the context and the caller's encoder
/// stay usable.
#[test]
fn buffer_of_another_device_is_an_error() {
    let Some(adapter) = common::gpu_or_skip(
        pollster::block_on(
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
                .enumerate_adapters(wgpu::Backends::PRIMARY),
        )
        .into_iter()
        .next()
        .ok_or("no adapter"),
    ) else {
        return;
    };
    let make = || pollster::block_on(adapter.request_device(&Default::default())).expect("device");
    let (dev_a, queue_a) = make();
    let (dev_b, _queue_b) = make();
    let ctx = Context::from_device(dev_a.clone(), queue_a.clone()).expect("context");
    let (rows, cols) = (4, 50);
    let p = probs(rows, cols, 7);
    let foreign = storage(&dev_b, &p);
    let ours = storage(&dev_a, &p);
    let out = out_buffer(&dev_a, output_bytes(rows, Reduction::None));
    let o = Options::default();
    let mut enc = dev_a.create_command_encoder(&Default::default());
    let e = ctx
        .encode(
            &mut enc,
            &gpu_call(
                Measure::Entropy,
                &GpuBatch::new(&foreign, rows, cols),
                None,
                &o,
                &GpuOutput::new(&out),
            ),
        )
        .expect_err("a buffer of another device");
    assert!(matches!(e, Error::Device(_)), "{e:?}");
    // the same encoder still records a good call and finishes
    ctx.encode(
        &mut enc,
        &gpu_call(
            Measure::Entropy,
            &GpuBatch::new(&ours, rows, cols),
            None,
            &o,
            &GpuOutput::new(&out),
        ),
    )
    .expect("our own buffer");
    queue_a.submit([enc.finish()]);
    let v = decode_output(&read(&dev_a, &queue_a, &out), &o, cols).expect("decode");
    let host = ctx
        .entropy(&Batch::new(&p, rows, cols), &o)
        .expect("host path");
    assert_eq!(v, host.values);
}

/// Found by tests/fuzz.rs: a mean whose f32 sum overflows (five rows of
/// cross-entropy 1e38) but which itself fits is finite on the GPU too (it
/// was +inf), the same as on the CPU; the sum is +inf on both.
#[test]
fn a_mean_whose_sum_overflows_f32_still_fits() {
    let Some(gpu) = common::gpu() else { return };
    let rows = 5;
    let p: Vec<f32> = [0.5f32, 0.5].repeat(rows);
    let q: Vec<f32> = [0.0f32, -2e38].repeat(rows);
    let (pb, qb) = (
        Batch::new(&p, rows, 2),
        Batch::new(&q, rows, 2).form(kullback::Form::Logits),
    );
    for ctx in [common::cpu(), gpu] {
        let mean = ctx
            .cross_entropy(&pb, &qb, &Options::default().reduction(Reduction::Mean))
            .expect("mean");
        assert!(
            (mean.values[0] as f64 - 1e38).abs() <= 1e38 * 2e-5,
            "{:?}: {}",
            mean.backend,
            mean.values[0]
        );
        let sum = ctx
            .cross_entropy(&pb, &qb, &Options::default().reduction(Reduction::Sum))
            .expect("sum");
        assert_eq!(sum.values[0], f32::INFINITY, "{:?}", sum.backend);
    }
}
