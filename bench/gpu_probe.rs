//! The GPU's limits, measured in the same run as the kernels they bound:
//! device read bandwidth (a plain WGSL kernel summing a buffer with vec4
//! loads, grid-stride, timed by timestamp queries where the adapter has them,
//! else by the wall time of submit-and-wait) and host-to-device bandwidth
//! (`Queue::write_buffer` of the same bytes, submitted and waited for), and
//! the arithmetic peaks the all-pairs kernels are held to (issue 17): f32 FMA
//! throughput (a plain WGSL loop of `fma`) and `log` throughput (a loop of
//! `log`s), timed the same way.

use std::time::Instant;

use kullback::wgpu;

/// What the probe measured.
pub(crate) struct GpuProbe {
    /// Device read bandwidth, bytes/s.
    pub(crate) read_bps: f64,
    /// Host-to-device bandwidth, bytes/s.
    pub(crate) upload_bps: f64,
    /// Bytes each pass read.
    pub(crate) bytes: u64,
    /// How the read kernel was timed.
    pub(crate) timing: &'static str,
    /// f32 fused multiply-adds per second (each is two flops).
    pub(crate) fma_per_s: f64,
    /// f32 natural logarithms per second.
    pub(crate) log_per_s: f64,
    /// The adapter and its driver.
    pub(crate) adapter: String,
}

const PROBE: &str = r"
@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 256u;
    let n = arrayLength(&src);
    var acc = vec4<f32>(0.0);
    for (var i = gid.x; i < n; i += stride) {
        acc += src[i];
    }
    dst[gid.x] = acc;
}
";

const GROUPS: u32 = 4096;

/// The arithmetic probes: each invocation runs CHAINS independent chains
/// (enough to hide latency) of ITERS steps; one step is one `fma`, or one
/// `log` and one add (the add keeps the chain at log's fixed point, ~3.15).
/// The inputs depend on the invocation, so nothing folds; one result in 1,024
/// is kept (racing writes of plain f32 are fine: the values are not used).
const ARITH: &str = r"
@group(0) @binding(0) var<storage, read_write> dst: array<f32>;

const ITERS: u32 = 256u;

@compute @workgroup_size(256)
fn fma_main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let x = f32(gid.x & 1023u) * 1e-6;
    let m = 0.999 + x * 1e-3;
    let c = 1e-3 - x;
    var a0 = x; var a1 = x + 0.1; var a2 = x + 0.2; var a3 = x + 0.3;
    var a4 = x + 0.4; var a5 = x + 0.5; var a6 = x + 0.6; var a7 = x + 0.7;
    for (var i = 0u; i < ITERS; i++) {
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a4 = fma(a4, m, c); a5 = fma(a5, m, c); a6 = fma(a6, m, c); a7 = fma(a7, m, c);
    }
    dst[gid.x & 1023u] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

@compute @workgroup_size(256)
fn log_main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let x = f32(gid.x & 1023u) * 1e-6;
    var a0 = 1.0 + x; var a1 = 1.5 + x; var a2 = 2.0 + x; var a3 = 2.5 + x;
    var a4 = 3.0 + x; var a5 = 3.5 + x; var a6 = 4.0 + x; var a7 = 4.5 + x;
    for (var i = 0u; i < ITERS; i++) {
        a0 = log(a0) + 2.0; a1 = log(a1) + 2.0; a2 = log(a2) + 2.0; a3 = log(a3) + 2.0;
        a4 = log(a4) + 2.0; a5 = log(a5) + 2.0; a6 = log(a6) + 2.0; a7 = log(a7) + 2.0;
    }
    dst[gid.x & 1023u] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}
";
const ARITH_CHAINS: u64 = 8;
const ARITH_ITERS: u64 = 256;
const WG_SIZE: u64 = 256;

/// Operations per second of `entry` in [`ARITH`]: the grid grows (x4) until
/// one run takes 5 ms or the grid its 65,535 workgroups (so that a software
/// adapter and a large GPU both get a run long enough to time), then the
/// median of `repeat` runs at that size.
fn arith_rate(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    st: &Stamps,
    entry: &str,
    repeat: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("probe.arith"),
        source: wgpu::ShaderSource::Wgsl(ARITH.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: None,
        module: &module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    });
    let dst = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("probe.arith.dst"),
        size: 4096,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: dst.as_entire_binding(),
        }],
    });
    let run = |groups: u32| {
        let mut enc = device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: st.set.as_ref().map(|qs| wgpu::ComputePassTimestampWrites {
                    query_set: qs,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                }),
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups, 1, 1);
        }
        st.resolve(&mut enc);
        st.time(device, queue, enc)
    };
    let mut groups = 64u32;
    run(groups)?; // compile and warm up
    while groups < 65_535 && run(groups)? < 5e-3 {
        groups = (groups * 4).min(65_535);
    }
    let mut times = Vec::new();
    for _ in 0..repeat.max(1) {
        times.push(run(groups)?);
    }
    let ops = groups as u64 * WG_SIZE * ARITH_CHAINS * ARITH_ITERS;
    Ok(ops as f64 / crate::median(&mut times))
}

