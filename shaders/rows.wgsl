// Per-row measures: one term-and-reduce kernel specialised per measure and
// input form with override constants. Appended to common.wgsl.
//
// Every row is reduced into a `State`. For probabilities (and log-probabilities
// taken as given) the state holds plain sums: sa = Σ w, u = Σ w ln p, v = Σ w ln q,
// sb = Σ q, t = Σ w (ln p - ln q) for KL (one sum, so that the logs cancel
// per element) or Σ JS terms, with w = p. For logits (and log-probabilities being
// renormalised) it is the online log-sum-exp form, relative to running maxima so
// that lse and Σ softmax(a)·a are never formed: w = e^(a - ma), sa = Σ w,
// u = Σ w (a - ma), sb = Σ e^(b - mb), v = Σ w (b - mb), t = u - v (KL). States merge
// associatively, so a row is read once whatever the plan: threads, then a tree in
// workgroup memory, then (long rows) partial states merged by `merge_main`.
//
// src/cpu/kernel.rs is the CPU twin of this file: tests/gpu_vs_cpu.rs, the
// SciPy references and tests/fuzz.rs hold the two to the same answers.

// One of the generated M_* codes: a measure (src/measure.rs's table; a negative
// log-likelihood is the cross-entropy of P_FORM == F_TARGETS), or M_SUMS, the
// row normalisers of the first pass of the two-pass plan. The measure's own
// arithmetic is in shaders/measures.wgsl; Q_ZERO_INF and T_LOG_RATIO, its
// properties, are generated from the same table.
override MEASURE: u32 = 0u;
// One of the generated F_* codes: probs, log-probs, logits, class targets
// (NLL: p is the smoothed one-hot).
override P_FORM: u32 = 0u;
override Q_FORM: u32 = 0u;
override HAS_Q: bool = true;
// Online (running-max) accumulation of p / q: logits, or log-probs being
// renormalised in one pass. Never set together with NORMALIZED.
override P_ONLINE: bool = false;
override Q_ONLINE: bool = false;
// Second pass of the two-pass plan: inputs are divided by the row normalisers
// that the first pass left at partials[norm_at + row].
override NORMALIZED: bool = false;
// Which operands the two-pass plan normalises (set in both passes): logits,
// renormalised log-probabilities, renormalised probabilities. The others are
// used as given and checked as usual, even next to one that is normalised.
override P_NORM: bool = false;
override Q_NORM: bool = false;
// Normalization::Renormalize: log-probabilities above 0 are then allowed.
override RENORM: bool = false;
// Check row sums against 1 (Normalization::Validate).
override CHECK_SUMS: bool = false;


const FL_Q_ZERO_HIT: u32 = 1u; // a term with p > 0 and q = 0: the value is +inf
const FL_P_SEEN: u32 = 2u;     // the online p state holds an element
const FL_Q_SEEN: u32 = 4u;     // the online q state holds an element

// Probabilities being renormalised are summed in the first pass relative to a
// power of two (the running largest exponent, kept in ma / mb): each element is
// m * 2^(k - K), exact, so that sums of subnormal counts and sums beyond the f32
// range are formed like any other (the result is the plain sum times 2^-K, bit
// for bit, wherever the plain sum is in range).
override P_SCALED: bool = MEASURE == M_SUMS && P_NORM && P_FORM == F_PROBS;
override Q_SCALED: bool = MEASURE == M_SUMS && Q_NORM && Q_FORM == F_PROBS;

