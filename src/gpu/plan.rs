//! Work planning: how a call maps onto workgroups, blocks, binding-sized
//! chunks, dispatches and parameter slots. Pure functions of the call and the
//! device's limits: [`plan`] returns plain data (no buffer, no device), which
//! `gpu::encode` turns into bind groups and dispatches, and which the tests
//! below check without a device.

use crate::call::{Call, Operand};
use crate::error::{Error, Result};
use crate::gpu::params::{RowParams, STATE_SIZE, Slots, TOTAL_SIZE, TotalParams};
use crate::gpu::pipelines::RowKey;
use crate::gpu::wgsl;
use crate::measure::{Form, Normalization, Reduction};
use crate::record::RECORD_SIZE;
use crate::widen::Dtype;

/// Threads per workgroup (`WG` in shaders/common.wgsl).
pub(crate) const WG: u32 = 256;
/// Loads per thread per block (`EPT` in the shaders): a load is one value, or
/// four (vec4 loads).
pub(crate) const EPT: u32 = 32;
/// Columns one workgroup covers on a long row with scalar loads (the
/// smallest block: vec4 loads cover four times as many).
pub(crate) const BLOCK: u32 = WG * EPT;
/// Threads a short row's loads are spread over at most: a warp's worth, so
/// that neighbouring threads read neighbouring values of a row.
const SHORT_THREADS: u32 = 32;
/// Loads per thread a short row aims at (more threads per row make the
/// loads coalesce; fewer make the tree that joins them cheaper).
const SHORT_LOADS: u32 = 4;
/// The smallest binding cap we plan with: one block plus alignment slack.
pub(crate) const MIN_CAP_BYTES: u64 = 64 * 1024;

/// Bytes of the largest binding the kernels index: every u32 element index
/// they form (lead + row * stride + col, plus up to a block past a chunk's
/// end before the bound check) stays below 2^32 whatever the adapter allows
/// (Metal reports bindings beyond 16 GiB).
pub(crate) const MAX_INDEXED_BYTES: u64 = ((1u64 << 32) - (1 << 24)) * 4;

/// The bytes of one binding we plan with on a device with `limits`.
pub(crate) fn binding_limit(limits: &wgpu::Limits) -> u64 {
    limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
        .min(MAX_INDEXED_BYTES)
}

/// How rows are spread over workgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Threads per row T (a power of two ≤ WG); WG / T rows share a workgroup.
    pub threads_per_row: u32,
    /// Column blocks per row (1: a row is finished in one workgroup).
    pub blocks_per_row: u32,
    /// Values per load: 4 (vec4 loads) or 1.
    pub vec: u32,
}

impl Layout {
    /// The layout of rows of `cols` columns read `vec` values per load.
    /// Thread `lane` of a row reads loads lane, lane + T, .. of its block, so
    /// neighbouring threads read neighbouring values; a short row still gets
    /// up to a warp's worth of threads (about [`SHORT_LOADS`] loads each)
    /// rather than one thread striding through it alone.
    pub(crate) fn new(cols: u32, vec: u32) -> Layout {
        let units = cols.div_ceil(vec);
        if units > WG * EPT {
            return Layout {
                threads_per_row: WG,
                blocks_per_row: units.div_ceil(WG * EPT),
                vec,
            };
        }
        let fit = units.div_ceil(EPT).next_power_of_two();
        let spread = units
            .div_ceil(SHORT_LOADS)
            .next_power_of_two()
            .min(SHORT_THREADS);
        Layout {
            threads_per_row: fit.max(spread).clamp(1, WG),
            blocks_per_row: 1,
            vec,
        }
    }
    pub(crate) fn rows_per_group(&self) -> u32 {
        WG / self.threads_per_row
    }
    /// Columns one workgroup covers in a row.
    pub(crate) fn span(&self) -> u32 {
        self.threads_per_row * EPT * self.vec
    }
}

