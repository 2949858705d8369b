//! Recording a job's dispatches into a command encoder: the term passes over
//! binding-sized chunks, the merge of long rows' partial states, and the batch
//! total. Nothing here submits or reads back, so the host path and the
//! GPU-resident path share it.

use std::num::NonZeroU64;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::params::{RowParams, STATE_SIZE, Slots, TOTAL_SIZE, TotalParams};
use crate::gpu::pipelines::RowKey;
use crate::gpu::plan::{self, BLOCK, EPT, Layout, WG};
use crate::gpu::pool::Scratch;
use crate::gpu::wgsl;
use crate::job::{self, IGNORED, Job, Kind};
use crate::measure::{Form, Normalization, Reduction};
use crate::record::RECORD_SIZE;

/// What the kernels need to know about a job, without its data.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GpuShape {
    pub kind: Kind,
    pub rows: u32,
    pub cols: u32,
    /// Form of p; `None` for class targets.
    pub p_form: Option<Form>,
    pub q_form: Option<Form>,
    /// Rows of p and q: the job's rows, or 1 (broadcast).
    pub p_rows: u32,
    pub q_rows: u32,
    pub normalization: Normalization,
    pub tolerance: f32,
    pub ln_base: f64,
    pub reduction: Reduction,
    pub p_online: bool,
    pub q_online: bool,
    pub two_pass: bool,
    /// NLL: the target value that marks an ignored row, and whether there is one.
    pub ignore_bits: u32,
    pub has_ignore: bool,
    pub has_weights: bool,
    pub smoothing: f32,
    /// NLL targets are i32 (GPU-resident path): a negative one is reported as such.
    pub targets_signed: bool,
}

impl GpuShape {
    pub(crate) fn from_job(job: &Job<'_>) -> GpuShape {
        GpuShape {
            kind: job.kind,
            rows: job.rows as u32,
            cols: job.cols as u32,
            p_form: job.p.as_ref().map(|p| p.form),
            q_form: job.q.as_ref().map(|q| q.form),
            p_rows: job.p.as_ref().map_or(job.rows, |p| p.rows) as u32,
            q_rows: job.q.as_ref().map_or(job.rows, |q| q.rows) as u32,
            normalization: job.normalization,
            tolerance: job.tolerance,
            ln_base: job.ln_base,
            reduction: job.reduction,
            p_online: job.p_online(),
            q_online: job.q_online(),
            two_pass: job.two_pass(),
            ignore_bits: IGNORED,
            has_ignore: job
                .nll
                .as_ref()
                .is_some_and(|n| n.targets.contains(&IGNORED)),
            has_weights: job.nll.as_ref().is_some_and(|n| n.weights.is_some()),
            smoothing: job.nll.as_ref().map_or(0.0, |n| n.smoothing),
            targets_signed: false,
        }
    }

    /// Whether the two-pass plan normalises an operand of this form.
    fn normalised(&self, form: Option<Form>) -> bool {
        let renorm = self.normalization == Normalization::Renormalize;
        self.two_pass
            && form
                .is_some_and(|f| job::online(f, self.normalization) || (f == Form::Probs && renorm))
    }

    /// The pipeline key of a pass (`sums`: the first of two passes).
    fn key(&self, sums: bool, merge: bool) -> RowKey {
        let (p_norm, q_norm) = (self.normalised(self.p_form), self.normalised(self.q_form));
        let second = self.two_pass && !sums;
        RowKey {
            merge,
            measure: if sums {
                wgsl::SUMS
            } else {
                wgsl::measure_code(self.kind)
            },
            p_form: self.p_form.map_or(wgsl::TARGETS, wgsl::form_code),
            q_form: self
                .q_form
                .map_or(wgsl::form_code(Form::Probs), wgsl::form_code),
            has_q: self.q_form.is_some(),
            // a normalised log form is online in the first pass, plain in the second
            p_online: if self.two_pass {
                sums && p_norm && self.p_form != Some(Form::Probs)
            } else {
                self.p_online
            },
            q_online: if self.two_pass {
                sums && q_norm && self.q_form != Some(Form::Probs)
            } else {
                self.q_online
            },
            normalized: second,
            p_norm,
            q_norm,
            renorm: self.normalization == Normalization::Renormalize,
            check_sums: self.normalization == Normalization::Validate,
        }
    }
}

