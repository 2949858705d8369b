// Half-precision inputs packed two per u32 (value 2k in the low 16 bits of
// word k): widened to the f32 bits of the same value by integer operations
// only, so that the result is exact on every device (WGSL lets an
// implementation flush subnormals, `unpack2x16float`'s included) and equal,
// bit for bit, to the CPU's widening (src/widen.rs), NaNs made quiet alike.
// Included in the rows kernel only when an input is f16 or bf16, and in the
// all-pairs kernels (their preparation reads f32 or halves, per call).

// The f32 bits of the f16 in the low 16 bits of `h_in` (the high bits are
// ignored).
fn widen_f16(h_in: u32) -> u32 {
    let h = h_in & 0xffffu;
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    // normal: the exponent rebiased (15 -> 127)
    var mag = ((e + 112u) << 23u) | (m << 13u);
    // infinities, and NaNs made quiet
    mag = select(mag, 0x7f800000u | (m << 13u) | select(0u, 0x400000u, m != 0u), e == 0x1fu);
    // zeros and subnormals (m * 2^-24): normalised by the place of m's top bit
    let lz = countLeadingZeros(m) - 21u;
    let sub = ((113u - lz) << 23u) | (((m << lz) & 0x3ffu) << 13u);
    mag = select(mag, select(0u, sub, m != 0u), e == 0u);
    return sign | mag;
}

// The f32 bits of the bf16 in the low 16 bits of `h`: its top half.
fn widen_bf16(h: u32) -> u32 {
    return (h & 0xffffu) << 16u;
}

// The f32 bits of the half in the low 16 bits of `h`, stored as `fmt` says
// (DT_F16 or DT_BF16).
fn widen_half(h: u32, fmt: u32) -> u32 {
    return select(widen_bf16(h), widen_f16(h), fmt == DT_F16);
}

// The f16 bits (low 16) of the f32 with bits `b`, rounded to nearest even,
// by integer operations only (the CPU's `half::f16::from_f32`, bit for bit;
// no reliance on the device's conversions or its subnormals): overflow to
// infinity, NaNs made quiet.
fn narrow_f16(b: u32) -> u32 {
    let sign = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return sign | 0x7e00u | ((a >> 13u) & 0x3ffu);
    }
    if (a >= 0x38800000u) {
        // normal (or overflowing): rebias 127 -> 15, round off 13 bits
        let r = a - 0x38000000u;
        let h = (r + 0xfffu + ((r >> 13u) & 1u)) >> 13u;
        return sign | min(h, 0x7c00u);
    }
    if (a < 0x33000000u) {
        return sign; // below half the smallest subnormal: ±0
    }
    // subnormal: m·2^(e − 150) in units of 2^-24, rounded
    let e = a >> 23u;
    let m = (a & 0x7fffffu) | 0x800000u;
    let s = 126u - e;
    let half_ulp = 1u << (s - 1u);
    let rem = m & ((1u << s) - 1u);
    var h = m >> s;
    if (rem > half_ulp || (rem == half_ulp && (h & 1u) != 0u)) {
        h += 1u;
    }
    return sign | h;
}

// The bf16 bits (low 16) of the f32 with bits `b`, rounded to nearest even
// (`half::bf16::from_f32`: NaNs made quiet).
fn narrow_bf16(b: u32) -> u32 {
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return (b >> 16u) | 0x40u;
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

// The half bits (low 16) of the f32 with bits `b`, stored as `fmt` says.
fn narrow_half(b: u32, fmt: u32) -> u32 {
    return select(narrow_bf16(b), narrow_f16(b), fmt == DT_F16);
}
