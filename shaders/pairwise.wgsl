// All pairs: every row of p against every row of q. Appended to common.wgsl.
//
// Three steps, each a kernel here (src/gpu/pairwise.rs records them):
// 1. `prep_stats` and `prep_write` read each input row once: its problems (the
//    per-row measures' codes, the first bad column), its normaliser (the row
//    sum relative to a power of two for probabilities, the online (max, Σ e^(x
//    - max)) for log values), then each element's fields (a weight w and ln w,
//    taken once per element by an accurate polynomial: WGSL's `log` and `exp`
//    are loose), four bit masks for the zero rules and the row's flags. The
//    prepared rows live in regions of at most one binding: [fields: k-major,
//    FIELDS x rows x cols][masks: 4 x words x rows][flags: rows].
// 2. `tile_main`: 64 x 64 pairs per workgroup, 4 x 4 per thread, the fields of
//    8 columns of both sides staged in workgroup memory per step (a GEMM's
//    register blocking), f32 runs of 64 columns added into a compensated sum.
//    Per pair-element: KL w_p (l_p - l_q), cross-entropy w_p l_q, JS one log of
//    the mixture (of its mantissa: ln s = e ln 2 + ln m, so that ln 2p - ln s
//    keeps its absolute accuracy), Hellinger (√p - √q)², total variation |p - q|.
//    Zero rules per pair from the masks: p > 0 where q = 0 is +inf for KL and
//    cross-entropy.
// 3. `topk_main`: the k smallest of each row of a band of the matrix (values
//    and indices, ties by the lower index), merged with the list so far.
//
// src/cpu/pairwise/ is the CPU twin; tests/pairwise.rs holds both to the f64
// reference and to each other's rules.
//
// The file is cut at its `// ==== ` lines by src/gpu/wgsl.rs: what comes before
// the first is shared; each section after it is the kernel of one module (their
// bindings differ).

// MEASURE (one of the generated M_* codes of the measure table) and SYM are written above this
// file per pipeline by src/gpu/pairwise.rs (constants rather than overrides:
// the kernels branch on them in nested loops, which naga's override pass
// mistranslated).
//
// Fields per element: KL and cross-entropy (w, ln w), JS (w, e + 1, ln m of w
// = m 2^e, m in [√½, √2)), Hellinger (√w), total variation (w).
const FIELDS: u32 = select(select(1u, 2u, MEASURE == M_KL || MEASURE == M_CROSS), 3u, MEASURE == M_JS);
// SYM: p against itself with a symmetric measure: each JS pair-element is
// formed in an order fixed by its values, so D[i, j] and D[j, i] are the same
// bits even where the compiler fuses a multiply and an add.

const LN2_HI: f32 = 0.693359375;
const LN2_LO: f32 = -2.12194440e-4;
const SQRT2: f32 = 1.41421356;
const TILE: u32 = 64u;
const BK: u32 = 8u;

// src/record.rs `Record` (a test in src/gpu/pairwise.rs compares the fields).
struct Record {
    value: f32,
    aux_p: f32,
    aux_q: f32,
    code: u32,
    column: u32,
    index: u32,
}

// accurate logs

// ln x = e * LN2_HI + lo for a finite x > 0 given by its bits (subnormals
// exact: integer operations only): Cephes' polynomial of ln m, m in [√½, √2).
fn ln_parts(b: u32) -> vec2<f32> {
    let d = split_pow2(b);
    var m = d.m;
    var e = f32(d.k);
    if (m > SQRT2) {
        m = m * 0.5;
        e = e + 1.0;
    }
    let r = m - 1.0;
    let z = r * r;
    var y = 7.0376836292e-2;
    y = fma(y, r, -1.1514610310e-1);
    y = fma(y, r, 1.1676998740e-1);
    y = fma(y, r, -1.2420140846e-1);
    y = fma(y, r, 1.4249322787e-1);
    y = fma(y, r, -1.6668057665e-1);
    y = fma(y, r, 2.0000714765e-1);
    y = fma(y, r, -2.4999993993e-1);
    y = fma(y, r, 3.3333331174e-1);
    y = y * r * z;
    y = fma(e, LN2_LO, y);
    y = fma(-0.5, z, y);
    return vec2<f32>(e, r + y);
}

fn ln_acc(b: u32) -> f32 {
    let p = ln_parts(b);
    return fma(p.x, LN2_HI, p.y);
}

// e^l, Cephes' expf: 0 below -104 (subnormal results may flush).
fn exp_acc(l: f32) -> f32 {
    let x = clamp(l, -104.0, 88.0);
    let n = round(x * 1.44269504089);
    var r = fma(-n, LN2_HI, x);
    r = fma(-n, LN2_LO, r);
    let z = r * r;
    var y = 1.9875691500e-4;
    y = fma(y, r, 1.3981999507e-3);
    y = fma(y, r, 8.3334519073e-3);
    y = fma(y, r, 4.1665795894e-2);
    y = fma(y, r, 1.6666665459e-1);
    y = fma(y, r, 5.0000001201e-1);
    y = fma(y, z, r) + 1.0;
    let ni = i32(n);
    let n1 = ni / 2;
    return select(y * pow2(n1) * pow2(ni - n1), 0.0, l < -104.0);
}