/// A part of the batch whose inputs fit one binding: whole rows, or a run of
/// column blocks of one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub row0: u32,
    pub rows: u32,
    pub col0: u32,
    pub cols: u32,
    /// Column blocks per row in this chunk.
    pub blocks: u32,
    /// Workgroups with work.
    pub items: u32,
}

/// Splits the batch so that each operand's binding stays within `cap_elems`
/// elements (alignment slack already taken off by the caller).
pub(crate) fn chunks(rows: u32, cols: u32, layout: Layout, cap_elems: u64) -> Vec<Chunk> {
    let span = layout.span();
    let mut out = Vec::new();
    if cols as u64 <= cap_elems {
        let per = (cap_elems / cols as u64).min(rows as u64) as u32;
        // keep row groups whole so that no workgroup straddles two chunks
        let rpg = layout.rows_per_group();
        let per = if per >= rpg {
            per / rpg * rpg
        } else {
            per.max(1)
        };
        let mut r = 0;
        while r < rows {
            let n = per.min(rows - r);
            let groups = n.div_ceil(rpg);
            out.push(Chunk {
                row0: r,
                rows: n,
                col0: 0,
                cols,
                blocks: layout.blocks_per_row,
                items: groups * layout.blocks_per_row,
            });
            r += n;
        }
    } else {
        // a row is larger than a binding: runs of whole blocks of one row
        let per_cols = (cap_elems / span as u64).max(1) as u32 * span;
        for r in 0..rows {
            let mut c = 0;
            while c < cols {
                let n = per_cols.min(cols - c);
                let blocks = n.div_ceil(span);
                out.push(Chunk {
                    row0: r,
                    rows: 1,
                    col0: c,
                    cols: n,
                    blocks,
                    items: blocks,
                });
                c += n;
            }
        }
    }
    out
}

/// A 2-D grid for `items` workgroups under the per-dimension limit, balanced
/// so that at most one row of x launches empty workgroups (65,536 items are
/// 32,768 x 2, not 65,535 x 2).
pub(crate) fn grid(items: u32, max_dim: u32) -> (u32, u32) {
    let items = items.max(1);
    let y = items.div_ceil(max_dim.max(1));
    let x = items.div_ceil(y);
    (x, y)
}

/// The element range of one operand that a chunk reads, as a binding
/// (`offset` aligned) plus the lead of the chunk's first element in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    pub offset_elems: u64,
    pub size_elems: u64,
    pub lead: u32,
}

/// `stride` is the operand's row stride (0 for one broadcast row);
/// `align_elems` the storage offset alignment in elements.
pub(crate) fn range(chunk: &Chunk, stride: u64, align_elems: u64) -> Range {
    let first = chunk.row0 as u64 * stride + chunk.col0 as u64;
    let end = (chunk.row0 + chunk.rows - 1) as u64 * stride + chunk.col0 as u64 + chunk.cols as u64;
    let offset = first / align_elems * align_elems;
    Range {
        offset_elems: offset,
        size_elems: end - offset,
        lead: (first - offset) as u32,
    }
}

/// What the planner needs of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeviceLimits {
    /// `min_storage_buffer_offset_alignment` in bytes (at least 4).
    pub align: u64,
    /// `max_compute_workgroups_per_dimension`.
    pub max_dim: u32,
    /// Bytes of one input binding we plan with (the device's, or the caller's cap).
    pub cap: u64,
    /// Bytes of the largest binding of the device ([`binding_limit`]).
    pub max_binding: u64,
}

impl DeviceLimits {
    pub(crate) fn of(limits: &wgpu::Limits, cap: u64) -> DeviceLimits {
        DeviceLimits {
            align: limits.min_storage_buffer_offset_alignment.max(4) as u64,
            max_dim: limits.max_compute_workgroups_per_dimension,
            cap,
            max_binding: binding_limit(limits),
        }
    }
}

/// Bytes of the output of a sum or mean: the batch record, then a copy of the
/// first bad row's record (all zero but the status when every row is good).
pub(crate) const TOTAL_OUTPUT_SIZE: u64 = 2 * RECORD_SIZE;

