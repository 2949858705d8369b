//! The GPU-resident path (batches in the caller's buffers, work recorded into
//! the caller's encoder) against the host path, on devices made with
//! `Limits::downlevel_defaults()` and `Limits::default()`.

use kullback::wgpu::{self, util::DeviceExt};
use kullback::{
    Arg, BadValue, Batch, Context, Error, Form, GpuBatch, GpuOutput, GpuTargets, Measure,
    NllOptions, Normalization, Options, RECORD_SIZE, Reduction, decode_output, output_bytes,
};

mod common;

/// A device with exactly `limits` (the shared GPU-or-skip decision).
fn device(limits: wgpu::Limits) -> Option<(wgpu::Device, wgpu::Queue)> {
    common::gpu_device(limits)
}

fn probs(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    rand_probs(&mut Rng::new(seed), rows, cols, 0.0)
}

use common::{
    Input, Rng, close, gpu_call, gpu_nll, out_buffer, rand_logits, rand_probs, read_records,
    ref_measure, storage,
};

/// Encodes one measure and returns its decoded output.
fn encoded(
    ctx: &Context,
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    measure: Measure,
    p: &GpuBatch<'_>,
    q: Option<&GpuBatch<'_>>,
    opts: &Options,
) -> kullback::Result<Vec<f32>> {
    let rows = p.rows.max(q.map_or(0, |q| q.rows));
    let bytes = output_bytes(rows, opts.reduction);
    let out = out_buffer(device, bytes);
    let mut enc = device.create_command_encoder(&Default::default());
    ctx.encode(
        &mut enc,
        &gpu_call(measure, p, q, opts, &GpuOutput::new(&out)),
    )?;
    queue.submit([enc.finish()]);
    let recs = read_records(device, queue, &out, 0, bytes);
    decode_output(&recs, opts, p.cols)
}

#[test]
fn encode_equals_host_bit_for_bit_on_downlevel_device() {
    let Some((device, queue)) = device(wgpu::Limits::downlevel_defaults()) else {
        return;
    };
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    let (rows, cols) = (37, 3001);
    let p = probs(rows, cols, 1);
    let q = probs(rows, cols, 2);
    let logits = rand_logits(&mut Rng::new(3), rows, cols, 8.0, 0.0);
    let (pb, qb, lb) = (
        storage(&device, &p),
        storage(&device, &q),
        storage(&device, &logits),
    );
    for measure in [
        Measure::Entropy,
        Measure::CrossEntropy,
        Measure::Kl,
        Measure::Js,
    ] {
        for reduction in [Reduction::None, Reduction::Sum, Reduction::Mean] {
            let opts = Options::default().reduction(reduction);
            let host = ctx
                .evaluate(
                    measure,
                    &Batch::new(&p, rows, cols),
                    Some(&Batch::new(&q, rows, cols)),
                    &opts,
                )
                .expect("host");
            let gp = GpuBatch::new(&pb, rows, cols);
            let gq = GpuBatch::new(&qb, rows, cols);
            let dev =
                encoded(&ctx, &device, &queue, measure, &gp, Some(&gq), &opts).expect("encode");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&host.values), bits(&dev), "{measure:?} {reduction:?}");
        }
        // logits against probabilities, one reference row against many
        let opts = Options::default();
        let host = ctx
            .evaluate(
                measure,
                &Batch::new(&logits, rows, cols).form(Form::Logits),
                Some(&Batch::new(&q[..cols], 1, cols)),
                &opts,
            )
            .expect("host logits");
        let gp = GpuBatch::new(&lb, rows, cols).form(Form::Logits);
        let gq = GpuBatch::new(&qb, 1, cols);
        let dev =
            encoded(&ctx, &device, &queue, measure, &gp, Some(&gq), &opts).expect("encode logits");
        assert_eq!(host.values, dev, "{measure:?} logits vs one row");
    }
    // negative log-likelihood from logits, with an ignored row and weights
    let targets: Vec<i32> = (0..rows as i32)
        .map(|i| if i == 5 { -100 } else { (i * 97) % cols as i32 })
        .collect();
    let weights: Vec<f32> = (0..cols).map(|c| 0.5 + (c % 3) as f32).collect();
    let tb = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("targets"),
        contents: bytemuck::cast_slice(&targets),
        usage: wgpu::BufferUsages::COPY_SRC,
    });
    for reduction in [Reduction::None, Reduction::Mean] {
        let opts = NllOptions::default()
            .ignore_index(-100)
            .weights(&weights)
            .label_smoothing(0.1)
            .reduction(reduction);
        let host = ctx
            .nll(
                &Batch::new(&logits, rows, cols).form(Form::Logits),
                &targets,
                &opts,
            )
            .expect("host nll");
        let bytes = output_bytes(rows, reduction);
        let out = out_buffer(&device, bytes);
        let mut enc = device.create_command_encoder(&Default::default());
        ctx.encode_nll(
            &mut enc,
            &gpu_nll(
                &GpuBatch::new(&lb, rows, cols).form(Form::Logits),
                &GpuTargets::i32(&tb, rows),
                &opts,
                &GpuOutput::new(&out),
            ),
        )
        .expect("encode nll");
        queue.submit([enc.finish()]);
        let recs = read_records(&device, &queue, &out, 0, bytes);
        let dev = decode_output(&recs, &opts.common, cols).expect("decode nll");
        assert_eq!(host.values, dev, "nll {reduction:?}");
    }
}

