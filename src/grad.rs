//! Where a host-path gradient goes: f32, or f16 / bf16.
//!
//! The kernels compute every gradient value in f32; a half gradient is that
//! value rounded to the nearest half (ties to even; NaN stays NaN, values
//! beyond the format's range become ±inf), row by row from a worker's f32
//! row (on the GPU host path, from the values read back), so no f32 copy of
//! the batch's size is made. f16 keeps 11 bits but only down to 6e-8: the
//! gradient of a mean over many rows can fall below that and round to 0;
//! bf16 keeps f32's range.

use half::{bf16, f16};

/// A host-path gradient buffer ([`Context::nll_grad`](crate::Context::nll_grad),
/// [`Context::distill`](crate::Context::distill)): `rows × cols` values,
/// row-major. `&mut` slices, arrays and `Vec`s of f32, [`struct@f16`] and [`bf16`]
/// convert into it.
#[derive(Debug)]
#[non_exhaustive]
pub enum GradMut<'a> {
    /// f32 values, as the kernels compute them.
    F32(&'a mut [f32]),
    /// IEEE half precision, rounded to nearest even.
    F16(&'a mut [f16]),
    /// bfloat16, rounded to nearest even.
    BF16(&'a mut [bf16]),
}

macro_rules! grad_from {
    ($t:ty, $v:ident) => {
        impl<'a> From<&'a mut [$t]> for GradMut<'a> {
            fn from(g: &'a mut [$t]) -> Self {
                GradMut::$v(g)
            }
        }
        impl<'a> From<&'a mut Vec<$t>> for GradMut<'a> {
            fn from(g: &'a mut Vec<$t>) -> Self {
                GradMut::$v(g.as_mut_slice())
            }
        }
        impl<'a, const N: usize> From<&'a mut [$t; N]> for GradMut<'a> {
            fn from(g: &'a mut [$t; N]) -> Self {
                GradMut::$v(g.as_mut_slice())
            }
        }
    };
}
grad_from!(f32, F32);
grad_from!(f16, F16);
grad_from!(bf16, BF16);

impl<'a> GradMut<'a> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            GradMut::F32(g) => g.len(),
            GradMut::F16(g) => g.len(),
            GradMut::BF16(g) => g.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values `r` (a shorter borrow).
    pub(crate) fn sub(&mut self, r: std::ops::Range<usize>) -> GradMut<'_> {
        match self {
            GradMut::F32(g) => GradMut::F32(&mut g[r]),
            GradMut::F16(g) => GradMut::F16(&mut g[r]),
            GradMut::BF16(g) => GradMut::BF16(&mut g[r]),
        }
    }

    /// The values as f32, where they are f32.
    pub(crate) fn f32s(&mut self) -> Option<&mut [f32]> {
        match self {
            GradMut::F32(g) => Some(g),
            _ => None,
        }
    }

    /// The rows of `cols` values.
    pub(crate) fn rows(self, cols: usize) -> Vec<GradMut<'a>> {
        let cols = cols.max(1);
        match self {
            GradMut::F32(g) => g.chunks_mut(cols).map(GradMut::F32).collect(),
            GradMut::F16(g) => g.chunks_mut(cols).map(GradMut::F16).collect(),
            GradMut::BF16(g) => g.chunks_mut(cols).map(GradMut::BF16).collect(),
        }
    }

    /// Writes `v` (as many values), rounded to the format; where `stream`,
    /// a half format's values go out past the caches (see
    /// [`narrow_into`]). Inlined into the CPU's AVX2 and AVX-512 workers,
    /// whose instruction sets the rounding loops are compiled with.
    #[inline(always)]
    pub(crate) fn write(&mut self, v: &[f32], stream: bool) {
        match self {
            GradMut::F32(g) => g.copy_from_slice(v),
            GradMut::F16(g) => {
                let g: &mut [u16] = bytemuck::cast_slice_mut(g);
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("f16c") {
                    // SAFETY: the CPU has F16C (and so AVX).
                    return unsafe { f16_f16c(g, v, stream) };
                }
                narrow_into(g, v, stream, f16_bits)
            }
            GradMut::BF16(g) => narrow_into(bytemuck::cast_slice_mut(g), v, stream, bf16_bits),
        }
    }

    /// Writes value `i`, rounded to the format.
    pub(crate) fn set(&mut self, i: usize, v: f32) {
        match self {
            GradMut::F32(g) => g[i] = v,
            GradMut::F16(g) => g[i] = f16::from_f32(v),
            GradMut::BF16(g) => g[i] = bf16::from_f32(v),
        }
    }
}

