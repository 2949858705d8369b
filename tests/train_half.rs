//! Loss gradients (`Context::distill`, `distill_with_teacher_grad`,
//! `nll_grad`, and their GPU-resident forms) from f16 and bf16 inputs.
//!
//! The widening is exact and every backend then runs its f32 arithmetic on
//! the same f32 values, so a half call is asserted equal, bit for bit, to the
//! same call on the widened values (gradients, teacher gradients, losses),
//! on the CPU and on the GPU (which reads the halves packed two per u32, half
//! the bytes); tests/train.rs checks those f32 calls against float64, and
//! one float64 forward KL here checks the half path directly. The resident
//! form over packed half buffers gives the host path's bits, and a half
//! buffer is sized as halves (too short a one is refused, not misread).

mod common;
use common::Rng;

use kullback::half::{bf16, f16};
use kullback::wgpu::{self, util::DeviceExt};
use kullback::{
    Batch, Context, DistillOptions, Divergence, Dtype, Error, Form, GpuBatch, GpuDistill, GpuGrad,
    GpuNllGrad, GpuOutput, GpuTargets, NllOptions, Reduction, Teacher, Values,
};

/// Student and teacher logits with −inf columns (the same in both, never a
/// whole row), and a row of magnitude 10⁴ where `huge`.
fn logits(rng: &mut Rng, rows: usize, cols: usize, huge: bool) -> (Vec<f32>, Vec<f32>) {
    let (mut s, mut t) = (Vec::new(), Vec::new());
    for r in 0..rows {
        let scale = if huge && r == 1 { 1e4 } else { 4.0 };
        for c in 0..cols {
            let a = scale * (2.0 * rng.uniform() - 1.0);
            let b = a + 2.0 * rng.uniform() - 1.0;
            let masked = cols > 2 && c % 7 == 3;
            s.push(if masked { f32::NEG_INFINITY } else { a as f32 });
            t.push(if masked { f32::NEG_INFINITY } else { b as f32 });
        }
    }
    (s, t)
}

/// Values rounded to one half format: the host values and the widened f32s.
struct Half {
    dtype: Dtype,
    f16: Vec<f16>,
    bf16: Vec<bf16>,
    wide: Vec<f32>,
}