// ==== prep: preparation

// The twin of src/gpu/pairwise.rs `PrepParams`.
struct PrepParams {
    rows: u32,          // rows of this dispatch
    cols: u32,          // columns of this k-chunk
    row0: u32,          // the dispatch's first row (of its argument)
    col0: u32,          // the k-chunk's first column
    raw_lead: u32,      // element of (row0, col0) in the raw binding
    raw_stride: u32,    // elements between rows of the raw binding
    region_rows: u32,   // rows of the region (its field stride)
    mode: u32,          // RM_*: how the rows are read
    is_q: u32,          // the argument is q (its status codes)
    first: u32,         // 1: the first k-chunk
    check_sums: u32,    // Normalization::Validate
    tolerance: f32,
    norm_at: u32,       // index of row0's normaliser in the norms binding
    status_at: u32,     // index of row0's record in the status binding
    words: u32,         // mask words per row in the region
    field_len: u32,     // elements of one field in the region (rows x cols)
    mask_at: u32,       // word of the masks in the region
    flags_at: u32,      // word of the flags in the region
    region_row0: u32,   // region row of row0
    nan_bits: u32,
    tpr: u32,           // threads per row (a power of two); PREP_WG / tpr rows per workgroup
    dtype: u32,         // raw values: DT_F32, DT_F16 or DT_BF16 (two per u32, value 2k low)
}

