//! Times kullback's loss and gradient (issue 18) on .npy inputs:
//! `cargo run --release --example train-bench -- --mode distill|sparse|nll --student S.npy
//! [--teacher T.npy] [--top K] [--divergence forward-kl|reverse-kl|jsd] [--targets Y.npy]
//! [--temperature 2] [--repeat 3] [--grad f32|f16|bf16] [--backend cpu|gpu|resident]`.
//!
//! The distillation at the temperature (forward KL unless `--divergence`
//! says otherwise; mean over rows) from the dense teacher's logits, or
//! (`sparse`) from its top `--top` (default 64) log-probabilities at the
//! temperature with the tail bucket, or the NLL of integer targets (mean), on
//! the CPU backend (default), the GPU from host slices (`gpu`), or
//! GPU-resident (`resident`: the inputs uploaded once, each timed call
//! records `encode_distill` / `encode_sparse_distill` / `encode_nll_grad`
//! and submits it; its time is the GPU's between encoder timestamps around
//! the recording where the adapter has TIMESTAMP_QUERY_INSIDE_ENCODERS, else
//! the wall time of submit and wait, and the line says which); the gradient
//! goes into one buffer allocated once (f32, or f16 / bf16 with `--grad`).
//! Prints one JSON line: the median and minimum of `repeat` timed calls
//! after one untimed call, the loss, the gradient's L1 norm (a checksum the
//! caller compares with its peers), and the bytes the passes move (the
//! logits read twice, a dense teacher twice, three times each for the JSD, a
//! sparse teacher's indices and log-probabilities once, the gradient written
//! once) with the rate they give at the median.

use std::time::Instant;

use kullback::half::{bf16, f16};
use kullback::{
    Backend, Batch, Context, DistillOptions, Divergence, Form, GradMut, NllOptions, Reduction,
    SparseTeacher, Teacher,
};

#[path = "gpu_probe.rs"]
#[allow(dead_code, reason = "the timestamps only; the probe is bench.rs's")]
mod gpu_probe;

/// The median of `v` (sorted here).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One loss-and-gradient call into the given buffer, returning the loss.
type LossCall<'a> = dyn FnMut(GradMut<'_>) -> f32 + 'a;

