//! Where a host-path gradient goes: f32, or f16 / bf16.
//!
//! The kernels compute every gradient value in f32; a half gradient is that
//! value rounded to the nearest half (ties to even; NaN stays NaN, values
//! beyond the format's range become ±inf), row by row from a worker's f32
//! row (on the GPU host path, from the values read back), so no f32 copy of
//! the batch's size is made. f16 keeps 11 bits but only down to 6e-8: the
//! gradient of a mean over many rows can fall below that and round to 0;
//! bf16 keeps f32's range.

use half::{bf16, f16, slice::HalfFloatSliceExt};

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

    /// Writes `v` (as many values), rounded to the format.
    pub(crate) fn write(&mut self, v: &[f32]) {
        match self {
            GradMut::F32(g) => g.copy_from_slice(v),
            GradMut::F16(g) => g.convert_from_f32_slice(v),
            GradMut::BF16(g) => g.convert_from_f32_slice(v),
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
