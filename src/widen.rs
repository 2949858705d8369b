//! Half precision widened to f32, exactly, in one place: the CPU kernels'
//! loads, the block buffers and the GPU uploads all go through these.
//!
//! f16 → f32 is exact for every value (an f16 subnormal is a normal f32);
//! bf16 is the top half of an f32, so widening is a 16-bit shift (a bf16
//! subnormal stays an f32 subnormal, which the kernels classify by its
//! bits). On x86-64 with AVX2 the f16 path uses F16C's `vcvtph2ps` (exact,
//! subnormal halves included, and not subject to MXCSR's DAZ) where the CPU
//! has it; the scalar fallbacks are integer bit operations, so the result
//! is the same bits on every machine.

use std::mem::MaybeUninit;

/// How the values of a GPU-resident batch are stored
/// ([`GpuBatch::dtype`](crate::GpuBatch::dtype)). Half formats are packed
/// two per u32 (value 2k in the low 16 bits of word k: the little-endian
/// bytes of a `[half::f16]` or `[half::bf16]` slice), widened exactly to
/// f32 where the kernel reads them and accumulated in f32 as f32 inputs
/// are; zeros, subnormals and infinities follow the format's own bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dtype {
    /// f32, 4 bytes a value.
    #[default]
    F32,
    /// IEEE 754 half precision, 2 bytes a value.
    F16,
    /// bfloat16, 2 bytes a value.
    BF16,
}

impl Dtype {
    /// Bytes of one value.
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }
    /// Whether the values are f16 or bf16.
    pub(crate) fn is_half(self) -> bool {
        self != Dtype::F32
    }
    /// Bytes of `values` values so stored on the device (halves two per
    /// u32, the last word padded).
    pub(crate) fn stored_bytes(self, values: u64) -> u64 {
        (values * self.bytes()).next_multiple_of(4)
    }
    /// The number the shaders see for this storage (`DT_*`, written by
    /// `gpu::wgsl`).
    pub(crate) fn code(self) -> u32 {
        match self {
            Dtype::F32 => 0,
            Dtype::F16 => 1,
            Dtype::BF16 => 2,
        }
    }
    /// The unit roundoff the row-sum check allows on top of the tolerance
    /// (what rounding a valid row to the format may move its sum by).
    pub(crate) fn roundoff(self) -> f32 {
        match self {
            Dtype::F32 => 0.0,
            Dtype::F16 => F16_ROUNDOFF,
            Dtype::BF16 => BF16_ROUNDOFF,
        }
    }
}

/// f16's unit roundoff, 2⁻¹¹.
pub(crate) const F16_ROUNDOFF: f32 = 1.0 / 2048.0;
/// bfloat16's unit roundoff, 2⁻⁸.
pub(crate) const BF16_ROUNDOFF: f32 = 1.0 / 256.0;

/// f16 bits to the f32 bits of the same value, by integer operations only.
/// A NaN keeps its sign and payload and comes out quiet, as F16C's
/// `vcvtph2ps` gives it: the two paths agree bit for bit.
#[inline(always)]
pub(crate) fn f16_bits(h: u16) -> u32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let mant = h & 0x03ff;
    let mag = if exp == 0x1f {
        // inf, and NaN (made quiet)
        0x7f80_0000 | (mant << 13) | if mant != 0 { 0x0040_0000 } else { 0 }
    } else if exp != 0 {
        ((exp + 112) << 23) | (mant << 13)
    } else if mant == 0 {
        0
    } else {
        // subnormal: mant · 2^-24, normalised (mant < 2^10)
        let lz = mant.leading_zeros() - 21; // shifts that bring bit 10 up
        let m = (mant << lz) & 0x03ff;
        ((113 - lz) << 23) | (m << 13)
    };
    sign | mag
}

/// One f16 as f32.
#[inline(always)]
pub(crate) fn f16(h: half::f16) -> f32 {
    f32::from_bits(f16_bits(h.to_bits()))
}

/// One bf16 as f32: its bits are the f32's top half.
#[inline(always)]
pub(crate) fn bf16(x: half::bf16) -> f32 {
    f32::from_bits((x.to_bits() as u32) << 16)
}

/// Whether this machine widens f16 with F16C (and AVX2) instructions: it
/// has every feature the `x86` loops enable (F16C, AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
pub(crate) fn f16c() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("f16c")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    })
}

