//! The GPU backend: device, cached pipelines, planning, recording and readback.

mod device;
mod encode;
// all pairs: a module of its own (prep, tiles, nearest-k, resident encoding)
pub(crate) mod pairwise;
mod params;
mod pipelines;
mod plan;
mod pool;
mod readback;
mod wgsl;

use std::sync::Arc;

use crate::batch::Data;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::measure::Reduction;
use crate::record::Records;
use crate::record::{RECORD_SIZE, Record};
use pool::Scratch;
pub(crate) use pool::{DEFAULT_POOL_BYTES, Pool};

pub(crate) use encode::{GpuShape, Operands, TOTAL_OUTPUT_SIZE};
pub(crate) use pipelines::Pipelines;

/// Values of f64 input converted per upload chunk (1 MiB of f32).
const UPLOAD_CHUNK: usize = 1 << 18;

/// A device, its queue and the pipelines built on it.
#[derive(Debug)]
pub(crate) struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    adapter_name: String,
    pub(crate) class: crate::cost::AdapterClass,
    pub(crate) limits: wgpu::Limits,
    /// Bytes of one input binding (the device's limit, or the caller's cap).
    pub(crate) cap: u64,
    pub(crate) pipelines: Arc<Pipelines>,
    /// Buffers reused across host-path calls.
    pool: Arc<Pool>,
    /// The all-pairs pipelines, built on first use.
    pub(crate) pairwise: pairwise::PipelinesCell,
}

impl Gpu {
    /// Picks an adapter (software ones only if `allow_software`) and makes a device.
    pub(crate) fn create(allow_software: bool, cap: Option<u64>, pool_bytes: u64) -> Result<Gpu> {
        let adapter = device::pick_adapter(allow_software)?;
        let info = adapter.get_info();
        let (device, queue) = device::request_device(&adapter)?;
        let mut g = Gpu::from_device(device, queue, cap, pool_bytes)?;
        g.adapter_name = info.name;
        g.class = crate::cost::AdapterClass::of(info.device_type);
        Ok(g)
    }