impl Half {
    fn new(v: &[f32], dtype: Dtype) -> Half {
        let f16: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        let bf16: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
        let wide = match dtype {
            Dtype::F16 => f16.iter().map(|x| x.to_f32()).collect(),
            _ => bf16.iter().map(|x| x.to_f32()).collect(),
        };
        Half {
            dtype,
            f16,
            bf16,
            wide,
        }
    }
    fn values(&self) -> Values<'_> {
        match self.dtype {
            Dtype::F16 => Values::from(&self.f16),
            _ => Values::from(&self.bf16),
        }
    }
    /// The packed bytes, padded to whole u32s.
    fn bytes(&self) -> Vec<u8> {
        let mut b: Vec<u8> = match self.dtype {
            Dtype::F16 => bytemuck::cast_slice(&self.f16).to_vec(),
            _ => bytemuck::cast_slice(&self.bf16).to_vec(),
        };
        b.resize(b.len().next_multiple_of(4), 0);
        b
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

const DIVS: [Divergence; 3] = [
    Divergence::ForwardKl,
    Divergence::ReverseKl,
    Divergence::Jsd,
];

/// The contexts to run on: the CPU, and the GPU (a panic without an adapter
/// under `KULLBACK_REQUIRE_GPU=1`).
fn contexts() -> Vec<(&'static str, Context)> {
    let mut v = vec![("cpu", common::cpu())];
    if let Some(g) = common::gpu() {
        v.push(("gpu", g));
    }
    v
}

/// Distillation (every divergence, with and without the teacher's
/// gradient, a row mask, logits and log-probabilities) and the NLL (class
/// weights, smoothing, an ignored row) from f16 and bf16 inputs: the bits of
/// the same calls on the widened values, on both backends. Odd column
/// counts put rows inside a u32 on the GPU.
#[test]
fn half_inputs_give_the_widened_values_bits() {
    let mut rng = Rng::new(18);
    for (name, ctx) in contexts() {
        for &(rows, cols) in &[(4usize, 1usize), (5, 3), (3, 257), (2, 1001)] {
            let (s, t) = logits(&mut rng, rows, cols, true);
            let mask: Vec<bool> = (0..rows).map(|r| r != 2).collect();
            for dtype in [Dtype::F16, Dtype::BF16] {
                let (hs, ht) = (Half::new(&s, dtype), Half::new(&t, dtype));
                // the student in the format, the teacher in the other one too
                let other = if dtype == Dtype::F16 {
                    Dtype::BF16
                } else {
                    Dtype::F16
                };
                let ht2 = Half::new(&t, other);
                for (teacher, t_wide, t_form) in [
                    (&ht, &ht.wide, Form::Logits),
                    (&ht2, &ht2.wide, Form::LogProbs),
                ] {
                    // log-probabilities: the logits made ≤ 0 before rounding
                    let (tv, tw);
                    let (t_vals, t_wide): (Values<'_>, &[f32]) = if t_form == Form::LogProbs {
                        let lp: Vec<f32> = t
                            .iter()
                            .map(|&x| if x.is_finite() { -x.abs() } else { x })
                            .collect();
                        tv = Half::new(&lp, other);
                        tw = tv.wide.clone();
                        (tv.values(), &tw)
                    } else {
                        (teacher.values(), t_wide)
                    };
                    for div in DIVS {
                        for with_t in [false, true] {
                            let opts = DistillOptions::default()
                                .divergence(div)
                                .beta(0.3)
                                .temperature(2.0)
                                .reduction(Reduction::Mean)
                                .mask(&mask);
                            let what = format!(
                                "{name} {rows}x{cols} {dtype:?} teacher {t_form:?} {div:?} teacher grad {with_t}"
                            );
                            let run = |sv: Values<'_>, tv: Values<'_>| {
                                let sb = Batch::new(sv, rows, cols).form(Form::Logits);
                                let tb = Teacher::Dense(Batch::new(tv, rows, cols).form(t_form));
                                let (mut g, mut gt) =
                                    (vec![0f32; rows * cols], vec![0f32; rows * cols]);
                                let out = if with_t {
                                    ctx.distill_with_teacher_grad(&sb, &tb, &opts, &mut g, &mut gt)
                                } else {
                                    ctx.distill(&sb, &tb, &opts, &mut g)
                                };
                                let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
                                assert_eq!(out.backend, ctx.backend(), "{what}: backend");
                                (out.values, g, gt)
                            };
                            let half = run(hs.values(), t_vals);
                            let wide = run(Values::from(&hs.wide), Values::from(t_wide));
                            assert_eq!(bits(&half.0), bits(&wide.0), "{what}: loss");
                            assert_eq!(bits(&half.1), bits(&wide.1), "{what}: gradient");
                            assert_eq!(bits(&half.2), bits(&wide.2), "{what}: teacher gradient");
                            assert!(half.0[0].is_finite(), "{what}: loss {}", half.0[0]);
                        }
                    }
                }
                // the NLL: targets off the masked columns, one ignored row
                let targets: Vec<i64> = (0..rows)
                    .map(|r| {
                        if r == 1 {
                            -100
                        } else {
                            let mut c = (r * 5) % cols;
                            while hs.wide[r * cols + c] == f32::NEG_INFINITY {
                                c = (c + 1) % cols;
                            }
                            c as i64
                        }
                    })
                    .collect();
                // zero weights on the masked columns, where smoothing would
                // put mass on a −inf logit
                let w: Vec<f32> = (0..cols)
                    .map(|c| {
                        if cols > 2 && c % 7 == 3 {
                            0.0
                        } else {
                            0.5 + (c % 4) as f32 * 0.25
                        }
                    })
                    .collect();
                for eps in [0.0f32, 0.1] {
                    let opts = NllOptions::default()
                        .ignore_index(-100)
                        .weights(&w)
                        .label_smoothing(eps);
                    let what = format!("{name} nll {rows}x{cols} {dtype:?} smoothing {eps}");
                    let run = |v: Values<'_>| {
                        let mut g = vec![0f32; rows * cols];
                        let b = Batch::new(v, rows, cols).form(Form::Logits);
                        let out = ctx
                            .nll_grad(&b, &targets, &opts, &mut g)
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert_eq!(out.backend, ctx.backend(), "{what}: backend");
                        (out.values, g)
                    };
                    let (lh, gh) = run(hs.values());
                    let (lw, gw) = run(Values::from(&hs.wide));
                    assert_eq!(bits(&lh), bits(&lw), "{what}: loss");
                    assert_eq!(bits(&gh), bits(&gw), "{what}: gradient");
                }
            }
        }
    }
}