/// The bits of `x` rounded to bfloat16 (nearest, ties to even; NaN stays
/// NaN, made quiet), as `bf16::from_f32` gives them: in integer operations
/// without branches, so that a loop of them vectorises. bf16 has f32's
/// exponent range, so rounding the bits is right for subnormals too.
#[inline(always)]
pub(crate) fn bf16_bits(x: u32) -> u16 {
    let nan = (x & 0x7fff_ffff) > 0x7f80_0000;
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    (if nan { (x >> 16) | 0x40 } else { rounded }) as u16
}

/// The bits of `x` rounded to IEEE half (nearest, ties to even; beyond the
/// range ±inf; NaN quiet, the payload's top bits kept, as F16C and
/// `f16::from_f32` give them), without branches. Results below f16's normal
/// range come from integer shifts of the significand, never from subnormal
/// float arithmetic.
#[inline(always)]
pub(crate) fn f16_bits(x: u32) -> u16 {
    let sign = (x >> 16) & 0x8000;
    let a = x & 0x7fff_ffff;
    // normal results: rebias the exponent, round at bit 13 (ties to even);
    // a carry out of the significand moves into the exponent, as it should
    let normal = (a.wrapping_sub(112 << 23) + 0xfff + ((a >> 13) & 1)) >> 13;
    // subnormal results (|x| < 2^-14): the significand with its hidden bit,
    // shifted right by 126 - e (≥ 14; from 25 on, and for f32's own
    // subnormals, the value rounds to 0), rounded to nearest even there
    let e = a >> 23;
    let m = (a & 0x7f_ffff) | 0x80_0000;
    let shift = 126u32.saturating_sub(e).min(31);
    let half_ulp = (1u32 << shift) >> 1;
    let low = m & ((1u32 << shift) - 1);
    let q = m >> shift;
    let up = (low > half_ulp || (low == half_ulp && q & 1 == 1)) as u32;
    let sub = q + up;
    let inf_nan = if a > 0x7f80_0000 {
        0x7e00 | ((a >> 13) & 0x3ff)
    } else {
        0x7c00
    };
    let v = if a >= 0x4780_0000 - 0x1000 {
        // from 65520 (which rounds to 2^16) up: inf, or NaN
        inf_nan
    } else if a < 0x3880_0000 {
        sub
    } else {
        normal
    };
    (v | sign) as u16
}

/// Writes `v` rounded by `round` (to a half format's bits) into `dst`;
/// where `stream`, the 16-byte-aligned middle with stores that go past the
/// caches (for gradients too large for them, whose lines would otherwise be
/// read in before each is written over: see `train::drive::streams`; the
/// caller's worker ends with a store fence).
#[inline(always)]
fn narrow_into(dst: &mut [u16], v: &[f32], stream: bool, round: impl Fn(u32) -> u16) {
    assert_eq!(dst.len(), v.len());
    let plain = |d: &mut [u16], s: &[f32]| {
        for (d, &s) in d.iter_mut().zip(s) {
            *d = round(s.to_bits());
        }
    };
    #[cfg(target_arch = "x86_64")]
    if stream {
        use std::arch::x86_64::{__m128i, _mm_stream_si128};
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        let end = head + (dst.len() - head) / 8 * 8;
        plain(&mut dst[..head], &v[..head]);
        for i in (head..end).step_by(8) {
            let mut w = [0u16; 8];
            plain(&mut w, &v[i..i + 8]);
            // SAFETY: i + 8 ≤ end ≤ len, and dst + i is 16-byte aligned (head
            // aligns it, steps are 16 bytes); SSE2 is part of x86-64.
            unsafe {
                _mm_stream_si128(
                    dst.as_mut_ptr().add(i).cast::<__m128i>(),
                    std::mem::transmute::<[u16; 8], __m128i>(w),
                )
            };
        }
        plain(&mut dst[end..], &v[end..]);
        return;
    }
    let _ = stream;
    plain(dst, v);
}