// The twin of src/gpu/params.rs `RowParams` (layouts compared by gpu::wgsl tests).
struct Params {
    rows: u32,            // rows of the call
    cols: u32,            // columns of the call
    row0: u32,            // first row of this chunk
    col0: u32,            // first column of this chunk
    chunk_rows: u32,
    chunk_cols: u32,
    threads_per_row: u32, // T: a power of two; WG / T rows per workgroup
    blocks_per_row: u32,  // column blocks per row in the whole call (partials stride)
    chunk_blocks: u32,    // column blocks per row in this chunk
    item_count: u32,      // workgroups with work in this dispatch
    p_lead: u32,          // element index of (row0, col0) in p's binding
    q_lead: u32,
    p_stride: u32,        // elements between rows of p (0: one broadcast row)
    q_stride: u32,
    norm_at: u32,         // partials index of row 0's normaliser state
    tolerance: f32,
    inv_ln_base: f32,
    ignore_bits: u32,     // NLL: target value to ignore (as u32 bits)
    has_ignore: u32,
    smoothing: f32,       // NLL label smoothing
    weights_at: u32,      // NLL: index of class weights in the targets binding; 0xffffffff: none
    inf_bits: u32,        // +inf (-inf for a base below 1) and NaN as bits: WGSL has no literal for them
    nan_bits: u32,
    targets_signed: u32,  // NLL: 1 when the targets are i32 (a negative one is reported as such)
}