/// T² · KL(softmax(t/T) ‖ softmax(s/T)) of one row, in float64.
fn forward_kl(s: &[f32], t: &[f32], temp: f64) -> f64 {
    let ls = |x: &[f32]| -> Vec<f64> {
        let v: Vec<f64> = x.iter().map(|&a| a as f64 / temp).collect();
        let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z = m + v.iter().map(|a| (a - m).exp()).sum::<f64>().ln();
        v.iter().map(|a| a - z).collect()
    };
    let (lq, lp) = (ls(s), ls(t));
    let kl: f64 = lp
        .iter()
        .zip(&lq)
        .filter(|(p, _)| p.is_finite())
        .map(|(p, q)| p.exp() * (p - q))
        .sum();
    temp * temp * kl
}

/// The forward KL of bf16 and f16 logits against float64 from the widened
/// values (per row, within abs 2e-6·T² + rel 2e-5), on both backends.
#[test]
fn half_forward_kl_matches_f64() {
    let mut rng = Rng::new(7);
    let (rows, cols) = (6, 515);
    let (s, t) = logits(&mut rng, rows, cols, false);
    for (name, ctx) in contexts() {
        for dtype in [Dtype::F16, Dtype::BF16] {
            let (hs, ht) = (Half::new(&s, dtype), Half::new(&t, dtype));
            let mut g = vec![0f32; rows * cols];
            let out = ctx
                .distill(
                    &Batch::new(hs.values(), rows, cols).form(Form::Logits),
                    &Teacher::Dense(Batch::new(ht.values(), rows, cols).form(Form::Logits)),
                    &DistillOptions::default().reduction(Reduction::None),
                    &mut g,
                )
                .expect("distill");
            for r in 0..rows {
                let want = forward_kl(
                    &hs.wide[r * cols..(r + 1) * cols],
                    &ht.wide[r * cols..(r + 1) * cols],
                    1.0,
                );
                let got = out.values[r] as f64;
                assert!(
                    (got - want).abs() <= 2e-6 + 2e-5 * want.abs(),
                    "{name} {dtype:?} row {r}: {got:e} against float64 {want:e}"
                );
            }
        }
    }
}