/// [`narrow_into`] for f16 with F16C's conversion (`vcvtps2ph`, nearest
/// even: the bits of [`f16_bits`]; MXCSR's flush-to-zero does not apply to
/// it, and the f32 inputs it would treat as zero under DAZ round to zero
/// anyway), eight values at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
fn f16_f16c(dst: &mut [u16], v: &[f32], stream: bool) {
    use std::arch::x86_64::{
        __m128i, _MM_FROUND_TO_NEAREST_INT, _mm_storeu_si128, _mm_stream_si128, _mm256_cvtps_ph,
        _mm256_loadu_ps,
    };
    assert_eq!(dst.len(), v.len());
    let head = if stream {
        dst.as_ptr().align_offset(16).min(dst.len())
    } else {
        0
    };
    let end = head + (dst.len() - head) / 8 * 8;
    for i in (0..head).chain(end..dst.len()) {
        dst[i] = f16_bits(v[i].to_bits());
    }
    for i in (head..end).step_by(8) {
        // SAFETY: i + 8 ≤ end ≤ len for both slices; a streamed store's
        // address is 16-byte aligned (head aligns it, steps are 16 bytes).
        unsafe {
            let h =
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(v.as_ptr().add(i)));
            let d = dst.as_mut_ptr().add(i).cast::<__m128i>();
            if stream {
                _mm_stream_si128(d, h);
            } else {
                _mm_storeu_si128(d, h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rounding boundary region and a stride through all f32 bit
    /// patterns: the bits of `half`'s own conversions.
    #[test]
    fn roundings_are_the_half_crates() {
        let mut xs: Vec<u32> = (0..=u32::MAX).step_by(4099).collect();
        for e in 0..256u32 {
            for m in [
                0u32, 1, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000, 0x7fff, 0x8000, 0x8001,
                0x18000, 0x7f_ffff,
            ] {
                for s in [0, 0x8000_0000] {
                    xs.push(s | e << 23 | m);
                    xs.push(s | e << 23 | (m ^ 0x7f_ffff));
                }
            }
        }
        for &x in &xs {
            let f = f32::from_bits(x);
            assert_eq!(
                bf16_bits(x),
                bf16::from_f32(f).to_bits(),
                "bf16 of {x:#010x}"
            );
            assert_eq!(
                f16_bits(x),
                f16::from_f32(f).to_bits(),
                "f16 of {x:#010x} ({f:e})"
            );
        }
    }

    /// Streamed and plain writes give the same values at every alignment.
    #[test]
    fn streamed_writes_are_the_plain_ones() {
        let v: Vec<f32> = (0..203).map(|i| (i as f32 - 90.0) * 0.37e-3).collect();
        for off in 0..9 {
            for n in [0usize, 1, 7, 8, 9, 40, 194] {
                let mut a = vec![f16::ZERO; n + off];
                let mut b = vec![bf16::ZERO; n + off];
                GradMut::F16(&mut a[off..]).write(&v[..n], true);
                GradMut::BF16(&mut b[off..]).write(&v[..n], true);
                for i in 0..n {
                    assert_eq!(a[off + i], f16::from_f32(v[i]));
                    assert_eq!(b[off + i], bf16::from_f32(v[i]));
                }
            }
        }
    }
}