#[test]
fn two_batches_in_one_encoder_before_one_submit() {
    let Some((device, queue)) = device(wgpu::Limits::downlevel_defaults()) else {
        return;
    };
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    let (a_rows, a_cols, b_rows, b_cols) = (3, 5000, 70, 17);
    let (pa, qa, pb, qb) = (
        probs(a_rows, a_cols, 4),
        probs(a_rows, a_cols, 5),
        probs(b_rows, b_cols, 6),
        probs(b_rows, b_cols, 7),
    );
    let bufs: Vec<wgpu::Buffer> = [&pa, &qa, &pb, &qb]
        .iter()
        .map(|d| storage(&device, d))
        .collect();
    let align = device.limits().min_storage_buffer_offset_alignment as u64;
    let b_at = (a_rows as u64 * RECORD_SIZE).div_ceil(align) * align;
    let out = out_buffer(&device, b_at + b_rows as u64 * RECORD_SIZE);
    let opts = Options::default();
    let mut enc = device.create_command_encoder(&Default::default());
    ctx.encode(
        &mut enc,
        &gpu_call(
            Measure::Kl,
            &GpuBatch::new(&bufs[0], a_rows, a_cols),
            Some(&GpuBatch::new(&bufs[1], a_rows, a_cols)),
            &opts,
            &GpuOutput::new(&out),
        ),
    )
    .expect("a");
    ctx.encode(
        &mut enc,
        &gpu_call(
            Measure::CrossEntropy,
            &GpuBatch::new(&bufs[2], b_rows, b_cols),
            Some(&GpuBatch::new(&bufs[3], b_rows, b_cols)),
            &opts,
            &GpuOutput::new(&out).offset(b_at),
        ),
    )
    .expect("b");
    queue.submit([enc.finish()]);
    let ra = decode_output(
        &read_records(&device, &queue, &out, 0, a_rows as u64 * RECORD_SIZE),
        &opts,
        a_cols,
    )
    .expect("a out");
    let rb = decode_output(
        &read_records(&device, &queue, &out, b_at, b_rows as u64 * RECORD_SIZE),
        &opts,
        b_cols,
    )
    .expect("b out");
    let ha = ctx
        .kl(
            &Batch::new(&pa, a_rows, a_cols),
            &Batch::new(&qa, a_rows, a_cols),
            &opts,
        )
        .expect("host a");
    let hb = ctx
        .cross_entropy(
            &Batch::new(&pb, b_rows, b_cols),
            &Batch::new(&qb, b_rows, b_cols),
            &opts,
        )
        .expect("host b");
    assert_eq!(ha.values, ra);
    assert_eq!(hb.values, rb);
    // and against the f64 oracle, so that both cannot be wrong together
    let want = ref_measure(
        Measure::CrossEntropy,
        Input::new(&pb, b_rows, Form::Probs),
        Some(Input::new(&qb, b_rows, Form::Probs)),
        b_cols,
        Normalization::Validate,
        kullback::Base::E,
    );
    for (r, e) in want.into_iter().enumerate() {
        assert!(close(rb[r] as f64, e), "row {r}: {} vs {e}", rb[r]);
    }
}