/// GPU-resident half buffers (student f16 at an offset, teacher bf16; an
/// odd column count, so rows start inside a u32): the host path's bits for
/// every divergence and the NLL; a half buffer one value short is refused.
#[test]
fn resident_half_inputs_equal_the_host_path() {
    let Some((device, queue)) = common::gpu_device(wgpu::Limits::downlevel_defaults()) else {
        return;
    };
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    let (rows, cols) = (3, 301);
    let (s, t) = logits(&mut Rng::new(5), rows, cols, true);
    let (hs, ht) = (Half::new(&s, Dtype::F16), Half::new(&t, Dtype::BF16));
    let align = device.limits().min_storage_buffer_offset_alignment as u64;
    let buffer = |bytes: &[u8], lead: u64| {
        let mut v = vec![0u8; lead as usize];
        v.extend_from_slice(bytes);
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("input"),
            contents: &v,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
    };
    let sb = buffer(&hs.bytes(), align);
    let tb = buffer(&ht.bytes(), 0);
    let gbytes = (rows * cols * 4) as u64;
    let gbuf = common::out_buffer(&device, gbytes);
    let (obuf, obytes) = common::grad_records(&device, rows);
    let student = GpuBatch::new(&sb, rows, cols)
        .offset(align)
        .form(Form::Logits)
        .dtype(Dtype::F16);
    let teacher = GpuBatch::new(&tb, rows, cols)
        .form(Form::Logits)
        .dtype(Dtype::BF16);
    let run = |enc_fn: &dyn Fn(&mut wgpu::CommandEncoder)| -> (Vec<kullback::Record>, Vec<f32>) {
        let mut enc = device.create_command_encoder(&Default::default());
        enc_fn(&mut enc);
        queue.submit([enc.finish()]);
        let recs = common::read_records(&device, &queue, &obuf, 0, obytes);
        let g: Vec<f32> = common::read_buffer(&device, &queue, &gbuf, 0, gbytes);
        (recs, g)
    };
    for div in DIVS {
        let opts = DistillOptions::default().divergence(div).temperature(0.5);
        let call = GpuDistill::new(student, teacher, GpuGrad::new(&gbuf), GpuOutput::new(&obuf))
            .options(opts);
        let (recs, got) = run(&|enc| ctx.encode_distill(enc, &call).expect("encode"));
        let losses = call.decode(&recs).expect("decode");
        let mut want = vec![0f32; rows * cols];
        let host = ctx
            .distill(
                &Batch::new(hs.values(), rows, cols).form(Form::Logits),
                &Teacher::Dense(Batch::new(ht.values(), rows, cols).form(Form::Logits)),
                &opts.reduction(Reduction::None),
                &mut want,
            )
            .expect("host");
        assert_eq!(bits(&got), bits(&want), "{div:?}: gradient");
        assert_eq!(bits(&losses), bits(&host.values), "{div:?}: losses");
    }
    let targets: Vec<i32> = (0..rows as i32).map(|r| r * 2).collect();
    let tbuf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("targets"),
        contents: bytemuck::cast_slice(&targets),
        usage: wgpu::BufferUsages::COPY_SRC,
    });
    let call = GpuNllGrad::new(
        student,
        GpuTargets::i32(&tbuf, rows),
        GpuGrad::new(&gbuf),
        GpuOutput::new(&obuf),
    );
    let (recs, got) = run(&|enc| ctx.encode_nll_grad(enc, &call).expect("encode"));
    let losses = call.decode(&recs).expect("decode");
    let mut want = vec![0f32; rows * cols];
    let host = ctx
        .nll_grad(
            &Batch::new(hs.values(), rows, cols).form(Form::Logits),
            &targets,
            &NllOptions::default().reduction(Reduction::None),
            &mut want,
        )
        .expect("host");
    assert_eq!(bits(&got), bits(&want), "nll gradient");
    assert_eq!(bits(&losses), bits(&host.values), "nll losses");
    // a buffer one half short of the batch
    let short = buffer(&hs.bytes()[..(rows * cols - 1) * 2 / 4 * 4], 0);
    let call = GpuDistill::new(
        GpuBatch::new(&short, rows, cols)
            .form(Form::Logits)
            .dtype(Dtype::F16),
        teacher,
        GpuGrad::new(&gbuf),
        GpuOutput::new(&obuf),
    );
    let mut enc = device.create_command_encoder(&Default::default());
    let e = ctx.encode_distill(&mut enc, &call).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Buffer {
                name: "student",
                ..
            }
        ),
        "{e}"
    );
}

