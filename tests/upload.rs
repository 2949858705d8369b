//! The host path's uploads: inputs above one ring slot (16 MiB) stream
//! through the staging ring on a device without `MAPPABLE_PRIMARY_BUFFERS`
//! and are written in place on a shared-memory device with it; f32 and f64
//! inputs, both ways, give the same bits and match the f64 oracle.

use kullback::wgpu;
use kullback::{Base, Batch, Context, Form, Measure, Normalization, Options};

mod common;
use common::{ABS_TOL, Input, REL_TOL, Rng, assert_values, rand_probs, ref_measure};

/// A context on the first adapter's device with its own limits and `features`.
fn context(features: wgpu::Features) -> Option<Context> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    let adapter = common::gpu_or_skip(adapters.into_iter().next().ok_or("no adapter"))?;
    if !adapter.features().contains(features) {
        println!("note: the adapter lacks {features:?}; that upload path is not exercised here");
        return None;
    }
    let desc = wgpu::DeviceDescriptor {
        label: Some("upload-test"),
        required_features: features,
        required_limits: adapter.limits(),
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc)).expect("device");
    Some(Context::from_device(device, queue).expect("context"))
}

#[test]
fn ring_and_mapped_uploads_agree_with_the_oracle() {
    // 17.6 MB per operand: two ring slots, the second one partial
    let (rows, cols) = (1100usize, 4000usize);
    let mut rng = Rng::new(0x5eed_0016);
    let p = rand_probs(&mut rng, rows, cols, 0.05);
    let q = rand_probs(&mut rng, rows, cols, 0.0);
    let p64: Vec<f64> = p.iter().map(|&v| v as f64).collect();
    let q64: Vec<f64> = q.iter().map(|&v| v as f64).collect();
    let ring = context(wgpu::Features::empty());
    let mapped = context(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS);
    let Some(ring) = ring else { return };
    let opts = Options::default();
    let norm = Normalization::default();
    let kl = ref_measure(
        Measure::Kl,
        Input::new(&p, rows, Form::Probs),
        Some(Input::new(&q, rows, Form::Probs)),
        cols,
        norm,
        Base::E,
    );
    let h = ref_measure(
        Measure::Entropy,
        Input::new(&p, rows, Form::Probs),
        None,
        cols,
        norm,
        Base::E,
    );
    let run = |ctx: &Context| -> Vec<Vec<f32>> {
        let kl32 = ctx
            .kl(
                &Batch::new(&p[..], rows, cols),
                &Batch::new(&q[..], rows, cols),
                &opts,
            )
            .expect("kl f32");
        let kl64 = ctx
            .kl(
                &Batch::new(&p64[..], rows, cols),
                &Batch::new(&q64[..], rows, cols),
                &opts,
            )
            .expect("kl f64");
        let h64 = ctx
            .entropy(&Batch::new(&p64[..], rows, cols), &opts)
            .expect("entropy f64");
        vec![kl32.values, kl64.values, h64.values]
    };
    let got = run(&ring);
    assert_values("kl f32 (ring)", &got[0], &kl, ABS_TOL, REL_TOL);
    assert_eq!(got[0], got[1], "f64 input narrows to the same f32 bits");
    assert_values("entropy f64 (ring)", &got[2], &h, ABS_TOL, REL_TOL);
    // a second call reuses the pooled slots
    assert_eq!(run(&ring), got, "ring rerun");
    if let Some(mapped) = mapped {
        let m = run(&mapped);
        assert_eq!(
            m, got,
            "written in place: the same bits as through the ring"
        );
        assert_eq!(
            run(&mapped),
            got,
            "mapped rerun (pooled buffers mapped again)"
        );
    }
}
