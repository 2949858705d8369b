//! GPU-resident all pairs (issue 17): `encode_pairwise` and
//! `encode_pairwise_top_k` into the caller's encoder on a device made with
//! `Limits::downlevel_defaults()`, equal bit for bit to the host path on the
//! same context; bad rows go to the status buffer (decoded into the host
//! path's error) and make their pairs NaN; misuse is an error before
//! anything is recorded; a small binding cap splits the output and the
//! columns into windows and chunks.

mod common;

use common::{Rng, read_buffer};
use kullback::wgpu;
use kullback::{
    Batch, Context, ContextOptions, Error, Form, GpuBatch, GpuPairwiseOutput, GpuTopKOutput,
    Measure, PairwiseOptions, Workspace, decode_pairwise_status, pairwise_status_bytes,
};

const MEASURES: [Measure; 5] = [
    Measure::Kl,
    Measure::CrossEntropy,
    Measure::Js,
    Measure::Hellinger,
    Measure::TotalVariation,
];

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A context on a downlevel device (optionally with a binding cap).
fn context(cap: Option<u64>) -> Option<(Context, wgpu::Device, wgpu::Queue)> {
    let (device, queue) = common::gpu_device(wgpu::Limits::downlevel_defaults())?;
    let mut opts = ContextOptions::default();
    if let Some(c) = cap {
        opts = opts.max_binding_bytes(c);
    }
    let ctx =
        Context::from_device_with_options(device.clone(), queue.clone(), opts).expect("context");
    Some((ctx, device, queue))
}

#[allow(
    clippy::too_many_arguments,
    reason = "one resident call's full description"
)]
fn run_matrix(
    ctx: &Context,
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    m_: Measure,
    p: (&[f32], usize, Form),
    q: Option<(&[f32], usize, Form)>,
    k: usize,
    opts: &PairwiseOptions,
    ws: Option<&Workspace>,
) -> (Vec<u32>, kullback::Result<()>) {
    let pb = common::storage(device, p.0);
    let qb = q.map(|q| common::storage(device, q.0));
    let n = q.map_or(p.1, |q| q.1);
    let out = common::out_buffer(device, 512 + (p.1 * n * 4) as u64);
    let s_bytes = pairwise_status_bytes(p.1, q.map(|q| q.1));
    let status = common::out_buffer(device, 256 + s_bytes);
    let gp = GpuBatch::new(&pb, p.1, k).form(p.2);
    let gq = qb
        .as_ref()
        .zip(q)
        .map(|(b, q)| GpuBatch::new(b, q.1, k).form(q.2));
    let mut o = GpuPairwiseOutput::new(&out, &status)
        .offset(512)
        .status_offset(256);
    if let Some(w) = ws {
        o = o.workspace(w);
    }
    let mut enc = device.create_command_encoder(&Default::default());
    ctx.encode_pairwise(&mut enc, m_, &gp, gq.as_ref(), opts, &o)
        .expect("encode");
    queue.submit([enc.finish()]);
    let vals = read_buffer::<u32>(device, queue, &out, 512, (p.1 * n * 4) as u64);
    let st = common::read_records(device, queue, &status, 256, s_bytes);
    (vals, decode_pairwise_status(&st, p.1, opts, k))
}