/// Half gradients (`GradMut::F16` / `BF16`, here from `&mut Vec<f16>` and
/// `&mut [bf16]`): the f32 gradient of the same call rounded to nearest
/// even, bit for bit, and the same losses, on both backends: dense
/// distillation with the teacher's gradient in the other format, a sparse
/// teacher (whose indexed columns are written after the rest) and the NLL.
#[test]
fn half_gradients_are_the_f32_ones_rounded() {
    let mut rng = Rng::new(9);
    let (rows, cols) = (5, 203);
    let (s, t) = logits(&mut rng, rows, cols, true);
    let f16s = |v: &[f32]| -> Vec<u16> { v.iter().map(|&x| f16::from_f32(x).to_bits()).collect() };
    let bf16s =
        |v: &[f32]| -> Vec<u16> { v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect() };
    let student = Batch::new(&s, rows, cols).form(Form::Logits);
    let dense = Teacher::Dense(Batch::new(&t, rows, cols).form(Form::Logits));
    // a sparse teacher: 4 indices per row off the masked columns
    let (mut ix, mut lp) = (Vec::new(), Vec::new());
    for r in 0..rows {
        for j in 0..4u32 {
            // (2r + 7j) % 7 is never 3: no masked column
            ix.push(r as u32 * 2 + j * 7);
            lp.push(-2.0 - j as f32);
        }
    }
    let sparse = Teacher::Sparse(kullback::SparseTeacher::new(&ix, &lp, 4));
    for (name, ctx) in contexts() {
        for div in DIVS {
            let opts = DistillOptions::default()
                .divergence(div)
                .temperature(2.0)
                .reduction(Reduction::Mean);
            let what = format!("{name} {div:?}");
            let (mut g, mut gt) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
            let o = ctx
                .distill_with_teacher_grad(&student, &dense, &opts, &mut g, &mut gt)
                .unwrap();
            let mut h = vec![f16::ZERO; rows * cols];
            let mut ht = vec![bf16::ZERO; rows * cols];
            let oh = ctx
                .distill_with_teacher_grad(&student, &dense, &opts, &mut h, &mut ht[..])
                .unwrap();
            assert_eq!(bits(&o.values), bits(&oh.values), "{what}: loss");
            let hb: Vec<u16> = h.iter().map(|x| x.to_bits()).collect();
            let htb: Vec<u16> = ht.iter().map(|x| x.to_bits()).collect();
            assert_eq!(hb, f16s(&g), "{what}: f16 gradient");
            assert_eq!(htb, bf16s(&gt), "{what}: bf16 teacher gradient");
            for tail in [kullback::Tail::Bucket, kullback::Tail::Renormalize] {
                let opts = opts.tail(tail);
                let mut g = vec![0f32; rows * cols];
                let o = ctx.distill(&student, &sparse, &opts, &mut g).unwrap();
                let mut h = vec![bf16::ZERO; rows * cols];
                let oh = ctx.distill(&student, &sparse, &opts, &mut h).unwrap();
                assert_eq!(o.backend, ctx.backend(), "{what}");
                assert_eq!(bits(&o.values), bits(&oh.values), "{what} {tail:?}: loss");
                let hb: Vec<u16> = h.iter().map(|x| x.to_bits()).collect();
                assert_eq!(hb, bf16s(&g), "{what} {tail:?}: sparse bf16 gradient");
            }
        }
        let targets: Vec<i64> = (0..rows as i64).map(|r| r * 2).collect();
        let opts = NllOptions::default().label_smoothing(0.0);
        let mut g = vec![0f32; rows * cols];
        ctx.nll_grad(&student, &targets, &opts, &mut g).unwrap();
        let mut h = vec![f16::ZERO; rows * cols];
        ctx.nll_grad(&student, &targets, &opts, &mut h).unwrap();
        let hb: Vec<u16> = h.iter().map(|x| x.to_bits()).collect();
        assert_eq!(hb, f16s(&g), "{name} nll: f16 gradient");
        // a half gradient of the wrong length is refused like an f32 one
        let mut short = vec![bf16::ZERO; rows * cols - 1];
        let e = ctx
            .nll_grad(&student, &targets, &opts, &mut short)
            .unwrap_err();
        assert!(matches!(e, Error::Length { .. }), "{e}");
    }
}

/// Half gradients of 64 MiB and more go out with streaming stores (past
/// the caches, from the 16-byte-aligned middle of each row): still the f32
/// gradient rounded, bit for bit, on rows whose starts are not aligned
/// (an odd column count), on the CPU.
#[test]
fn streamed_half_gradients_are_the_f32_ones_rounded() {
    let mut rng = Rng::new(10);
    let (rows, cols) = (4099, 8191);
    let s: Vec<f32> = (0..rows * cols)
        .map(|_| 3.0 * rng.normal() as f32)
        .collect();
    let targets: Vec<i64> = (0..rows as i64).map(|r| (r * 31) % cols as i64).collect();
    let student = Batch::new(&s, rows, cols).form(Form::Logits);
    let ctx = Context::with_backend(kullback::Backend::Cpu).unwrap();
    let opts = NllOptions::default().label_smoothing(0.1);
    let mut g = vec![0f32; rows * cols];
    ctx.nll_grad(&student, &targets, &opts, &mut g).unwrap();
    let mut h = vec![f16::ZERO; rows * cols];
    ctx.nll_grad(&student, &targets, &opts, &mut h).unwrap();
    assert!(
        h.iter().zip(&g).all(|(h, &g)| *h == f16::from_f32(g)),
        "f16"
    );
    drop(h);
    let mut b = vec![bf16::ZERO; rows * cols];
    ctx.nll_grad(&student, &targets, &opts, &mut b).unwrap();
    assert!(
        b.iter().zip(&g).all(|(b, &g)| *b == bf16::from_f32(g)),
        "bf16"
    );
}