/// Words of a negative log-likelihood's targets binding: one u32 target per
/// row, then the class weights (f32), padded to a multiple of four words so
/// that it binds as vec4s too. The buffers that hold it have at least this size.
pub(crate) fn targets_words(rows: u32, cols: u32, weighted: bool) -> u64 {
    let words = rows as u64 + if weighted { cols as u64 } else { 0 };
    words.next_multiple_of(4)
}

/// A binding: byte offset and size in a buffer.
pub(crate) type Span = (u64, u64);

/// One dispatch of the term passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    pub key: RowKey,
    /// Index of the chunk whose input bindings it uses.
    pub chunk: usize,
    /// Dynamic offset of its parameter slot.
    pub slot: u32,
    pub grid: (u32, u32),
}

/// One level of the batch total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TotalStep {
    pub slot: u32,
    pub grid: (u32, u32),
}

/// A call's dispatches as plain data.
#[derive(Debug)]
pub(crate) struct GpuPlan {
    /// Term passes (and merges of long rows), in recording order.
    pub steps: Vec<Step>,
    /// Per chunk: the bindings of p and q, relative to the operands' buffers.
    pub inputs: Vec<(Span, Span)>,
    /// Levels of the batch total (sum, mean), in recording order.
    pub totals: Vec<TotalStep>,
    /// Every dispatch's parameter block, one slot each.
    pub params: Slots,
    /// Bytes of the partial states (long rows' blocks, then one normaliser
    /// state per row in a two-pass plan).
    pub partial_bytes: u64,
    /// Bytes of the per-row records.
    pub records_bytes: u64,
    /// Bytes of each of the two ping-pong buffers of the batch total.
    pub totals_bytes: u64,
}

/// The pipeline key of a pass of `call` (`sums`: the first of two passes;
/// `merge`: the merge of long rows' partial states).
fn key(call: &Call, sums: bool, merge: bool, vec4: bool, dtypes: (Dtype, Dtype)) -> RowKey {
    let (p, q) = (call.p, call.q);
    let norm = |o: Option<Operand>| o.is_some_and(|o| o.normalized);
    // a normalised log form is online in the first pass, plain in the second
    let online = |o: Option<Operand>| match o {
        Some(o) if call.two_pass => sums && o.normalized && o.log_form(),
        Some(o) => o.online,
        None => false,
    };
    RowKey {
        merge,
        vec4,
        dtypes,
        measure: if sums {
            wgsl::SUMS
        } else {
            wgsl::measure_code(call)
        },
        p_form: p.map_or(wgsl::TARGETS, |o| wgsl::form_code(o.form)),
        q_form: q.map_or(wgsl::form_code(Form::Probs), |o| wgsl::form_code(o.form)),
        has_q: q.is_some(),
        p_online: online(p),
        q_online: online(q),
        normalized: call.two_pass && !sums,
        p_norm: norm(p),
        q_norm: norm(q),
        renorm: call.normalization == Normalization::Renormalize,
        check_sums: call.normalization == Normalization::Validate,
    }
}

/// Plans `call` on a device with `limits`. `offsets`: the byte offsets where
/// the batch starts in the buffers of p (for a negative log-likelihood: of the
/// targets, followed by the class weights) and q. Errors: scratch that does
/// not fit one binding. f32 operands (the unit tests' plans; the calls
/// name their operands' formats through [`plan_stored`]).
#[cfg(test)]
pub(crate) fn plan(call: &Call, limits: &DeviceLimits, offsets: (u64, u64)) -> Result<GpuPlan> {
    plan_stored(call, limits, offsets, (Dtype::F32, Dtype::F32))
}

