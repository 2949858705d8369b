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
// loss and gradient (src/train's GPU path)
pub(crate) mod train;
mod upload;
mod wgsl;

use std::sync::Arc;

use crate::batch::Data;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::measure::Reduction;
use crate::record::Record;
pub(crate) use pool::{DEFAULT_POOL_BYTES, Pool, Scratch};

pub(crate) use encode::{Operands, prepare};
pub(crate) use pipelines::Pipelines;
pub(crate) use plan::{GpuPlan, TOTAL_OUTPUT_SIZE, plan_stored, targets_words};

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
    /// Host and device share memory and the device maps storage buffers
    /// (`MAPPABLE_PRIMARY_BUFFERS`): inputs are written in place (see `upload`).
    unified: bool,
    /// Host-to-device bytes/s, measured at the first `Auto` placement.
    upload_rate: std::sync::OnceLock<Option<f64>>,
    /// Buffers reused across host-path calls.
    pool: Arc<Pool>,
    /// The all-pairs pipelines, built on first use.
    pub(crate) pairwise: pairwise::PipelinesCell,
    /// The loss-and-gradient pipelines, built on first use: one per
    /// [`train::Variant`].
    pub(crate) train: [train::TrainCell; 4],
}

impl Gpu {
    /// Picks an adapter (software ones only if `allow_software`) and makes a device.
    /// `subgroups`: request `Features::SUBGROUP` where the adapter has it,
    /// and use it in the reductions.
    pub(crate) fn create(
        allow_software: bool,
        cap: Option<u64>,
        pool_bytes: u64,
        subgroups: bool,
    ) -> Result<Gpu> {
        let adapter = device::pick_adapter(allow_software)?;
        let info = adapter.get_info();
        let (device, queue) = device::request_device(&adapter, subgroups)?;
        let mut g = Gpu::from_device(device, queue, cap, pool_bytes, subgroups)?;
        g.adapter_name = info.name;
        g.class = crate::cost::AdapterClass::of(info.device_type);
        Ok(g)
    }

