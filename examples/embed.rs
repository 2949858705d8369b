//! Embedding kullback in an application that owns the GPU device.
//!
//! The "app" makes its own device, fills its own buffers on the GPU (softmax
//! of random logits, in a compute pass of its own), records kullback's KL into
//! the same encoder, then reads kullback's output in another pass of its own
//! (counting rows above a threshold), submits once and only then reads back.
//! It checks the GPU-resident values against the host API bit for bit and
//! exits non-zero if they differ.
//!
//! ```text
//! cargo run --release --example embed [-- --rows 512 --cols 4096]
//! ```

use std::process::ExitCode;

use kullback::wgpu::{self, util::DeviceExt};
use kullback::{
    Batch, Context, GpuBatch, GpuCall, GpuOutput, Measure, Options, Record, Reduction, output_bytes,
};

/// The app's own shaders: a row-wise softmax, and a counter over kullback's
/// output records (value, aux_p, aux_q, code, column, index: see `kullback::Record`).
const APP_WGSL: &str = r#"
struct Dims { rows: u32, cols: u32, threshold: f32, _pad: u32 }
struct Record { value: f32, aux_p: f32, aux_q: f32, code: u32, column: u32, index: u32 }
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> probs: array<f32>;
@group(0) @binding(2) var<uniform> dims: Dims;

@compute @workgroup_size(64)
fn softmax(@builtin(global_invocation_id) id: vec3<u32>) {
    let row = id.x;
    if (row >= dims.rows) { return; }
    let base = row * dims.cols;
    var m = logits[base];
    for (var c = 1u; c < dims.cols; c++) { m = max(m, logits[base + c]); }
    var s = 0.0;
    for (var c = 0u; c < dims.cols; c++) { s += exp(logits[base + c] - m); }
    for (var c = 0u; c < dims.cols; c++) { probs[base + c] = exp(logits[base + c] - m) / s; }
}

@group(0) @binding(0) var<storage, read> records: array<Record>;
@group(0) @binding(1) var<storage, read_write> count: array<atomic<u32>>;
@group(0) @binding(2) var<uniform> dims2: Dims;