#[test]
fn encode_equals_host_bit_for_bit_on_a_downlevel_device() {
    for cap in [None, Some(64 * 1024)] {
        let Some((ctx, device, queue)) = context(cap) else {
            return;
        };
        let mut rng = Rng::new(7);
        // 150 x 130 x 2000: with the 64 KiB cap the output is cut in windows
        // and the columns in chunks carried from one to the next
        for &(m, n, k) in &[(6usize, 5usize, 7usize), (70, 90, 300), (150, 130, 2000)] {
            if cap.is_none() && k == 2000 {
                continue;
            }
            let p = common::rand_probs(&mut rng, m, k, 0.2);
            let q = common::rand_probs(&mut rng, n, k, 0.1);
            let ws = Workspace::new();
            for m_ in MEASURES {
                for self_mode in [false, true] {
                    let opts = PairwiseOptions::default();
                    let qi = (!self_mode).then_some((&q[..], n, Form::Probs));
                    let (got, st) = run_matrix(
                        &ctx,
                        &device,
                        &queue,
                        m_,
                        (&p, m, Form::Probs),
                        qi,
                        k,
                        &opts,
                        Some(&ws),
                    );
                    st.expect("good statuses");
                    let qb = Batch::new(&q, n, k);
                    let want = ctx
                        .pairwise(
                            m_,
                            &Batch::new(&p, m, k),
                            (!self_mode).then_some(&qb),
                            &opts,
                        )
                        .expect("host");
                    assert_eq!(
                        got,
                        bits(&want.values),
                        "{cap:?} {m}x{n}x{k} {m_:?} self {self_mode}"
                    );
                }
            }
        }
    }
}

#[test]
fn top_k_encode_equals_host() {
    for cap in [None, Some(64 * 1024)] {
        let Some((ctx, device, queue)) = context(cap) else {
            return;
        };
        let mut rng = Rng::new(8);
        let (m, n, k) = (40, 5000, 6);
        let p = common::rand_probs(&mut rng, m, k, 0.3);
        let q = common::rand_probs(&mut rng, n, k, 0.3);
        let pb = common::storage(&device, &p);
        let qb = common::storage(&device, &q);
        for m_ in [Measure::Js, Measure::Kl] {
            for (kk, self_mode) in [(10usize, false), (256, false), (7, true)] {
                let nn = if self_mode { m } else { n };
                let opts = PairwiseOptions::default().exclude_self(self_mode);
                let vals = common::out_buffer(&device, (m * kk * 4) as u64);
                let idxs = common::out_buffer(&device, (m * kk * 4) as u64);
                let s_bytes = pairwise_status_bytes(m, (!self_mode).then_some(n));
                let status = common::out_buffer(&device, s_bytes);
                let gq = GpuBatch::new(&qb, n, k);
                let mut enc = device.create_command_encoder(&Default::default());
                ctx.encode_pairwise_top_k(
                    &mut enc,
                    m_,
                    &GpuBatch::new(&pb, m, k),
                    (!self_mode).then_some(&gq),
                    kk,
                    &opts,
                    &GpuTopKOutput::new(&vals, &idxs, &status),
                )
                .expect("encode");
                queue.submit([enc.finish()]);
                let v = read_buffer::<u32>(&device, &queue, &vals, 0, (m * kk * 4) as u64);
                let i = read_buffer::<u32>(&device, &queue, &idxs, 0, (m * kk * 4) as u64);
                let qh = Batch::new(&q, n, k);
                let want = ctx
                    .pairwise_top_k(
                        m_,
                        &Batch::new(&p, m, k),
                        (!self_mode).then_some(&qh),
                        kk,
                        &opts,
                    )
                    .expect("host");
                assert_eq!(
                    v,
                    bits(&want.values),
                    "{cap:?} {m_:?} k {kk} self {self_mode} ({nn} candidates)"
                );
                assert_eq!(i, want.indices, "{cap:?} {m_:?} k {kk}");
            }
        }
    }
}