/// Two timestamps around the work of one encoder, resolved and read back;
/// without timestamp queries, the wall time of submit-and-wait.
pub(crate) struct Stamps {
    /// The query set (`None`: the adapter has no timestamp queries).
    pub(crate) set: Option<wgpu::QuerySet>,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
}

impl Stamps {
    pub(crate) fn new(device: &wgpu::Device, enabled: bool) -> Stamps {
        let buffer = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        Stamps {
            set: enabled.then(|| {
                device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: None,
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                })
            }),
            resolve: buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            read: buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
        }
    }

    /// Records the copy of both timestamps to the readback buffer.
    pub(crate) fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        if let Some(qs) = &self.set {
            enc.resolve_query_set(qs, 0..2, &self.resolve, 0);
            enc.copy_buffer_to_buffer(&self.resolve, 0, &self.read, 0, 16);
        }
    }

    /// Submits `enc`, waits, and returns the seconds between the two
    /// timestamps (or the wall time of submit-and-wait).
    pub(crate) fn time(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        enc: wgpu::CommandEncoder,
    ) -> Result<f64, Box<dyn std::error::Error>> {
        let wait = || {
            device.poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
        };
        let t0 = Instant::now();
        queue.submit([enc.finish()]);
        wait()?;
        let wall = t0.elapsed().as_secs_f64();
        if self.set.is_none() {
            return Ok(wall);
        }
        self.read
            .slice(..)
            .map_async(wgpu::MapMode::Read, |r| r.expect("map"));
        wait()?;
        let ts: Vec<u64> = bytemuck::cast_slice(&self.read.slice(..).get_mapped_range()?).to_vec();
        self.read.unmap();
        Ok((ts[1] - ts[0]) as f64 * queue.get_timestamp_period() as f64 * 1e-9)
    }
}

/// Measures both bandwidths over up to 1 GiB (the binding limit), median of `repeat`.
pub(crate) fn probe(repeat: usize) -> Result<Option<GpuProbe>, Box<dyn std::error::Error>> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let Ok(adapter) = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    })) else {
        return Ok(None);
    };
    let info = adapter.get_info();
    let want = wgpu::Features::TIMESTAMP_QUERY;
    let stamps = adapter.features().contains(want);
    let limits = adapter.limits();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("gpu-probe"),
        required_features: if stamps {
            want
        } else {
            wgpu::Features::empty()
        },
        required_limits: limits.clone(),
        ..Default::default()
    }))?;
    let bytes = (1u64 << 30)
        .min(limits.max_storage_buffer_binding_size)
        .min(limits.max_buffer_size)
        & !15;
    let src = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("probe.src"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let dst = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("probe.dst"),
        size: GROUPS as u64 * 256 * 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("probe"),
        source: wgpu::ShaderSource::Wgsl(PROBE.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("probe"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: src.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: dst.as_entire_binding(),
            },
        ],
    });
    let wait = |device: &wgpu::Device| {
        device.poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: None,
        })
    };
    // host to device: the same bytes from a host buffer
    let host = vec![0x3c00_3c00u32; (bytes / 4) as usize];
    let mut up = Vec::new();
    for _ in 0..repeat.max(1) + 1 {
        let t0 = Instant::now();
        queue.write_buffer(&src, 0, bytemuck::cast_slice(&host));
        queue.submit([]);
        wait(&device)?;
        up.push(t0.elapsed().as_secs_f64());
    }
    drop(host);
    up.remove(0);
    let st = Stamps::new(&device, stamps);
    let qs = st.set.as_ref();
    let mut reads = Vec::new();
    for i in 0..repeat.max(1) + 1 {
        let mut enc = device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: qs.map(|qs| wgpu::ComputePassTimestampWrites {
                    query_set: qs,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                }),
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(GROUPS, 1, 1);
        }
        st.resolve(&mut enc);
        let dt = st.time(&device, &queue, enc)?;
        if i > 0 {
            reads.push(dt);
        }
    }
    drop((src, dst));
    let fma_per_s = arith_rate(&device, &queue, &st, "fma_main", repeat)?;
    let log_per_s = arith_rate(&device, &queue, &st, "log_main", repeat)?;
    Ok(Some(GpuProbe {
        fma_per_s,
        log_per_s,
        read_bps: bytes as f64 / crate::median(&mut reads),
        upload_bps: bytes as f64 / crate::median(&mut up),
        bytes,
        timing: if stamps {
            "compute-pass timestamp_writes"
        } else {
            "wall time of submit and wait"
        },
        adapter: format!(
            "{} ({:?}, driver {} {})",
            info.name, info.backend, info.driver, info.driver_info
        ),
    }))
}
