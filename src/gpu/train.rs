//! Loss and gradient on the GPU (shaders/train.wgsl): its pipeline, its
//! parameter block, the recording of one dispatch into an encoder, and the
//! host path (upload, dispatch, read back the records and the gradient).
//!
//! One workgroup per row (see the shader): a row of any width streams
//! through its workgroup, so rows are split across dispatches only where
//! the bindings would exceed the device's limit.

use std::num::NonZeroU64;
use std::sync::{Arc, OnceLock};

use crate::batch::Data;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::pool::Scratch;
use crate::gpu::upload::Source;
use crate::record::{RECORD_SIZE, Record};

/// The modes of the kernel (`TR_*` in the shader).
pub(crate) mod mode {
    pub(crate) const NLL: u32 = 0;
    pub(crate) const FORWARD_KL: u32 = 1;
    pub(crate) const REVERSE_KL: u32 = 2;
    pub(crate) const JSD: u32 = 3;
}

/// Flags of [`TrainParams::flags`] (`TF_*` in the shader).
pub(crate) mod flag {
    /// Class weights follow the targets in the teacher's binding.
    pub(crate) const WEIGHTS: u32 = 1;
    /// A mask word per row follows the records in the row binding.
    pub(crate) const MASK: u32 = 2;
    /// Targets are i32 (a negative one is out of range).
    pub(crate) const SIGNED: u32 = 4;
    /// Targets equal to `ignore` are ignored.
    pub(crate) const IGNORE: u32 = 8;
    /// The gradient with respect to the teacher follows the student's in
    /// the gradient binding, from word `tg_at`.
    pub(crate) const TGRAD: u32 = 16;
}

/// The constants the shader shares with Rust (written by `gpu::wgsl`).
pub(crate) fn wgsl_constants() -> Vec<(&'static str, u32)> {
    vec![
        ("TR_NLL", mode::NLL),
        ("TR_FWD", mode::FORWARD_KL),
        ("TR_REV", mode::REVERSE_KL),
        ("TR_JSD", mode::JSD),
        ("TF_WEIGHTS", flag::WEIGHTS),
        ("TF_MASK", flag::MASK),
        ("TF_SIGNED", flag::SIGNED),
        ("TF_IGNORE", flag::IGNORE),
        ("TF_TGRAD", flag::TGRAD),
    ]
}

/// The twin of `struct Params` in shaders/train.wgsl (layouts compared by a
/// test in `gpu::wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct TrainParams {
    pub rows: u32,
    pub cols: u32,
    pub mode: u32,
    pub t_form: u32,
    pub k: f32,
    pub g: f32,
    pub t2: f32,
    pub beta: f32,
    pub ln_b: f32,
    pub ln_1b: f32,
    pub eps: f32,
    pub sum_w: f32,
    pub flags: u32,
    pub ignore: u32,
    pub mask_at: u32,
    pub tg_at: u32,
    /// The student's storage ([`crate::widen::Dtype::code`]).
    pub s_fmt: u32,
    /// The dense teacher's storage.
    pub t_fmt: u32,
    pub pad: [u32; 2],
}

/// The train kernel's layout and pipeline, built on first use.
#[derive(Debug)]
pub(crate) struct TrainPipeline {
    bgl: wgpu::BindGroupLayout,
    pipeline: wgpu::ComputePipeline,
}

pub(crate) type TrainCell = OnceLock<Arc<TrainPipeline>>;

fn entry(binding: u32, ty: wgpu::BufferBindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

impl TrainPipeline {
    fn new(device: &wgpu::Device) -> Result<TrainPipeline> {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("kullback.train"),
            source: wgpu::ShaderSource::Wgsl(crate::gpu::wgsl::TRAIN.as_str().into()),
        });
        let st = |read_only| wgpu::BufferBindingType::Storage { read_only };
        let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("kullback.train"),
            entries: &[
                entry(0, st(true)),
                entry(1, st(true)),
                entry(2, st(false)),
                entry(3, st(false)),
                entry(4, wgpu::BufferBindingType::Uniform),
            ],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("kullback.train"),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("kullback.train"),
            layout: Some(&layout),
            module: &module,
            entry_point: Some("train_main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[],
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Device(format!(
                "building kullback's train kernel: {e}"
            )));
        }
        Ok(TrainPipeline { bgl, pipeline })
    }
}