struct State {
    key: vec2<u32>, // the first problem: (column, code); first for its alignment
    ma: f32,
    sa: f32,
    u: f32,
    mb: f32,
    sb: f32,
    v: f32,
    t: f32,
    flags: u32,
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

// The inputs p_buf and q_buf (bindings 0 and 1) and their loads p_word(i),
// q_word(i) (value i) and p_quad(i), q_quad(i) (values 4i .. 4i + 3) are
// written above this file by src/gpu/wgsl.rs in two variants: scalar
// (array<u32>) and vec4 (array<vec4<u32>>, VEC = 4), which the planner
// chooses when every row starts on a 16-byte boundary.
@group(0) @binding(2) var<storage, read_write> partials: array<State>;
@group(0) @binding(3) var<storage, read_write> records: array<Record>;
@group(0) @binding(4) var<uniform> params: Params;

var<workgroup> shared_states: array<State, WG>;

fn empty_state() -> State {
    return State(key_none(), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0u);
}

// Rescales an online p state to the maximum m (>= st.ma when seen). Weights of
// elements more than 128 below m are 0 in f32: the state is then emptied, so that
// no shift beyond the f32 range is formed (logit spreads may exceed f32::MAX).
fn rescale_p(st: ptr<function, State>, m: f32) {
    let seen = ((*st).flags & FL_P_SEEN) != 0u;
    let far = (*st).ma < m - 128.0;
    let ma = max((*st).ma, m - 128.0);
    let scale = select(0.0, select(exp(ma - m), 0.0, far), seen);
    let shift = select(0.0, select(m - ma, 0.0, far), seen);
    (*st).sa = (*st).sa * scale;
    (*st).u = (*st).u * scale - shift * (*st).sa;
    (*st).v = (*st).v * scale;
    if (T_LOG_RATIO) {
        (*st).t = (*st).t * scale - shift * (*st).sa;
    }
    (*st).ma = m;
}

// Rescales an online q state to the maximum m: sb scales, v loses shift * sa.
// When m is more than f32::MAX above mb, the log-probabilities of the elements so
// far do not fit f32 (see `Elem::far`: +inf where the weights of p are not
// negligible), and no shift beyond the f32 range is formed.
fn rescale_q(st: ptr<function, State>, m: f32) {
    let seen = ((*st).flags & FL_Q_SEEN) != 0u;
    let far = seen && m > 0.0 && (*st).mb < m - F32_MAX;
    // (arguments kept in range: the far case is selected away)
    let scale = select(0.0, exp(max(select((*st).mb, m, far) - m, -128.0)), seen && !far);
    let shift = select(0.0, m - max((*st).mb, m - F32_MAX), seen && !far);
    (*st).sb = (*st).sb * scale;
    (*st).v = select((*st).v - shift * (*st).sa, 0.0, far);
    if (T_LOG_RATIO) {
        (*st).t = select((*st).t + shift * (*st).sa, 0.0, far);
    }
    if (far && (*st).sa >= F32_MIN_POSITIVE) {
        (*st).flags = (*st).flags | FL_Q_ZERO_HIT;
    }
    (*st).mb = m;
}

// Rescales a power-of-two-relative sum (P_SCALED / Q_SCALED) from exponent k to
// K >= k: exact (a power of two), or 0 more than 126 octaves below.
fn rescale_pow2(s: f32, k: f32, big_k: f32) -> f32 {
    return s * pow2(i32(k) - i32(big_k));
}

fn merge(a_in: State, b_in: State) -> State {
    var a = a_in;
    var b = b_in;
    if (P_ONLINE) {
        let a_seen = (a.flags & FL_P_SEEN) != 0u;
        let b_seen = (b.flags & FL_P_SEEN) != 0u;
        let m = select(select(a.ma, b.ma, b_seen), select(a.ma, max(a.ma, b.ma), b_seen), a_seen);
        rescale_p(&a, m);
        rescale_p(&b, m);
    }
    if (Q_ONLINE) {
        let a_seen = (a.flags & FL_Q_SEEN) != 0u;
        let b_seen = (b.flags & FL_Q_SEEN) != 0u;
        let m = select(select(a.mb, b.mb, b_seen), select(a.mb, max(a.mb, b.mb), b_seen), a_seen);
        rescale_q(&a, m);
        rescale_q(&b, m);
    }
    if (P_SCALED) {
        let a_seen = (a.flags & FL_P_SEEN) != 0u;
        let b_seen = (b.flags & FL_P_SEEN) != 0u;
        let m = select(select(a.ma, b.ma, b_seen), select(a.ma, max(a.ma, b.ma), b_seen), a_seen);
        a.sa = rescale_pow2(a.sa, a.ma, m);
        b.sa = rescale_pow2(b.sa, b.ma, m);
        a.ma = m;
    }
    if (Q_SCALED) {
        let a_seen = (a.flags & FL_Q_SEEN) != 0u;
        let b_seen = (b.flags & FL_Q_SEEN) != 0u;
        let m = select(select(a.mb, b.mb, b_seen), select(a.mb, max(a.mb, b.mb), b_seen), a_seen);
        a.sb = rescale_pow2(a.sb, a.mb, m);
        b.sb = rescale_pow2(b.sb, b.mb, m);
        a.mb = m;
    }
    return State(key_min(a.key, b.key), a.ma, a.sa + b.sa, a.u + b.u, a.mb, a.sb + b.sb,
                 a.v + b.v, a.t + b.t, a.flags | b.flags);
}

// Normaliser of one operand for the second pass: for probabilities the row sum
// relative to 2^m (divide the element relative to 2^m by it), for log forms the
// pair (max, ln s) (subtract both, never their sum).
struct Norm {
    m: f32,
    ls: f32,
    s: f32,
}

fn norm_p(n: State) -> Norm {
    return Norm(n.ma, log(max(n.sa, 1.0)), n.sa);
}

fn norm_q(n: State) -> Norm {
    return Norm(n.mb, log(max(n.sb, 1.0)), n.sb);
}

// One element of one operand as the terms need it.
struct Elem {
    zero: bool, // probability 0: the term vanishes whatever the other side is
    w: f32,     // the weight (p itself, or e^(x - m) in the online form)
    l: f32,     // ln p (relative to the running max in the online form)
    // a log form more than f32::MAX below its maximum: ln p does not fit f32 (w
    // and l are 0). As q under a p of normal weight the term is +inf, under a
    // negligible one (below f32::MIN_POSITIVE) 0.
    far: bool,
}

// Classifies a raw value of form `form`; returns a status code or ST_OK.
fn check_value(b: u32, form: u32, is_p: bool) -> u32 {
    let base = select(ST_Q_NAN, ST_P_NAN, is_p);
    if (is_nan_bits(b)) {
        return base;
    }
    if (form == F_PROBS) {
        if (is_inf_bits(b)) {
            return base + 2u;
        }
        if ((b & SIGN_BIT) != 0u && !is_zero_bits(b)) {
            return base + 1u;
        }
        return ST_OK;
    }
    // log-probs and logits: +inf is an error, -inf is probability 0
    if (b == POS_INF_BITS) {
        return base + 2u;
    }
    // log-probabilities above 0 are an error unless the row is being renormalised
    if (form == F_LOGPROBS && !RENORM && (b & SIGN_BIT) == 0u && !is_zero_bits(b)) {
        return base + 3u;
    }
    return ST_OK;
}

// An element in the plain (non-online) form; `norm`: divided by the row
// normaliser `n` (second pass). `is_p`: the operand is p (a log-probability
// below -f32::MAX then has term 0; as q it counts as a zero probability).
fn plain_elem(b: u32, form: u32, n: Norm, norm: bool, is_p: bool) -> Elem {
    if (form == F_PROBS) {
        if (!norm) {
            let zero = is_zero_bits(b);
            let x = bitcast<f32>(b);
            return Elem(zero, select(x, 0.0, zero), select(ln_bits(b), 0.0, zero), false);
        }
        // x / S as (m * 2^(k - K)) / S', with the zero decided from x's bits: a
        // quotient that is subnormal (or flushed) keeps an exact log from the parts
        let zero = is_zero_bits(b);
        let d = split_pow2(b);
        let dk = d.k - i32(n.m);
        let x = d.m * pow2(dk) / n.s;
        let xb = bitcast<u32>(x);
        let l = select(log(d.m / n.s) + f32(dk) * LN2, ln_bits(xb), (xb & EXP_MASK) != 0u);
        return Elem(zero, select(x, 0.0, zero), select(l, 0.0, zero), false);
    }
    // log-probs (as given) or any log form in the second pass
    let zero = b == NEG_INF_BITS;
    var l = bitcast<f32>(select(b, 0u, zero));
    if (norm) {
        if (n.m > 0.0 && l < n.m - F32_MAX) {
            return Elem(false, 0.0, 0.0, !is_p);
        }
        l = (l - n.m) - n.ls;
    }
    return Elem(zero, select(exp_neg(l), 0.0, zero), select(l, 0.0, zero), false);
}

// p of a negative log-likelihood at column `col`: the smoothed, weighted
// one-hot of the row's target, from the row's constants (no divide here).
fn nll_weight(col: u32, ctx: RowCtx) -> f32 {
    var ws = 0.0;
    if (ctx.smoothed) {
        var wc = 1.0;
        if (params.weights_at != 0xffffffffu) {
            wc = bitcast<f32>(p_word(params.weights_at + col));
        }
        ws = wc * ctx.w_smooth;
    }
    return ws + select(0.0, ctx.w_hot, col == ctx.tgt);
}

// What a row's elements share: its target (NLL) and its normalisers (the
// second pass of the two-pass plan), read once per row.
struct RowCtx {
    row: u32,
    tgt: u32,
    // NLL: the target's weight (1 - smoothing) w_t (0 for an ignored row) and
    // the smoothing's weight per class before its class weight, smoothing /
    // cols (taken where `smoothed`: smoothing > 0 and the row is not ignored)
    w_hot: f32,
    w_smooth: f32,
    smoothed: bool,
    np: Norm,
    nq: Norm,
}

fn row_ctx(row: u32) -> RowCtx {
    var c: RowCtx;
    c.row = row;
    c.tgt = 0u;
    c.w_hot = 0.0;
    c.w_smooth = 0.0;
    c.smoothed = false;
    if (P_FORM == F_TARGETS) {
        c.tgt = p_word(row);
        let ignored = params.has_ignore != 0u && c.tgt == params.ignore_bits;
        var wt = 1.0;
        if (params.weights_at != 0xffffffffu) {
            wt = bitcast<f32>(p_word(params.weights_at + min(c.tgt, params.cols - 1u)));
        }
        let eps = params.smoothing;
        c.w_hot = select((1.0 - eps) * wt, 0.0, ignored);
        c.w_smooth = eps / f32(params.cols);
        c.smoothed = !ignored && eps != 0.0;
    }
    c.np = Norm(0.0, 0.0, 1.0);
    c.nq = Norm(0.0, 0.0, 1.0);
    if (NORMALIZED) {
        let n = partials[params.norm_at + row];
        c.np = norm_p(n);
        c.nq = norm_q(n);
    }
    return c;
}

// Which of the first n values of an operand's block enter its running sum
// (shaders/common.wgsl `block_max`): not bad (check_value) and not probability
// 0 (-inf in log forms, zero bits for probabilities).
fn block_keep(b4: vec4<u32>, n: u32, form: u32, is_p: bool, scaled: bool) -> vec4<bool> {
    var keep = vec4<bool>(false);
    for (var j = 0u; j < n; j = j + 1u) {
        let b = b4[j];
        let zero = select(b == NEG_INF_BITS, is_zero_bits(b), scaled);
        keep[j] = !zero && check_value(b, form, is_p) == ST_OK;
    }
    return keep;
}

// Raises an operand's running maximum to its block's largest value before
// the block's elements are added (the one place where online and scaled
// states are rescaled while reading; `merge` rescales when states meet).
fn open_block(st: ptr<function, State>, b4: vec4<u32>, n: u32, is_p: bool) {
    let scaled = select(Q_SCALED, P_SCALED, is_p);
    let keep = block_keep(b4, n, select(Q_FORM, P_FORM, is_p), is_p, scaled);
    let bm = block_max(b4, keep, scaled);
    if (!bm.found) {
        return;
    }
    let flag = select(FL_Q_SEEN, FL_P_SEEN, is_p);
    let seen = ((*st).flags & flag) != 0u;
    if (block_raises(bm, seen, select((*st).mb, (*st).ma, is_p))) {
        if (scaled && is_p) {
            (*st).sa = rescale_pow2((*st).sa, (*st).ma, bm.m);
            (*st).ma = bm.m;
        } else if (scaled) {
            (*st).sb = rescale_pow2((*st).sb, (*st).mb, bm.m);
            (*st).mb = bm.m;
        } else if (is_p) {
            rescale_p(st, bm.m);
        } else {
            rescale_q(st, bm.m);
        }
    }
    (*st).flags = (*st).flags | flag;
}

// Adds the first n values of a block (column col + j * step for value j) to
// the state: the running maxima first (`open_block`), then each element.
fn accumulate_block(st: ptr<function, State>, ctx: RowCtx, col: u32, step: u32,
                    p4: vec4<u32>, q4: vec4<u32>, n: u32) {
    if ((P_ONLINE || P_SCALED) && P_FORM != F_TARGETS) {
        open_block(st, p4, n, true);
    }
    if (HAS_Q && (Q_ONLINE || Q_SCALED)) {
        open_block(st, q4, n, false);
    }
    for (var j = 0u; j < n; j = j + 1u) {
        accumulate(st, ctx, col + j * step, p4[j], q4[j]);
    }
}

// Adds the element at column `col` of row `ctx.row`, the values of p and q
// given by their bits (pb is not read for class targets, qb not without q),
// to the state, whose running maxima already hold the element's block
// (`accumulate_block`).
fn accumulate(st: ptr<function, State>, ctx: RowCtx, col: u32, pb: u32, qb: u32) {
    // ---- p side
    var pe = Elem(true, 0.0, 0.0, false);
    if (P_FORM == F_TARGETS) {
        let w = nll_weight(col, ctx);
        pe = Elem(w == 0.0, w, 0.0, false);
    } else {
        let code = check_value(pb, P_FORM, true);
        if (code != ST_OK) {
            (*st).key = key_min((*st).key, vec2<u32>(col, code));
            return;
        }
        if (P_ONLINE) {
            let masked = pb == NEG_INF_BITS;
            if (!masked) {
                let x = bitcast<f32>(pb);
                // far below the maximum the weight is 0 in f32 (and x - ma may
                // not fit f32): term 0, but still p > 0 for the zero rules
                let far = x < (*st).ma - 128.0;
                let l = select(max(x, (*st).ma - 128.0) - (*st).ma, 0.0, far);
                pe = Elem(false, select(exp(l), 0.0, far), l, false);
            }
        } else if (P_SCALED) {
            pe = Elem(is_zero_bits(pb), 0.0, 0.0, false);
            if (!pe.zero) {
                let d = split_pow2(pb);
                pe.w = d.m * pow2(d.k - i32((*st).ma));
            }
        } else {
            pe = plain_elem(pb, P_FORM, ctx.np, NORMALIZED && P_NORM, true);
        }
    }
    // ---- q side
    var qe = Elem(true, 0.0, 0.0, false);
    if (HAS_Q) {
        let qcode = check_value(qb, Q_FORM, false);
        if (qcode != ST_OK) {
            (*st).key = key_min((*st).key, vec2<u32>(col, qcode));
            return;
        }
        if (Q_ONLINE) {
            let masked = qb == NEG_INF_BITS;
            if (!masked) {
                let y = bitcast<f32>(qb);
                // a log-probability below -f32::MAX does not fit f32: see `Elem::far`
                if ((*st).mb > 0.0 && y < (*st).mb - F32_MAX) {
                    qe = Elem(false, 0.0, 0.0, true);
                } else {
                    let l = y - (*st).mb;
                    qe = Elem(false, exp_neg(l), l, false);
                }
            }
        } else if (Q_SCALED) {
            qe = Elem(is_zero_bits(qb), 0.0, 0.0, false);
            if (!qe.zero) {
                let d = split_pow2(qb);
                qe.w = d.m * pow2(d.k - i32((*st).mb));
            }
        } else {
            qe = plain_elem(qb, Q_FORM, ctx.nq, NORMALIZED && Q_NORM, false);
        }
        (*st).sb = (*st).sb + qe.w;
    }
    if (MEASURE == M_SUMS) {
        // first pass: the row sums (sb above)
        (*st).sa = (*st).sa + pe.w;
    } else {
        // the measure's own terms (shaders/measures.wgsl)
        add_terms(st, pe, qe);
    }
}

// Turns a row's state into its record (or, in the first pass, its normaliser).
fn finalize(row: u32, st: State) {
    var key = st.key;
    let p_online = P_ONLINE;
    let q_online = Q_ONLINE;
    if (MEASURE == M_SUMS) {
        // First pass: only a row with no non-zero element cannot be normalised.
        if (P_NORM && (st.flags & FL_P_SEEN) == 0u) {
            key = key_min(key, vec2<u32>(COL_NONE, select(ST_P_ZERO_SUM, ST_P_ALL_MASKED, p_online)));
        }
        if (HAS_Q && Q_NORM && (st.flags & FL_Q_SEEN) == 0u) {
            key = key_min(key, vec2<u32>(COL_NONE, select(ST_Q_ZERO_SUM, ST_Q_ALL_MASKED, q_online)));
        }
        partials[params.norm_at + row] = st;
        // the records keep what the caller gave: the sum, or the log-sum-exp
        var first_p = select(st.sa, st.ma + log(max(st.sa, 1.0)), p_online);
        var first_q = select(st.sb, st.mb + log(max(st.sb, 1.0)), q_online);
        if (P_SCALED) {
            first_p = unscale(st.sa, i32(st.ma));
        }
        if (Q_SCALED) {
            first_q = unscale(st.sb, i32(st.mb));
        }
        records[row] = Record(0.0, first_p, first_q, key_code(key), key_column(key), 0u);
        return;
    }
    // Online operands must have seen an element (a row of all -inf is an error).
    if (p_online && P_FORM != F_TARGETS && (st.flags & FL_P_SEEN) == 0u) {
        key = key_min(key, vec2<u32>(COL_NONE, ST_P_ALL_MASKED));
    }
    if (HAS_Q && q_online && (st.flags & FL_Q_SEEN) == 0u) {
        key = key_min(key, vec2<u32>(COL_NONE, ST_Q_ALL_MASKED));
    }
    if (CHECK_SUMS) {
        if (P_FORM != F_TARGETS && !p_online && !P_NORM && abs(st.sa - 1.0) > params.tolerance) {
            key = key_min(key, vec2<u32>(COL_NONE, ST_P_SUM));
        }
        if (HAS_Q && !q_online && !Q_NORM && abs(st.sb - 1.0) > params.tolerance) {
            key = key_min(key, vec2<u32>(COL_NONE, ST_Q_SUM));
        }
    }
    var first = Record(0.0, 0.0, 0.0, ST_OK, 0u, 0u);
    if (NORMALIZED) {
        // a problem found by the first pass wins
        first = records[row];
        if (first.code != ST_OK) {
            key = vec2<u32>(first.column, first.code);
        }
    }
    var index = 0u;
    if (P_FORM == F_TARGETS) {
        // an out-of-range target wins over the values' problems, as on the host
        // path (which checks targets first); its bits go to `index`
        let t = p_word(row);
        let ignored = params.has_ignore != 0u && t == params.ignore_bits;
        if (!ignored && t >= params.cols) {
            let negative = params.targets_signed != 0u && (t & SIGN_BIT) != 0u;
            key = vec2<u32>(COL_NONE, select(ST_TARGET, ST_TARGET_NEGATIVE, negative));
            index = t;
        }
    }
    let status = key_code(key);
    let lb = select(0.0, log(max(st.sb, 1.0)), q_online);
    let la = select(0.0, log(max(st.sa, 1.0)), p_online);
    let inv_sa = select(1.0, 1.0 / max(st.sa, 1.0), p_online);
    var value = 0.0;
    var aux_p = select(select(st.sa, st.ma + la, p_online), first.aux_p, NORMALIZED && P_NORM);
    let aux_q = select(select(st.sb, st.mb + lb, q_online), first.aux_q, NORMALIZED && Q_NORM);
    value = measure_value(st, RowLogs(la, lb, inv_sa, p_online));
    if (P_FORM == F_TARGETS) {
        // the row's weight in the batch mean: w_t, 0 when ignored
        let t = p_word(row);
        let ignored = params.has_ignore != 0u && t == params.ignore_bits;
        var wt = 1.0;
        if (params.weights_at != 0xffffffffu) {
            wt = bitcast<f32>(p_word(params.weights_at + min(t, params.cols - 1u)));
        }
        aux_p = select(wt, 0.0, ignored);
    }
    let hit = (st.flags & FL_Q_ZERO_HIT) != 0u && Q_ZERO_INF;
    // inf_bits: the infinity of the base's sign (-inf for a base below 1)
    value = select(positive_zero(value * params.inv_ln_base), bitcast<f32>(params.inf_bits), hit);
    value = select(value, bitcast<f32>(params.nan_bits), status != ST_OK);
    records[row] = Record(value, aux_p, aux_q, status, key_column(key), index);
}

// Pairwise sum of shared_states[base + k * first .. ] for k < n / first, in
// place, by one thread: the levels of a binary tree from stride `first` up.
fn tree_levels(base: u32, first: u32, n: u32) {
    for (var stride = first; stride < n; stride = stride * 2u) {
        for (var i = 0u; i + stride < n; i = i + 2u * stride) {
            shared_states[base + i] = merge(shared_states[base + i], shared_states[base + i + stride]);
        }
    }
}

// Binary-tree reduction of each segment of n (a power of two) states; the
// segment's total lands in its first slot, visible to its lane 0. Two barriers
// instead of log2(n): lanes 0, 8, 16, .. take the first three levels over their
// own 8 slots (or, with subgroups, butterflies take the levels within a
// subgroup: shaders/subgroups.wgsl), then lane 0 the rest. Same tree, same
// sums, same bits as a level-by-level reduction; barriers are costly (lavapipe
// runs them as coroutine switches).
fn tree_reduce(inv: Invocation, lane: u32, n: u32) {
    let lid = inv.lid;
    var g = min(n, 8u);
    if (SUBGROUPS && full_subgroups(inv)) {
        g = subgroup_levels(inv, n);
    } else if (lane % g == 0u) {
        tree_levels(lid, 1u, g);
    }
    workgroupBarrier();
    if (lane == 0u) {
        tree_levels(lid, g, n);
    }
}

// Term pass. Workgroup i of the dispatch (2-D grid, linearised) takes item i of
// the chunk: WG / T rows for one column block, or one block of one long row.
@compute @workgroup_size(WG)
fn rows_main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    inv: Invocation,
) {
    let lid = inv.lid;
    let item = wid.x + wid.y * nwg.x;
    if (item >= params.item_count) {
        return;
    }
    let tpr = params.threads_per_row;
    let rows_per_group = WG / tpr;
    let group = item / params.chunk_blocks;
    let blk = item % params.chunk_blocks;
    let seg = lid / tpr;
    let lane = lid % tpr;
    let r_local = group * rows_per_group + seg;
    let row = params.row0 + r_local;
    let in_range = r_local < params.chunk_rows;

    var st = empty_state();
    if (in_range) {
        let ctx = row_ctx(row);
        // loads of VEC values: lane, lane + T, .. of this block, up to the
        // row's end (leads and strides are multiples of VEC); a block of
        // BLOCK_VALUES values is one vec4 load, or BLOCK_VALUES scalar loads
        // lane-strided (neighbouring threads still read neighbouring values)
        let span = tpr * EPT;
        let u_end = min((blk + 1u) * span, params.chunk_cols / VEC);
        let p_row = (params.p_lead + r_local * params.p_stride) / VEC;
        let q_row = (params.q_lead + r_local * params.q_stride) / VEC;
        let loads = select(1u, BLOCK_VALUES, VEC == 1u);
        for (var u = blk * span + lane; u < u_end; u = u + loads * tpr) {
            var p4 = vec4<u32>(0u);
            var q4 = vec4<u32>(0u);
            if (VEC == 1u) {
                var n = 0u;
                for (var j = 0u; j < BLOCK_VALUES; j = j + 1u) {
                    let uj = u + j * tpr;
                    if (uj < u_end) {
                        if (P_FORM != F_TARGETS) {
                            p4[j] = p_word(p_row + uj);
                        }
                        if (HAS_Q) {
                            q4[j] = q_word(q_row + uj);
                        }
                        n = j + 1u;
                    }
                }
                accumulate_block(&st, ctx, params.col0 + u, tpr, p4, q4, n);
            } else {
                if (P_FORM != F_TARGETS) {
                    p4 = p_quad(p_row + u);
                }
                if (HAS_Q) {
                    q4 = q_quad(q_row + u);
                }
                accumulate_block(&st, ctx, params.col0 + u * VEC, 1u, p4, q4, 4u);
            }
        }
    }
    shared_states[lid] = st;
    workgroupBarrier();
    tree_reduce(inv, lane, tpr);
    if (in_range && lane == 0u) {
        let total = shared_states[lid];
        if (params.blocks_per_row == 1u) {
            finalize(row, total);
        } else {
            let gblk = params.col0 / (tpr * EPT * VEC) + blk;
            partials[row * params.blocks_per_row + gblk] = total;
        }
    }
}

// Merge pass for long rows: workgroup i merges the partial states of row row0 + i.
@compute @workgroup_size(WG)
fn merge_main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    inv: Invocation,
) {
    let lid = inv.lid;
    let item = wid.x + wid.y * nwg.x;
    if (item >= params.item_count) {
        return;
    }
    let row = params.row0 + item;
    let nb = params.blocks_per_row;
    var st = empty_state();
    for (var b = lid; b < nb; b = b + WG) {
        st = merge(st, partials[row * nb + b]);
    }
    shared_states[lid] = st;
    workgroupBarrier();
    tree_reduce(inv, lid, WG);
    if (lid == 0u) {
        finalize(row, shared_states[0]);
    }
}
