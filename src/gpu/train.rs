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
use crate::grad::GradMut;
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
    /// A sparse teacher's [`Tail::Renormalize`](crate::Tail::Renormalize).
    pub(crate) const RENORM: u32 = 32;
}

/// The largest k of a sparse teacher whose row is sorted in workgroup
/// memory on the GPU-resident path ((index, position) pairs and
/// log-probabilities, 12 bytes each, within the 16 KiB every device offers);
/// a larger k is sorted in the call's scratch ([`Entry::SparseFusedGlobal`]).
pub(crate) const SPARSE_KMAX: usize = 512;

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
        ("TF_RENORM", flag::RENORM),
        ("SPARSE_KMAX", SPARSE_KMAX as u32),
        ("SPARSE_STATS", SPARSE_STATS as u32),
        ("SPARSE_CONSTS", SPARSE_CONSTS as u32),
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
    /// A sparse teacher's indices per row.
    pub top: u32,
    /// `sparse_fused`: the word of the log-probabilities in the teacher's
    /// binding, after the indices.
    pub lp_at: u32,
    /// `sparse_fused`: the tolerance on a row's Σₖ exp(lₖ) above 1.
    pub tol: f32,
    /// The gradient's storage ([`crate::widen::Dtype::code`]; the
    /// half-gradient variants only).
    pub g_fmt: u32,
    /// `sparse_fused` with `SORT_GLOBAL`: the word of row 0's sort region
    /// in the rows binding.
    pub sort_at: u32,
    pub pad: u32,
}

/// The train kernel's layout and pipeline, built on first use; the sparse
/// teacher's two entry points built on their first use.
#[derive(Debug)]
pub(crate) struct TrainPipeline {
    bgl: wgpu::BindGroupLayout,
    layout: wgpu::PipelineLayout,
    module: wgpu::ShaderModule,
    pipeline: wgpu::ComputePipeline,
    sparse: OnceLock<[wgpu::ComputePipeline; 4]>,
}

/// Which entry point of shaders/train.wgsl a dispatch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// `train_main`: the NLL and dense distillation.
    Train,
    /// `sparse_tail`: a sparse teacher's pass 1.
    SparseTail,
    /// `sparse_grad`: a sparse teacher's pass 2.
    SparseGrad,
    /// `sparse_fused`: a sparse teacher in one dispatch (GPU-resident).
    SparseFused,
    /// `sparse_fused` built with `SORT_GLOBAL`: k above [`SPARSE_KMAX`],
    /// each row's pairs sorted in its region of the rows binding
    /// ([`sort_words`] words from [`TrainParams::sort_at`]).
    SparseFusedGlobal,
}

impl Entry {
    fn name(self) -> &'static str {
        match self {
            Entry::Train => "train_main",
            Entry::SparseTail => "sparse_tail",
            Entry::SparseGrad => "sparse_grad",
            Entry::SparseFused | Entry::SparseFusedGlobal => "sparse_fused",
        }
    }

    /// The pipeline's override constants.
    fn constants(self) -> &'static [(&'static str, f64)] {
        match self {
            Entry::SparseFusedGlobal => &[("SORT_GLOBAL", 1.0)],
            _ => &[],
        }
    }
}

/// Words of one row's sort region for a sparse teacher of k indices
/// ([`Entry::SparseFusedGlobal`]): indices, positions and log-probabilities,
/// k rounded up to a power of two each.
pub(crate) fn sort_words(k: usize) -> u64 {
    3 * k.next_power_of_two() as u64
}

pub(crate) type TrainCell = OnceLock<Arc<TrainPipeline>>;

/// Which build of shaders/train.wgsl a dispatch needs: the teacher's
/// gradient in a fifth binding (`separate_tg`), the student's gradient as
/// packed halves (`half_grad`). Index `separate_tg | half_grad << 1` in
/// [`crate::gpu::wgsl::TRAIN_VARIANTS`] and [`Gpu::train`](crate::gpu::Gpu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Variant {
    pub separate_tg: bool,
    pub half_grad: bool,
}