fn pipeline(gpu: &Gpu) -> Result<Arc<TrainPipeline>> {
    if let Some(p) = gpu.train.get() {
        return Ok(p.clone());
    }
    let p = Arc::new(TrainPipeline::new(&gpu.device)?);
    Ok(gpu.train.get_or_init(|| p).clone())
}

/// A window of a buffer bound to one binding.
#[derive(Clone, Copy)]
pub(crate) struct Window<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl<'a> Window<'a> {
    pub(crate) fn whole(buffer: &'a wgpu::Buffer, size: u64) -> Self {
        Window {
            buffer,
            offset: 0,
            size,
        }
    }
    fn binding(&self) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer,
            offset: self.offset,
            size: NonZeroU64::new(self.size.max(4)),
        })
    }
}

/// The four storage bindings of one dispatch (see shaders/train.wgsl).
/// With [`flag::TGRAD`] the gradient's window holds the teacher's gradient
/// too, from word `tg_at`.
pub(crate) struct Bindings<'a> {
    /// The student's logits (the NLL's logits).
    pub s: Window<'a>,
    /// The teacher's values, or the targets and class weights.
    pub t: Window<'a>,
    /// The gradient.
    pub grad: Window<'a>,
    /// The records, then the mask words.
    pub rows: Window<'a>,
}

/// Records one dispatch of `params.rows` rows into `enc`; its parameter block
/// is a buffer of `scratch`, written by `queue.write_buffer` (it lands before
/// the encoder's submission).
pub(crate) fn record(
    gpu: &Gpu,
    scratch: &mut Scratch,
    enc: &mut wgpu::CommandEncoder,
    b: &Bindings<'_>,
    params: &TrainParams,
) -> Result<()> {
    let pl = pipeline(gpu)?;
    let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
    let size = std::mem::size_of::<TrainParams>() as u64;
    let ubuf = scratch.buffer(&gpu.device, "kullback.train.params", size, usage)?;
    gpu.queue.write_buffer(&ubuf, 0, bytemuck::bytes_of(params));
    let bg = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("kullback.train"),
        layout: &pl.bgl,
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: b.s.binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: b.t.binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: b.grad.binding(),
            },
            wgpu::BindGroupEntry {
                binding: 3,
                resource: b.rows.binding(),
            },
            wgpu::BindGroupEntry {
                binding: 4,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &ubuf,
                    offset: 0,
                    size: NonZeroU64::new(size),
                }),
            },
        ],
    });
    let max_dim = gpu.limits.max_compute_workgroups_per_dimension.max(1);
    let x = params.rows.min(max_dim);
    let y = params.rows.div_ceil(x);
    if y > max_dim {
        return Err(Error::TooLarge {
            what: "rows of one loss-gradient dispatch".into(),
            size: params.rows as u64,
            limit: max_dim as u64 * max_dim as u64,
        });
    }
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("kullback.train"),
        timestamp_writes: None,
    });
    pass.set_pipeline(&pl.pipeline);
    pass.set_bind_group(0, &bg, &[]);
    pass.dispatch_workgroups(x, y, 1);
    Ok(())
}

/// Bytes of the row binding of `rows` rows: their records, and a mask word
/// each where there is a mask.
pub(crate) fn rows_bytes(rows: usize, mask: bool) -> u64 {
    rows as u64 * (RECORD_SIZE + if mask { 4 } else { 0 })
}

/// What one host-path call reads besides the logits.
pub(crate) enum Aux<'a> {
    /// The NLL: one u32 target per row ([`crate::call::IGNORED`] for an
    /// ignored one) and the class weights.
    Targets(&'a [u32], Option<&'a [f32]>),
    /// Distillation from a dense teacher, and the row mask as words.
    Teacher(Data<'a>, Option<&'a [u32]>),
}