#[test]
fn bad_buffers_are_errors_not_panics() {
    let Some((device, queue)) = device(wgpu::Limits::downlevel_defaults()) else {
        return;
    };
    let ctx = Context::from_device(device.clone(), queue).expect("context");
    let p = probs(4, 64, 8);
    let pb = storage(&device, &p);
    let opts = Options::default();
    let out = out_buffer(&device, output_bytes(4, Reduction::None));
    let mut enc = device.create_command_encoder(&Default::default());
    let gp = GpuBatch::new(&pb, 4, 64);
    // the output is an input
    let e = ctx.encode(
        &mut enc,
        &gpu_call(Measure::Kl, &gp, Some(&gp), &opts, &GpuOutput::new(&pb)),
    );
    assert!(
        matches!(e, Err(Error::Buffer { name: "output", .. })),
        "{e:?}"
    );
    // too small
    let e = ctx.encode(
        &mut enc,
        &gpu_call(
            Measure::Entropy,
            &GpuBatch::new(&pb, 5, 64),
            None,
            &opts,
            &GpuOutput::new(&out),
        ),
    );
    assert!(matches!(e, Err(Error::Buffer { name: "p", .. })), "{e:?}");
    // misaligned offset
    let e = ctx.encode(
        &mut enc,
        &gpu_call(
            Measure::Entropy,
            &GpuBatch::new(&pb, 1, 8).offset(4),
            None,
            &opts,
            &GpuOutput::new(&out),
        ),
    );
    assert!(matches!(e, Err(Error::Buffer { name: "p", .. })), "{e:?}");
    // missing usage
    let plain = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 1024,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let e = ctx.encode(
        &mut enc,
        &gpu_call(Measure::Entropy, &gp, None, &opts, &GpuOutput::new(&plain)),
    );
    assert!(
        matches!(e, Err(Error::Buffer { name: "output", .. })),
        "{e:?}"
    );
    let e = ctx.encode(
        &mut enc,
        &gpu_call(
            Measure::Entropy,
            &GpuBatch::new(&plain, 4, 64),
            None,
            &opts,
            &GpuOutput::new(&out),
        ),
    );
    assert!(matches!(e, Err(Error::Buffer { name: "p", .. })), "{e:?}");
    // output too small for the rows
    let small = out_buffer(&device, 16);
    let e = ctx.encode(
        &mut enc,
        &gpu_call(Measure::Entropy, &gp, None, &opts, &GpuOutput::new(&small)),
    );
    assert!(
        matches!(e, Err(Error::Buffer { name: "output", .. })),
        "{e:?}"
    );
    // shape mismatch and bad options
    let e = ctx.encode(
        &mut enc,
        &gpu_call(
            Measure::Kl,
            &gp,
            Some(&GpuBatch::new(&pb, 2, 128)),
            &opts,
            &GpuOutput::new(&out),
        ),
    );
    assert!(matches!(e, Err(Error::ShapeMismatch { .. })), "{e:?}");
    let e = ctx.encode(
        &mut enc,
        &gpu_call(
            Measure::Entropy,
            &gp,
            None,
            &opts.base(kullback::Base::Custom(1.0)),
            &GpuOutput::new(&out),
        ),
    );
    assert!(
        matches!(
            e,
            Err(Error::InvalidOption {
                option: kullback::Setting::Base,
                ..
            })
        ),
        "{e:?}"
    );
    // NLL: bad class weights and targets without COPY_SRC
    let t = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let targets = GpuTargets::i32(&t, 4);
    let mut w = vec![1.0f32; 64];
    w[7] = f32::NAN;
    let e = ctx.encode_nll(
        &mut enc,
        &gpu_nll(
            &gp,
            &targets,
            &NllOptions::default().weights(&w),
            &GpuOutput::new(&out),
        ),
    );
    assert!(
        matches!(
            e,
            Err(Error::BadValue {
                arg: Arg::Weights,
                col: Some(7),
                ..
            })
        ),
        "{e:?}"
    );
    let e = ctx.encode_nll(
        &mut enc,
        &gpu_nll(&gp, &targets, &NllOptions::default(), &GpuOutput::new(&out)),
    );
    assert!(
        matches!(
            e,
            Err(Error::Buffer {
                name: "targets",
                ..
            })
        ),
        "{e:?}"
    );
    // nothing bad was recorded: the encoder still finishes
    let _ = enc.finish();
}

