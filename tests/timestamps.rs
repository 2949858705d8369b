//! `GpuOutput::timestamps`: the GPU-resident call's compute pass writes its
//! beginning and end into the caller's query set (what the bench's device
//! time reads), with the same results as without; a device without
//! `TIMESTAMP_QUERY` or a bad query set is an error before anything is
//! recorded.

mod common;

use common::*;
use kullback::wgpu;
use kullback::{
    Context, GpuBatch, GpuOutput, GpuTimestamps, Measure, Options, Reduction, output_bytes,
};

/// A device with the adapter's limits and `features` where it has them
/// (`None`: there is no adapter, as [`gpu_or_skip`] decides).
fn device_with(features: wgpu::Features) -> Option<(wgpu::Device, wgpu::Queue, bool)> {
    gpu_device_with(None, features)
}

fn read_stamps(device: &wgpu::Device, queue: &wgpu::Queue, qs: &wgpu::QuerySet) -> [u64; 2] {
    let resolve = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.resolve_query_set(qs, 0..2, &resolve, 0);
    queue.submit([enc.finish()]);
    let v: Vec<u64> = read_buffer(device, queue, &resolve, 0, 16);
    [v[0], v[1]]
}

#[test]
fn pass_timestamps_are_written_and_change_nothing() {
    let Some((device, queue, has)) = device_with(wgpu::Features::TIMESTAMP_QUERY) else {
        return;
    };
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    let (rows, cols) = (37, 9_001);
    let mut rng = Rng::new(7);
    let p = rand_form(&mut rng, rows, cols, kullback::Form::Probs, 0.1);
    let q = rand_form(&mut rng, rows, cols, kullback::Form::Probs, 0.1);
    let (pb, qb) = (storage(&device, &p), storage(&device, &q));
    let opts = Options::default().reduction(Reduction::None);
    let bytes = output_bytes(rows, Reduction::None);
    let run = |stamps: Option<GpuTimestamps<'_>>| {
        let out = out_buffer(&device, bytes);
        let mut o = GpuOutput::new(&out);
        if let Some(t) = stamps {
            o = o.timestamps(t);
        }
        let call = gpu_call(
            Measure::Kl,
            &GpuBatch::new(&pb, rows, cols),
            Some(&GpuBatch::new(&qb, rows, cols)),
            &opts,
            &o,
        );
        let mut enc = device.create_command_encoder(&Default::default());
        let r = ctx.encode(&mut enc, &call);
        queue.submit([enc.finish()]);
        r.map(|()| call.decode(&read_records(&device, &queue, &out, 0, bytes)))
    };
    let plain = run(None).expect("encode").expect("decode");
    if !has {
        eprintln!("note: the adapter has no TIMESTAMP_QUERY: nothing to stamp");
        return;
    }
    let qs = device.create_query_set(&wgpu::QuerySetDescriptor {
        label: None,
        ty: wgpu::QueryType::Timestamp,
        count: 2,
    });
    let stamped = run(Some(GpuTimestamps::new(&qs, 0, 1)))
        .expect("encode")
        .expect("decode");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&stamped),
        bits(&plain),
        "timestamps changed the results"
    );
    let ts = read_stamps(&device, &queue, &qs);
    assert!(
        ts[1] > ts[0],
        "end stamp {} not after the beginning {}",
        ts[1],
        ts[0]
    );
    // indices outside the set, or the same twice: an error, nothing recorded
    for (b, e) in [(0, 2), (1, 1)] {
        let err = run(Some(GpuTimestamps::new(&qs, b, e))).expect_err("bad indices accepted");
        assert!(err.to_string().contains("timestamps"), "{err}");
    }
}

#[test]
fn timestamps_need_the_feature() {
    let Some((device, queue, _)) = device_with(wgpu::Features::empty()) else {
        return;
    };
    // a query set needs the feature too: borrow one from a device that has it
    let Some((other, _, has)) = device_with(wgpu::Features::TIMESTAMP_QUERY) else {
        return;
    };
    if !has {
        eprintln!("note: the adapter has no TIMESTAMP_QUERY: no query set to refuse");
        return;
    }
    let qs = other.create_query_set(&wgpu::QuerySetDescriptor {
        label: None,
        ty: wgpu::QueryType::Timestamp,
        count: 2,
    });
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    let p = storage(&device, &[0.5, 0.5]);
    let out = out_buffer(&device, output_bytes(1, Reduction::None));
    let o = GpuOutput::new(&out).timestamps(GpuTimestamps::new(&qs, 0, 1));
    let call = gpu_call(
        Measure::Entropy,
        &GpuBatch::new(&p, 1, 2),
        None,
        &Options::default(),
        &o,
    );
    let mut enc = device.create_command_encoder(&Default::default());
    let err = ctx
        .encode(&mut enc, &call)
        .expect_err("stamps without the feature");
    assert!(err.to_string().contains("TIMESTAMP_QUERY"), "{err}");
}
