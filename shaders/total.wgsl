// Batch reduction (Reduction::Sum and Mean): per-row records -> two records (the
// total, and a copy of the first bad row's record), by a tree in workgroup
// memory, level after level. Appended to common.wgsl.
//
// A row with a bad status is left out of the sum and the first such row is kept;
// infinite rows are counted by sign (not added: WGSL may assume finite math): +inf
// rows make the total +inf, -inf rows (a log base below 1) -inf, both NaN. A mean
// over no counted weight is NaN: the rules of src/record.rs `reduce_records` (the
// CPU total), held equal by tests/gpu_vs_cpu.rs and tests/fuzz.rs.

// The twin of src/gpu/params.rs `TotalParams` (layouts compared by gpu::wgsl tests).
struct Params {
    count: u32,     // inputs of this level
    from_rows: u32, // 1: inputs are per-row records; 0: totals of the level below
    last: u32,      // 1: this level has one workgroup and writes the final record
    mean: u32,      // 1: divide by the weight
    weighted: u32,  // 1: a row's weight is its record's aux_p (NLL); else 1
    rows_base: u32, // row number of input 0 (first level)
    inf_bits: u32,
    nan_bits: u32,
}

// src/record.rs `Record` (a test there compares the fields).
struct Record {
    value: f32,
    aux_p: f32,
    aux_q: f32,
    code: u32,
    column: u32,
    index: u32,
}

struct Total {
    sum: f32,
    // the same sum of values scaled by 2^-64 (exact for the values that
    // matter): where the f32 sum overflows, the mean may still fit
    scaled: f32,
    weight: f32,
    infs: u32,
    neg_infs: u32,
    bad_row: u32,
    // the first bad row's own record, so that its error can be decoded exactly
    code: u32,
    column: u32,
    index: u32,
    bad_aux_p: f32,
    bad_aux_q: f32,
}

@group(0) @binding(0) var<storage, read> rows_in: array<Record>;
@group(0) @binding(1) var<storage, read> totals_in: array<Total>;
@group(0) @binding(2) var<storage, read_write> totals_out: array<Total>;
@group(0) @binding(3) var<storage, read_write> out: array<Record>;
@group(0) @binding(4) var<uniform> params: Params;

var<workgroup> shared_totals: array<Total, WG>;

const SCALE_DOWN: f32 = 5.421010862427522e-20; // 2^-64
const SCALE_UP_HALF: f32 = 4294967296.0; // 2^32

fn merge_totals(a: Total, b: Total) -> Total {
    // keep the first bad row (the tree does not visit ranges in row order)
    let a_bad = a.code != ST_OK;
    let take_b = b.code != ST_OK && (!a_bad || b.bad_row < a.bad_row);
    return Total(a.sum + b.sum, a.scaled + b.scaled, a.weight + b.weight, a.infs + b.infs, a.neg_infs + b.neg_infs,
                 select(a.bad_row, b.bad_row, take_b), select(a.code, b.code, take_b),
                 select(a.column, b.column, take_b), select(a.index, b.index, take_b),
                 select(a.bad_aux_p, b.bad_aux_p, take_b), select(a.bad_aux_q, b.bad_aux_q, take_b));
}

fn load(i: u32) -> Total {
    if (params.from_rows == 0u) {
        return totals_in[i];
    }
    let r = rows_in[i];
    let bad = r.code != ST_OK;
    let bits = bitcast<u32>(r.value);
    let inf = !bad && bits == POS_INF_BITS;
    let neg_inf = !bad && bits == NEG_INF_BITS;
    // NLL records hold w_t * l already (the class weight is applied per element)
    let w = select(1.0, r.aux_p, params.weighted != 0u);
    let v = select(r.value, 0.0, bad || inf || neg_inf);
    return Total(v, v * SCALE_DOWN, select(w, 0.0, bad), select(0u, 1u, inf), select(0u, 1u, neg_inf),
                 params.rows_base + i, r.code, r.column, r.index, r.aux_p, r.aux_q);
}

fn tree_levels(base: u32, first: u32, n: u32) {
    for (var stride = first; stride < n; stride = stride * 2u) {
        for (var i = 0u; i + stride < n; i = i + 2u * stride) {
            shared_totals[base + i] = merge_totals(shared_totals[base + i], shared_totals[base + i + stride]);
        }
    }
}

@compute @workgroup_size(WG)
fn total_main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    inv: Invocation,
) {
    let lid = inv.lid;
    let group = wid.x + wid.y * nwg.x;
    let span = WG * EPT;
    let begin = group * span;
    if (begin >= params.count) {
        return;
    }
    let end = min(begin + span, params.count);
    var t = Total(0.0, 0.0, 0.0, 0u, 0u, 0u, ST_OK, 0u, 0u, 0.0, 0.0);
    // neighbouring threads read neighbouring records
    for (var i = begin + lid; i < end; i = i + WG) {
        t = merge_totals(t, load(i));
    }
    shared_totals[lid] = t;
    workgroupBarrier();
    // a binary tree in two barriers (see tree_reduce in rows.wgsl)
    var g = 8u;
    if (SUBGROUPS && full_subgroups(inv)) {
        g = subgroup_levels(inv, WG);
    } else if (lid % 8u == 0u) {
        tree_levels(lid, 1u, 8u);
    }
    workgroupBarrier();
    if (lid == 0u) {
        tree_levels(0u, g, WG);
    }
    if (lid != 0u) {
        return;
    }
    let r = shared_totals[0];
    if (params.last == 0u) {
        totals_out[group] = r;
        return;
    }
    var value = positive_zero(select(r.sum, r.sum / r.weight, params.mean != 0u));
    // the finite values' sum overflowed (decided from the bits): the scaled
    // sum gives the mean if it fits, and an infinite sum of that sign
    if ((bitcast<u32>(r.sum) & 0x7f800000u) == 0x7f800000u) {
        let m = select(r.scaled, r.scaled / r.weight, params.mean != 0u);
        value = m * SCALE_UP_HALF * SCALE_UP_HALF;
    }
    value = select(value, bitcast<f32>(POS_INF_BITS), r.infs != 0u);
    value = select(value, bitcast<f32>(NEG_INF_BITS), r.neg_infs != 0u);
    value = select(value, bitcast<f32>(params.nan_bits), r.infs != 0u && r.neg_infs != 0u);
    // a mean over no counted weight (every target ignored, or weighted 0) is
    // NaN, as PyTorch's, whatever the rows hold
    value = select(value, bitcast<f32>(params.nan_bits), params.mean != 0u && r.weight == 0.0);
    value = select(value, bitcast<f32>(params.nan_bits), r.code != ST_OK);
    out[0] = Record(value, r.weight, 0.0, r.code, r.column, r.bad_row);
    out[1] = Record(bitcast<f32>(params.nan_bits), r.bad_aux_p, r.bad_aux_q, r.code, r.column, r.index);
}