impl Variant {
    pub(crate) fn of(i: usize) -> Variant {
        Variant {
            separate_tg: i & 1 != 0,
            half_grad: i & 2 != 0,
        }
    }
    pub(crate) fn index(self) -> usize {
        self.separate_tg as usize | (self.half_grad as usize) << 1
    }
}

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
    /// The kernel of variant `v`.
    fn new(device: &wgpu::Device, v: Variant) -> Result<TrainPipeline> {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let separate_tg = v.separate_tg;
        let src = &crate::gpu::wgsl::TRAIN_VARIANTS[v.index()];
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("kullback.train"),
            source: wgpu::ShaderSource::Wgsl(src.as_str().into()),
        });
        let st = |read_only| wgpu::BufferBindingType::Storage { read_only };
        let mut entries = vec![
            entry(0, st(true)),
            entry(1, st(true)),
            entry(2, st(false)),
            entry(3, st(false)),
            entry(4, wgpu::BufferBindingType::Uniform),
        ];
        if separate_tg {
            entries.push(entry(5, st(false)));
        }
        let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("kullback.train"),
            entries: &entries,
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("kullback.train"),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
        let pipeline = entry_pipeline(device, &layout, &module, Entry::Train);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Device(format!(
                "building kullback's train kernel: {e}"
            )));
        }
        Ok(TrainPipeline {
            bgl,
            layout,
            module,
            pipeline,
            sparse: OnceLock::new(),
        })
    }

    /// The pipeline of `e`.
    fn get(&self, device: &wgpu::Device, e: Entry) -> Result<&wgpu::ComputePipeline> {
        if e == Entry::Train {
            return Ok(&self.pipeline);
        }
        if self.sparse.get().is_none() {
            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let made = [
                Entry::SparseTail,
                Entry::SparseGrad,
                Entry::SparseFused,
                Entry::SparseFusedGlobal,
            ]
            .map(|e| entry_pipeline(device, &self.layout, &self.module, e));
            if let Some(err) = pollster::block_on(scope.pop()) {
                return Err(Error::Device(format!(
                    "building kullback's sparse-teacher kernels: {err}"
                )));
            }
            let _ = self.sparse.set(made);
        }
        let [tail, grad, fused, global] = self
            .sparse
            .get()
            .ok_or_else(|| Error::Device("the sparse-teacher kernels were not built".into()))?;
        Ok(match e {
            Entry::SparseTail => tail,
            Entry::SparseGrad => grad,
            Entry::SparseFusedGlobal => global,
            _ => fused,
        })
    }
}

fn entry_pipeline(
    device: &wgpu::Device,
    layout: &wgpu::PipelineLayout,
    module: &wgpu::ShaderModule,
    e: Entry,
) -> wgpu::ComputePipeline {
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(e.name()),
        layout: Some(layout),
        module,
        entry_point: Some(e.name()),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: e.constants(),
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    })
}

fn pipeline(gpu: &Gpu, v: Variant) -> Result<Arc<TrainPipeline>> {
    let cell = &gpu.train[v.index()];
    if let Some(p) = cell.get() {
        return Ok(p.clone());
    }
    let p = Arc::new(TrainPipeline::new(&gpu.device, v)?);
    Ok(cell.get_or_init(|| p).clone())
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
    /// The teacher's gradient in a binding of its own (the five-binding
    /// kernel); `None`: after the student's, from word `tg_at`.
    pub tg: Option<Window<'a>>,
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
    e: Entry,
) -> Result<()> {
    let v = Variant {
        separate_tg: b.tg.is_some(),
        half_grad: params.g_fmt != crate::widen::Dtype::F32.code(),
    };
    let pl = pipeline(gpu, v)?;
    let compute = pl.get(&gpu.device, e)?;
    let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
    let size = std::mem::size_of::<TrainParams>() as u64;
    let ubuf = scratch.buffer(&gpu.device, "kullback.train.params", size, usage)?;
    gpu.queue.write_buffer(&ubuf, 0, bytemuck::bytes_of(params));
    let mut entries = vec![
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
    ];
    if let Some(tg) = &b.tg {
        entries.push(wgpu::BindGroupEntry {
            binding: 5,
            resource: tg.binding(),
        });
    }
    let bg = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("kullback.train"),
        layout: &pl.bgl,
        entries: &entries,
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
    pass.set_pipeline(compute);
    pass.set_bind_group(0, &bg, &[]);
    pass.dispatch_workgroups(x, y, 1);
    Ok(())
}

/// Words per row that a sparse teacher's pass 1 writes: the tail's running
/// maximum and sum (f32 bits), its first NaN or +inf column (`COL_NONE`), 0.
pub(crate) const SPARSE_STATS: usize = 4;
/// Words per row of a sparse teacher's pass-2 constants: m, ln Σ, f, h, mt,
/// j (f32 bits), on (1 or 0), 0.
pub(crate) const SPARSE_CONSTS: usize = 8;

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
pub(crate) fn sub<'a>(d: Data<'a>, r: std::ops::Range<usize>) -> Data<'a> {
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

/// Little-endian f32 bytes `b` into `out` (rounded where it is half).
fn copy_f32s(b: &[u8], out: &mut GradMut<'_>) {
    if let (Ok(v), Some(o)) = (bytemuck::try_cast_slice::<u8, f32>(b), out.f32s()) {
        o.copy_from_slice(v);
        return;
    }
    // a row of values at a time, through a small buffer
    let mut row = [0f32; 1024];
    for (k, piece) in b.chunks(4 * row.len()).enumerate() {
        let n = piece.len() / 4;
        for (d, x) in row.iter_mut().zip(piece.chunks_exact(4)) {
            *d = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
        }
        let at = k * row.len();
        out.sub(at..at + n).write(&row[..n], false);
    }
}