/// `src` widened into `dst` (equal lengths): every element of `dst` is
/// written.
pub(crate) fn f16_into(src: &[half::f16], dst: &mut [MaybeUninit<f32>]) {
    assert_eq!(src.len(), dst.len(), "widening needs equal lengths");
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: the CPU has F16C, AVX2 and FMA (checked just above).
        unsafe { x86::f16_into(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(f16(s));
    }
}

/// `src` widened into `dst` (equal lengths): every element of `dst` is
/// written.
pub(crate) fn bf16_into(src: &[half::bf16], dst: &mut [MaybeUninit<f32>]) {
    assert_eq!(src.len(), dst.len(), "widening needs equal lengths");
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { x86::bf16_into(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(bf16(s));
    }
}

/// [`f16_into`] into initialised f32s.
pub(crate) fn f16_slice(src: &[half::f16], dst: &mut [f32]) {
    // SAFETY: `f32` and `MaybeUninit<f32>` have the same layout, and the
    // callee only writes (every element) through it.
    let dst = unsafe { &mut *(std::ptr::from_mut(dst) as *mut [MaybeUninit<f32>]) };
    f16_into(src, dst);
}

/// [`bf16_into`] into initialised f32s.
pub(crate) fn bf16_slice(src: &[half::bf16], dst: &mut [f32]) {
    // SAFETY: as in `f16_slice`.
    let dst = unsafe { &mut *(std::ptr::from_mut(dst) as *mut [MaybeUninit<f32>]) };
    bf16_into(src, dst);
}

/// The AVX2 loops (F16C for f16), and the 8-lane loads the fused kernels of
/// `cpu::fast` use.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::{
        __m256i, _mm_loadu_si128, _mm256_castps_si256, _mm256_cvtepu16_epi32, _mm256_cvtph_ps,
        _mm256_slli_epi32, _mm256_storeu_si256,
    };
    use std::mem::MaybeUninit;

    /// The f32 bits of the 8 f16 at `p`.
    ///
    /// # Safety
    /// `p` must point to 8 readable f16 (unaligned is fine).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(crate) unsafe fn load_f16(p: *const half::f16) -> __m256i {
        // SAFETY: the caller guarantees 16 readable bytes.
        _mm256_castps_si256(_mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) }))
    }

    /// The f32 bits of the 8 bf16 at `p`.
    ///
    /// # Safety
    /// `p` must point to 8 readable bf16 (unaligned is fine).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn load_bf16(p: *const half::bf16) -> __m256i {
        // SAFETY: the caller guarantees 16 readable bytes.
        _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(p.cast()) }))
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; equal lengths.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn f16_into(src: &[half::f16], dst: &mut [MaybeUninit<f32>]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 ≤ n for both slices; the store is unaligned.
            unsafe {
                let v = load_f16(src.as_ptr().add(i));
                _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), v);
            }
            i += 8;
        }
        for (d, &s) in dst[i..n].iter_mut().zip(&src[i..n]) {
            d.write(super::f16(s));
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA; equal lengths.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bf16_into(src: &[half::bf16], dst: &mut [MaybeUninit<f32>]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 ≤ n for both slices; the store is unaligned.
            unsafe {
                let v = load_bf16(src.as_ptr().add(i));
                _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), v);
            }
            i += 8;
        }
        for (d, &s) in dst[i..n].iter_mut().zip(&src[i..n]) {
            d.write(super::bf16(s));
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every f16 and bf16 bit pattern widens to `half`'s f32 (NaNs: a NaN of
    /// the same sign), on the scalar and the vector paths, which agree bit
    /// for bit (NaNs included).
    #[test]
    fn every_half_widens_exactly() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let f16s: Vec<half::f16> = all.iter().map(|&b| half::f16::from_bits(b)).collect();
        let bf16s: Vec<half::bf16> = all.iter().map(|&b| half::bf16::from_bits(b)).collect();
        let mut a = vec![0f32; all.len()];
        let mut b = vec![0f32; all.len()];
        super::f16_slice(&f16s, &mut a);
        super::bf16_slice(&bf16s, &mut b);
        for (k, &bits) in all.iter().enumerate() {
            let want = f16s[k].to_f32();
            let scalar = super::f16(f16s[k]);
            assert_eq!(a[k].to_bits(), scalar.to_bits(), "f16 {bits:#06x}");
            for got in [a[k], scalar] {
                if want.is_nan() {
                    assert!(got.is_nan() && got.is_sign_negative() == want.is_sign_negative());
                } else {
                    assert_eq!(got.to_bits(), want.to_bits(), "f16 {bits:#06x}");
                }
            }
            let want = (bits as u32) << 16;
            assert_eq!(b[k].to_bits(), want, "bf16 {bits:#06x}");
            assert_eq!(super::bf16(bf16s[k]).to_bits(), want);
        }
    }
}