@compute @workgroup_size(64)
fn count_above(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= dims2.rows) { return; }
    let r = records[id.x];
    if (r.code == 0u && r.value > dims2.threshold) { atomicAdd(&count[0], 1u); }
}
"#;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    env_logger::init();
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let rows = arg("--rows", 512);
    let cols = arg("--cols", 4096);

    // ---- the app's device: any adapter, the portable downlevel limits
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))?;
    let info = adapter.get_info();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("app"),
        required_limits: wgpu::Limits::downlevel_defaults().using_resolution(adapter.limits()),
        ..Default::default()
    }))?;

    // ---- the app's data: random logits, turned into distributions on the GPU
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let logits_p: Vec<f32> = (0..rows * cols).map(|_| 6.0 * rnd()).collect();
    let logits_q: Vec<f32> = (0..rows * cols).map(|_| 6.0 * rnd()).collect();
    let storage_in = |data: &[f32]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("app.logits"),
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let probs_buf = || {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("app.probs"),
            size: (rows * cols * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    };
    let (lp, lq, pp, pq) = (
        storage_in(&logits_p),
        storage_in(&logits_q),
        probs_buf(),
        probs_buf(),
    );
    let threshold = 2.0f32;
    let dims = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("app.dims"),
        contents: bytemuck::cast_slice(&[rows as u32, cols as u32, threshold.to_bits(), 0]),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("app"),
        source: wgpu::ShaderSource::Wgsl(APP_WGSL.into()),
    });
    let pipeline = |entry: &str| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
    };
    let (softmax, count_above) = (pipeline("softmax"), pipeline("count_above"));
    let group = |pl: &wgpu::ComputePipeline, a: &wgpu::Buffer, b: &wgpu::Buffer| {
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pl.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: a.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: b.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: dims.as_entire_binding(),
                },
            ],
        })
    };

    // ---- kullback on the app's device
    let ctx = Context::from_device(device.clone(), queue.clone())?;
    let opts = Options::default().reduction(Reduction::None);
    let out_bytes = output_bytes(rows, Reduction::None);
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("app.kl"),
        size: out_bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let counter = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("app.count"),
        size: 4,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });

    // ---- one encoder: app pass, kullback, app pass
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&softmax);
        for (l, p) in [(&lp, &pp), (&lq, &pq)] {
            pass.set_bind_group(0, &group(&softmax, l, p), &[]);
            pass.dispatch_workgroups((rows as u32).div_ceil(64), 1, 1);
        }
    }
    let call = GpuCall::new(
        Measure::Kl,
        GpuBatch::new(&pp, rows, cols),
        GpuOutput::new(&out),
    )
    .q(GpuBatch::new(&pq, rows, cols))
    .options(opts);
    ctx.encode(&mut enc, &call)?;
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&count_above);
        pass.set_bind_group(0, &group(&count_above, &out, &counter), &[]);
        pass.dispatch_workgroups((rows as u32).div_ceil(64), 1, 1);
    }
    // ---- read back at the very end: kullback's records, the count, and the
    // app's distributions (only to check against the host API)
    let staging = |size: u64| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("app.staging"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let bytes = (rows * cols * 4) as u64;
    let (s_out, s_count, s_p, s_q) = (
        staging(out_bytes),
        staging(4),
        staging(bytes),
        staging(bytes),
    );
    enc.copy_buffer_to_buffer(&out, 0, &s_out, 0, out_bytes);
    enc.copy_buffer_to_buffer(&counter, 0, &s_count, 0, 4);
    enc.copy_buffer_to_buffer(&pp, 0, &s_p, 0, bytes);
    enc.copy_buffer_to_buffer(&pq, 0, &s_q, 0, bytes);
    queue.submit([enc.finish()]);
    for b in [&s_out, &s_count, &s_p, &s_q] {
        b.slice(..)
            .map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    }
    device.poll(wgpu::PollType::Wait {
        submission_index: None,
        timeout: None,
    })?;
    let read = |b: &wgpu::Buffer| b.slice(..).get_mapped_range().map(|v| v.to_vec());
    let records: Vec<Record> = bytemuck::cast_slice(&read(&s_out)?).to_vec();
    let count = bytemuck::cast_slice::<u8, u32>(&read(&s_count)?)[0];
    let p: Vec<f32> = bytemuck::cast_slice(&read(&s_p)?).to_vec();
    let q: Vec<f32> = bytemuck::cast_slice(&read(&s_q)?).to_vec();

    let resident = call.decode(&records)?;
    println!(
        "adapter: {} ({:?}, {:?})",
        info.name, info.device_type, info.backend
    );
    println!(
        "batch: {rows} x {cols}; KL of the first rows: {:?}",
        &resident[..resident.len().min(4)]
    );
    println!("rows with KL > {threshold} (counted by the app's own pass): {count}");

    // ---- the same batch through the host API
    let host = ctx.kl(
        &Batch::new(&p, rows, cols),
        &Batch::new(&q, rows, cols),
        &opts,
    )?;
    let same = host.values.len() == resident.len()
        && host
            .values
            .iter()
            .zip(&resident)
            .all(|(a, b)| a.to_bits() == b.to_bits());
    let expected_count = resident.iter().filter(|&&v| v > threshold).count() as u32;
    if same && count == expected_count {
        println!(
            "agreement: GPU-resident values equal the host path bit for bit ({rows} rows) on {}",
            info.name
        );
        Ok(true)
    } else {
        println!(
            "DISAGREEMENT: GPU-resident values {} the host path; app count {count} vs {expected_count}, on {}",
            if same { "equal" } else { "differ from" },
            info.name
        );
        Ok(false)
    }
}