    /// Wraps the caller's device (subgroups where it has the feature and
    /// `subgroups` allows them).
    pub(crate) fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        cap: Option<u64>,
        pool_bytes: u64,
        subgroups: bool,
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
                return Err(Error::InvalidOption {
                    option: crate::error::Setting::MaxBindingBytes,
                    message: format!(
                        "max_binding_bytes must be at least {} (one block plus alignment), got {c}",
                        plan::MIN_CAP_BYTES
                    ),
                });
            }
            Some(c) => c.min(device_cap),
            None => device_cap,
        };
        let info = device.adapter_info();
        let subgroups = subgroups && device.features().contains(wgpu::Features::SUBGROUP);
        let pipelines = Pipelines::for_device(&device, subgroups)?;
        let unified = device::shares_memory(info.device_type)
            && device
                .features()
                .contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS);
        Ok(Gpu {
            unified,
            upload_rate: std::sync::OnceLock::new(),
            adapter_name: info.name,
            class: crate::cost::AdapterClass::of(info.device_type),
            device,
            queue,
            limits,
            cap,
            pipelines,
            pool: Arc::new(Pool::new(pool_bytes)),
            pairwise: Default::default(),
            train: Default::default(),
        })
    }

    /// This device's measured upload rate (see `upload::probe_rate`), once.
    pub(crate) fn upload_rate(&self) -> Option<f64> {
        *self.upload_rate.get_or_init(|| upload::probe_rate(self))
    }

    /// The host path's plan of `job` on this device: half operands are
    /// uploaded and read as half (entropy binds p in q's place).
    pub(crate) fn plan(&self, job: &Job<'_>) -> Result<GpuPlan> {
        let p = job.p.map_or(crate::widen::Dtype::F32, |d| d.dtype());
        let q = job.q.map_or(p, |d| d.dtype());
        plan::plan_stored(&job.call, &self.plan_limits(), (0, 0), (p, q))
    }

    /// Pipelines `plan` needs that this device has not compiled yet, and
    /// how many times it reads the input (the cost model's terms).
    pub(crate) fn plan_cost(&self, call: &crate::call::Call, plan: &GpuPlan) -> (u32, u32) {
        let new = self.pipelines.uncached(plan.steps.iter().map(|s| s.key));
        (new, if call.two_pass { 2 } else { 1 })
    }

    pub(crate) fn adapter_name(&self) -> &str {
        &self.adapter_name
    }

    fn upload(
        &self,
        scratch: &mut Scratch,
        label: &'static str,
        bytes: &[u8],
    ) -> Result<wgpu::Buffer> {
        self.upload_source(scratch, label, upload::Source::Bytes(bytes))
    }

    /// An operand's values on the device as the kernels read them: f32 as
    /// they are, f64 narrowed a chunk at a time (no f32 copy of the whole
    /// input on the host), f16 and bf16 as they are (half the bytes; the rows
    /// kernel and the all-pairs preparation widen them).
    fn upload_stored(
        &self,
        scratch: &mut Scratch,
        label: &'static str,
        data: Data<'_>,
    ) -> Result<wgpu::Buffer> {
        self.upload_source(scratch, label, upload::Source::stored(data))
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

    /// What the planner needs of this device.
    pub(crate) fn plan_limits(&self) -> plan::DeviceLimits {
        plan::DeviceLimits::of(&self.limits, self.cap)
    }

    /// The host path: upload, record, submit once, read back only the
    /// results (the output records; see [`crate::record::OutputDesc`]).
    /// `plan` is the job's plan if the placement made it already.
    pub(crate) fn run(&self, job: &Job<'_>, plan: Option<GpuPlan>) -> Result<Vec<Record>> {
        self.submit(job, plan)?.wait(self)
    }

    /// Uploads and submits `job` (planned now unless `plan` is given); the
    /// results are read when the returned [`Pending`] is waited for or
    /// awaited.
    pub(crate) fn submit(&self, job: &Job<'_>, plan: Option<GpuPlan>) -> Result<Pending> {
        let plan = match plan {
            Some(p) => p,
            None => self.plan(job)?,
        };
        let bytes = job.input_bytes() + plan.records_bytes;
        self.scoped("the inputs and records of a call", bytes, || {
            self.submit_inner(job, &plan)
        })
    }

    fn submit_inner(&self, job: &Job<'_>, plan: &plan::GpuPlan) -> Result<Pending> {
        let mut scratch = Scratch::pooled(&self.pool);
        let sc = &mut scratch;
        let q = job.q.unwrap_or(Data::F32(&[]));
        let (p_buf, q_buf) = match (&job.nll, job.p) {
            (Some(n), _) => {
                let mut words: Vec<u32> = n.targets.clone();
                if let Some(w) = &n.weights {
                    words.extend(w.iter().map(|x| x.to_bits()));
                }
                // the binding's padding (it may be read as vec4s)
                let (rows, cols) = (job.call.rows as u32, job.call.cols as u32);
                let padded = plan::targets_words(rows, cols, n.weights.is_some());
                words.resize(padded as usize, 0);
                (
                    self.upload(sc, "kullback.targets", bytemuck::cast_slice(&words))?,
                    self.upload_stored(sc, "kullback.q", q)?,
                )
            }
            (None, p) => {
                let p = self.upload_stored(sc, "kullback.p", p.unwrap_or(Data::F32(&[])))?;
                let q = match job.q {
                    Some(q) => self.upload_stored(sc, "kullback.q", q)?,
                    // entropy: q is never read; bind p twice (both read-only)
                    None => p.clone(),
                };
                (p, q)
            }
        };
        let out_usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let records = sc.buffer(
            &self.device,
            "kullback.records",
            plan.records_bytes,
            out_usage,
        )?;
        let total = match job.call.reduction {
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
            q: &q_buf,
        };
        let total_out = total.as_ref().map(|t| (t, 0));
        encode::prepare(self, sc, plan, ops, (&records, 0), total_out)?
            .record(self, &mut enc, None);
        let (out, bytes) = match &total {
            None => (&records, plan.records_bytes),
            Some(t) => (t, TOTAL_OUTPUT_SIZE),
        };
        Ok(Pending {
            read: readback::start(self, sc, enc, out, 0, bytes)?,
            scratch,
        })
    }
}

/// A submitted job whose results are on their way back.
pub(crate) struct Pending {
    read: readback::Reading,
    /// The call's buffers: back to the pool once the results are read.
    scratch: Scratch,
}

impl Pending {
    /// Blocks until the results are back.
    pub(crate) fn wait(self, gpu: &Gpu) -> Result<Vec<Record>> {
        gpu.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(self.read.index.clone()),
                timeout: None,
            })
            .map_err(|e| Error::Device(format!("waiting for the GPU: {e}")))?;
        let (r, staging) = pollster::block_on(self.read.finish())?;
        let mut scratch = self.scratch;
        scratch.attach(staging);
        Ok(r)
    }

    /// Resolves once someone has polled the device past the submission.
    pub(crate) async fn resolve(self) -> Result<Vec<Record>> {
        let (r, staging) = self.read.finish().await?;
        let mut scratch = self.scratch;
        scratch.attach(staging);
        Ok(r)
    }
}