#[test]
fn bad_values_decode_to_the_host_error() {
    let Some((device, queue)) = device(wgpu::Limits::downlevel_defaults()) else {
        return;
    };
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    let (rows, cols) = (6, 300);
    let q = probs(rows, cols, 9);
    let cases: Vec<(Vec<f32>, Normalization)> = {
        let mut nan = probs(rows, cols, 10);
        nan[3 * cols + 17] = f32::NAN;
        let mut neg = probs(rows, cols, 11);
        neg[2 * cols + 5] = -0.25;
        let mut unnorm = probs(rows, cols, 12);
        unnorm[4 * cols..5 * cols]
            .iter_mut()
            .for_each(|x| *x *= 2.0);
        let zero_row = {
            let mut z = probs(rows, cols, 13);
            z[cols..2 * cols].iter_mut().for_each(|x| *x = 0.0);
            z
        };
        vec![
            (nan, Normalization::Validate),
            (neg, Normalization::Validate),
            (unnorm, Normalization::Validate),
            (zero_row, Normalization::Renormalize),
        ]
    };
    let qb = storage(&device, &q);
    for (p, norm) in cases {
        let pb = storage(&device, &p);
        for reduction in [Reduction::None, Reduction::Mean] {
            let opts = Options::default().normalization(norm).reduction(reduction);
            let host = ctx
                .kl(
                    &Batch::new(&p, rows, cols),
                    &Batch::new(&q, rows, cols),
                    &opts,
                )
                .expect_err("host must fail");
            let dev = encoded(
                &ctx,
                &device,
                &queue,
                Measure::Kl,
                &GpuBatch::new(&pb, rows, cols),
                Some(&GpuBatch::new(&qb, rows, cols)),
                &opts,
            )
            .expect_err("decode must fail");
            assert!(!matches!(host, Error::Device(_)), "{host}");
            assert_eq!(host.to_string(), dev.to_string(), "{norm:?} {reduction:?}");
        }
    }
    // the NaN case names argument, row and column
    let mut nan = probs(rows, cols, 10);
    nan[3 * cols + 17] = f32::NAN;
    let pb = storage(&device, &nan);
    let e = encoded(
        &ctx,
        &device,
        &queue,
        Measure::Entropy,
        &GpuBatch::new(&pb, rows, cols),
        None,
        &Options::default(),
    )
    .expect_err("nan");
    assert!(
        matches!(
            e,
            Error::BadValue {
                arg: Arg::P,
                row: 3,
                col: Some(17),
                what: BadValue::Nan
            }
        ),
        "{e:?}"
    );
}

#[test]
fn default_limits_device_chunks_an_input_beyond_its_binding_limit() {
    let Some((device, queue)) = device(wgpu::Limits::default()) else {
        return;
    };
    let limit = device.limits().max_storage_buffer_binding_size;
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    // 2 rows whose bytes together exceed one binding
    let cols = (limit / 4 / 2 + 4099) as usize;
    let rows = 2;
    let v = 1.0 / cols as f32;
    let p = vec![v; rows * cols];
    let pb = storage(&device, &p);
    let out = encoded(
        &ctx,
        &device,
        &queue,
        Measure::Entropy,
        &GpuBatch::new(&pb, rows, cols),
        None,
        &Options::default().normalization(Normalization::AsGiven),
    )
    .expect("entropy");
    // every row is the same: the oracle of one
    let e = ref_measure(
        Measure::Entropy,
        Input::new(&p[..cols], 1, Form::Probs),
        None,
        cols,
        Normalization::AsGiven,
        kullback::Base::E,
    )[0];
    for x in out {
        assert!(close(x as f64, e), "{x} vs {e}");
    }
}

