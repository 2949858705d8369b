// Prelude shared by every kernel: bit-level classification of f32 values and a
// log that is right for subnormals. WGSL may assume finite math, so zeros and
// infinities are decided from the bits and handled with `select`, never by
// producing NaN or inf and testing for it afterwards.

const LN2: f32 = 0.6931471805599453;
const WG: u32 = 256u;
// Elements each thread reads per block: a block covers WG * EPT columns.
const EPT: u32 = 32u;

const ABS_MASK: u32 = 0x7fffffffu;
const EXP_MASK: u32 = 0x7f800000u;
const MANT_MASK: u32 = 0x007fffffu;
const SIGN_BIT: u32 = 0x80000000u;
const POS_INF_BITS: u32 = 0x7f800000u;
const NEG_INF_BITS: u32 = 0xff800000u;

// Status codes, keep in sync with src/record.rs. A status word is
// (column << 8) | code; the smallest word is the first bad column.
const ST_OK: u32 = 0u;
const ST_P_NAN: u32 = 1u;
const ST_P_NEGATIVE: u32 = 2u;
const ST_P_INFINITE: u32 = 3u;
const ST_P_POSITIVE_LOG: u32 = 4u;
const ST_Q_NAN: u32 = 5u;
const ST_Q_NEGATIVE: u32 = 6u;
const ST_Q_INFINITE: u32 = 7u;
const ST_Q_POSITIVE_LOG: u32 = 8u;
const ST_TARGET: u32 = 9u;
const ST_P_SUM: u32 = 16u;
const ST_Q_SUM: u32 = 17u;
const ST_P_ZERO_SUM: u32 = 18u;
const ST_Q_ZERO_SUM: u32 = 19u;
const ST_P_ALL_MASKED: u32 = 20u;
const ST_Q_ALL_MASKED: u32 = 21u;
// "No problem yet" while reducing; mapped to ST_OK at the end.
const KEY_NONE: u32 = 0xffffffffu;
// Column field of row-level problems (and of columns beyond 2^24 - 2).
const COL_NONE: u32 = 0xffffffu;

fn status_key(col: u32, code: u32) -> u32 {
    return (min(col, COL_NONE) << 8u) | code;
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