/// Bytes of the output of a sum or mean: the batch record, then a copy of the
/// first bad row's record (all zero but the status when every row is good).
pub(crate) const TOTAL_OUTPUT_SIZE: u64 = 2 * RECORD_SIZE;

/// The input buffers and the byte offsets where the batch starts in them.
/// For a negative log-likelihood `p` holds the targets (u32, `IGNORED` for an
/// ignored row) followed by the class weights (f32), if any.
pub(crate) struct Operands<'a> {
    pub p: &'a wgpu::Buffer,
    pub p_offset: u64,
    pub q: &'a wgpu::Buffer,
    pub q_offset: u64,
}

fn binding(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: NonZeroU64::new(size.max(4)),
    })
}

/// Bytes of the scratch a job needs (partial states of long rows, then one
/// normaliser state per row; per-row records), checked against one binding:
/// the work is split into chunks by its inputs, not by these.
pub(crate) fn scratch_sizes(gpu: &Gpu, s: &GpuShape) -> Result<(u64, u64, u64)> {
    let bpr = Layout::new(s.cols).blocks_per_row;
    let norm_at = s.rows as u64 * if bpr > 1 { bpr as u64 } else { 0 };
    let partial_bytes = (norm_at + if s.two_pass { s.rows as u64 } else { 0 }).max(1) * STATE_SIZE;
    let records_bytes = s.rows as u64 * RECORD_SIZE;
    let max_binding = plan::binding_limit(&gpu.limits);
    for (what, bytes) in [
        ("partial states", partial_bytes),
        ("per-row records", records_bytes),
    ] {
        if bytes > max_binding {
            return Err(Error::TooLarge(format!(
                "{what} need {bytes} bytes in one binding; the device allows {max_binding}: split the batch"
            )));
        }
    }
    Ok((norm_at, partial_bytes, records_bytes))
}

/// One dispatch of the term passes: pipeline, bind group, parameter slot, grid.
struct Dispatch(Arc<wgpu::ComputePipeline>, usize, u32, (u32, u32));

/// A job's dispatches, with every buffer, bind group and pipeline made:
/// recording them into an encoder cannot fail on our device.
pub(crate) struct Recording {
    steps: Vec<Dispatch>,
    bind_groups: Vec<wgpu::BindGroup>,
    totals: Vec<(u32, (u32, u32))>,
    total_groups: Vec<wgpu::BindGroup>,
}

impl Recording {
    /// Records the dispatches into `enc` (one compute pass).
    pub(crate) fn record(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("kullback"),
            timestamp_writes: None,
        });
        for Dispatch(pipeline, group, slot, grid) in &self.steps {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &self.bind_groups[*group], &[*slot]);
            pass.dispatch_workgroups(grid.0, grid.1, 1);
        }
        for (level, (slot, grid)) in self.totals.iter().enumerate() {
            pass.set_pipeline(&gpu.pipelines.total);
            pass.set_bind_group(0, &self.total_groups[level], &[*slot]);
            pass.dispatch_workgroups(grid.0, grid.1, 1);
        }
    }
}

/// Records the job into `enc`: [`prepare`], then [`Recording::record`].
pub(crate) fn encode(
    gpu: &Gpu,
    scratch: &mut Scratch,
    enc: &mut wgpu::CommandEncoder,
    s: &GpuShape,
    ops: &Operands<'_>,
    rows_out: (&wgpu::Buffer, u64),
    total_out: Option<(&wgpu::Buffer, u64)>,
) -> Result<()> {
    prepare(gpu, scratch, s, ops, rows_out, total_out)?.record(gpu, enc);
    Ok(())
}

