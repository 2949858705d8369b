// Per-measure arithmetic: what a measure adds for each element pair and how a
// row's state becomes its value, one pair of functions per measure:
// add_<ident>(st, pe, qe) and value_<ident>(st, r). src/gpu/wgsl.rs generates
// their dispatch (add_terms, measure_value: a branch on the MEASURE code) from
// the measure table in src/measure.rs, which also says what the planner needs
// (q read, one pass for online forms, +inf on q = 0). Appended to rows.wgsl;
// the CPU twin is src/cpu/terms.rs.
//
// The State's accumulators (rows.wgsl): sa = Σ w_p, u = Σ w_p l_p,
// sb = Σ w_q (added before add_terms), v = Σ w_p l_q, t = the measure's own sum;
// for an online operand w and l are relative to its running maximum.

// What a row's value needs besides its state: ln Σ w of online p and q (0 when
// not online), 1 / Σ w_p (1 when not online) and whether p is online.
struct RowLogs {
    la: f32,
    lb: f32,
    inv_sa: f32,
    p_online: bool,
}

// ---- entropy: H(p) = −Σ p ln p
fn add_entropy(st: ptr<function, State>, pe: Elem, qe: Elem) {
    if (!pe.zero) {
        (*st).sa = (*st).sa + pe.w;
        (*st).u = (*st).u + pe.w * pe.l;
    }
}

fn value_entropy(st: State, r: RowLogs) -> f32 {
    return select(-st.u, r.la - st.u * r.inv_sa, r.p_online);
}

// The sums of cross-entropy and KL over p > 0: Σ w, Σ w ln p, and Σ w ln q
// where q > 0; a q = 0 (or a log-probability below -f32::MAX) under a p of
// normal weight flags the row +inf. Whether the pair's logs were added.
fn add_log_pair(st: ptr<function, State>, pe: Elem, qe: Elem) -> bool {
    if (pe.zero) {
        return false;
    }
    (*st).sa = (*st).sa + pe.w;
    (*st).u = (*st).u + pe.w * pe.l;
    if (qe.zero || (qe.far && pe.w >= F32_MIN_POSITIVE)) {
        (*st).flags = (*st).flags | FL_Q_ZERO_HIT;
        return false;
    }
    if (qe.far) {
        return false;
    }
    (*st).v = (*st).v + pe.w * qe.l;
    return true;
}

// ---- cross-entropy: H(p, q) = −Σ p ln q (and the negative log-likelihood)
fn add_cross(st: ptr<function, State>, pe: Elem, qe: Elem) {
    add_log_pair(st, pe, qe);
}

fn value_cross(st: State, r: RowLogs) -> f32 {
    return select(-st.v + st.sa * r.lb, -st.v * r.inv_sa + r.lb, r.p_online);
}

// ---- KL: D(P‖Q) = Σ p (ln p − ln q), summed per element so the logs cancel there
fn add_kl(st: ptr<function, State>, pe: Elem, qe: Elem) {
    if (add_log_pair(st, pe, qe)) {
        (*st).t = (*st).t + pe.w * (pe.l - qe.l);
    }
}

fn value_kl(st: State, r: RowLogs) -> f32 {
    return select(st.t + st.sa * r.lb, st.t * r.inv_sa - r.la + r.lb, r.p_online);
}

// ---- Jensen-Shannon: ½ p ln(2p / (p + q)) + ½ q ln(2q / (p + q)) per element;
// never infinite. Normalised values only (the plan normalises online forms
// first). A sum that is subnormal (or flushed) leaves a term below 1e-36:
// dropped; a weight that underflowed to 0 (a very negative logit) is 0 too.
fn add_js(st: ptr<function, State>, pe: Elem, qe: Elem) {
    (*st).sa = (*st).sa + pe.w;
    let s = pe.w + qe.w;
    if ((bitcast<u32>(s) & EXP_MASK) != 0u) {
        let rp = bitcast<u32>(2.0 * pe.w / s);
        let rq = bitcast<u32>(2.0 * qe.w / s);
        let tp = select(0.5 * pe.w * ln_bits(rp), 0.0, pe.zero || is_zero_bits(rp));
        let tq = select(0.5 * qe.w * ln_bits(rq), 0.0, qe.zero || is_zero_bits(rq));
        (*st).t = (*st).t + tp + tq;
    }
}

fn value_js(st: State, r: RowLogs) -> f32 {
    return st.t;
}

// √w of a weight w ≥ 0 (or −0) from its bits: a subnormal w = m·2⁻¹⁴⁹ is
// √(2m)·2⁻⁷⁵ (GPUs may flush subnormals). The twin of terms.rs's sqrt_bits.
fn sqrt_bits(w: f32) -> f32 {
    let b = bitcast<u32>(w) & ABS_MASK;
    if ((b & EXP_MASK) == 0u) {
        return sqrt(f32((b & MANT_MASK) << 1u)) * bitcast<f32>(52u << 23u);
    }
    return sqrt(bitcast<f32>(b));
}

// ---- squared Hellinger: H² = ½ Σ (√p − √q)² (not 1 − Σ √(p q), which cancels
// for close rows); a zero's term is ½ (the other side); never infinite.
// Normalised values only (the plan normalises online forms first).
fn add_hellinger(st: ptr<function, State>, pe: Elem, qe: Elem) {
    (*st).sa = (*st).sa + pe.w;
    let d = sqrt_bits(pe.w) - sqrt_bits(qe.w);
    (*st).t = (*st).t + d * d;
}

fn value_hellinger(st: State, r: RowLogs) -> f32 {
    return 0.5 * st.t;
}

// ---- total variation: ½ Σ |p − q|; never infinite. Normalised values only.
fn add_tv(st: ptr<function, State>, pe: Elem, qe: Elem) {
    (*st).sa = (*st).sa + pe.w;
    (*st).t = (*st).t + abs(pe.w - qe.w);
}

fn value_tv(st: State, r: RowLogs) -> f32 {
    return 0.5 * st.t;
}
