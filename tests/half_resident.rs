//! GPU-resident f16 and bf16 batches (packed two per u32, `GpuBatch::dtype`)
//! against the same call over an f32 buffer of the widened values, and
//! against the host path on the half values: odd column counts (rows that
//! start inside a u32), a batch at an offset, long rows over several
//! blocks, zeros, half subnormals (bf16 ones are f32 subnormals), an
//! infinity, and the NLL of half logits.
//!
//! The widening is exact and the kernel then runs the f32 arithmetic on the
//! same f32 values, so the results are asserted equal bit for bit to the f32
//! buffer's, and within the crate's bound (abs 2e-6 + rel 2e-5) of float64
//! from the widened values; errors are the host path's.

use kullback::half::{bf16, f16};
use kullback::wgpu::{self, util::DeviceExt};
use kullback::{
    Base, Batch, Context, Dtype, Form, GpuBatch, GpuOutput, GpuTargets, Measure, NllOptions,
    Normalization, Options, Values, output_bytes,
};

mod common;
use common::{
    Input, Rng, close_tol, gpu_call, gpu_nll, out_buffer, rand_logits, rand_probs, read_records,
    ref_measure, ref_nll,
};

/// A storage buffer of `bytes`, padded with zeros to whole u32s, after
/// `lead` zero bytes.
fn buffer(device: &wgpu::Device, bytes: &[u8], lead: usize) -> wgpu::Buffer {
    let mut v = vec![0u8; lead];
    v.extend_from_slice(bytes);
    v.resize(v.len().next_multiple_of(4), 0);
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("input"),
        contents: &v,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    })
}

/// Values in one format: the stored bytes, the host values, the widened f32s.
struct Stored {
    dtype: Dtype,
    f16: Vec<f16>,
    bf16: Vec<bf16>,
    wide: Vec<f32>,
}

impl Stored {
    fn new(v: &[f32], dtype: Dtype) -> Stored {
        let f16: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        let bf16: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
        let wide = match dtype {
            Dtype::F16 => f16.iter().map(|x| x.to_f32()).collect(),
            Dtype::BF16 => bf16.iter().map(|x| x.to_f32()).collect(),
            _ => v.to_vec(),
        };
        Stored {
            dtype,
            f16,
            bf16,
            wide,
        }
    }
    fn bytes(&self) -> &[u8] {
        match self.dtype {
            Dtype::F16 => bytemuck::cast_slice(&self.f16),
            Dtype::BF16 => bytemuck::cast_slice(&self.bf16),
            _ => bytemuck::cast_slice(&self.wide),
        }
    }
    fn values(&self) -> Values<'_> {
        match self.dtype {
            Dtype::F16 => Values::from(&self.f16),
            Dtype::BF16 => Values::from(&self.bf16),
            _ => Values::from(&self.wide),
        }
    }
}

/// Probability rows with a zero, an f16 subnormal (3e-6) and a value that is
/// a bf16 (and f32) subnormal (1e-39) in rows of their own; `inf` puts an
/// infinity in row 1.
fn probs(rows: usize, cols: usize, seed: u64, inf: bool) -> Vec<f32> {
    let mut v = rand_probs(&mut Rng::new(seed), rows, cols, 0.0);
    for (k, x) in [0.0f32, 3e-6, 1e-39].into_iter().enumerate() {
        let r = (2 + k) % rows;
        v[r * cols + (5 * k + 1) % cols] = x;
    }
    if inf {
        v[(1 % rows) * cols + cols / 2] = f32::INFINITY;
    }
    v
}

struct Gpu {
    ctx: Context,
    device: wgpu::Device,
    queue: wgpu::Queue,
}