/// GPU-resident half gradients (`GpuGrad::dtype`): the f32 resident
/// gradient of the same call rounded to nearest even (the host's
/// `half` rounding), bit for bit, with the same losses: every divergence
/// with and without a teacher gradient (f32, after the student's in the same
/// buffer), a sparse teacher (both tails), the NLL; an odd column count, so
/// that rows share words, and a buffer filled beforehand, whose odd last
/// half is left as it was.
#[test]
fn resident_half_gradients_are_the_f32_ones_rounded() {
    use kullback::{GpuSparseDistill, Tail};
    // the adapter's limits: five storage buffers for a teacher gradient of its own
    let Some((device, queue, _)) = common::gpu_device_with(None, wgpu::Features::empty()) else {
        return;
    };
    let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
    let (rows, cols) = (3, 301);
    let n = rows * cols;
    let (s, t) = logits(&mut Rng::new(9), rows, cols, false);
    let input = |v: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("input"),
            contents: v,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
    };
    let sb = input(bytemuck::cast_slice(&s));
    let tb = input(bytemuck::cast_slice(&t));
    let student = GpuBatch::new(&sb, rows, cols).form(Form::Logits);
    let teacher = GpuBatch::new(&tb, rows, cols).form(Form::Logits);
    // the sparse teacher: 5 columns per row (log-probabilities of a softmax)
    let k = 5;
    let ix: Vec<i32> = (0..rows)
        .flat_map(|r| (0..k).map(move |j| ((j * 37 + r * 11) % cols) as i32))
        .collect();
    let lp: Vec<f32> = (0..rows * k).map(|i| -1.7 - 0.3 * (i % k) as f32).collect();
    let ib = input(bytemuck::cast_slice(&ix));
    let lb = input(bytemuck::cast_slice(&lp));
    let (obuf, obytes) = common::grad_records(&device, rows);
    // f32 gradient, then 4 bytes of gap, then the teacher's (f32) after it
    let g32 = (n * 4) as u64;
    let gbuf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("gradients"),
        size: (2 * n as u64 + 1) * 4,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let fill = vec![0x5a5a_5a5au32; 2 * n + 1];
    let own = common::out_buffer(&device, g32);
    let run = |enc_fn: &dyn Fn(&mut wgpu::CommandEncoder)| -> (Vec<kullback::Record>, Vec<u32>) {
        queue.write_buffer(&gbuf, 0, bytemuck::cast_slice(&fill));
        let mut enc = device.create_command_encoder(&Default::default());
        enc_fn(&mut enc);
        queue.submit([enc.finish()]);
        let recs = common::read_records(&device, &queue, &obuf, 0, obytes);
        let g: Vec<u32> = common::read_buffer(&device, &queue, &gbuf, 0, (2 * n as u64 + 1) * 4);
        (recs, g)
    };
    let round = |d: Dtype, v: u32| -> u16 {
        let x = f32::from_bits(v);
        match d {
            Dtype::F16 => f16::from_f32(x).to_bits(),
            _ => bf16::from_f32(x).to_bits(),
        }
    };
    // the call's words with gradient `g` (and the teacher's after it, in the
    // same buffer, when `tg`), and its records
    type Enc<'a> = Box<dyn Fn(&mut wgpu::CommandEncoder, GpuGrad<'a>, Option<GpuGrad<'a>>) + 'a>;
    let (ctx, obuf, ib, lb) = (&ctx, &obuf, &ib, &lb);
    let calls: Vec<(&str, bool, Enc<'_>)> = DIVS
        .iter()
        .flat_map(|&div| {
            let opts = DistillOptions::default()
                .divergence(div)
                .beta(0.3)
                .temperature(2.0);
            [false, true].map(|with_tg| {
                let f: Enc<'_> = Box::new(move |enc, g, tg| {
                    let mut call =
                        GpuDistill::new(student, teacher, g, GpuOutput::new(obuf)).options(opts);
                    if let Some(tg) = tg {
                        call = call.teacher_grad(tg);
                    }
                    ctx.encode_distill(enc, &call).expect("encode");
                });
                (
                    if with_tg {
                        "dense + teacher gradient"
                    } else {
                        "dense"
                    },
                    with_tg,
                    f,
                )
            })
        })
        .chain([Tail::Bucket, Tail::Renormalize].map(|tail| {
            let f: Enc<'_> = Box::new(move |enc, g, _| {
                let call = GpuSparseDistill::new(
                    student,
                    GpuTargets::i32(ib, rows * k),
                    GpuBatch::new(lb, rows, k).form(Form::LogProbs),
                    g,
                    GpuOutput::new(obuf),
                )
                .options(
                    DistillOptions::default()
                        .tail(tail)
                        .divergence(kullback::Divergence::ReverseKl),
                );
                ctx.encode_sparse_distill(enc, &call).expect("encode");
            });
            ("sparse", false, f)
        }))
        .chain(std::iter::once({
            // each row's first column with a finite logit
            let targets: Vec<i32> = (0..rows)
                .map(|r| (0..cols).find(|&c| s[r * cols + c].is_finite()).unwrap() as i32)
                .collect();
            let tbuf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("targets"),
                contents: bytemuck::cast_slice(&targets),
                usage: wgpu::BufferUsages::COPY_SRC,
            });
            let f: Enc<'_> = Box::new(move |enc, g, _| {
                let call = GpuNllGrad::new(
                    student,
                    GpuTargets::i32(&tbuf, rows),
                    g,
                    GpuOutput::new(obuf),
                );
                ctx.encode_nll_grad(enc, &call).expect("encode");
            });
            ("nll", false, f)
        }))
        .collect();
    for (what, with_tg, enc_fn) in &calls {
        let tg32 = with_tg.then(|| GpuGrad::new(&gbuf).offset(g32 + 4));
        let (r32, w32) = run(&|enc| enc_fn(enc, GpuGrad::new(&gbuf), tg32));
        for d in [Dtype::F16, Dtype::BF16] {
            // the halves take n / 2 words (rounded up); the teacher's after them
            let gh = (n as u64 * 2).next_multiple_of(4);
            let tgh = with_tg.then(|| GpuGrad::new(&gbuf).offset(gh + 4));
            let (rh, wh) = run(&|enc| enc_fn(enc, GpuGrad::new(&gbuf).dtype(d), tgh));
            let what = format!("{what} {d:?}");
            let words = |r: &[kullback::Record]| bytemuck::cast_slice::<_, u32>(r).to_vec();
            assert_eq!(words(&r32), words(&rh), "{what}: records");
            assert!(rh.iter().all(|r| r.is_ok()), "{what}: every row runs");
            for i in 0..n {
                let half = (wh[i / 2] >> (16 * (i % 2))) as u16;
                assert_eq!(half, round(d, w32[i]), "{what}: value {i}");
            }
            // the odd count's last word: its upper half untouched
            assert_eq!(
                wh[n / 2] >> 16,
                0x5a5a,
                "{what}: the last word's other half"
            );
            if *with_tg {
                let at = (g32 / 4 + 1) as usize;
                let ht = (gh / 4 + 1) as usize;
                assert_eq!(
                    &w32[at..at + n],
                    &wh[ht..ht + n],
                    "{what}: teacher gradient"
                );
                // the teacher's gradient in a binding of its own
                let (ro, wo) =
                    run(&|enc| enc_fn(enc, GpuGrad::new(&gbuf).dtype(d), Some(GpuGrad::new(&own))));
                assert_eq!(words(&ro), words(&rh), "{what}, own buffer: records");
                assert_eq!(
                    &wo[..n / 2 + 1],
                    &wh[..n / 2 + 1],
                    "{what}, own buffer: gradient"
                );
                let tg: Vec<u32> = common::read_buffer(&device, &queue, &own, 0, g32);
                assert_eq!(
                    &tg[..],
                    &w32[at..at + n],
                    "{what}, own buffer: teacher gradient"
                );
            }
        }
    }
}