    /// Wraps the caller's device.
    pub(crate) fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        cap: Option<u64>,
        pool_bytes: u64,
    ) -> Result<Gpu> {
        let limits = device.limits();
        if limits.max_storage_buffers_per_shader_stage < 4 {
            return Err(Error::Unsupported(format!(
                "the device allows {} storage buffers per shader stage; kullback needs 4",
                limits.max_storage_buffers_per_shader_stage
            )));
        }
        let device_cap = plan::binding_limit(&limits);
        let cap = match cap {
            Some(c) if c < plan::MIN_CAP_BYTES => {
                return Err(Error::InvalidOption(format!(
                    "max_binding_bytes must be at least {} (one block plus alignment), got {c}",
                    plan::MIN_CAP_BYTES
                )));
            }
            Some(c) => c.min(device_cap),
            None => device_cap,
        };
        let info = device.adapter_info();
        let pipelines = Pipelines::for_device(&device)?;
        Ok(Gpu {
            adapter_name: info.name,
            class: crate::cost::AdapterClass::of(info.device_type),
            device,
            queue,
            limits,
            cap,
            pipelines,
            pool: Arc::new(Pool::new(pool_bytes)),
            pairwise: Default::default(),
        })
    }

    pub(crate) fn adapter_name(&self) -> &str {
        &self.adapter_name
    }

    /// An input buffer of `bytes` bytes (at least 4) from `scratch`.
    fn input_buffer(
        &self,
        scratch: &mut Scratch,
        label: &'static str,
        bytes: u64,
    ) -> Result<wgpu::Buffer> {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        scratch.buffer(&self.device, label, bytes.max(4), usage)
    }

    fn upload(
        &self,
        scratch: &mut Scratch,
        label: &'static str,
        bytes: &[u8],
    ) -> Result<wgpu::Buffer> {
        let buf = self.input_buffer(scratch, label, bytes.len() as u64)?;
        if !bytes.is_empty() {
            self.queue.write_buffer(&buf, 0, bytes);
        }
        Ok(buf)
    }

    /// [`Gpu::upload`] of an operand's values: f32 as they are; f64 converted
    /// a chunk of [`UPLOAD_CHUNK`] values at a time into one host buffer of
    /// that size, each chunk written at its place (no f32 copy of the whole
    /// input on the host; the queue stages the writes as it does for f32).
    fn upload_data(
        &self,
        scratch: &mut Scratch,
        label: &'static str,
        data: Data<'_>,
    ) -> Result<wgpu::Buffer> {
        let v = match data {
            Data::F32(v) => return self.upload(scratch, label, bytemuck::cast_slice(v)),
            Data::F64(v) => v,
        };
        let buf = self.input_buffer(scratch, label, v.len() as u64 * 4)?;
        let mut chunk = crate::error::try_vec(UPLOAD_CHUNK.min(v.len()), "an f64 upload chunk")?;
        chunk.resize(UPLOAD_CHUNK.min(v.len()), 0.0f32);
        for (k, src) in v.chunks(UPLOAD_CHUNK).enumerate() {
            let dst = &mut chunk[..src.len()];
            crate::batch::convert(src, dst);
            let offset = (k * UPLOAD_CHUNK * 4) as u64;
            self.queue
                .write_buffer(&buf, offset, bytemuck::cast_slice::<f32, u8>(dst));
        }
        Ok(buf)
    }

    /// Runs `f` inside an out-of-memory and a validation error scope on our
    /// device: allocations, uploads and recording that the device refuses
    /// become an [`Error`] (out of memory: [`Error::OutOfMemory`] naming
    /// `what` and the `bytes` the call asked for) instead of wgpu's panic.
    pub(crate) fn scoped<T>(
        &self,
        what: &str,
        bytes: u64,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = f();
        let invalid = pollster::block_on(invalid.pop());
        let oom = pollster::block_on(oom.pop());
        if let Some(e) = oom {
            log::debug!("kullback: {what}: {e}");
            return Err(Error::OutOfMemory {
                what: format!("{what} (device memory)"),
                bytes,
            });
        }
        if let Some(e) = invalid {
            return Err(Error::Device(e.to_string()));
        }
        result
    }

    /// Frees the buffers the host path keeps between calls.
    pub(crate) fn trim(&self) {
        self.pool.trim();
    }

    /// Bytes of the buffers kept between calls now.
    pub(crate) fn kept_bytes(&self) -> u64 {
        self.pool.kept_bytes()
    }

    /// The host path: upload, record, submit once, read back only the results.
    pub(crate) fn run(&self, job: &Job<'_>) -> Result<Records> {
        self.submit(job)?.wait(self)
    }

    /// Uploads and submits `job`; the results are read when the returned
    /// [`Pending`] is waited for or awaited.
    pub(crate) fn submit(&self, job: &Job<'_>) -> Result<Pending> {
        let inputs: u64 = [&job.p, &job.q]
            .iter()
            .filter_map(|o| o.as_ref())
            .map(|o| o.data.len() as u64 * 4)
            .sum();
        let bytes = inputs + job.rows as u64 * RECORD_SIZE;
        self.scoped("the inputs and records of a call", bytes, || {
            self.submit_inner(job)
        })
    }

    fn submit_inner(&self, job: &Job<'_>) -> Result<Pending> {
        let shape = GpuShape::from_job(job);
        let mut scratch = Scratch::pooled(&self.pool);
        let sc = &mut scratch;
        let (p_buf, q_buf) = match &job.nll {
            Some(n) => {
                let mut words: Vec<u32> = n.targets.clone();
                if let Some(w) = &n.weights {
                    words.extend(w.iter().map(|x| x.to_bits()));
                }
                let q = job.q.as_ref().map_or(Data::F32(&[]), |q| q.data);
                (
                    self.upload(sc, "kullback.targets", bytemuck::cast_slice(&words))?,
                    self.upload_data(sc, "kullback.q", q)?,
                )
            }
            None => {
                let p = job.p.as_ref().map_or(Data::F32(&[]), |p| p.data);
                let p = self.upload_data(sc, "kullback.p", p)?;
                let q = match &job.q {
                    Some(q) => self.upload_data(sc, "kullback.q", q.data)?,
                    // entropy: q is never read; bind p twice (both read-only)
                    None => p.clone(),
                };
                (p, q)
            }
        };
        let rows_bytes = job.rows as u64 * RECORD_SIZE;
        let out_usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let records = sc.buffer(&self.device, "kullback.records", rows_bytes, out_usage)?;
        let total = match job.reduction {
            Reduction::None => None,
            _ => Some(sc.buffer(&self.device, "kullback.total", TOTAL_OUTPUT_SIZE, out_usage)?),
        };
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("kullback"),
            });
        let ops = Operands {
            p: &p_buf,
            p_offset: 0,
            q: &q_buf,
            q_offset: 0,
        };
        encode::encode(
            self,
            sc,
            &mut enc,
            &shape,
            &ops,
            (&records, 0),
            total.as_ref().map(|t| (t, 0)),
        )?;
        Ok(match &total {
            None => Pending {
                read: readback::start(self, sc, enc, &records, 0, rows_bytes)?,
                total: false,
                scratch,
            },
            Some(t) => Pending {
                read: readback::start(self, sc, enc, t, 0, TOTAL_OUTPUT_SIZE)?,
                total: true,
                scratch,
            },
        })
    }
}