/// [`plan`] for operands stored as `dtypes` (p's is ignored for a negative
/// log-likelihood, whose p binding holds the targets; entropy binds p in
/// q's place, so q's is p's). Half operands' bindings start on the device's
/// offset alignment (an even value, so a whole u32) and are rounded up to
/// whole u32s; they take vec4 loads where f32 ones would (rows of a multiple
/// of 4 columns, 4-value-aligned offsets), so that a half call reduces the
/// same columns in the same order as the f32 call on the widened values.
pub(crate) fn plan_stored(
    call: &Call,
    limits: &DeviceLimits,
    offsets: (u64, u64),
    dtypes: (Dtype, Dtype),
) -> Result<GpuPlan> {
    let dtypes = (
        if call.nll.is_some() {
            Dtype::F32
        } else {
            dtypes.0
        },
        dtypes.1,
    );
    let (rows, cols) = (call.rows as u32, call.cols as u32);
    let align_elems = limits.align / 4;
    let max_dim = limits.max_dim;
    // vec4 loads where every load is four values of one row, 16-byte
    // aligned in its binding, and a long row's block still fits the cap
    let cap_elems = (limits.cap / 4)
        .saturating_sub(align_elems)
        .max(BLOCK as u64);
    // (four values: 16 bytes of f32, 8 of half)
    let quad = |offset: u64, d: Dtype| {
        let b = 4 * d.bytes();
        limits.align.is_multiple_of(b) && offset.is_multiple_of(b)
    };
    let aligned = quad(offsets.0, dtypes.0) && quad(offsets.1, dtypes.1);
    let vec4 =
        cols.is_multiple_of(4) && aligned && (cols <= BLOCK || cap_elems >= 4 * BLOCK as u64);
    let layout = Layout::new(cols, if vec4 { 4 } else { 1 });
    let bpr = layout.blocks_per_row;

    // scratch: partial states of long rows, then one normaliser state per row
    let norm_at = rows as u64 * if bpr > 1 { bpr as u64 } else { 0 };
    let normalisers = if call.two_pass { rows as u64 } else { 0 };
    let partial_bytes = (norm_at + normalisers).max(1) * STATE_SIZE;
    let records_bytes = rows as u64 * RECORD_SIZE;
    for (what, bytes) in [
        ("partial states", partial_bytes),
        ("per-row records", records_bytes),
    ] {
        if bytes > limits.max_binding {
            return Err(Error::TooLarge {
                what: format!("{what}: bytes of one binding"),
                size: bytes,
                limit: limits.max_binding,
            });
        }
    }

    let chunks = chunks(rows, cols, layout, cap_elems);
    let base = base_params(call, layout, norm_at as u32);
    let (inputs, chunk_params) =
        chunk_bindings(call, &chunks, &base, offsets, limits.align, dtypes);
    let mut params = Slots::default();
    let steps = term_steps(
        call,
        &chunks,
        &chunk_params,
        (vec4, dtypes),
        max_dim,
        &mut params,
    );
    let totals = total_steps(call, max_dim, &mut params);
    let totals_bytes = (rows as u64).div_ceil((WG * EPT) as u64).max(1) * TOTAL_SIZE;
    Ok(GpuPlan {
        steps,
        inputs,
        totals,
        params,
        partial_bytes,
        records_bytes,
        totals_bytes,
    })
}

/// The element strides of p and q (0: one row broadcast). p holds class
/// targets (read by row, not by stride) for a negative log-likelihood;
/// entropy binds p's values in q's place too.
fn strides(call: &Call) -> (u64, u64) {
    let stride = |o: Option<Operand>| {
        if o.map_or(1, |o| o.rows) == 1 {
            0
        } else {
            call.cols as u64
        }
    };
    let p = if call.nll.is_some() {
        0
    } else {
        stride(call.p)
    };
    let q = match call.q {
        Some(_) => stride(call.q),
        None => p,
    };
    (p, q)
}