#[test]
fn two_threads_share_one_context() {
    let Some((device, queue)) = device(wgpu::Limits::downlevel_defaults()) else {
        return;
    };
    let ctx = Context::from_device(device, queue).expect("context");
    let p = probs(50, 700, 14);
    let q = probs(50, 700, 15);
    let want = ctx
        .kl(
            &Batch::new(&p, 50, 700),
            &Batch::new(&q, 50, 700),
            &Options::default(),
        )
        .expect("kl");
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    (0..5)
                        .map(|_| {
                            ctx.kl(
                                &Batch::new(&p, 50, 700),
                                &Batch::new(&q, 50, 700),
                                &Options::default(),
                            )
                            .expect("kl")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in hs {
            for got in h.join().expect("thread") {
                assert_eq!(got.values, want.values);
            }
        }
    });
}

#[test]
fn async_resolves_with_polling_only() {
    let Some((device, queue)) = device(wgpu::Limits::downlevel_defaults()) else {
        return;
    };
    let ctx = Context::from_device(device, queue).expect("context");
    let p = probs(8, 1000, 16);
    let q = probs(8, 1000, 17);
    let opts = Options::default();
    let mut fut = std::pin::pin!(ctx.evaluate_async(
        Measure::Kl,
        &Batch::new(&p, 8, 1000),
        Some(&Batch::new(&q, 8, 1000)),
        &opts
    ));
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut polls = 0;
    let got = loop {
        if let std::task::Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
            break r.expect("async kl");
        }
        // the documented poll: non-blocking here
        ctx.poll(kullback::PollMode::Ready).expect("poll");
        polls += 1;
        assert!(polls < 1_000_000, "never resolved");
        std::thread::yield_now();
    };
    let want = ctx
        .kl(&Batch::new(&p, 8, 1000), &Batch::new(&q, 8, 1000), &opts)
        .expect("kl");
    assert_eq!(got.values, want.values);
}

/// Integers travel in their own u32 fields of the record (hardening issue,
/// item 9): an out-of-range u32 target of 3,000,000,000 is reported as that
/// value (it was -1294967296), an i32 target of -5 as -5, on reads of the
/// per-row output and of a sum's output.
#[test]
fn out_of_range_targets_keep_their_value() {
    let Some((device, queue)) = device(wgpu::Limits::default()) else {
        return;
    };
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    let (rows, cols) = (3usize, 4usize);
    let q = probs(rows, cols, 9);
    let qb = storage(&device, &q);
    for (words, signed, want) in [
        ([1u32, 3_000_000_000, 2], false, 3_000_000_000i64),
        ([1u32, (-5i32) as u32, 2], true, -5),
        ([1u32, 4, 2], true, 4),
    ] {
        let tb = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("targets"),
            contents: bytemuck::cast_slice(&words),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        });
        let targets = if signed {
            GpuTargets::i32(&tb, rows)
        } else {
            GpuTargets::u32(&tb, rows)
        };
        for reduction in [Reduction::None, Reduction::Sum] {
            let opts = NllOptions::default().reduction(reduction);
            let bytes = output_bytes(rows, reduction);
            let out = out_buffer(&device, bytes);
            let mut enc = device.create_command_encoder(&Default::default());
            ctx.encode_nll(
                &mut enc,
                &gpu_nll(
                    &GpuBatch::new(&qb, rows, cols),
                    &targets,
                    &opts,
                    &GpuOutput::new(&out),
                ),
            )
            .expect("encode nll");
            queue.submit([enc.finish()]);
            let recs = read_records(&device, &queue, &out, 0, bytes);
            let e = decode_output(&recs, &opts.common, cols).expect_err("bad target");
            assert!(
                matches!(
                    e,
                    Error::TargetOutOfRange { row: 1, target, classes: 4 } if target == want
                ),
                "{words:?} {reduction:?}: {e:?}"
            );
        }
    }
}