// A row's normaliser while it is read: the first bad column's key, and
// (probabilities) the largest exponent m and Σ p 2^-m, or (log values) the
// running maximum m and Σ e^(x - m).
struct Norm {
    m: f32,
    s: f32,
    seen: u32,
    col: u32,
    code: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read> raw: array<u32>;
@group(0) @binding(1) var<storage, read_write> norms: array<Norm>;
@group(0) @binding(2) var<storage, read_write> region: array<u32>;
@group(0) @binding(3) var<storage, read_write> status: array<Record>;
@group(0) @binding(4) var<uniform> pp: PrepParams;

var<workgroup> red: array<Norm, PREP_WG>;

// Raw value i (of the binding) as f32 bits: halves widened by integer
// operations (shaders/half.wgsl), the same bits as the CPU's widening.
fn raw_value(i: u32) -> u32 {
    if (pp.dtype == DT_F32) {
        return raw[i];
    }
    return widen_half(raw[i >> 1u] >> ((i & 1u) << 4u), pp.dtype);
}
var<workgroup> row_flags: array<atomic<u32>, PREP_WG>;

fn norm_none() -> Norm {
    return Norm(0.0, 0.0, 0u, COL_NONE, CODE_NONE, 0u, 0u, 0u);
}

fn is_log_mode() -> bool {
    return pp.mode == RM_LOG || pp.mode == RM_LOG_NORM;
}

// 0 good, else 1 NaN, 2 negative, 3 infinite, 4 positive log (added to the
// argument's ST_*_NAN - 1).
fn classify(b: u32) -> u32 {
    if (is_nan_bits(b)) {
        return 1u;
    }
    if (is_log_mode()) {
        if (b == POS_INF_BITS) {
            return 3u;
        }
        if (pp.mode == RM_LOG && (b & SIGN_BIT) == 0u && b != 0u) {
            return 4u;
        }
        return 0u;
    }
    if (is_inf_bits(b)) {
        return 3u;
    }
    if ((b & SIGN_BIT) != 0u && !is_zero_bits(b)) {
        return 2u;
    }
    return 0u;
}

// Adds a block of element bits (those where keep[j]: good and not
// probability 0) to a running normaliser: its maximum raised once per block
// (shaders/common.wgsl `block_max`), then each element relative to it.
fn norm_block(n: ptr<function, Norm>, b4: vec4<u32>, keep: vec4<bool>) {
    let log_mode = is_log_mode();
    let bm = block_max(b4, keep, !log_mode);
    if (!bm.found) {
        return;
    }
    if (block_raises(bm, (*n).seen != 0u, (*n).m)) {
        if ((*n).seen == 0u) {
            (*n).s = 0.0;
        } else if (log_mode) {
            (*n).s = (*n).s * exp_acc(max((*n).m, bm.m - 128.0) - bm.m);
        } else {
            (*n).s = (*n).s * pow2(i32((*n).m) - i32(bm.m));
        }
        (*n).m = bm.m;
    }
    (*n).seen = 1u;
    for (var j = 0u; j < BLOCK_VALUES; j = j + 1u) {
        if (keep[j]) {
            let b = b4[j];
            if (log_mode) {
                (*n).s = (*n).s + exp_acc(max(bitcast<f32>(b), (*n).m - 128.0) - (*n).m);
            } else {
                let d = split_pow2(b);
                (*n).s = (*n).s + d.m * pow2(d.k - i32((*n).m));
            }
        }
    }
}

fn norm_merge(a: Norm, b: Norm) -> Norm {
    let key = key_min(vec2<u32>(a.col, a.code), vec2<u32>(b.col, b.code));
    var r = a;
    if (a.seen == 0u) {
        r = b;
    } else if (b.seen != 0u) {
        let m = max(a.m, b.m);
        if (is_log_mode()) {
            r.s = a.s * exp_acc(max(a.m, m - 128.0) - m) + b.s * exp_acc(max(b.m, m - 128.0) - m);
        } else {
            r.s = a.s * pow2(i32(a.m) - i32(m)) + b.s * pow2(i32(b.m) - i32(m));
        }
        r.m = m;
    }
    r.col = key.x;
    r.code = key.y;
    return r;
}

// Pass 1 over one k-chunk: each row's first problem and normaliser, merged
// into what the earlier k-chunks left. `tpr` threads per row, the rows of a
// workgroup side by side (short rows share a workgroup).
@compute @workgroup_size(PREP_WG)
fn prep_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lane = lid % pp.tpr;
    let r = (wid.x + wid.y * nwg.x) * (PREP_WG / pp.tpr) + lid / pp.tpr;
    let live = r < pp.rows;
    var n = norm_none();
    if (live) {
        let base = pp.raw_lead + r * pp.raw_stride;
        let code_base = select(ST_P_NAN, ST_Q_NAN, pp.is_q != 0u) - 1u;
        // blocks of BLOCK_VALUES lane-strided values: c, c + tpr, ..
        for (var c = lane; c < pp.cols; c = c + BLOCK_VALUES * pp.tpr) {
            var b4 = vec4<u32>(0u);
            var keep = vec4<bool>(false);
            for (var j = 0u; j < BLOCK_VALUES; j = j + 1u) {
                let cj = c + j * pp.tpr;
                if (cj < pp.cols) {
                    let b = raw_value(base + cj);
                    let k = classify(b);
                    if (k != 0u) {
                        let key = key_min(vec2<u32>(n.col, n.code), vec2<u32>(pp.col0 + cj, code_base + k));
                        n.col = key.x;
                        n.code = key.y;
                    } else {
                        b4[j] = b;
                        // probability 0 (a zero, or -inf in log modes) adds nothing
                        keep[j] = select(!is_zero_bits(b), b != NEG_INF_BITS, is_log_mode());
                    }
                }
            }
            norm_block(&n, b4, keep);
        }
    }
    red[lid] = n;
    workgroupBarrier();
    for (var stride = pp.tpr / 2u; stride > 0u; stride = stride / 2u) {
        if (lane < stride) {
            red[lid] = norm_merge(red[lid], red[lid + stride]);
        }
        workgroupBarrier();
    }
    if (live && lane == 0u) {
        var total = red[lid];
        if (pp.first == 0u) {
            total = norm_merge(norms[pp.norm_at + r], total);
        }
        norms[pp.norm_at + r] = total;
    }
}

// One element as the tiles read it: fields, class (PF_*).
struct Elem {
    f0: f32,
    f1: f32,
    f2: f32,
    cls: u32,
}

// The fields of a weight w (and its log l) for the measure.
fn fields_of(w: f32, l: f32, cls: u32) -> Elem {
    let wb = bitcast<u32>(w);
    if (MEASURE == M_JS) {
        if (is_zero_bits(wb)) {
            return Elem(0.0, 0.0, 0.0, cls);
        }
        let d = split_pow2(wb);
        var m = d.m;
        var e = f32(d.k);
        if (m > SQRT2) {
            m = m * 0.5;
            e = e + 1.0;
        }
        return Elem(w, e + 1.0, ln_acc(bitcast<u32>(m)), cls);
    }
    if (MEASURE == M_HELLINGER) {
        if (is_zero_bits(wb)) {
            return Elem(0.0, 0.0, 0.0, cls);
        }
        // √w from the bits (w may be subnormal): √(m 2^k), k made even
        let d = split_pow2(wb);
        let odd = (d.k & 1) != 0;
        let m = select(d.m, d.m * 2.0, odd);
        let k = select(d.k, d.k - 1, odd);
        return Elem(sqrt(m) * pow2(k / 2), 0.0, 0.0, cls);
    }
    return Elem(w, l, 0.0, cls);
}

