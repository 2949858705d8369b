//! The GPU backend: device, cached pipelines, planning, recording and readback.

mod device;
mod encode;
mod params;
mod pipelines;
mod plan;
mod pool;
mod readback;

use std::sync::Arc;

use crate::context::Records;
use crate::error::{Error, Result};
use crate::job::{Data, Job};
use crate::measure::Reduction;
use crate::record::{RECORD_SIZE, Record};
use pool::{Pool, Scratch};

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
}

impl Gpu {
    /// Picks an adapter (software ones only if `allow_software`) and makes a device.
    pub(crate) fn create(allow_software: bool, cap: Option<u64>) -> Result<Gpu> {
        let adapter = device::pick_adapter(allow_software)?;
        let info = adapter.get_info();
        let (device, queue) = device::request_device(&adapter)?;
        let mut g = Gpu::from_device(device, queue, cap)?;
        g.adapter_name = info.name;
        g.class = crate::cost::AdapterClass::of(info.device_type);
        Ok(g)
    }

    /// Wraps the caller's device.
    pub(crate) fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        cap: Option<u64>,
    ) -> Result<Gpu> {
        let limits = device.limits();
        if limits.max_storage_buffers_per_shader_stage < 4 {
            return Err(Error::Unsupported(format!(
                "the device allows {} storage buffers per shader stage; kullback needs 4",
                limits.max_storage_buffers_per_shader_stage
            )));
        }
        let device_cap = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
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
            pool: Arc::default(),
        })
    }

    pub(crate) fn adapter_name(&self) -> &str {
        &self.adapter_name
    }

    /// A pooled input buffer of `bytes` bytes (at least 4).
    fn input_buffer(
        &self,
        scratch: &mut Scratch,
        label: &'static str,
        bytes: u64,
    ) -> Result<wgpu::Buffer> {
        let size = bytes.max(4);
        if size > self.limits.max_buffer_size {
            return Err(Error::TooLarge(format!(
                "{label}: {size} bytes exceed the device's largest buffer ({} bytes)",
                self.limits.max_buffer_size
            )));
        }
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        Ok(scratch.buffer(&self.device, label, size, usage))
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
        let mut chunk = vec![0.0f32; UPLOAD_CHUNK.min(v.len())];
        for (k, src) in v.chunks(UPLOAD_CHUNK).enumerate() {
            let dst = &mut chunk[..src.len()];
            crate::job::convert(src, dst);
            let offset = (k * UPLOAD_CHUNK * 4) as u64;
            self.queue
                .write_buffer(&buf, offset, bytemuck::cast_slice::<f32, u8>(dst));
        }
        Ok(buf)
    }

    /// The host path: upload, record, submit once, read back only the results.
    pub(crate) fn run(&self, job: &Job<'_>) -> Result<Records> {
        self.submit(job)?.wait(self)
    }

    /// Uploads and submits `job`; the results are read when the returned
    /// [`Pending`] is waited for or awaited.
    pub(crate) fn submit(&self, job: &Job<'_>) -> Result<Pending> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = self.submit_inner(job);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Device(e.to_string()));
        }
        result
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
        let records = sc.buffer(&self.device, "kullback.records", rows_bytes, out_usage);
        let total = (job.reduction != Reduction::None)
            .then(|| sc.buffer(&self.device, "kullback.total", TOTAL_OUTPUT_SIZE, out_usage));
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
                read: readback::start(self, sc, enc, &records, 0, rows_bytes),
                total: false,
                scratch,
            },
            Some(t) => Pending {
                read: readback::start(self, sc, enc, t, 0, TOTAL_OUTPUT_SIZE),
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
        nll: Option<(&crate::resident::GpuTargets<'_>, Option<&[f32]>)>,
    ) -> Result<()> {
        // everything that can fail is checked before the first command is recorded
        encode::scratch_sizes(self, shape)?;
        let holder;
        let mut ops = Operands { ..*ops };
        if let Some((t, weights)) = nll {
            let t_bytes = t.len as u64 * 4;
            crate::resident::check_buffer(
                "targets",
                t.buffer,
                t.offset,
                t_bytes,
                wgpu::BufferUsages::COPY_SRC,
                4,
            )?;
            let w_bytes = weights.map_or(0, |w| w.len() as u64 * 4);
            holder = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kullback.targets"),
                size: t_bytes + w_bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            if let Some(w) = weights {
                self.queue
                    .write_buffer(&holder, t_bytes, bytemuck::cast_slice(w));
            }
            enc.copy_buffer_to_buffer(t.buffer, t.offset, &holder, 0, t_bytes);
            ops.p = &holder;
            ops.p_offset = 0;
        }
        let mut sc = Scratch::fresh();
        if shape.reduction == Reduction::None {
            return encode::encode(self, &mut sc, enc, shape, &ops, out, None);
        }
        let records = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kullback.records"),
            size: shape.rows as u64 * RECORD_SIZE,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        encode::encode(self, &mut sc, enc, shape, &ops, (&records, 0), Some(out))
    }
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
        let r = pollster::block_on(self.read.finish())?;
        drop(self.scratch);
        Ok(Pending::records(self.total, r))
    }

    /// Resolves once someone has polled the device past the submission.
    pub(crate) async fn resolve(self) -> Result<Records> {
        let r = self.read.finish().await?;
        drop(self.scratch);
        Ok(Pending::records(self.total, r))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Backend, Batch, Context, Form, Measure, Options, Reduction};

    fn gpu() -> Option<Context> {
        match Context::with_backend(Backend::Gpu) {
            Ok(c) => Some(c),
            Err(e) if std::env::var("KULLBACK_REQUIRE_GPU").as_deref() != Ok("1") => {
                eprintln!("skipping: {e}");
                None
            }
            Err(e) => panic!("KULLBACK_REQUIRE_GPU=1 but {e}"),
        }
    }

    fn kl64(p: &[f32], q: &[f32]) -> f64 {
        p.iter()
            .zip(q)
            .map(|(&a, &b)| {
                if a == 0.0 {
                    0.0
                } else {
                    a as f64 * ((a as f64).ln() - (b as f64).ln())
                }
            })
            .sum()
    }

    fn dist(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut v: Vec<f32> = (0..rows * cols)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 1000) as f32 / 1000.0 + 0.001
            })
            .collect();
        for r in v.chunks_mut(cols) {
            let t: f64 = r.iter().map(|&x| x as f64).sum();
            r.iter_mut().for_each(|x| *x = (*x as f64 / t) as f32);
        }
        v
    }

    #[test]
    fn smoke_kl_shapes() {
        let Some(ctx) = gpu() else { return };
        for &(rows, cols) in &[
            (5usize, 1usize),
            (6, 255),
            (6, 257),
            (3, 5000),
            (2, 100_003),
        ] {
            let p = dist(rows, cols, 1);
            let q = dist(rows, cols, 2);
            let out = ctx
                .kl(
                    &Batch::new(&p, rows, cols),
                    &Batch::new(&q, rows, cols),
                    &Options::default(),
                )
                .unwrap();
            for r in 0..rows {
                let e = kl64(&p[r * cols..(r + 1) * cols], &q[r * cols..(r + 1) * cols]);
                let g = out.values[r] as f64;
                assert!(
                    (g - e).abs() <= 2e-6 + 2e-5 * e.abs(),
                    "{rows}x{cols} row {r}: {g} vs {e}"
                );
            }
            let s = ctx
                .evaluate(
                    Measure::Kl,
                    &Batch::new(&p, rows, cols),
                    Some(&Batch::new(&q, rows, cols)),
                    &Options::default().reduction(Reduction::Mean),
                )
                .unwrap();
            let e: f64 = (0..rows)
                .map(|r| kl64(&p[r * cols..(r + 1) * cols], &q[r * cols..(r + 1) * cols]))
                .sum::<f64>()
                / rows as f64;
            assert!(
                (s.values[0] as f64 - e).abs() <= 2e-6 + 2e-5 * e,
                "mean {} vs {e}",
                s.values[0]
            );
        }
    }

    #[test]
    fn clones_of_a_context_share_device_and_pipelines() {
        let Some(ctx) = gpu() else { return };
        let other = ctx.clone();
        let (a, b) = (
            ctx.gpu.as_ref().expect("gpu"),
            other.gpu.as_ref().expect("gpu"),
        );
        assert!(std::sync::Arc::ptr_eq(&a.pipelines, &b.pipelines));
    }

    #[test]
    fn smoke_logits_entropy() {
        let Some(ctx) = gpu() else { return };
        let a: Vec<f32> = (0..3000)
            .map(|i| 3000.0 + ((i * 37) % 101) as f32 * 0.37)
            .collect();
        let m = a.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let s: f64 = a.iter().map(|&x| (x as f64 - m).exp()).sum();
        let h: f64 = -a
            .iter()
            .map(|&x| {
                let lp = x as f64 - m - s.ln();
                lp.exp() * lp
            })
            .sum::<f64>();
        let out = ctx
            .entropy(
                &Batch::new(&a, 1, 3000).form(Form::Logits),
                &Options::default(),
            )
            .unwrap();
        assert!(
            (out.values[0] as f64 - h).abs() <= 2e-6 + 2e-5 * h,
            "{} vs {h}",
            out.values[0]
        );
    }
}