impl Gpu {
    /// Rows per chunk of a sparse teacher's passes: each binding (the
    /// student, the indices, the gradient, a row's constants) fits.
    pub(crate) fn sparse_chunk_rows(&self, rows: usize, cols: usize) -> Result<usize> {
        chunk_rows(self, rows, cols.max(SPARSE_CONSTS), 1)
    }

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
        mut grad: GradMut<'_>,
        mut tgrad: Option<GradMut<'_>>,
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
            let tg = tgrad.as_mut().map(|t| t.sub(vals.clone()));
            let part = self.scoped("the inputs and gradient of a loss", bytes, || {
                self.train_chunk(s, aux, params, r0..r1, grad.sub(vals), tg)
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
        mut grad: GradMut<'_>,
        tgrad: Option<GradMut<'_>>,
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
            tg: None,
        };
        record(self, sc, &mut enc, &b, &params, Entry::Train)?;
        // one staging buffer: the records, then the gradient
        let parts = [(&rows_buf, rec_bytes), (&grad_buf, grads_bytes)];
        self.read_back(sc, enc, &parts, |view| {
            let (recs, g) = view.split_at(rec_bytes as usize);
            let (g, h) = g.split_at(grad_bytes as usize);
            copy_f32s(g, &mut grad);
            if let Some(mut t) = tgrad {
                copy_f32s(&h[..grad_bytes as usize], &mut t);
            }
            let mut out = crate::error::try_vec(rows, "the records read back")?;
            out.extend(
                recs.chunks_exact(RECORD_SIZE as usize)
                    .map(bytemuck::pod_read_unaligned::<Record>),
            );
            Ok(out)
        })
    }

    /// Submits `enc` with copies of `parts` (buffer, bytes from 0) into one
    /// staging buffer after it, waits, and gives `f` the bytes, in order.
    fn read_back<T>(
        &self,
        sc: &mut Scratch,
        mut enc: wgpu::CommandEncoder,
        parts: &[(&wgpu::Buffer, u64)],
        f: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let total: u64 = parts.iter().map(|p| p.1).sum();
        let staging = sc.buffer(&self.device, "kullback.readback", total, usage)?;
        sc.detach(&staging);
        let mut at = 0;
        for (b, n) in parts {
            enc.copy_buffer_to_buffer(b, 0, &staging, at, *n);
            at += n;
        }
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
            f(&view)
        };
        staging.unmap();
        sc.attach(staging);
        out
    }

    /// A sparse teacher's two passes over the rows of `s` (one chunk; see
    /// the `sparse_*` entry points of shaders/train.wgsl): pass 1 over the
    /// columns outside `indices` (`params.top` ascending per row) gives
    /// [`SPARSE_STATS`] words per row to `plan`, which returns
    /// [`SPARSE_CONSTS`] words per row for pass 2, whose gradient lands in
    /// `grad`. The student goes up once, as it is stored.
    pub(crate) fn sparse_rows(
        &self,
        s: Data<'_>,
        mut params: TrainParams,
        indices: &[u32],
        mut grad: GradMut<'_>,
        plan: impl FnOnce(&[u32]) -> Result<Vec<u32>>,
    ) -> Result<()> {
        let cols = params.cols as usize;
        let rows = grad.len() / cols.max(1);
        params.rows = rows as u32;
        params.s_fmt = s.dtype().code();
        let mut scratch = Scratch::pooled(&self.pool);
        let sc = &mut scratch;
        let s_bytes = s.dtype().stored_bytes((rows * cols) as u64);
        let s_buf = self.upload_source(sc, "kullback.student", Source::stored(s))?;
        let ix_buf = self.upload(sc, "kullback.indices", bytemuck::cast_slice(indices))?;
        let ix_bytes = (indices.len() as u64 * 4).max(4);
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let stats_bytes = rows as u64 * SPARSE_STATS as u64 * 4;
        let stats = sc.buffer(&self.device, "kullback.sparse.stats", stats_bytes, storage)?;
        let grad_bytes = (rows * cols) as u64 * 4;
        let grad_buf = sc.buffer(&self.device, "kullback.grad", grad_bytes, storage)?;
        let new_enc = || {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("kullback.sparse"),
                })
        };
        let mut enc = new_enc();
        let b = Bindings {
            s: Window::whole(&s_buf, s_bytes),
            t: Window::whole(&ix_buf, ix_bytes),
            grad: Window::whole(&grad_buf, grad_bytes),
            rows: Window::whole(&stats, stats_bytes),
            tg: None,
        };
        record(self, sc, &mut enc, &b, &params, Entry::SparseTail)?;
        let consts = self.read_back(sc, enc, &[(&stats, stats_bytes)], |v| {
            plan(bytemuck::cast_slice(v))
        })?;
        let c_buf = self.upload(sc, "kullback.sparse.consts", bytemuck::cast_slice(&consts))?;
        let mut enc = new_enc();
        let b = Bindings {
            rows: Window::whole(&c_buf, (consts.len() as u64 * 4).max(4)),
            ..b
        };
        record(self, sc, &mut enc, &b, &params, Entry::SparseGrad)?;
        self.read_back(sc, enc, &[(&grad_buf, grad_bytes)], |v| {
            copy_f32s(v, &mut grad);
            Ok(())
        })
    }
}