// Element bits b of a row with normaliser n (ls: ln of the log forms' sum).
fn prep_elem(b: u32, n: Norm, ls: f32) -> Elem {
    if (pp.mode == RM_PROBS || pp.mode == RM_PROBS_DIV) {
        if (is_zero_bits(b)) {
            return Elem(0.0, 0.0, 0.0, PF_ZERO | PF_SMALL);
        }
        if (pp.mode == RM_PROBS) {
            let small = select(0u, PF_SMALL, (b & EXP_MASK) == 0u);
            return fields_of(bitcast<f32>(b), ln_acc(b), small);
        }
        // x / S as (m 2^(k - K)) / S', its log from the parts
        let d = split_pow2(b);
        let dk = d.k - i32(n.m);
        let w = d.m * pow2(dk) / n.s;
        let lr = ln_acc(bitcast<u32>(d.m / n.s));
        let l = fma(f32(dk), LN2_HI, fma(f32(dk), LN2_LO, lr));
        let small = select(0u, PF_SMALL, (bitcast<u32>(w) & EXP_MASK) == 0u);
        return fields_of(w, l, small);
    }
    if (b == NEG_INF_BITS) {
        return Elem(0.0, 0.0, 0.0, PF_ZERO | PF_SMALL);
    }
    var l = bitcast<f32>(b);
    if (pp.mode == RM_LOG_NORM) {
        // more than f32::MAX below the maximum: ln p does not fit f32
        if (n.m > 0.0 && l < n.m - F32_MAX) {
            return Elem(0.0, 0.0, 0.0, PF_FAR | PF_SMALL);
        }
        l = (l - n.m) - ls;
    }
    let w = exp_acc(l);
    let small = select(0u, PF_SMALL, (bitcast<u32>(w) & EXP_MASK) == 0u);
    return fields_of(w, l, small);
}

// Pass 2 over one k-chunk: each element's fields and masks into the region,
// the row's flags; the first k-chunk writes the row's status record. `tpr`
// threads per row; lane t takes the mask words t, t + tpr, ...
@compute @workgroup_size(PREP_WG)
fn prep_write(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lane = lid % pp.tpr;
    let slot = lid / pp.tpr;
    let r = (wid.x + wid.y * nwg.x) * (PREP_WG / pp.tpr) + slot;
    atomicStore(&row_flags[lid], 0u);
    workgroupBarrier();
    let live = r < pp.rows;
    var bad = false;
    if (live) {
        let n = norms[pp.norm_at + r];
        // the row's status: a bad column, else its sum or normaliser
        var code = key_code(vec2<u32>(n.col, n.code));
        var column = key_column(vec2<u32>(n.col, n.code));
        let is_q = pp.is_q != 0u;
        var sum = 0.0;
        var ls = 0.0;
        if (code == ST_OK) {
            if (pp.mode == RM_PROBS) {
                sum = select(0.0, unscale(n.s, i32(n.m)), n.seen != 0u);
                if (pp.check_sums != 0u && abs(sum - 1.0) > pp.tolerance) {
                    code = select(ST_P_SUM, ST_Q_SUM, is_q);
                }
            } else if (pp.mode == RM_LOG) {
                sum = select(0.0, n.s * exp_acc(n.m), n.seen != 0u);
                if (pp.check_sums != 0u && abs(sum - 1.0) > pp.tolerance) {
                    code = select(ST_P_SUM, ST_Q_SUM, is_q);
                }
            } else if (pp.mode == RM_PROBS_DIV) {
                sum = select(0.0, unscale(n.s, i32(n.m)), n.seen != 0u);
                if (n.seen == 0u) {
                    code = select(ST_P_ZERO_SUM, ST_Q_ZERO_SUM, is_q);
                }
            } else {
                if (n.seen == 0u) {
                    code = select(ST_P_ALL_MASKED, ST_Q_ALL_MASKED, is_q);
                } else {
                    ls = ln_acc(bitcast<u32>(n.s));
                    sum = n.m + ls;
                }
            }
            if (code != ST_OK) {
                column = COL_NONE;
            }
        }
        bad = code != ST_OK;
        if (pp.first != 0u && lane == 0u) {
            let value = select(0.0, bitcast<f32>(pp.nan_bits), bad);
            status[pp.status_at + r] = Record(value, select(sum, 0.0, is_q), select(0.0, sum, is_q), code, column, 0u);
        }
        let rr = pp.region_row0 + r;
        let base = pp.raw_lead + r * pp.raw_stride;
        var flags = 0u;
        for (var w = lane; w < pp.words; w = w + pp.tpr) {
            var nz = 0u;
            var zero = 0u;
            var normal = 0u;
            var far = 0u;
            let c_end = min(w * 32u + 32u, pp.cols);
            for (var c = w * 32u; c < c_end; c = c + 1u) {
                var e = Elem(0.0, 0.0, 0.0, 0u);
                if (!bad) {
                    e = prep_elem(raw_value(base + c), n, ls);
                }
                let at = c * pp.region_rows + rr;
                region[at] = bitcast<u32>(e.f0);
                if (FIELDS > 1u) {
                    region[pp.field_len + at] = bitcast<u32>(e.f1);
                }
                if (FIELDS > 2u) {
                    region[2u * pp.field_len + at] = bitcast<u32>(e.f2);
                }
                let bit = 1u << (c - w * 32u);
                nz = nz | select(bit, 0u, (e.cls & PF_ZERO) != 0u);
                zero = zero | select(0u, bit, (e.cls & PF_ZERO) != 0u);
                normal = normal | select(bit, 0u, (e.cls & PF_SMALL) != 0u);
                far = far | select(0u, bit, (e.cls & PF_FAR) != 0u);
                flags = flags | e.cls;
            }
            let mw = pp.mask_at + w * pp.region_rows + rr;
            let plane = pp.words * pp.region_rows;
            region[mw] = select(nz, 0u, bad);
            region[mw + plane] = select(zero, 0u, bad);
            region[mw + 2u * plane] = select(normal, 0u, bad);
            region[mw + 3u * plane] = select(far, 0u, bad);
        }
        atomicOr(&row_flags[slot], flags);
    }
    workgroupBarrier();
    if (live && lane == 0u) {
        let f = select(atomicLoad(&row_flags[slot]), PF_BAD, bad);
        region[pp.flags_at + pp.region_row0 + r] = f;
    }
}