/// The parameters every pass of `call` shares.
fn base_params(call: &Call, layout: Layout, norm_at: u32) -> RowParams {
    let (rows, cols) = (call.rows as u32, call.cols as u32);
    let nll = call.nll;
    let (p_stride, q_stride) = strides(call);
    RowParams {
        rows,
        cols,
        threads_per_row: layout.threads_per_row,
        blocks_per_row: layout.blocks_per_row,
        p_stride: p_stride as u32,
        q_stride: q_stride as u32,
        norm_at,
        tolerance: call.tolerance,
        inv_ln_base: (1.0 / call.ln_base) as f32,
        ignore_bits: nll.and_then(|n| n.ignore).unwrap_or(crate::call::IGNORED),
        has_ignore: nll.is_some_and(|n| n.ignore.is_some()) as u32,
        smoothing: nll.map_or(0.0, |n| n.smoothing),
        weights_at: if nll.is_some_and(|n| n.weighted) {
            rows
        } else {
            u32::MAX
        },
        // a base below 1 divides by ln(base) < 0: an infinite value is -inf
        inf_bits: (f32::INFINITY * call.ln_base.signum() as f32).to_bits(),
        nan_bits: f32::NAN.to_bits(),
        targets_signed: nll.is_some_and(|n| n.signed) as u32,
        ..Default::default()
    }
}

/// Per chunk: the input bindings (relative to the operands' buffers, which
/// start at `offsets`) and the parameters.
fn chunk_bindings(
    call: &Call,
    chunks: &[Chunk],
    base: &RowParams,
    offsets: (u64, u64),
    align: u64,
    dtypes: (Dtype, Dtype),
) -> (Vec<(Span, Span)>, Vec<RowParams>) {
    // a binding of `r` in an operand of `width` bytes a value, whole u32s
    let span = |at: u64, r: &Range, width: u64| {
        (
            at + r.offset_elems * width,
            (r.size_elems * width).next_multiple_of(4),
        )
    };
    let (pw, qw) = (dtypes.0.bytes(), dtypes.1.bytes());
    let (rows, cols) = (call.rows as u32, call.cols as u32);
    let (p_stride, q_stride) = strides(call);
    let mut inputs = Vec::with_capacity(chunks.len());
    let mut chunk_params = Vec::with_capacity(chunks.len());
    for c in chunks {
        let (p_span, p_lead) = match call.nll {
            Some(n) => ((offsets.0, targets_words(rows, cols, n.weighted) * 4), 0),
            None => {
                let r = range(c, p_stride, align / pw);
                (span(offsets.0, &r, pw), r.lead)
            }
        };
        let rq = range(c, q_stride, align / qw);
        inputs.push((p_span, span(offsets.1, &rq, qw)));
        chunk_params.push(RowParams {
            row0: c.row0,
            col0: c.col0,
            chunk_rows: c.rows,
            chunk_cols: c.cols,
            chunk_blocks: c.blocks,
            item_count: c.items,
            p_lead,
            q_lead: rq.lead,
            ..*base
        });
    }
    (inputs, chunk_params)
}

/// Term passes: every chunk, then the merge of long rows; the first pass of
/// a two-pass plan likewise.
fn term_steps(
    call: &Call,
    chunks: &[Chunk],
    chunk_params: &[RowParams],
    (vec4, dtypes): (bool, (Dtype, Dtype)),
    max_dim: u32,
    params: &mut Slots,
) -> Vec<Step> {
    let rows = call.rows as u32;
    let bpr = chunk_params.first().map_or(1, |p| p.blocks_per_row);
    let mut steps = Vec::new();
    let passes: &[bool] = if call.two_pass {
        &[true, false]
    } else {
        &[false]
    };
    for &sums in passes {
        for (i, (c, cp)) in chunks.iter().zip(chunk_params).enumerate() {
            steps.push(Step {
                key: key(call, sums, false, vec4, dtypes),
                chunk: i,
                slot: params.push(cp),
                grid: grid(c.items, max_dim),
            });
        }
        if bpr > 1 {
            let mp = RowParams {
                row0: 0,
                chunk_rows: rows,
                item_count: rows,
                ..chunk_params[0]
            };
            steps.push(Step {
                key: key(call, sums, true, vec4, dtypes),
                chunk: 0,
                slot: params.push(&mp),
                grid: grid(rows, max_dim),
            });
        }
    }
    steps
}

