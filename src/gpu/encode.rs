//! The recorder: a [`GpuPlan`] turned into scratch buffers, bind groups and
//! pipelines ([`prepare`]), then recorded into a command encoder
//! ([`Recording::record`]). Nothing here submits or reads back, so the host
//! path and the GPU-resident path share it; every decision about the work
//! was made by the pure planner (`gpu::plan`).

use std::num::NonZeroU64;
use std::sync::Arc;

use crate::error::Result;
use crate::gpu::Gpu;
use crate::gpu::params::{RowParams, TotalParams};
use crate::gpu::plan::{GpuPlan, Span, TOTAL_OUTPUT_SIZE};
use crate::gpu::pool::Scratch;

/// The input buffers of a call. For a negative log-likelihood `p` holds the
/// targets (u32, `IGNORED` for an ignored row) followed by the class weights
/// (f32), if any. Where the batch starts in them is the planner's `offsets`.
#[derive(Clone, Copy)]
pub(crate) struct Operands<'a> {
    pub p: &'a wgpu::Buffer,
    pub q: &'a wgpu::Buffer,
}

fn binding(buffer: &wgpu::Buffer, (offset, size): Span) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: NonZeroU64::new(size.max(4)),
    })
}

/// One dispatch of the term passes: pipeline, bind group, parameter slot, grid.
struct Dispatch(Arc<wgpu::ComputePipeline>, usize, u32, (u32, u32));

/// A call's dispatches, with every buffer, bind group and pipeline made:
/// recording them into an encoder cannot fail on our device.
pub(crate) struct Recording {
    steps: Vec<Dispatch>,
    bind_groups: Vec<wgpu::BindGroup>,
    totals: Vec<(u32, (u32, u32))>,
    total_groups: Vec<wgpu::BindGroup>,
}

impl Recording {
    /// Records the dispatches into `enc` (one compute pass, with the
    /// caller's timestamp writes if any: GPU-resident calls, for profiling).
    pub(crate) fn record(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("kullback"),
            timestamp_writes,
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

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

/// Makes the plan's scratch buffers, parameters, bind groups and pipelines:
/// per-row records into `rows_out` (buffer, byte offset) and, for a sum or
/// mean, the batch record into `total_out`. Nothing is recorded into an
/// encoder, so a caller holding an error scope learns of a refused bind group
/// (a buffer of another device) before its encoder is touched.
pub(crate) fn prepare(
    gpu: &Gpu,
    scratch: &mut Scratch,
    plan: &GpuPlan,
    ops: Operands<'_>,
    rows_out: (&wgpu::Buffer, u64),
    total_out: Option<(&wgpu::Buffer, u64)>,
) -> Result<Recording> {
    let device = &gpu.device;
    let storage = wgpu::BufferUsages::STORAGE;
    let partials = scratch.buffer(device, "kullback.partials", plan.partial_bytes, storage)?;
    let bytes = plan.params.bytes();
    let params = scratch.buffer(
        device,
        "kullback.params",
        bytes.len() as u64,
        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    )?;
    // lands before the next submission, which is the one that runs this work
    gpu.queue.write_buffer(&params, 0, bytes);
    let records = (rows_out.1, plan.records_bytes);
    let row_params = (0, std::mem::size_of::<RowParams>() as u64);
    let bind_groups = plan
        .inputs
        .iter()
        .map(|&(p, q)| {
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("kullback.rows"),
                layout: &gpu.pipelines.rows_bgl,
                entries: &[
                    entry(0, binding(ops.p, p)),
                    entry(1, binding(ops.q, q)),
                    entry(2, binding(&partials, (0, plan.partial_bytes))),
                    entry(3, binding(rows_out.0, records)),
                    entry(4, binding(&params, row_params)),
                ],
            })
        })
        .collect();

    // the plan has total levels exactly when the call has a total to write
    let mut total_groups = Vec::new();
    if let Some(out) = total_out {
        // ping-pong buffers for the levels above the first
        let mut pair = Vec::new();
        for name in ["kullback.totals.a", "kullback.totals.b"] {
            pair.push(scratch.buffer(device, name, plan.totals_bytes, storage)?);
        }
        let total_params = (0, std::mem::size_of::<TotalParams>() as u64);
        for level in 0..plan.totals.len() {
            let (src, dst) = if level % 2 == 0 {
                (&pair[1], &pair[0])
            } else {
                (&pair[0], &pair[1])
            };
            total_groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("kullback.total"),
                layout: &gpu.pipelines.total_bgl,
                entries: &[
                    entry(0, binding(rows_out.0, records)),
                    entry(1, binding(src, (0, src.size()))),
                    entry(2, binding(dst, (0, dst.size()))),
                    entry(3, binding(out.0, (out.1, TOTAL_OUTPUT_SIZE))),
                    entry(4, binding(&params, total_params)),
                ],
            }));
        }
    }

    Ok(Recording {
        steps: plan
            .steps
            .iter()
            .map(|st| {
                let pipeline = gpu.pipelines.rows(device, st.key);
                Dispatch(pipeline, st.chunk, st.slot, st.grid)
            })
            .collect(),
        bind_groups,
        totals: plan.totals.iter().map(|t| (t.slot, t.grid)).collect(),
        total_groups,
    })
}