// ==== tile: tiles

// The twin of src/gpu/pairwise.rs `TileParams`.
struct TileParams {
    m: u32,           // rows (of p) of this dispatch
    n: u32,           // columns (rows of q) of this dispatch
    kc: u32,          // columns of the k-chunk
    tiles_x: u32,     // tiles across n
    p_rows: u32,      // rows of p's region (field stride)
    q_rows: u32,
    p_row0: u32,      // region row of the dispatch's first p row
    q_row0: u32,
    p_field: u32,     // elements of one field in p's region
    q_field: u32,
    p_mask_at: u32,   // word of the masks in p's region
    q_mask_at: u32,
    p_flags_at: u32,
    q_flags_at: u32,
    words: u32,       // mask words per row (both regions: the same k-chunk)
    out_lead: u32,    // element of the dispatch's (0, 0) in the output binding
    out_stride: u32,  // elements between output rows
    gi0: u32,         // row of the matrix of the dispatch's (0, 0) ...
    gj0: u32,         // ... and its column (the diagonal of p against itself)
    first: u32,       // 1: the first k-chunk (no sums carried in)
    last: u32,        // 1: the last k-chunk (write the values)
    zero_diag: u32,   // 1: D[i, i] = 0
    scale: f32,       // the measure's sign or ½, over ln(base)
    inf_bits: u32,    // +inf, or -inf below base 1
    nan_bits: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read> preg: array<u32>;
@group(0) @binding(1) var<storage, read> qreg: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
// sums carried between k-chunks: (sum, compensation, zero-rule hit) per pair
@group(0) @binding(3) var<storage, read_write> carry: array<u32>;
@group(0) @binding(4) var<uniform> tp: TileParams;

var<workgroup> sp: array<f32, 1536>; // [field][k][row], FIELDS <= 3
var<workgroup> sq: array<f32, 1536>;

fn term(p0: f32, p1: f32, p2: f32, q0: f32, q1: f32, q2: f32) -> f32 {
    if (MEASURE == M_KL) {
        return p0 * (p1 - q1);
    }
    if (MEASURE == M_CROSS) {
        return p0 * q1;
    }
    if (MEASURE == M_HELLINGER) {
        let d = p0 - q0;
        return d * d;
    }
    if (MEASURE == M_TV) {
        return abs(p0 - q0);
    }
    // JS: ½ [p ln(2p / s) + q ln(2q / s)] (the ½ in `scale`); against itself,
    // the sides in an order fixed by their values
    var a0 = p0;
    var a1 = p1;
    var a2 = p2;
    var b0 = q0;
    var b1 = q1;
    var b2 = q2;
    if (SYM && q0 < p0) {
        a0 = q0;
        a1 = q1;
        a2 = q2;
        b0 = p0;
        b1 = p1;
        b2 = p2;
    }
    let s = a0 + b0;
    let sb = bitcast<u32>(s);
    // s = m 2^k, m in [√½, √2): the bits of √½ subtracted give k
    let ix = bitcast<i32>(sb) - 0x3f3504f3;
    let k = ix >> 23u;
    let ms = bitcast<f32>(bitcast<u32>(bitcast<i32>(sb) - (k << 23u)));
    let lm = log(ms);
    let ks = f32(k);
    let ta = a0 * ((a1 - ks) * LN2 + (a2 - lm));
    let tb = b0 * ((b1 - ks) * LN2 + (b2 - lm));
    // a sum below the normal range (or 0) leaves a term below 1e-37: dropped
    return select(ta + tb, 0.0, (sb & EXP_MASK) == 0u);
}

fn two_sum(s: ptr<function, f32>, c: ptr<function, f32>, x: f32) {
    let t = *s + x;
    let bp = t - *s;
    *c = *c + ((*s - (t - bp)) + (x - bp));
    *s = t;
}

fn any_and(ra: u32, pa: u32, rb: u32, qb: u32) -> bool {
    for (var w = 0u; w < tp.words; w = w + 1u) {
        let x = preg[pa + w * tp.p_rows + ra];
        let y = qreg[qb + w * tp.q_rows + rb];
        if ((x & y) != 0u) {
            return true;
        }
    }
    return false;
}

// Whether p row ra meets q row rb with p > 0 where q = 0 (or q far under a p
// of normal weight) in this k-chunk.
fn violates(ra: u32, rb: u32, pf: u32, qf: u32) -> bool {
    let pplane = tp.words * tp.p_rows;
    let qplane = tp.words * tp.q_rows;
    if ((qf & PF_ZERO) != 0u) {
        if ((pf & PF_ZERO) == 0u || any_and(ra, tp.p_mask_at, rb, tp.q_mask_at + qplane)) {
            return true;
        }
    }
    if ((qf & PF_FAR) != 0u) {
        if ((pf & PF_SMALL) == 0u || any_and(ra, tp.p_mask_at + 2u * pplane, rb, tp.q_mask_at + 3u * qplane)) {
            return true;
        }
    }
    return false;
}

@compute @workgroup_size(WG)
fn tile_main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = wid.x + wid.y * nwg.x;
    let i_base = (item / tp.tiles_x) * TILE;
    let j_base = (item % tp.tiles_x) * TILE;
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<f32, 16>;
    var s: array<f32, 16>;
    var c: array<f32, 16>;
    for (var t = 0u; t < 16u; t = t + 1u) {
        acc[t] = 0.0;
        s[t] = 0.0;
        c[t] = 0.0;
    }
    // workgroups past the last tile (a 2-D grid) only take part in the barriers
    let steps = (tp.kc + BK - 1u) / BK;
    for (var st = 0u; st < steps; st = st + 1u) {
        let k0 = st * BK;
        for (var e = lid; e < TILE * BK; e = e + WG) {
            let kk = e / TILE;
            let rr = e % TILE;
            let k = k0 + kk;
            let pin = k < tp.kc && i_base + rr < tp.m;
            let qin = k < tp.kc && j_base + rr < tp.n;
            let pa = k * tp.p_rows + tp.p_row0 + i_base + rr;
            let qa = k * tp.q_rows + tp.q_row0 + j_base + rr;
            for (var f = 0u; f < FIELDS; f = f + 1u) {
                var pv = 0.0;
                var qv = 0.0;
                if (pin) {
                    pv = bitcast<f32>(preg[f * tp.p_field + pa]);
                }
                if (qin) {
                    qv = bitcast<f32>(qreg[f * tp.q_field + qa]);
                }
                sp[(f * BK + kk) * TILE + rr] = pv;
                sq[(f * BK + kk) * TILE + rr] = qv;
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            var pv: array<vec3<f32>, 4>;
            var qv: array<vec3<f32>, 4>;
            for (var a = 0u; a < 4u; a = a + 1u) {
                let pr = ty * 4u + a;
                let qr = tx * 4u + a;
                pv[a] = vec3<f32>(sp[kk * TILE + pr], 0.0, 0.0);
                qv[a] = vec3<f32>(sq[kk * TILE + qr], 0.0, 0.0);
                if (FIELDS > 1u) {
                    pv[a].y = sp[(BK + kk) * TILE + pr];
                    qv[a].y = sq[(BK + kk) * TILE + qr];
                }
                if (FIELDS > 2u) {
                    pv[a].z = sp[(2u * BK + kk) * TILE + pr];
                    qv[a].z = sq[(2u * BK + kk) * TILE + qr];
                }
            }
            for (var a = 0u; a < 4u; a = a + 1u) {
                for (var b = 0u; b < 4u; b = b + 1u) {
                    acc[a * 4u + b] = acc[a * 4u + b] + term(pv[a].x, pv[a].y, pv[a].z, qv[b].x, qv[b].y, qv[b].z);
                }
            }
        }
        workgroupBarrier();
        // runs of 64 columns in f32, then into the compensated sums
        if (st % 8u == 7u || st + 1u == steps) {
            for (var t = 0u; t < 16u; t = t + 1u) {
                // (through locals: naga's SPIR-V output mishandles a pointer
                // to an array element passed to a function)
                var st_s = s[t];
                var st_c = c[t];
                two_sum(&st_s, &st_c, acc[t]);
                s[t] = st_s;
                c[t] = st_c;
                acc[t] = 0.0;
            }
        }
    }
    for (var a = 0u; a < 4u; a = a + 1u) {
        for (var b = 0u; b < 4u; b = b + 1u) {
            epilogue(i_base + ty * 4u + a, j_base + tx * 4u + b, s[a * 4u + b], c[a * 4u + b]);
        }
    }
}

// A pair's sum (and its compensation) of this k-chunk: carried to the next
// chunk, or (last chunk) the zero rules, the scale and the output.
fn epilogue(i: u32, j: u32, sum_in: f32, comp_in: f32) {
    if (i >= tp.m || j >= tp.n) {
        return;
    }
    let ra = tp.p_row0 + i;
    let rb = tp.q_row0 + j;
    let pf = preg[tp.p_flags_at + ra];
    let qf = qreg[tp.q_flags_at + rb];
    var hit = 0u;
    if ((MEASURE == M_KL || MEASURE == M_CROSS) && (qf & (PF_ZERO | PF_FAR)) != 0u) {
        hit = select(0u, 1u, violates(ra, rb, pf, qf));
    }
    var sum = sum_in;
    var comp = comp_in;
    let at = 3u * (i * tp.n + j);
    if (tp.first == 0u) {
        var ps = bitcast<f32>(carry[at]);
        var pc = bitcast<f32>(carry[at + 1u]);
        two_sum(&ps, &pc, sum);
        sum = ps;
        comp = pc + comp;
        hit = hit | carry[at + 2u];
    }
    if (tp.last == 0u) {
        carry[at] = bitcast<u32>(sum);
        carry[at + 1u] = bitcast<u32>(comp);
        carry[at + 2u] = hit;
        return;
    }
    var v = positive_zero((sum + comp) * tp.scale);
    if (hit != 0u) {
        v = bitcast<f32>(tp.inf_bits);
    }
    if (tp.zero_diag != 0u && tp.gi0 + i == tp.gj0 + j) {
        v = 0.0;
    }
    if (((pf | qf) & PF_BAD) != 0u) {
        v = bitcast<f32>(tp.nan_bits);
    }
    out[tp.out_lead + i * tp.out_stride + j] = v;
}

var<workgroup> red: array<f32, 1024>;

// Small matrices (at most 16 x 16): 4 x 4 pairs per workgroup, the columns
// split over its threads (column lid, lid + WG, ...), the 256 partial sums of
// each pair added by a tree. A tile would keep 240 of its 256 threads idle
// on such shapes, and run long rows on one thread each.
@compute @workgroup_size(WG)
fn thin_main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = wid.x + wid.y * nwg.x;
    let i_base = (item / tp.tiles_x) * 4u;
    let j_base = (item % tp.tiles_x) * 4u;
    var acc: array<f32, 16>;
    for (var t = 0u; t < 16u; t = t + 1u) {
        acc[t] = 0.0;
    }
    for (var k = lid; k < tp.kc; k = k + WG) {
        var pv: array<vec3<f32>, 4>;
        var qv: array<vec3<f32>, 4>;
        for (var a = 0u; a < 4u; a = a + 1u) {
            pv[a] = vec3<f32>(0.0);
            qv[a] = vec3<f32>(0.0);
            if (i_base + a < tp.m) {
                let pa = k * tp.p_rows + tp.p_row0 + i_base + a;
                for (var f = 0u; f < FIELDS; f = f + 1u) {
                    pv[a][f] = bitcast<f32>(preg[f * tp.p_field + pa]);
                }
            }
            if (j_base + a < tp.n) {
                let qa = k * tp.q_rows + tp.q_row0 + j_base + a;
                for (var f = 0u; f < FIELDS; f = f + 1u) {
                    qv[a][f] = bitcast<f32>(qreg[f * tp.q_field + qa]);
                }
            }
        }
        for (var a = 0u; a < 4u; a = a + 1u) {
            for (var b = 0u; b < 4u; b = b + 1u) {
                acc[a * 4u + b] = acc[a * 4u + b] + term(pv[a].x, pv[a].y, pv[a].z, qv[b].x, qv[b].y, qv[b].z);
            }
        }
    }
    var tot: array<f32, 16>;
    for (var round = 0u; round < 4u; round = round + 1u) {
        for (var u = 0u; u < 4u; u = u + 1u) {
            red[u * WG + lid] = acc[round * 4u + u];
        }
        workgroupBarrier();
        for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
            if (lid < stride) {
                for (var u = 0u; u < 4u; u = u + 1u) {
                    red[u * WG + lid] = red[u * WG + lid] + red[u * WG + lid + stride];
                }
            }
            workgroupBarrier();
        }
        for (var u = 0u; u < 4u; u = u + 1u) {
            tot[round * 4u + u] = red[u * WG];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        for (var a = 0u; a < 4u; a = a + 1u) {
            for (var b = 0u; b < 4u; b = b + 1u) {
                epilogue(i_base + a, j_base + b, tot[a * 4u + b], 0.0);
            }
        }
    }
}