#[cfg(test)]
mod chunk_tests {
    use crate::{
        Backend, Batch, Context, ContextOptions, Form, NllOptions, Normalization, Options,
        Reduction,
    };

    fn capped(cap: u64) -> Option<Context> {
        Context::with_options(
            ContextOptions::default()
                .backend(Backend::Gpu)
                .max_binding_bytes(cap),
        )
        .ok()
    }

    #[test]
    fn chunked_equals_unchunked() {
        let (Some(small), Some(full)) = (capped(64 * 1024), capped(1 << 30)) else {
            return;
        };
        for &(rows, cols) in &[(70_001usize, 5usize), (2, 40_000), (40, 300), (2, 1)] {
            let n = rows * cols;
            let p: Vec<f32> = (0..n).map(|i| ((i * 7919) % 97 + 1) as f32).collect();
            let q: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 89 + 1) as f32).collect();
            let o = Options::default().normalization(Normalization::Renormalize);
            let a = small
                .kl(&Batch::new(&p, rows, cols), &Batch::new(&q, rows, cols), &o)
                .unwrap();
            let b = full
                .kl(&Batch::new(&p, rows, cols), &Batch::new(&q, rows, cols), &o)
                .unwrap();
            assert_eq!(a.values.len(), rows);
            for (i, (x, y)) in a.values.iter().zip(&b.values).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-6 + 1e-5 * y.abs(),
                    "{rows}x{cols} row {i}: {x} vs {y}"
                );
            }
            let m = small
                .kl(
                    &Batch::new(&p, rows, cols),
                    &Batch::new(&q, rows, cols),
                    &o.reduction(Reduction::Sum),
                )
                .unwrap();
            let e: f64 = b.values.iter().map(|&v| v as f64).sum();
            assert!(
                (m.values[0] as f64 - e).abs() <= 1e-5 * e.abs() + 1e-5,
                "sum {} vs {e}",
                m.values[0]
            );
        }
    }

    #[test]
    fn nll_logits_with_ignore() {
        let Some(ctx) = capped(1 << 30) else { return };
        let (rows, cols) = (4usize, 3000usize);
        let q: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 31) % 1000) as f32 * 0.01 - 5.0)
            .collect();
        let t: Vec<i64> = vec![3, -100, 2999, 0];
        let out = ctx
            .nll(
                &Batch::new(&q, rows, cols).form(Form::Logits),
                &t,
                &NllOptions::default().ignore_index(-100),
            )
            .unwrap();
        for r in 0..rows {
            let row = &q[r * cols..(r + 1) * cols];
            let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            let e = if t[r] < 0 {
                0.0
            } else {
                lse - row[t[r] as usize] as f64
            };
            assert!(
                (out.values[r] as f64 - e).abs() <= 2e-6 + 2e-5 * e.abs(),
                "row {r}: {} vs {e}",
                out.values[r]
            );
        }
        let mean = ctx
            .nll(
                &Batch::new(&q, rows, cols).form(Form::Logits),
                &t,
                &NllOptions::default()
                    .ignore_index(-100)
                    .reduction(Reduction::Mean),
            )
            .unwrap();
        let e = (out.values[0] + out.values[2] + out.values[3]) / 3.0;
        assert!(
            (mean.values[0] - e).abs() < 1e-5,
            "{} vs {e}",
            mean.values[0]
        );
        assert_eq!(mean.counted, 3.0);
    }
}

#[cfg(test)]
mod plan_tests {
    use crate::{Arg, Backend, Batch, Context, Error, Form, Measure, Options};

    /// JS next to logits takes two passes; a probability row used as given is
    /// still checked (it is not divided by its sum behind the caller's back).
    #[test]
    fn js_next_to_logits_still_validates_the_probabilities() {
        let Ok(gpu) = Context::with_backend(Backend::Gpu) else {
            return;
        };
        let cpu = Context::with_backend(Backend::Cpu).expect("cpu");
        let logits = [1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5];
        let q = [0.2f32, 0.3, 0.5, 0.4, 0.4, 0.4]; // row 1 sums to 1.2
        for ctx in [&gpu, &cpu] {
            let e = ctx
                .evaluate(
                    Measure::Js,
                    &Batch::new(&logits, 2, 3).form(Form::Logits),
                    Some(&Batch::new(&q, 2, 3)),
                    &Options::default(),
                )
                .expect_err("row 1 of q is not normalised");
            assert!(
                matches!(
                    e,
                    Error::NotNormalized {
                        arg: Arg::Q,
                        row: 1,
                        ..
                    }
                ),
                "{e:?}"
            );
        }
    }
}