#[test]
fn bad_rows_go_to_the_statuses() {
    let Some((ctx, device, queue)) = context(None) else {
        return;
    };
    let mut rng = Rng::new(9);
    let (m, n, k) = (5, 4, 6);
    let p = common::rand_probs(&mut rng, m, k, 0.0);
    let mut q = common::rand_probs(&mut rng, n, k, 0.0);
    q[2 * k + 3] = -0.5;
    let opts = PairwiseOptions::default();
    let (got, st) = run_matrix(
        &ctx,
        &device,
        &queue,
        Measure::Kl,
        (&p, m, Form::Probs),
        Some((&q, n, Form::Probs)),
        k,
        &opts,
        None,
    );
    let host = ctx.pairwise(
        Measure::Kl,
        &Batch::new(&p, m, k),
        Some(&Batch::new(&q, n, k)),
        &opts,
    );
    let (e, h) = (st.expect_err("bad q"), host.expect_err("bad q"));
    assert_eq!(e.to_string(), h.to_string());
    assert!(
        matches!(
            e,
            Error::BadValue {
                arg: kullback::Arg::Q,
                row: 2,
                col: Some(3),
                ..
            }
        ),
        "{e}"
    );
    for i in 0..m {
        for j in 0..n {
            let v = f32::from_bits(got[i * n + j]);
            assert_eq!(v.is_nan(), j == 2, "D[{i}, {j}] = {v}");
        }
    }
    // a row sum off under Validate, in p
    let mut bp = p.clone();
    bp[3 * k] += 0.1;
    let (_, st) = run_matrix(
        &ctx,
        &device,
        &queue,
        Measure::Js,
        (&bp, m, Form::Probs),
        None,
        k,
        &opts,
        None,
    );
    let host = ctx.pairwise(Measure::Js, &Batch::new(&bp, m, k), None, &opts);
    assert_eq!(
        st.expect_err("sum").to_string(),
        host.expect_err("sum").to_string()
    );
}

#[test]
fn misuse_is_an_error_before_recording() {
    let Some((ctx, device, _queue)) = context(None) else {
        return;
    };
    let p = [0.5f32, 0.5, 0.25, 0.75];
    let pb = common::storage(&device, &p);
    let out = common::out_buffer(&device, 16);
    let status = common::out_buffer(&device, pairwise_status_bytes(2, None));
    let gp = GpuBatch::new(&pb, 2, 2);
    let opts = PairwiseOptions::default();
    let mut enc = device.create_command_encoder(&Default::default());
    // output aliasing the input
    let e = ctx.encode_pairwise(
        &mut enc,
        Measure::Js,
        &gp,
        None,
        &opts,
        &GpuPairwiseOutput::new(&pb, &status),
    );
    assert!(
        matches!(e, Err(Error::Buffer { name: "output", .. })),
        "{e:?}"
    );
    // a status buffer too small
    let small = common::out_buffer(&device, 8);
    let e = ctx.encode_pairwise(
        &mut enc,
        Measure::Js,
        &gp,
        None,
        &opts,
        &GpuPairwiseOutput::new(&out, &small),
    );
    assert!(
        matches!(e, Err(Error::Buffer { name: "status", .. })),
        "{e:?}"
    );
    // a misaligned offset
    let e = ctx.encode_pairwise(
        &mut enc,
        Measure::Js,
        &gp,
        None,
        &opts,
        &GpuPairwiseOutput::new(&out, &status).offset(4),
    );
    assert!(matches!(e, Err(Error::Buffer { .. })), "{e:?}");
    // values and indices in one buffer; k too large
    let e = ctx.encode_pairwise_top_k(
        &mut enc,
        Measure::Js,
        &gp,
        None,
        1,
        &opts,
        &GpuTopKOutput::new(&out, &out, &status),
    );
    assert!(
        matches!(
            e,
            Err(Error::Buffer {
                problem: kullback::BufferProblem::AliasesOther,
                ..
            })
        ),
        "{e:?}"
    );
    let e = ctx.encode_pairwise_top_k(
        &mut enc,
        Measure::Js,
        &gp,
        None,
        3,
        &opts,
        &GpuTopKOutput::new(&out, &small, &status),
    );
    assert!(
        matches!(
            e,
            Err(Error::InvalidOption {
                option: kullback::Setting::TopK,
                ..
            })
        ),
        "{e:?}"
    );
    // the encoder is still usable
    drop(enc.finish());
}