// ==== topk: nearest k

// The twin of src/gpu/pairwise.rs `TopParams`.
struct TopParams {
    rows: u32,        // rows of the band
    cols: u32,        // columns of the band
    col0: u32,        // the band's first column (index of its candidate 0)
    k: u32,
    merge: u32,       // 1: merge with the lists already in the outputs
    band_lead: u32,   // element of (0, 0) in the band binding
    band_stride: u32,
    out_lead: u32,    // element of row 0's list in the outputs
    row0: u32,        // matrix row of band row 0 (self exclusion)
    exclude_self: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> band: array<f32>;
@group(0) @binding(1) var<storage, read_write> top_values: array<f32>;
@group(0) @binding(2) var<storage, read_write> top_indices: array<u32>;
@group(0) @binding(3) var<uniform> kp: TopParams;

// entries [0, 256): the list, sorted; [256, 512): candidates below its last
// (512 = 2 TOPK_WG)
var<workgroup> keys: array<u32, 512>;
var<workgroup> idxs: array<u32, 512>;
var<workgroup> found: atomic<u32>;
var<workgroup> found_plain: u32;
var<workgroup> bound: vec2<u32>;

// f32 bits as an unsigned key of the same order (-inf first, +inf last).
fn to_key(b: u32) -> u32 {
    return select(b | SIGN_BIT, ~b, (b & SIGN_BIT) != 0u);
}

fn from_key(k: u32) -> u32 {
    return select(~k, k & ABS_MASK, (k & SIGN_BIT) != 0u);
}

fn key_before(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {
    return ka < kb || (ka == kb && ia < ib);
}

// Sorts the 512 entries by (key, index): a bitonic network, 256 threads.
fn sort512(lid: u32) {
    for (var size = 2u; size <= 512u; size = size * 2u) {
        for (var stride = size / 2u; stride > 0u; stride = stride / 2u) {
            let i = 2u * lid - (lid & (stride - 1u));
            let j = i + stride;
            let up = (i & size) == 0u;
            let ki = keys[i];
            let kj = keys[j];
            let ii = idxs[i];
            let ij = idxs[j];
            let swap = select(key_before(ki, ii, kj, ij), key_before(kj, ij, ki, ii), up);
            if (swap) {
                keys[i] = kj;
                keys[j] = ki;
                idxs[i] = ij;
                idxs[j] = ii;
            }
            workgroupBarrier();
        }
    }
}

@compute @workgroup_size(TOPK_WG)
fn topk_main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = min(wid.x + wid.y * nwg.x, kp.rows - 1u);
    let live = wid.x + wid.y * nwg.x < kp.rows;
    let o = kp.out_lead + r * kp.k;
    keys[lid] = 0xffffffffu;
    idxs[lid] = 0xffffffffu;
    keys[TOPK_WG + lid] = 0xffffffffu;
    idxs[TOPK_WG + lid] = 0xffffffffu;
    if (kp.merge != 0u && lid < kp.k) {
        keys[lid] = to_key(bitcast<u32>(top_values[o + lid]));
        idxs[lid] = top_indices[o + lid];
    }
    if (lid == 0u) {
        atomicStore(&found, 0u);
    }
    workgroupBarrier();
    if (lid == 0u) {
        bound = vec2<u32>(keys[kp.k - 1u], idxs[kp.k - 1u]);
    }
    workgroupBarrier();
    for (var c0 = 0u; c0 < kp.cols; c0 = c0 + TOPK_WG) {
        let j = c0 + lid;
        let gj = kp.col0 + j;
        let own = kp.exclude_self != 0u && gj == kp.row0 + r;
        if (j < kp.cols && !own) {
            let key = to_key(bitcast<u32>(band[kp.band_lead + r * kp.band_stride + j]));
            if (key_before(key, gj, bound.x, bound.y)) {
                let slot = atomicAdd(&found, 1u);
                keys[TOPK_WG + slot] = key;
                idxs[TOPK_WG + slot] = gj;
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            found_plain = atomicLoad(&found);
            atomicStore(&found, 0u);
        }
        let n = workgroupUniformLoad(&found_plain);
        if (n > 0u) {
            sort512(lid);
            keys[TOPK_WG + lid] = 0xffffffffu;
            idxs[TOPK_WG + lid] = 0xffffffffu;
            workgroupBarrier();
            if (lid == 0u) {
                bound = vec2<u32>(keys[kp.k - 1u], idxs[kp.k - 1u]);
            }
            workgroupBarrier();
        }
    }
    if (live && lid < kp.k) {
        top_values[o + lid] = bitcast<f32>(from_key(keys[lid]));
        top_indices[o + lid] = idxs[lid];
    }
}