/// The batch total: levels of WG * EPT inputs per workgroup until one is left.
fn total_steps(call: &Call, max_dim: u32, params: &mut Slots) -> Vec<TotalStep> {
    let mut totals = Vec::new();
    let per = (WG * EPT) as u64;
    if call.reduction != Reduction::None {
        let mut count = call.rows as u64;
        let mut level = 0u32;
        loop {
            let groups = count.div_ceil(per);
            let tp = TotalParams {
                count: count as u32,
                from_rows: (level == 0) as u32,
                last: (groups == 1) as u32,
                mean: (call.reduction == Reduction::Mean) as u32,
                weighted: call.rows_weighted() as u32,
                rows_base: 0,
                inf_bits: f32::INFINITY.to_bits(),
                nan_bits: f32::NAN.to_bits(),
            };
            totals.push(TotalStep {
                slot: params.push(&tp),
                grid: grid(groups as u32, max_dim),
            });
            if groups == 1 {
                break;
            }
            count = groups;
            level += 1;
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_short_and_long_rows() {
        // (cols, values per load) -> threads per row, blocks per row
        for (cols, vec, t, b) in [
            (1u32, 1u32, 1u32, 1u32),
            (5, 1, 2, 1),
            (16, 1, 4, 1),
            (16, 4, 1, 1),
            (64, 4, 4, 1),
            (100, 1, 32, 1),
            (128, 1, 32, 1),
            (257, 1, 32, 1),
            (1024, 1, 32, 1),
            (2048, 1, 64, 1),
            (8192, 1, 256, 1),
            (8193, 1, 256, 2),
            (8196, 4, 128, 1),
            (32768, 4, 256, 1),
            (32772, 4, 256, 2),
            (1_000_003, 1, 256, 123),
            (1_000_004, 4, 256, 31),
        ] {
            let l = Layout::new(cols, vec);
            assert_eq!(
                (l.threads_per_row, l.blocks_per_row),
                (t, b),
                "{cols} / {vec}"
            );
            // every thread makes at most EPT loads per block
            let units = cols.div_ceil(vec);
            assert!(units.div_ceil(b) <= t * EPT, "{cols} / {vec}");
        }
    }

    #[test]
    fn chunks_cover_every_element_once() {
        for &(rows, cols, cap) in &[
            (70_001u32, 5u32, 1u64 << 30),
            (70_001, 5, 4096),
            (3, 1_000_003, 1 << 30),
            (3, 1_000_003, 20_000),
            (7, 3000, 3000),
            (1, 1, 4096),
        ] {
            let l = Layout::new(cols, 1);
            let cs = chunks(rows, cols, l, cap);
            let mut seen = vec![0u8; (rows as usize) * (cols as usize)];
            for c in &cs {
                let r = range(c, cols as u64, 64);
                assert!(r.size_elems <= cap + 64, "{c:?} {r:?}");
                assert!(c.col0 % l.span() == 0);
                for row in c.row0..c.row0 + c.rows {
                    for col in c.col0..c.col0 + c.cols {
                        seen[(row * cols + col) as usize] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "{rows}x{cols} cap {cap}");
        }
    }

    /// A synthetic 64 GiB binding limit (lavapipe cannot report one): the
    /// planned bindings keep every u32 index a kernel forms below 2^32.
    #[test]
    fn indices_stay_below_2_pow_32_under_a_64_gib_limit() {
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: 64 << 30,
            max_buffer_size: 64 << 30,
            ..wgpu::Limits::default()
        };
        let cap = binding_limit(&limits);
        assert!(cap <= MAX_INDEXED_BYTES);
        let align_elems = 64;
        // as encode() derives it
        let cap_elems = (cap / 4).saturating_sub(align_elems).max(BLOCK as u64);
        for &(rows, cols) in &[
            (1u32, u32::MAX),
            (3, 4_000_000_000),
            (1 << 20, 1 << 14),
            (u32::MAX / 8, 8),
            (5, 3_000_000_001),
        ] {
            let l = Layout::new(cols, 1);
            let cs = chunks(rows, cols, l, cap_elems);
            let mut covered = 0u64;
            for c in &cs {
                let r = range(c, cols as u64, align_elems);
                // the last element a thread may index before its bound check
                let top = r.lead as u64
                    + (c.rows as u64 - 1) * cols as u64
                    + c.cols as u64
                    + l.span() as u64;
                assert!(top < 1 << 32, "{rows}x{cols} {c:?}: index {top}");
                assert!(r.size_elems * 4 <= cap, "{rows}x{cols} {c:?}");
                covered += c.rows as u64 * c.cols as u64;
            }
            assert_eq!(covered, rows as u64 * cols as u64);
        }
    }

    #[test]
    fn grid_respects_dimension_limit_and_wastes_at_most_a_row() {
        assert_eq!(grid(70_001, 65_535), (35_001, 2));
        assert_eq!(grid(65_536, 65_535), (32_768, 2));
        assert_eq!(grid(1, 65_535), (1, 1));
        assert_eq!(grid(0, 65_535), (1, 1));
        for items in [
            1u32, 7, 65_535, 65_536, 131_071, 131_072, 200_000, 4_000_000,
        ] {
            for max_dim in [1u32, 2, 256, 65_535] {
                let (x, y) = grid(items, max_dim);
                assert!(x <= max_dim && y <= items.max(1), "{items} {max_dim}");
                let launched = x as u64 * y as u64;
                assert!(launched >= items as u64, "{items} {max_dim}: covered");
                assert!(
                    launched < items.max(1) as u64 + x as u64,
                    "{items} {max_dim}: waste"
                );
            }
        }
    }

    fn limits(cap: u64) -> DeviceLimits {
        DeviceLimits {
            align: 256,
            max_dim: 65_535,
            cap,
            max_binding: 128 << 20,
        }
    }

    fn call(measure: Measure, rows: usize, cols: usize, p: Form, opts: &Options) -> Call {
        struct S(crate::call::Shape);
        impl crate::call::Input for S {
            type Checked = ();
            fn check(&self, _: crate::error::Arg) -> Result<(crate::call::Shape, ())> {
                Ok((self.0, ()))
            }
        }
        let shape = |form| {
            S(crate::call::Shape {
                rows,
                cols,
                form,
                roundoff: 0.0,
            })
        };
        let q = shape(Form::Probs);
        Call::measure(measure, &shape(p), Some(&q), opts)
            .expect("valid")
            .0
    }

    use crate::measure::{Measure, Options};

    /// Every dispatch has its own parameter slot (writes land before the
    /// whole submission, so two dispatches must never share one), and the
    /// slots hold exactly the blocks pushed.
    #[test]
    fn every_dispatch_has_its_own_slot() {
        let opts = Options::default().reduction(Reduction::Mean);
        let c = call(Measure::Js, 3, 20_000, Form::Logits, &opts);
        let p = plan(&c, &limits(1 << 30), (0, 0)).expect("plan");
        let mut slots: Vec<u32> = p.steps.iter().map(|s| s.slot).collect();
        slots.extend(p.totals.iter().map(|t| t.slot));
        let n = slots.len();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), n);
        assert_eq!(
            p.params.bytes().len(),
            n * crate::gpu::params::SLOT as usize
        );
    }

    /// A two-pass plan over long rows: the first pass (row normalisers) over
    /// every chunk, its merge, then the term pass and its merge; the
    /// normaliser states after the long rows' partial states.
    #[test]
    fn two_pass_long_rows_order_and_scratch() {
        let opts = Options::default();
        // scalar loads (20,001 is odd) and vec4 loads (40,000): both long
        for (rows, cols, vec) in [(3u32, 20_001u32, 1u32), (2, 40_000, 4)] {
            let c = call(
                Measure::Js,
                rows as usize,
                cols as usize,
                Form::Logits,
                &opts,
            );
            assert!(c.two_pass);
            let p = plan(&c, &limits(1 << 30), (0, 0)).expect("plan");
            let kinds: Vec<(u32, bool)> = p
                .steps
                .iter()
                .map(|s| (s.key.measure, s.key.merge))
                .collect();
            let js = wgsl::measure_code(&c);
            assert_eq!(
                kinds,
                [
                    (wgsl::SUMS, false),
                    (wgsl::SUMS, true),
                    (js, false),
                    (js, true)
                ]
            );
            assert!(p.steps[0].key.p_online && !p.steps[2].key.p_online);
            assert!(p.steps[2].key.normalized && p.steps[2].key.p_norm);
            assert!(p.steps.iter().all(|s| s.key.vec4 == (vec == 4)));
            let bpr = Layout::new(cols, vec).blocks_per_row as u64;
            assert!(bpr > 1);
            assert_eq!(
                p.partial_bytes,
                (rows as u64 * bpr + rows as u64) * STATE_SIZE
            );
            assert!(p.totals.is_empty());
        }
    }

    /// vec4 loads only where every load is four values of one row on a
    /// 16-byte boundary, and a long row's block fits the binding cap.
    #[test]
    fn vec4_where_rows_are_aligned() {
        let opts = Options::default();
        let vec4 = |cols: usize, cap: u64, offsets: (u64, u64)| {
            let c = call(Measure::Kl, 3, cols, Form::Probs, &opts);
            let p = plan(&c, &limits(cap), offsets).expect("plan");
            p.steps.iter().all(|s| s.key.vec4)
        };
        assert!(vec4(16, 1 << 30, (0, 0)));
        assert!(vec4(40_000, 1 << 30, (256, 512)));
        assert!(!vec4(15, 1 << 30, (0, 0)));
        assert!(!vec4(16, 1 << 30, (8, 0)));
        // a long row whose vec4 block (128 KiB) exceeds a 64 KiB cap
        assert!(!vec4(40_000, MIN_CAP_BYTES, (0, 0)));
        assert!(vec4(4096, MIN_CAP_BYTES, (0, 0)));
    }

    /// A small binding cap splits the inputs into chunks whose bindings fit
    /// it, each chunk a dispatch of its own; offsets are aligned and shifted
    /// by where the batch starts.
    #[test]
    fn chunked_inputs_fit_the_cap() {
        let opts = Options::default();
        let (rows, cols) = (700usize, 300usize);
        let c = call(Measure::Kl, rows, cols, Form::Probs, &opts);
        let cap = MIN_CAP_BYTES;
        let p = plan(&c, &limits(cap), (512, 1024)).expect("plan");
        assert!(p.inputs.len() > 1);
        assert_eq!(p.steps.len(), p.inputs.len());
        for (i, &((po, ps), (qo, qs))) in p.inputs.iter().enumerate() {
            assert!(ps <= cap && qs <= cap, "chunk {i}");
            assert!(po % 256 == 0 && qo % 256 == 0 && po >= 512 && qo >= 1024);
            assert_eq!(p.steps[i].chunk, i);
        }
    }

    /// Batch totals: one level per WG * EPT rows folded, the last of one workgroup.
    #[test]
    fn total_levels() {
        let per = (WG * EPT) as usize;
        for (rows, levels) in [(1usize, 1usize), (per, 1), (per + 1, 2), (per * per + 1, 3)] {
            let opts = Options::default().reduction(Reduction::Sum);
            let c = call(Measure::Entropy, rows, 1, Form::Probs, &opts);
            let big = DeviceLimits {
                max_binding: u64::MAX,
                ..limits(1 << 30)
            };
            let p = plan(&c, &big, (0, 0)).expect("plan");
            assert_eq!(p.totals.len(), levels, "{rows} rows");
            assert_eq!(p.totals.last().map(|t| t.grid), Some((1, 1)));
        }
    }

    /// Scratch that does not fit one binding is an error before anything is made.
    #[test]
    fn scratch_beyond_a_binding_is_an_error() {
        let opts = Options::default();
        let c = call(Measure::Kl, 10_000_000, 1, Form::Probs, &opts);
        let e = plan(&c, &limits(1 << 30), (0, 0));
        assert!(matches!(e, Err(Error::TooLarge { .. })));
    }
}