/// Values `r` of `d`.
fn sub<'a>(d: Data<'a>, r: std::ops::Range<usize>) -> Data<'a> {
    match d {
        Data::F32(v) => Data::F32(&v[r]),
        Data::F64(v) => Data::F64(&v[r]),
        Data::F16(v) => Data::F16(&v[r]),
        Data::BF16(v) => Data::BF16(&v[r]),
    }
}

/// Rows per dispatch so that every binding fits the device's limit (the
/// gradient's binding holds `grads` gradients).
fn chunk_rows(gpu: &Gpu, rows: usize, cols: usize, grads: u64) -> Result<usize> {
    let row_bytes = cols as u64 * 4 * grads;
    let n = (gpu.cap / row_bytes).min(rows as u64) as usize;
    if n == 0 {
        return Err(Error::TooLarge {
            what: "bytes of one row of a loss gradient".into(),
            size: row_bytes,
            limit: gpu.cap,
        });
    }
    Ok(n)
}

/// Little-endian f32 bytes `b` into `out`.
fn copy_f32s(b: &[u8], out: &mut [f32]) {
    match bytemuck::try_cast_slice::<u8, f32>(b) {
        Ok(v) => out.copy_from_slice(v),
        Err(_) => {
            for (d, b) in out.iter_mut().zip(b.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

impl Gpu {
    /// The host path of a loss and gradient: uploads, dispatches and reads
    /// back one record per row, writing the gradient into `grad` (and the
    /// teacher's into `tgrad`, a dense teacher's only); `params` gives
    /// everything but the rows, the flags for weights, mask and teacher
    /// gradient, and `mask_at` and `tg_at`, set here per chunk of rows.
    pub(crate) fn train_rows(
        &self,
        s: Data<'_>,
        aux: &Aux<'_>,
        params: TrainParams,
        grad: &mut [f32],
        mut tgrad: Option<&mut [f32]>,
    ) -> Result<Vec<Record>> {
        let cols = params.cols as usize;
        let rows = grad.len() / cols.max(1);
        let grads = 1 + tgrad.is_some() as u64;
        let n = chunk_rows(self, rows, cols, grads)?;
        let mut records = crate::error::try_vec(rows, "the per-row records")?;
        for r0 in (0..rows).step_by(n) {
            let r1 = (r0 + n).min(rows);
            let bytes = ((r1 - r0) * cols) as u64 * 4 * (2 + grads);
            let vals = r0 * cols..r1 * cols;
            let tg = tgrad.as_deref_mut().map(|t| &mut t[vals.clone()]);
            let part = self.scoped("the inputs and gradient of a loss", bytes, || {
                self.train_chunk(s, aux, params, r0..r1, &mut grad[vals], tg)
            })?;
            records.extend(part);
        }
        Ok(records)
    }

    fn train_chunk(
        &self,
        s: Data<'_>,
        aux: &Aux<'_>,
        mut params: TrainParams,
        range: std::ops::Range<usize>,
        grad: &mut [f32],
        tgrad: Option<&mut [f32]>,
    ) -> Result<Vec<Record>> {
        let cols = params.cols as usize;
        let rows = range.len();
        let vals = range.start * cols..range.end * cols;
        let mut scratch = Scratch::pooled(&self.pool);
        let sc = &mut scratch;
        // halves as they are: the kernel widens them where it reads them
        let s_buf =
            self.upload_source(sc, "kullback.student", Source::stored(sub(s, vals.clone())))?;
        params.s_fmt = s.dtype().code();
        let s_bytes = s.dtype().stored_bytes((rows * cols) as u64);
        params.rows = rows as u32;
        let mut row_words: Vec<u32> = Vec::new();
        let grad_bytes = (rows * cols) as u64 * 4;
        let t_bytes;
        let t_buf = match aux {
            Aux::Targets(targets, weights) => {
                let mut words = crate::error::try_vec(rows + cols, "the targets")?;
                words.extend_from_slice(&targets[range.clone()]);
                if let Some(w) = weights {
                    words.extend(w.iter().map(|v| v.to_bits()));
                    params.flags |= flag::WEIGHTS;
                }
                t_bytes = words.len() as u64 * 4;
                self.upload(sc, "kullback.targets", bytemuck::cast_slice(&words))?
            }
            Aux::Teacher(t, mask) => {
                if let Some(m) = mask {
                    row_words = crate::error::try_vec(rows, "the row mask")?;
                    row_words.extend_from_slice(&m[range.clone()]);
                    params.flags |= flag::MASK;
                    params.mask_at = (rows * 6) as u32;
                }
                params.t_fmt = t.dtype().code();
                t_bytes = t.dtype().stored_bytes((rows * cols) as u64);
                self.upload_source(sc, "kullback.teacher", Source::stored(sub(*t, vals)))?
            }
        };
        let out_usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let rec_bytes = rows as u64 * RECORD_SIZE;
        let has_mask = !row_words.is_empty();
        let usage = out_usage | wgpu::BufferUsages::COPY_DST;
        let rows_len = rows_bytes(rows, has_mask);
        let rows_buf = sc.buffer(&self.device, "kullback.train.rows", rows_len, usage)?;
        if has_mask {
            // the mask words after the records (which the kernel writes)
            self.queue
                .write_buffer(&rows_buf, rec_bytes, bytemuck::cast_slice(&row_words));
        }
        // the teacher's gradient after the student's, in the same binding
        let grads_bytes = grad_bytes * (1 + tgrad.is_some() as u64);
        if tgrad.is_some() {
            params.flags |= flag::TGRAD;
            params.tg_at = u32::try_from(rows * cols).map_err(|_| Error::TooLarge {
                what: "values of one loss-gradient dispatch".into(),
                size: (rows * cols) as u64,
                limit: u32::MAX as u64,
            })?;
        }
        let grad_buf = sc.buffer(&self.device, "kullback.grad", grads_bytes, out_usage)?;
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("kullback.train"),
            });
        let b = Bindings {
            s: Window::whole(&s_buf, s_bytes),
            t: Window::whole(&t_buf, t_bytes),
            grad: Window::whole(&grad_buf, grads_bytes),
            rows: Window::whole(&rows_buf, rows_len),
        };
        record(self, sc, &mut enc, &b, &params)?;
        // one staging buffer: the records, then the gradient
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let total = rec_bytes + grads_bytes;
        let staging = sc.buffer(&self.device, "kullback.readback", total, usage)?;
        sc.detach(&staging);
        enc.copy_buffer_to_buffer(&rows_buf, 0, &staging, 0, rec_bytes);
        enc.copy_buffer_to_buffer(&grad_buf, 0, &staging, rec_bytes, grads_bytes);
        let index = self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging
            .slice(..total)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| Error::Device(format!("waiting for the GPU: {e}")))?;
        let mapped = loop {
            match rx.recv_timeout(std::time::Duration::from_millis(1)) {
                Ok(r) => break r,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.device.poll(wgpu::PollType::Poll);
                }
                Err(_) => return Err(Error::Device("the map callback was dropped".into())),
            }
        };
        mapped.map_err(|e| Error::Device(format!("mapping the results: {e}")))?;
        let out = {
            let view = staging
                .slice(..total)
                .get_mapped_range()
                .map_err(|e| Error::Device(format!("reading the results: {e}")))?;
            let (recs, g) = view.split_at(rec_bytes as usize);
            let (g, h) = g.split_at(grad_bytes as usize);
            copy_f32s(g, grad);
            if let Some(t) = tgrad {
                copy_f32s(&h[..grad_bytes as usize], t);
            }
            let mut out = crate::error::try_vec(rows, "the records read back")?;
            out.extend(
                recs.chunks_exact(RECORD_SIZE as usize)
                    .map(bytemuck::pod_read_unaligned::<Record>),
            );
            out
        };
        staging.unmap();
        scratch.attach(staging);
        Ok(out)
    }
}