/// Makes the job's buffers, parameters, bind groups and pipelines: per-row
/// records into `rows_out` (buffer, byte offset) and, for a sum or mean, the
/// batch record into `total_out`. Nothing is recorded into an encoder, so a
/// caller holding an error scope learns of a refused bind group (a buffer of
/// another device) before its encoder is touched.
pub(crate) fn prepare(
    gpu: &Gpu,
    scratch: &mut Scratch,
    s: &GpuShape,
    ops: &Operands<'_>,
    rows_out: (&wgpu::Buffer, u64),
    total_out: Option<(&wgpu::Buffer, u64)>,
) -> Result<Recording> {
    let device = &gpu.device;
    let limits = &gpu.limits;
    let align = limits.min_storage_buffer_offset_alignment.max(4) as u64;
    let align_elems = align / 4;
    let max_dim = limits.max_compute_workgroups_per_dimension;
    let layout = Layout::new(s.cols);
    let bpr = layout.blocks_per_row;
    let cap_elems = (gpu.cap / 4).saturating_sub(align_elems).max(BLOCK as u64);
    let chunks = plan::chunks(s.rows, s.cols, layout, cap_elems);

    let (norm_at, partial_bytes, records_bytes) = scratch_sizes(gpu, s)?;
    let partials = scratch.buffer(
        device,
        "kullback.partials",
        partial_bytes,
        wgpu::BufferUsages::STORAGE,
    )?;

    let nll = s.kind == Kind::Nll;
    let p_stride = if nll || s.p_rows == 1 {
        0
    } else {
        s.cols as u64
    };
    let q_stride = if s.q_rows == 1 { 0 } else { s.cols as u64 };
    let base = RowParams {
        rows: s.rows,
        cols: s.cols,
        threads_per_row: layout.threads_per_row,
        blocks_per_row: bpr,
        p_stride: p_stride as u32,
        q_stride: q_stride as u32,
        norm_at: norm_at as u32,
        tolerance: s.tolerance,
        inv_ln_base: (1.0 / s.ln_base) as f32,
        ignore_bits: s.ignore_bits,
        has_ignore: s.has_ignore as u32,
        smoothing: s.smoothing,
        weights_at: if s.has_weights { s.rows } else { u32::MAX },
        // a base below 1 divides by ln(base) < 0: an infinite value is -inf
        inf_bits: (f32::INFINITY * s.ln_base.signum() as f32).to_bits(),
        nan_bits: f32::NAN.to_bits(),
        targets_signed: s.targets_signed as u32,
        ..Default::default()
    };

    // Bind groups (one per chunk) and parameter slots (one per dispatch).
    let mut slots = Slots::default();
    struct Step {
        key: RowKey,
        group: usize,
        slot: u32,
        grid: (u32, u32),
    }
    let mut steps = Vec::new();
    let mut groups_spec = Vec::new(); // (p offset, p size, q offset, q size) in bytes
    let mut chunk_params = Vec::new();
    for c in &chunks {
        let (p_off, p_size, p_lead) = if nll {
            let words = s.rows as u64 + if s.has_weights { s.cols as u64 } else { 0 };
            (ops.p_offset, words * 4, 0)
        } else {
            let r = plan::range(c, p_stride, align_elems);
            (ops.p_offset + r.offset_elems * 4, r.size_elems * 4, r.lead)
        };
        let rq = plan::range(c, q_stride, align_elems);
        groups_spec.push((
            p_off,
            p_size,
            ops.q_offset + rq.offset_elems * 4,
            rq.size_elems * 4,
        ));
        chunk_params.push(RowParams {
            row0: c.row0,
            col0: c.col0,
            chunk_rows: c.rows,
            chunk_cols: c.cols,
            chunk_blocks: c.blocks,
            item_count: c.items,
            p_lead,
            q_lead: rq.lead,
            ..base
        });
    }
    let passes: &[bool] = if s.two_pass { &[true, false] } else { &[false] };
    for &sums in passes {
        for (i, (c, cp)) in chunks.iter().zip(&chunk_params).enumerate() {
            steps.push(Step {
                key: s.key(sums, false),
                group: i,
                slot: slots.push(cp),
                grid: plan::grid(c.items, max_dim),
            });
        }
        if bpr > 1 {
            let mp = RowParams {
                row0: 0,
                chunk_rows: s.rows,
                item_count: s.rows,
                ..chunk_params[0]
            };
            steps.push(Step {
                key: s.key(sums, true),
                group: 0,
                slot: slots.push(&mp),
                grid: plan::grid(s.rows, max_dim),
            });
        }
    }

    // Batch total: levels of WG * EPT inputs per workgroup until one is left.
    let mut total_steps = Vec::new();
    if let Some(_out) = total_out {
        let per = (WG * EPT) as u64;
        let mut count = s.rows as u64;
        let mut level = 0usize;
        loop {
            let groups = count.div_ceil(per);
            let tp = TotalParams {
                count: count as u32,
                from_rows: (level == 0) as u32,
                last: (groups == 1) as u32,
                mean: (s.reduction == Reduction::Mean) as u32,
                weighted: nll as u32,
                rows_base: 0,
                inf_bits: f32::INFINITY.to_bits(),
                nan_bits: f32::NAN.to_bits(),
            };
            total_steps.push((level, slots.push(&tp), plan::grid(groups as u32, max_dim)));
            if groups == 1 {
                break;
            }
            count = groups;
            level += 1;
        }
    }

    let params = scratch.buffer(
        device,
        "kullback.params",
        slots.bytes().len() as u64,
        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    )?;
    // lands before the next submission, which is the one that runs this work
    gpu.queue.write_buffer(&params, 0, slots.bytes());
    let row_param_size = std::mem::size_of::<RowParams>() as u64;
    let bind_groups: Vec<wgpu::BindGroup> = groups_spec
        .iter()
        .map(|&(po, ps, qo, qs)| {
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("kullback.rows"),
                layout: &gpu.pipelines.rows_bgl,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: binding(ops.p, po, ps),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: binding(ops.q, qo, qs),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: binding(&partials, 0, partial_bytes),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: binding(rows_out.0, rows_out.1, records_bytes),
                    },
                    wgpu::BindGroupEntry {
                        binding: 4,
                        resource: binding(&params, 0, row_param_size),
                    },
                ],
            })
        })
        .collect();

    let mut total_groups = Vec::new();
    let mut totals = Vec::new();
    if let Some(out) = total_out {
        let levels = total_steps.len();
        // ping-pong buffers for the levels above the first
        let first_groups = (s.rows as u64).div_ceil((WG * EPT) as u64).max(1);
        for name in ["kullback.totals.a", "kullback.totals.b"] {
            totals.push(scratch.buffer(
                device,
                name,
                first_groups * TOTAL_SIZE,
                wgpu::BufferUsages::STORAGE,
            )?);
        }
        let total_param_size = std::mem::size_of::<TotalParams>() as u64;
        for level in 0..levels {
            let (src, dst) = if level % 2 == 0 {
                (&totals[1], &totals[0])
            } else {
                (&totals[0], &totals[1])
            };
            total_groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("kullback.total"),
                layout: &gpu.pipelines.total_bgl,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: binding(rows_out.0, rows_out.1, records_bytes),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: binding(src, 0, src.size()),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: binding(dst, 0, dst.size()),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: binding(out.0, out.1, TOTAL_OUTPUT_SIZE),
                    },
                    wgpu::BindGroupEntry {
                        binding: 4,
                        resource: binding(&params, 0, total_param_size),
                    },
                ],
            }));
        }
    }

    Ok(Recording {
        steps: steps
            .iter()
            .map(|st| {
                let pipeline = gpu.pipelines.rows(device, st.key);
                Dispatch(pipeline, st.group, st.slot, st.grid)
            })
            .collect(),
        bind_groups,
        totals: total_steps
            .iter()
            .map(|&(_, slot, grid)| (slot, grid))
            .collect(),
        total_groups,
    })
}