impl Gpu {
    fn run(
        &self,
        m: Measure,
        p: &GpuBatch<'_>,
        q: Option<&GpuBatch<'_>>,
        o: &Options,
    ) -> kullback::Result<Vec<f32>> {
        let bytes = output_bytes(p.rows.max(q.map_or(0, |q| q.rows)), o.reduction);
        let out = out_buffer(&self.device, bytes);
        let mut enc = self.device.create_command_encoder(&Default::default());
        let call = gpu_call(m, p, q, o, &GpuOutput::new(&out));
        self.ctx.encode(&mut enc, &call)?;
        self.queue.submit([enc.finish()]);
        // `GpuCall::decode`: its error names the tolerance the check allowed
        call.decode(&read_records(&self.device, &self.queue, &out, 0, bytes))
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn resident_half_equals_f32_on_widened_values() {
    let Some((device, queue)) = common::gpu_device(wgpu::Limits::default()) else {
        return;
    };
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    let cpu = common::cpu();
    let gpu = Gpu { ctx, device, queue };
    let align = gpu.device.limits().min_storage_buffer_offset_alignment as usize;
    let pairs = [
        (Dtype::F16, Dtype::F16),
        (Dtype::BF16, Dtype::BF16),
        (Dtype::F16, Dtype::F32),
        (Dtype::BF16, Dtype::F16),
    ];
    let mut checked = 0;
    for (rows, cols) in [
        (5usize, 1usize),
        (7, 3),
        (9, 1001),
        (4, 512),
        (3, 3 * 8192 + 5),
    ] {
        for inf in [false, true] {
            let p32 = probs(rows, cols, 1, inf);
            let q32 = probs(rows, cols, 2, false);
            for (pd, qd) in pairs {
                let (p, q) = (Stored::new(&p32, pd), Stored::new(&q32, qd));
                // p after `align` bytes: a batch at an offset
                let (ph, qh) = (
                    buffer(&gpu.device, p.bytes(), align),
                    buffer(&gpu.device, q.bytes(), 0),
                );
                let (pw, qw) = (
                    buffer(&gpu.device, bytemuck::cast_slice(&p.wide), 0),
                    buffer(&gpu.device, bytemuck::cast_slice(&q.wide), 0),
                );
                for m in [
                    Measure::Entropy,
                    Measure::CrossEntropy,
                    Measure::Kl,
                    Measure::Js,
                    Measure::Hellinger,
                ] {
                    let o = Options::default();
                    let gp = GpuBatch::new(&ph, rows, cols)
                        .offset(align as u64)
                        .dtype(pd);
                    let gq = GpuBatch::new(&qh, rows, cols).dtype(qd);
                    let (wp, wq) = (
                        GpuBatch::new(&pw, rows, cols),
                        GpuBatch::new(&qw, rows, cols),
                    );
                    let one = m == Measure::Entropy;
                    // the widened f32 call gets the row-sum allowance the
                    // half one adds (the format's unit roundoff)
                    let u = |d: Dtype| match d {
                        Dtype::F16 => 1.0f32 / 2048.0,
                        Dtype::BF16 => 1.0 / 256.0,
                        _ => 0.0,
                    };
                    let extra = if one { u(pd) } else { u(pd).max(u(qd)) };
                    let wide_o = o.tolerance(o.tolerance + extra);
                    let half = gpu.run(m, &gp, (!one).then_some(&gq), &o);
                    let wide = gpu.run(m, &wp, (!one).then_some(&wq), &wide_o);
                    let host = cpu.evaluate(
                        m,
                        &Batch::new(p.values(), rows, cols),
                        (!one).then_some(&Batch::new(q.values(), rows, cols)),
                        &o,
                    );
                    let label = format!("{rows}x{cols} {pd:?}/{qd:?} {m:?} inf {inf}");
                    match (half, wide, host) {
                        (Ok(h), Ok(w), Ok(_)) => {
                            assert_eq!(bits(&h), bits(&w), "{label}: half vs widened f32");
                            // the crate's bound of float64 from the same
                            // (widened) half values
                            let want = ref_measure(
                                m,
                                Input::new(&p.wide, rows, Form::Probs),
                                (!one).then(|| Input::new(&q.wide, rows, Form::Probs)),
                                cols,
                                Normalization::Validate,
                                Base::E,
                            );
                            for (r, (g, e)) in h.iter().zip(&want).enumerate() {
                                assert!(
                                    close_tol(*g as f64, *e, 2e-6, 2e-5),
                                    "{label} row {r}: GPU {g:e}, float64 {e:e}"
                                );
                            }
                        }
                        // the host path's error
                        (Err(h), Err(_), Err(c)) => {
                            assert_eq!(format!("{h}"), format!("{c}"), "{label}: host error");
                        }
                        (h, w, c) => panic!("{label}: {h:?} / {w:?} / host {c:?}"),
                    }
                    checked += 1;
                }
            }
        }
        // the NLL of half logits (odd rows start inside a u32)
        let logits = rand_logits(&mut Rng::new(3), rows, cols, 8.0, 0.0);
        let targets: Vec<i32> = (0..rows as i32).map(|r| (r * 7) % cols as i32).collect();
        let tb = buffer(&gpu.device, bytemuck::cast_slice(&targets), 0);
        for d in [Dtype::F16, Dtype::BF16] {
            let l = Stored::new(&logits, d);
            let (lh, lw) = (
                buffer(&gpu.device, l.bytes(), 0),
                buffer(&gpu.device, bytemuck::cast_slice(&l.wide), 0),
            );
            let o = NllOptions::default();
            let run = |b: &GpuBatch<'_>| {
                let bytes = output_bytes(rows, o.common.reduction);
                let out = out_buffer(&gpu.device, bytes);
                let t = GpuTargets::i32(&tb, rows);
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                gpu.ctx
                    .encode_nll(&mut enc, &gpu_nll(b, &t, &o, &GpuOutput::new(&out)))
                    .expect("encode nll");
                gpu.queue.submit([enc.finish()]);
                let recs = read_records(&gpu.device, &gpu.queue, &out, 0, bytes);
                gpu_nll(b, &t, &o, &GpuOutput::new(&out))
                    .decode(&recs)
                    .expect("nll")
            };
            let h = run(&GpuBatch::new(&lh, rows, cols).form(Form::Logits).dtype(d));
            let w = run(&GpuBatch::new(&lw, rows, cols).form(Form::Logits));
            assert_eq!(bits(&h), bits(&w), "nll {rows}x{cols} {d:?}");
            let host = cpu
                .nll(
                    &Batch::new(l.values(), rows, cols).form(Form::Logits),
                    &targets[..],
                    &o,
                )
                .expect("host nll");
            let t64: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
            let (want, _) = ref_nll(
                Input::new(&l.wide, rows, Form::Logits),
                cols,
                &t64,
                None,
                None,
                0.0,
                Normalization::Validate,
                Base::E,
            );
            for ((g, e), c) in h.iter().zip(&want).zip(&host.values) {
                assert!(
                    close_tol(*g as f64, *e, 2e-6, 2e-5),
                    "nll {d:?}: GPU {g:e}, float64 {e:e}"
                );
                assert!(
                    close_tol(*c as f64, *e, 2e-6, 2e-5),
                    "nll {d:?}: host {c:e}, float64 {e:e}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 100);
}

/// A half batch needs its bytes rounded up to whole u32s: a buffer one byte
/// short is an error, not a device fault; all-pairs refuses half batches.
#[test]
fn half_buffer_size_is_checked() {
    let Some((device, queue)) = common::gpu_device(wgpu::Limits::default()) else {
        return;
    };
    let ctx = Context::from_device(device.clone(), queue).expect("context");
    let (rows, cols) = (3, 3); // 9 halves: 18 bytes, bound as 20
    let short = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("short"),
        size: 18,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let out = out_buffer(&device, output_bytes(rows, kullback::Reduction::None));
    let p = GpuBatch::new(&short, rows, cols).dtype(Dtype::F16);
    let mut enc = device.create_command_encoder(&Default::default());
    let r = ctx.encode(
        &mut enc,
        &gpu_call(
            Measure::Entropy,
            &p,
            None,
            &Options::default(),
            &GpuOutput::new(&out),
        ),
    );
    assert!(matches!(r, Err(kullback::Error::Buffer { .. })), "{r:?}");
    // all-pairs: the same whole-word size check
    let status = out_buffer(&device, 4096);
    let values = out_buffer(&device, 4096);
    let p = GpuBatch::new(&short, rows, cols).dtype(Dtype::BF16);
    let r = ctx.encode_pairwise(
        &mut enc,
        Measure::Js,
        &p,
        None,
        &kullback::PairwiseOptions::default(),
        &kullback::GpuPairwiseOutput::new(&values, &status),
    );
    assert!(matches!(r, Err(kullback::Error::Buffer { .. })), "{r:?}");
}

/// All pairs of half batches in the caller's buffers (packed two per u32,
/// odd column counts: words across rows; a binding cap that splits rows and
/// columns): the host call's bits on the same device, statuses included.
#[test]
fn resident_half_pairwise_equals_host() {
    use kullback::{ContextOptions, GpuPairwiseOutput, PairwiseOptions, pairwise_status_bytes};
    let mut rng = Rng::new(0x9a1f);
    for cap in [None, Some(64 * 1024u64)] {
        let Some((device, queue)) = common::gpu_device(wgpu::Limits::downlevel_defaults()) else {
            return;
        };
        let mut o = ContextOptions::default();
        if let Some(c) = cap {
            o = o.max_binding_bytes(c);
        }
        let ctx =
            Context::from_device_with_options(device.clone(), queue.clone(), o).expect("context");
        for &(m, n, k) in &[(5usize, 3usize, 7usize), (3, 2, 40_001)] {
            for dtype in [Dtype::F16, Dtype::BF16] {
                let p = Stored::new(&rand_probs(&mut rng, m, k, 0.1), dtype);
                let q = Stored::new(&rand_probs(&mut rng, n, k, 0.0), dtype);
                let (pb, qb) = (buffer(&device, p.bytes(), 0), buffer(&device, q.bytes(), 0));
                // renormalised: rounding to halves moves the row sums
                let opts = PairwiseOptions::default().normalization(Normalization::Renormalize);
                for measure in [Measure::Kl, Measure::Js, Measure::Hellinger] {
                    let label = format!("{m}x{n}x{k} {dtype:?} {measure:?} cap {cap:?}");
                    let host = ctx
                        .pairwise(
                            measure,
                            &Batch::new(p.values(), m, k),
                            Some(&Batch::new(q.values(), n, k)),
                            &opts,
                        )
                        .expect("host pairs");
                    let out = out_buffer(&device, (m * n * 4) as u64);
                    let s_bytes = pairwise_status_bytes(m, Some(n));
                    let status = out_buffer(&device, s_bytes);
                    let mut enc = device.create_command_encoder(&Default::default());
                    ctx.encode_pairwise(
                        &mut enc,
                        measure,
                        &GpuBatch::new(&pb, m, k).dtype(dtype),
                        Some(&GpuBatch::new(&qb, n, k).dtype(dtype)),
                        &opts,
                        &GpuPairwiseOutput::new(&out, &status),
                    )
                    .expect("encode");
                    queue.submit([enc.finish()]);
                    let got =
                        common::read_buffer::<u32>(&device, &queue, &out, 0, (m * n * 4) as u64);
                    assert_eq!(got, bits(&host.values), "{label}");
                    let st = read_records(&device, &queue, &status, 0, s_bytes);
                    kullback::decode_pairwise_status(&st, m, &opts, k).expect(&label);
                }
            }
        }
    }
}