impl Gpu {
    /// The GPU-resident path: records `shape` over the caller's buffers into
    /// the caller's encoder. `nll_targets`: the caller's targets, copied next
    /// to the class weights in a buffer of ours.
    pub(crate) fn encode_resident(
        &self,
        enc: &mut wgpu::CommandEncoder,
        shape: &GpuShape,
        ops: &Operands<'_>,
        out: (&wgpu::Buffer, u64),
        nll: Option<(&Targets<'_>, Option<&[f32]>)>,
        workspace: Option<&Arc<Pool>>,
    ) -> Result<()> {
        // everything that can fail is checked and made before the first
        // command is recorded: a buffer of another device is refused by the
        // bind group made over it, inside our error scopes
        encode::scratch_sizes(self, shape)?;
        let mut sc = match workspace {
            Some(w) => Scratch::pooled(w),
            None => Scratch::fresh(),
        };
        let t_bytes = nll.map_or(0, |(t, _)| t.len as u64 * 4);
        let w_bytes = nll.and_then(|(_, w)| w).map_or(0, |w| w.len() as u64 * 4);
        let records_bytes = match shape.reduction {
            Reduction::None => 0,
            _ => shape.rows as u64 * RECORD_SIZE,
        };
        let what = "the scratch of a GPU-resident call";
        let (recording, holder) = self.scoped(what, t_bytes + w_bytes + records_bytes, || {
            let sc = &mut sc;
            let mut ops = Operands { ..*ops };
            let mut holder = None;
            if let Some((_, weights)) = nll {
                let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
                let h = sc.buffer(&self.device, "kullback.targets", t_bytes + w_bytes, usage)?;
                if let Some(w) = weights {
                    self.queue
                        .write_buffer(&h, t_bytes, bytemuck::cast_slice(w));
                }
                holder = Some(h);
            }
            if let Some(h) = &holder {
                ops.p = h;
                ops.p_offset = 0;
            }
            let recording = if shape.reduction == Reduction::None {
                encode::prepare(self, sc, shape, &ops, out, None)?
            } else {
                let usage = wgpu::BufferUsages::STORAGE;
                let records = sc.buffer(&self.device, "kullback.records", records_bytes, usage)?;
                encode::prepare(self, sc, shape, &ops, (&records, 0), Some(out))?
            };
            Ok((recording, holder))
        })?;
        if let (Some((t, _)), Some(h)) = (nll, &holder) {
            enc.copy_buffer_to_buffer(t.buffer, t.offset, h, 0, t_bytes);
        }
        recording.record(self, enc);
        Ok(())
    }
}

/// Class targets in a caller's buffer, already checked (usage, offset, size)
/// by the GPU-resident façade: copied next to the class weights.
pub(crate) struct Targets<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub len: usize,
}

/// A submitted job whose results are on their way back.
pub(crate) struct Pending {
    read: readback::Reading,
    total: bool,
    /// The call's buffers: back to the pool once the results are read.
    scratch: Scratch,
}

impl Pending {
    fn records(total: bool, r: Vec<Record>) -> Records {
        if !total {
            return Records::Rows(r);
        }
        if r[0].is_ok() {
            Records::Total(r[0])
        } else {
            Records::BadRow(r[0].index as usize, r[1])
        }
    }

    /// Blocks until the results are back.
    pub(crate) fn wait(self, gpu: &Gpu) -> Result<Records> {
        gpu.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(self.read.index.clone()),
                timeout: None,
            })
            .map_err(|e| Error::Device(format!("waiting for the GPU: {e}")))?;
        let (r, staging) = pollster::block_on(self.read.finish())?;
        let mut scratch = self.scratch;
        scratch.attach(staging);
        Ok(Pending::records(self.total, r))
    }

    /// Resolves once someone has polled the device past the submission.
    pub(crate) async fn resolve(self) -> Result<Records> {
        let (r, staging) = self.read.finish().await?;
        let mut scratch = self.scratch;
        scratch.attach(staging);
        Ok(Pending::records(self.total, r))
    }
}