/// The gradient buffer, in the format `--grad` asks for.
enum Grad {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Grad {
    fn buf(&mut self) -> GradMut<'_> {
        match self {
            Grad::F32(g) => g.into(),
            Grad::F16(g) => g.into(),
            Grad::BF16(g) => g.into(),
        }
    }
    fn l1(&self) -> f64 {
        match self {
            Grad::F32(g) => g.iter().map(|v| v.abs() as f64).sum(),
            Grad::F16(g) => g.iter().map(|v| v.to_f64().abs()).sum(),
            Grad::BF16(g) => g.iter().map(|v| v.to_f64().abs()).sum(),
        }
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn read_f32(path: &str) -> (Vec<f32>, Vec<u64>) {
    let f = npyz::NpyFile::new(std::io::BufReader::new(
        std::fs::File::open(path).expect(path),
    ))
    .expect(path);
    let shape = f.shape().to_vec();
    (f.into_vec::<f32>().expect(path), shape)
}

/// `--divergence` (forward KL by default).
fn divergence() -> Divergence {
    match arg("--divergence").as_deref() {
        None | Some("forward-kl") => Divergence::ForwardKl,
        Some("reverse-kl") => Divergence::ReverseKl,
        Some("jsd") => Divergence::Jsd,
        Some(d) => panic!("--divergence forward-kl|reverse-kl|jsd, not {d}"),
    }
}

/// `--top` (64 by default): a sparse teacher's k.
fn top() -> usize {
    arg("--top").map_or(64, |v| v.parse().expect("--top K"))
}

/// The JSON value of a line's `top`: k for `--mode sparse`, else null.
fn top_json(mode: &str) -> String {
    match mode {
        "sparse" => top().to_string(),
        _ => "null".into(),
    }
}

/// The top `k` of each row of the teacher's logits `t` at temperature
/// `temp`: their column indices (in selection order, not sorted by column,
/// as a teacher's stored top-k are not) and log-probabilities (float64
/// log-softmax, rounded).
fn top_k(t: &[f32], cols: usize, temp: f32, k: usize) -> (Vec<i32>, Vec<f32>) {
    let mut ix = Vec::with_capacity(t.len() / cols * k);
    let mut lp = Vec::with_capacity(t.len() / cols * k);
    for row in t.chunks(cols) {
        let z: Vec<f64> = row.iter().map(|&v| v as f64 / temp as f64).collect();
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let mut order: Vec<usize> = (0..cols).collect();
        order.select_nth_unstable_by(k - 1, |&a, &b| z[b].total_cmp(&z[a]));
        for &c in &order[..k] {
            ix.push(c as i32);
            lp.push((z[c] - lse) as f32);
        }
    }
    (ix, lp)
}

/// The int64 targets of `--targets`.
fn read_targets() -> Vec<i64> {
    let path = arg("--targets").expect("--targets Y.npy");
    let f = npyz::NpyFile::new(std::io::BufReader::new(
        std::fs::File::open(&path).expect("targets"),
    ))
    .expect("targets");
    f.into_vec::<i64>().expect("int64 targets")
}

fn main() {
    if arg("--backend").as_deref() == Some("resident") {
        return resident::main();
    }
    let mode = arg("--mode").unwrap_or_else(|| "distill".into());
    let repeat: usize = arg("--repeat").map_or(3, |v| v.parse().expect("--repeat"));
    let temp: f32 = arg("--temperature").map_or(2.0, |v| v.parse().expect("--temperature"));
    let (s, shape) = read_f32(&arg("--student").expect("--student S.npy"));
    let (rows, cols) = (shape[0] as usize, shape[1] as usize);
    let backend = match arg("--backend").as_deref() {
        None | Some("cpu") => Backend::Cpu,
        Some("gpu") => Backend::Gpu,
        Some(b) => panic!("--backend cpu|gpu|resident, not {b}"),
    };
    let ctx = Context::with_backend(backend).expect("context");
    let n = rows * cols;
    let grad_fmt = arg("--grad").unwrap_or_else(|| "f32".into());
    let mut grad = match grad_fmt.as_str() {
        "f32" => Grad::F32(vec![0.0; n]),
        "f16" => Grad::F16(vec![f16::ZERO; n]),
        "bf16" => Grad::BF16(vec![bf16::ZERO; n]),
        g => panic!("--grad f32|f16|bf16, not {g}"),
    };
    let student = Batch::new(&s, rows, cols).form(Form::Logits);
    let teacher_vals;
    let sparse;
    let targets: Vec<i64>;
    let mut call: Box<LossCall<'_>> = match mode.as_str() {
        "distill" | "sparse" => {
            teacher_vals = read_f32(&arg("--teacher").expect("--teacher T.npy")).0;
            let teacher = if mode == "sparse" {
                sparse = top_k(&teacher_vals, cols, temp, top());
                Teacher::Sparse(SparseTeacher::new(&sparse.0, &sparse.1, top()))
            } else {
                Teacher::Dense(Batch::new(&teacher_vals, rows, cols).form(Form::Logits))
            };
            let opts = DistillOptions::default()
                .temperature(temp)
                .divergence(divergence())
                .reduction(Reduction::Mean);
            let ctx = ctx.clone();
            Box::new(move |g| {
                ctx.distill(&student, &teacher, &opts, g)
                    .expect("distill")
                    .values[0]
            })
        }
        _ => {
            targets = read_targets();
            let opts = NllOptions::default().reduction(Reduction::Mean);
            let ctx = ctx.clone();
            Box::new(move |g| {
                ctx.nll_grad(&student, &targets, &opts, g)
                    .expect("nll")
                    .values[0]
            })
        }
    };
    let loss = call(grad.buf());
    let times = timed(repeat, || {
        std::hint::black_box(call(grad.buf()));
    });
    let l1 = grad.l1();
    let med = times[times.len() / 2];
    let bytes = moved(&mode, rows, rows * cols, &grad_fmt);
    println!(
        "{{\"impl\": \"kullback\", \"backend\": \"{}\", \"mode\": \"{mode}\", \"top\": {}, \"grad\": \"{grad_fmt}\", \"rows\": {rows}, \"cols\": {cols}, \"median_s\": {med}, \"min_s\": {}, \"loss\": {loss}, \"grad_l1\": {l1}, \"bytes_moved\": {bytes}, \"gbps\": {}}}",
        arg("--backend").unwrap_or_else(|| "cpu".into()),
        top_json(&mode),
        times[0],
        bytes as f64 / med / 1e9
    );
}

/// The seconds of `repeat` calls of `f`, sorted.
fn timed(repeat: usize, mut f: impl FnMut()) -> Vec<f64> {
    let mut times: Vec<f64> = (0..repeat)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

/// Bytes the passes move for `n` f32 logits in `rows` rows: each input
/// row read twice (three times for the JSD, `--divergence jsd`), a sparse
/// teacher's indices and log-probabilities once, the gradient written once.
fn moved(mode: &str, rows: usize, n: usize, grad: &str) -> u64 {
    let n = n as u64;
    let g = if grad == "f32" { 4 } else { 2 };
    match mode {
        "sparse" => 2 * 4 * n + rows as u64 * top() as u64 * 8 + g * n,
        "distill" => {
            let reads = if matches!(divergence(), Divergence::Jsd) {
                3
            } else {
                2
            };
            2 * reads * 4 * n + g * n
        }
        _ => 2 * 4 * n + g * n,
    }
}

/// `--backend resident`: the inputs in GPU buffers of a device made here.
mod resident {
    use super::gpu_probe::Stamps;
    use super::{arg, divergence, moved, read_f32, read_targets, top, top_json, top_k};
    use kullback::wgpu::{self, util::DeviceExt};
    use kullback::{
        Context, DistillOptions, Dtype, Form, GpuBatch, GpuDistill, GpuGrad, GpuNllGrad, GpuOutput,
        GpuSparseDistill, GpuTargets,
    };

    pub(super) fn main() {
        let mode = arg("--mode").unwrap_or_else(|| "distill".into());
        let repeat: usize = arg("--repeat").map_or(3, |v| v.parse().expect("--repeat"));
        let temp: f32 = arg("--temperature").map_or(2.0, |v| v.parse().expect("--temperature"));
        let grad_fmt = arg("--grad").unwrap_or_else(|| "f32".into());
        let dtype = match grad_fmt.as_str() {
            "f32" => Dtype::F32,
            "f16" => Dtype::F16,
            "bf16" => Dtype::BF16,
            g => panic!("--grad f32|f16|bf16, not {g}"),
        };
        let (s, shape) = read_f32(&arg("--student").expect("--student S.npy"));
        let (rows, cols) = (shape[0] as usize, shape[1] as usize);
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY))
            .into_iter()
            .next()
            .expect("no GPU adapter");
        let info = adapter.get_info();
        // the GPU's time between encoder timestamps around the recording,
        // where the adapter has them
        let want =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let stamped = adapter.features().contains(want);
        let desc = wgpu::DeviceDescriptor {
            label: Some("train-bench"),
            required_features: if stamped {
                want
            } else {
                wgpu::Features::empty()
            },
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).expect("device");
        let ctx = Context::from_device(device.clone(), queue.clone()).expect("context");
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let init = |label, contents: &[u8], usage| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            })
        };
        let sb = init("student", bytemuck::cast_slice(&s), storage);
        let n = (rows * cols) as u64;
        let gbuf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("gradient"),
            size: (n * dtype.bytes()).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let rec_bytes = kullback::grad_output_bytes(rows);
        let obuf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("records"),
            size: rec_bytes,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let student = GpuBatch::new(&sb, rows, cols).form(Form::Logits);
        let grad = GpuGrad::new(&gbuf).dtype(dtype);
        let teacher_buf;
        let (ix_buf, lp_buf);
        let targets_buf;
        let mut record: Box<dyn FnMut(&mut wgpu::CommandEncoder)> = match mode.as_str() {
            "sparse" => {
                let t = read_f32(&arg("--teacher").expect("--teacher T.npy")).0;
                let k = top();
                let (ix, lp) = top_k(&t, cols, temp, k);
                let copy = wgpu::BufferUsages::COPY_SRC;
                ix_buf = init("indices", bytemuck::cast_slice(&ix), copy);
                lp_buf = init("log-probabilities", bytemuck::cast_slice(&lp), copy);
                let opts = DistillOptions::default()
                    .temperature(temp)
                    .divergence(divergence());
                let call = GpuSparseDistill::new(
                    student,
                    GpuTargets::i32(&ix_buf, rows * k),
                    GpuBatch::new(&lp_buf, rows, k).form(Form::LogProbs),
                    grad,
                    GpuOutput::new(&obuf),
                )
                .options(opts)
                .grad_scale(1.0 / rows as f32);
                Box::new(move |enc| {
                    ctx.encode_sparse_distill(enc, &call)
                        .expect("encode_sparse_distill")
                })
            }
            "distill" => {
                let t = read_f32(&arg("--teacher").expect("--teacher T.npy")).0;
                teacher_buf = init("teacher", bytemuck::cast_slice(&t), storage);
                let opts = DistillOptions::default()
                    .temperature(temp)
                    .divergence(divergence());
                let teacher = GpuBatch::new(&teacher_buf, rows, cols).form(Form::Logits);
                let call = GpuDistill::new(student, teacher, grad, GpuOutput::new(&obuf))
                    .options(opts)
                    .grad_scale(1.0 / rows as f32);
                Box::new(move |enc| ctx.encode_distill(enc, &call).expect("encode_distill"))
            }
            _ => {
                let y: Vec<i32> = read_targets().iter().map(|&v| v as i32).collect();
                targets_buf = init(
                    "targets",
                    bytemuck::cast_slice(&y),
                    wgpu::BufferUsages::COPY_SRC,
                );
                let call = GpuNllGrad::new(
                    student,
                    GpuTargets::i32(&targets_buf, rows),
                    grad,
                    GpuOutput::new(&obuf),
                )
                .grad_scale(1.0 / rows as f32);
                Box::new(move |enc| ctx.encode_nll_grad(enc, &call).expect("encode_nll_grad"))
            }
        };
        let stamps = Stamps::new(&device, stamped);
        let mut once = || {
            let mut enc = device.create_command_encoder(&Default::default());
            if let Some(qs) = &stamps.set {
                enc.write_timestamp(qs, 0);
            }
            record(&mut enc);
            if let Some(qs) = &stamps.set {
                enc.write_timestamp(qs, 1);
            }
            stamps.resolve(&mut enc);
            stamps.time(&device, &queue, enc).expect("a timed call")
        };
        once();
        let mut times: Vec<f64> = (0..repeat).map(|_| once()).collect();
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        let bytes = moved(&mode, rows, rows * cols, &grad_fmt);
        let timing = if stamped {
            "encoder timestamps"
        } else {
            "wall time of submit and wait"
        };
        println!(
            "{{\"impl\": \"kullback\", \"backend\": \"resident\", \"adapter\": {:?}, \"timing\": \"{timing}\", \"mode\": \"{mode}\", \"top\": {}, \"grad\": \"{grad_fmt}\", \"rows\": {rows}, \"cols\": {cols}, \"median_s\": {med}, \"min_s\": {}, \"bytes_moved\": {bytes}, \"gbps\": {}}}",
            info.name,
            top_json(&mode),
            times[0],
            bytes as f64 / med / 1e9
        );
    }
}
