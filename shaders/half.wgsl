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
