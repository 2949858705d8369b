// Prelude shared by every kernel: bit-level classification of f32 values and a
// log that is right for subnormals. WGSL may assume finite math, so zeros and
// infinities are decided from the bits and handled with `select`, never by
// producing NaN or inf and testing for it afterwards.

const LN2: f32 = 0.6931471805599453;
// WG (threads per workgroup) and EPT (elements each thread reads per block:
// a block covers WG * EPT columns), the measure (M_*), form (F_*) and status
// (ST_*) codes, COL_NONE and CODE_NONE are written above this file by
// src/gpu/wgsl.rs from their Rust definitions.

const ABS_MASK: u32 = 0x7fffffffu;
const EXP_MASK: u32 = 0x7f800000u;
const MANT_MASK: u32 = 0x007fffffu;
const SIGN_BIT: u32 = 0x80000000u;
const POS_INF_BITS: u32 = 0x7f800000u;
const NEG_INF_BITS: u32 = 0xff800000u;
// The largest finite f32.
const F32_MAX: f32 = 0x1.fffffep+127f;
// The smallest normal f32.
const F32_MIN_POSITIVE: f32 = 0x1p-126f;

// Status codes: a record's `code` (ST_*, generated). A problem is keyed
// (column, code): the smallest key is the first bad column, and a row's
// problems (column COL_NONE) come last.
// COL_NONE: the column of row-level problems; CODE_NONE: "no problem yet"
// while reducing (a code above every code), ST_OK at the end.

// A problem's key: vec2(column, code).
fn key_none() -> vec2<u32> {
    return vec2<u32>(COL_NONE, CODE_NONE);
}

// The smaller key: the first column, then the smaller code.
fn key_min(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return select(a, b, b.x < a.x || (b.x == a.x && b.y < a.y));
}

// A key's code and column as a record holds them (ST_OK and 0 for none).
fn key_code(k: vec2<u32>) -> u32 {
    return select(k.y, ST_OK, k.y == CODE_NONE);
}

fn key_column(k: vec2<u32>) -> u32 {
    return select(k.x, 0u, k.y == CODE_NONE);
}

fn is_zero_bits(b: u32) -> bool {
    return (b & ABS_MASK) == 0u;
}

fn is_nan_bits(b: u32) -> bool {
    return (b & ABS_MASK) > POS_INF_BITS;
}

fn is_inf_bits(b: u32) -> bool {
    return (b & ABS_MASK) == POS_INF_BITS;
}

// Natural log of a finite x > 0 given by its bits, exact in approach for
// subnormals: WGSL's `log` is not specified there (lavapipe: log(1e-40) = -88.02,
// true -92.10) and many GPUs flush them to zero. A subnormal is mantissa * 2^-149,
// and the mantissa as f32 is a normal number, so this touches only normal values.
fn ln_bits(b: u32) -> f32 {
    let sub = (b & EXP_MASK) == 0u;
    // one log either way: of x itself, or of its mantissa as a normal number
    let x = select(bitcast<f32>(b), f32(b & MANT_MASK), sub);
    return log(x) + select(0.0, -149.0 * LN2, sub);
}

// A finite x > 0 given by its bits as m * 2^k with m in [1, 2), subnormals
// included, by integer operations only (no subnormal arithmetic: many GPUs flush
// subnormals). A subnormal is mantissa * 2^-149, and the mantissa as f32 is normal.
struct Pow2 {
    m: f32,
    k: i32,
}

fn split_pow2(b: u32) -> Pow2 {
    let sub = (b & EXP_MASK) == 0u;
    let n = select(b, bitcast<u32>(f32(b & MANT_MASK)), sub);
    let k = i32((n >> 23u) & 0xffu) - 127 - select(0, 149, sub);
    return Pow2(bitcast<f32>((n & MANT_MASK) | 0x3f800000u), k);
}

// 2^d for an integer d, built from its bits: exact for -126 <= d <= 127, 0
// below (a value that far below its row's largest is negligible beside it), and
// 2^127 above (only ever multiplied by 0).
fn pow2(d: i32) -> f32 {
    return select(bitcast<f32>(u32(clamp(d, -126, 127) + 127) << 23u), 0.0, d < -126);
}

// s * 2^k for s in [1, 2^32): +inf beyond the f32 range, 0 below the normal range.
fn unscale(s: f32, k: i32) -> f32 {
    let e = i32((bitcast<u32>(s) >> 23u) & 0xffu) - 127 + k;
    let h = k / 2;
    let v = s * pow2(h) * pow2(k - h);
    return select(select(v, 0.0, e < -126), bitcast<f32>(POS_INF_BITS), e > 127);
}

// e^l for l <= 0, with the argument kept at or above -128 (where e^l is 0 in
// f32 anyway): some implementations of `exp` give garbage far below (lavapipe's
// turns -4e37 into an integer exponent that overflows).
fn exp_neg(l: f32) -> f32 {
    return exp(max(l, -128.0));
}

// +0.0 for either zero: the values written are the same bits on every device
// (a compiler may drop a "+ 0.0", never an integer select).
fn positive_zero(x: f32) -> f32 {
    let b = bitcast<u32>(x);
    return bitcast<f32>(select(b, 0u, (b & ABS_MASK) == 0u));
}

// Blockwise running maxima, for every reader of an online log-sum-exp or of a
// sum relative to a power of two: values are taken in blocks of BLOCK_VALUES,
// the running maximum is raised once per block, to the largest of the block's
// values that enter the sum, and each element is then added relative to it
// (about 1.25 exps per element rather than up to 2, and no branch on the
// maximum per element). How a state is rescaled stays with its kernel.
const BLOCK_VALUES: u32 = 4u;

// The largest key of a block: found, whether any value entered the sum.
struct BlockMax {
    m: f32,
    found: bool,
}

// The largest of the keys of the values b4[j] where keep[j]: the value itself
// (log forms), or for `scaled` probabilities (finite, > 0) its binary exponent.
fn block_max(b4: vec4<u32>, keep: vec4<bool>, scaled: bool) -> BlockMax {
    var r = BlockMax(0.0, false);
    for (var j = 0u; j < BLOCK_VALUES; j = j + 1u) {
        if (keep[j]) {
            let b = b4[j];
            let x = select(bitcast<f32>(b), f32(split_pow2(b).k), scaled);
            r.m = select(x, max(r.m, x), r.found);
            r.found = true;
        }
    }
    return r;
}

// Whether a block raises a running maximum m (`seen`: m holds an element).
fn block_raises(bm: BlockMax, seen: bool, m: f32) -> bool {
    return bm.found && (!seen || bm.m > m);
}
