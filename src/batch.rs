//! Host-side inputs: a batch of distributions (row-major rows × cols) and class targets.

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::error::{Arg, BadValue, Error, Result};
use crate::measure::Form;

/// The values of a batch: f32, f64 converted to f32 with checks, or half
/// precision (IEEE f16 or bfloat16) widened to f32 exactly.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Values<'a> {
    /// f32 values, used as they are.
    F32(&'a [f32]),
    /// f64 values, converted to f32. A non-zero probability that becomes 0, or
    /// a finite value that becomes ±inf, is an error naming row and column.
    /// They are checked in one pass that only reads them, then converted where
    /// they are read (a CPU block, a GPU upload chunk): never copied whole,
    /// with the results of converting every value first.
    F64(&'a [f64]),
    /// IEEE 754 half precision, widened to f32 where read (exactly: every
    /// f16, subnormals included, is a normal f32). Zeros, subnormals and
    /// infinities follow the f16 bits. Under `Normalization::Validate` the
    /// row-sum check allows f16's unit roundoff u = 2⁻¹¹ on top of the
    /// tolerance: rounding a valid f32 row to f16 moves its sum by up to u
    /// (for log-probabilities, u·(1 + ln cols): Σ p·|ln p|·u is at most the
    /// entropy times u).
    F16(&'a [half::f16]),
    /// bfloat16 (the top half of an f32), widened to f32 exactly where read;
    /// the row-sum check allows bf16's unit roundoff u = 2⁻⁸ on top of the
    /// tolerance (u·(1 + ln cols) for log-probabilities), as for f16.
    BF16(&'a [half::bf16]),
}

macro_rules! values_from {
    ($t:ty, $v:ident) => {
        impl<'a> From<&'a [$t]> for Values<'a> {
            fn from(v: &'a [$t]) -> Self {
                Values::$v(v)
            }
        }
        impl<'a> From<&'a Vec<$t>> for Values<'a> {
            fn from(v: &'a Vec<$t>) -> Self {
                Values::$v(v)
            }
        }
        impl<'a, const N: usize> From<&'a [$t; N]> for Values<'a> {
            fn from(v: &'a [$t; N]) -> Self {
                Values::$v(v)
            }
        }
    };
}
values_from!(half::f16, F16);
values_from!(half::bf16, BF16);

impl<'a> From<&'a [f32]> for Values<'a> {
    fn from(v: &'a [f32]) -> Self {
        Values::F32(v)
    }
}
impl<'a> From<&'a Vec<f32>> for Values<'a> {
    fn from(v: &'a Vec<f32>) -> Self {
        Values::F32(v)
    }
}
impl<'a, const N: usize> From<&'a [f32; N]> for Values<'a> {
    fn from(v: &'a [f32; N]) -> Self {
        Values::F32(v)
    }
}
impl<'a> From<&'a [f64]> for Values<'a> {
    fn from(v: &'a [f64]) -> Self {
        Values::F64(v)
    }
}
impl<'a> From<&'a Vec<f64>> for Values<'a> {
    fn from(v: &'a Vec<f64>) -> Self {
        Values::F64(v)
    }
}
impl<'a, const N: usize> From<&'a [f64; N]> for Values<'a> {
    fn from(v: &'a [f64; N]) -> Self {
        Values::F64(v)
    }
}

impl Values<'_> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::F16(v) => v.len(),
            Values::BF16(v) => v.len(),
        }
    }
    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A batch of `rows` distributions over `cols` outcomes, row-major and contiguous.
///
/// ```
/// use kullback::{Batch, Form};
/// let p = [0.5f32, 0.5, 0.25, 0.75];
/// let batch = Batch::new(&p, 2, 2);              // probabilities
/// let logits = [1.0f32, -2.0, 0.5];
/// let l = Batch::new(&logits, 1, 3).form(Form::Logits);
/// # let _ = (batch, l);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// The values, row-major.
    pub values: Values<'a>,
    /// Number of distributions.
    pub rows: usize,
    /// Outcomes per distribution.
    pub cols: usize,
    /// How the values are given.
    pub form: Form,
}

impl<'a> Batch<'a> {
    /// A batch of probabilities; see [`Batch::form`] for other forms.
    pub fn new(values: impl Into<Values<'a>>, rows: usize, cols: usize) -> Self {
        Batch {
            values: values.into(),
            rows,
            cols,
            form: Form::Probs,
        }
    }

    /// One distribution (a single row).
    pub fn row(values: impl Into<Values<'a>>) -> Self {
        let values = values.into();
        let cols = values.len();
        Batch {
            values,
            rows: 1,
            cols,
            form: Form::Probs,
        }
    }

    /// Sets the form of the values.
    pub fn form(mut self, form: Form) -> Self {
        self.form = form;
        self
    }

    /// Checks the shape, and that f64 values convert to f32 without a silent
    /// change, and returns the values (no copy: f64 values are converted
    /// where they are read, block by block, exactly as `x as f32`).
    pub(crate) fn checked(self, arg: Arg) -> Result<Data<'a>> {
        if self.rows == 0 || self.cols == 0 {
            return Err(Error::Empty {
                arg,
                rows: self.rows,
                cols: self.cols,
            });
        }
        let expected = self
            .rows
            .checked_mul(self.cols)
            .ok_or_else(|| Error::TooLarge {
                what: format!("{arg}: {} x {} values", self.rows, self.cols),
                size: (self.rows as u128 * self.cols as u128).min(u64::MAX as u128) as u64,
                limit: usize::MAX as u64,
            })?;
        if self.values.len() != expected {
            return Err(Error::Length {
                arg,
                len: self.values.len(),
                rows: self.rows,
                cols: self.cols,
                expected,
            });
        }
        match self.values {
            Values::F32(v) => Ok(Data::F32(v)),
            Values::F64(v) => {
                check_f64(v, self.cols, self.form, arg)?;
                Ok(Data::F64(v))
            }
            // widening is exact: nothing to check
            Values::F16(v) => Ok(Data::F16(v)),
            Values::BF16(v) => Ok(Data::BF16(v)),
        }
    }
}

/// `x as f32` (rounded to nearest, ties to even), with the results below
/// f32::MIN_POSITIVE (subnormals and zeros) built from their bits by f64
/// arithmetic on normal numbers: the same f32 as `x as f32` where subnormal
/// results are kept, and on hardware or under a caller's MXCSR (FTZ) that
/// flushes them to zero.
#[inline(always)]
pub(crate) fn narrow(x: f64) -> f32 {
    const TWO_149: f64 = f64::from_bits((1023 + 149) << 52);
    // adding 2^52 rounds a value below 2^52 to an integer (ties to even),
    // held in the low bits of the sum
    const ROUND: f64 = f64::from_bits((1023 + 52) << 52);
    let a = x.abs();
    let t = a * TWO_149 + ROUND;
    let sign = ((x.to_bits() >> 32) as u32) & 0x8000_0000;
    let tiny = f32::from_bits((t.to_bits() as u32) | sign);
    if a < f32::MIN_POSITIVE as f64 {
        tiny
    } else {
        x as f32
    }
}

/// Whether `y` is ±0, by an integer test that LLVM keeps (it turns
/// `bits & 0x7fff_ffff == 0` into `y == 0.0`, which reads a subnormal as 0
/// under MXCSR's DAZ).
#[inline(always)]
fn zero32(y: f32) -> bool {
    (y.to_bits().wrapping_sub(1) & 0x7fff_ffff) == 0x7fff_ffff
}

/// [`zero32`] for an f64.
#[inline(always)]
fn zero64(x: f64) -> bool {
    const ABS: u64 = u64::MAX >> 1;
    (x.to_bits().wrapping_sub(1) & ABS) == ABS
}

/// What converting `x` to f32 would change silently: a finite value that
/// becomes ±inf, or (probabilities) a non-zero value that becomes 0. NaN and
/// inf pass through to the ordinary checks, which name them.
#[inline(always)]
fn changes(x: f64, probs: bool) -> Option<BadValue> {
    let y = narrow(x);
    if x.is_finite() && y.is_infinite() {
        Some(BadValue::Overflow)
    } else if probs && !zero64(x) && zero32(y) {
        Some(BadValue::Underflow)
    } else {
        None
    }
}

/// f64 → f32 without silent changes, checked without converting: the first
/// value (row-major) that [`changes`] is an error naming its row and column.
/// A branch-free test per chunk; only a chunk that holds such a value is
/// searched element by element.
pub(crate) fn check_f64(v: &[f64], cols: usize, form: Form, arg: Arg) -> Result<()> {
    const CHUNK: usize = 1024;
    let probs = form == Form::Probs;
    for (k, chunk) in v.chunks(CHUNK).enumerate() {
        let any = chunk.iter().fold(false, |a, &x| {
            let y = narrow(x);
            let over = x.is_finite() & y.is_infinite();
            let under = probs & !zero64(x) & zero32(y);
            a | over | under
        });
        if !any {
            continue;
        }
        for (j, &x) in chunk.iter().enumerate() {
            if let Some(what) = changes(x, probs) {
                let i = k * CHUNK + j;
                return Err(Error::BadValue {
                    arg,
                    row: i / cols,
                    col: Some(i % cols),
                    what,
                });
            }
        }
    }
    Ok(())
}

/// `values` (f64) as f32 with the checks p and q get: an error where the
/// conversion would change a value silently (a finite value that overflows,
/// a non-zero one that becomes 0), naming `arg` and the column. For inputs
/// the library takes only as f32, such as class weights.
pub fn f32_from_f64(values: &[f64], arg: Arg) -> Result<Vec<f32>> {
    check_f64(values, values.len().max(1), Form::Probs, arg)?;
    let mut out = crate::error::try_vec(values.len(), "an f32 copy of f64 values")?;
    out.extend(values.iter().map(|&x| narrow(x)));
    Ok(out)
}

/// Class targets of a negative log-likelihood, one per row.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// i32 class indices.
    I32(&'a [i32]),
    /// i64 class indices (PyTorch's default).
    I64(&'a [i64]),
    /// u32 class indices.
    U32(&'a [u32]),
}

impl<'a> From<&'a [i32]> for Targets<'a> {
    fn from(v: &'a [i32]) -> Self {
        Targets::I32(v)
    }
}
impl<'a> From<&'a [i64]> for Targets<'a> {
    fn from(v: &'a [i64]) -> Self {
        Targets::I64(v)
    }
}
impl<'a> From<&'a [u32]> for Targets<'a> {
    fn from(v: &'a [u32]) -> Self {
        Targets::U32(v)
    }
}
impl<'a> From<&'a Vec<i32>> for Targets<'a> {
    fn from(v: &'a Vec<i32>) -> Self {
        Targets::I32(v)
    }
}
impl<'a> From<&'a Vec<i64>> for Targets<'a> {
    fn from(v: &'a Vec<i64>) -> Self {
        Targets::I64(v)
    }
}
impl<'a> From<&'a Vec<u32>> for Targets<'a> {
    fn from(v: &'a Vec<u32>) -> Self {
        Targets::U32(v)
    }
}

impl<'a, const N: usize> From<&'a [i32; N]> for Targets<'a> {
    fn from(v: &'a [i32; N]) -> Self {
        Targets::I32(v)
    }
}
impl<'a, const N: usize> From<&'a [i64; N]> for Targets<'a> {
    fn from(v: &'a [i64; N]) -> Self {
        Targets::I64(v)
    }
}
impl<'a, const N: usize> From<&'a [u32; N]> for Targets<'a> {
    fn from(v: &'a [u32; N]) -> Self {
        Targets::U32(v)
    }
}

impl Targets<'_> {
    /// Number of targets.
    pub fn len(&self) -> usize {
        match self {
            Targets::I32(v) => v.len(),
            Targets::I64(v) => v.len(),
            Targets::U32(v) => v.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Target `i` as an i64.
    pub(crate) fn get(&self, i: usize) -> i64 {
        match self {
            Targets::I32(v) => v[i] as i64,
            Targets::I64(v) => v[i],
            Targets::U32(v) => v[i] as i64,
        }
    }
}

/// The caller's values, never copied whole: f32 as they are, or f64 (checked
/// by `Batch::checked` to convert without a silent change) converted to f32
/// where they are read, a block or an upload chunk at a time. Each element
/// converts as `x as f32`, so the results are those of converting first.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Data<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    F16(&'a [half::f16]),
    BF16(&'a [half::bf16]),
}

impl<'a> Data<'a> {
    /// Number of values.
    pub(crate) fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::F16(v) => v.len(),
            Data::BF16(v) => v.len(),
        }
    }

    /// Whether the values are not f32 (read through a conversion buffer).
    pub(crate) fn is_converted(&self) -> bool {
        !matches!(self, Data::F32(_))
    }

    /// The unit roundoff of the stored format where it is coarser than f32
    /// (what rounding a valid row to it may move its sum by), else 0.
    pub(crate) fn roundoff(&self) -> f32 {
        match self {
            Data::F16(_) => HALF_ROUNDOFF,
            Data::BF16(_) => BF16_ROUNDOFF,
            _ => 0.0,
        }
    }

    /// Values `range` as f32 into `dst` (equal lengths): f32 copied, f64
    /// narrowed as `x as f32`, half widened exactly.
    pub(crate) fn convert_range(&self, range: Range<usize>, dst: &mut [f32]) {
        match *self {
            Data::F32(v) => dst.copy_from_slice(&v[range]),
            Data::F64(v) => convert(&v[range], dst),
            Data::F16(v) => crate::widen::f16_slice(&v[range], dst),
            Data::BF16(v) => crate::widen::bf16_slice(&v[range], dst),
        }
    }

    /// Values `range` as f32: borrowed when they are f32, else converted into
    /// the front of `buf` (at least `range.len()` long; it needs no
    /// initialising, so a block's buffer costs nothing beyond the values).
    #[inline]
    pub(crate) fn f32s<'s>(&self, range: Range<usize>, buf: &'s mut [MaybeUninit<f32>]) -> &'s [f32]
    where
        'a: 's,
    {
        if let Data::F32(v) = *self {
            return &v[range];
        }
        let n = range.len();
        let out = &mut buf[..n];
        match *self {
            Data::F32(_) => {}
            Data::F64(v) => {
                for (d, &s) in out.iter_mut().zip(&v[range]) {
                    d.write(narrow(s));
                }
            }
            Data::F16(v) => crate::widen::f16_into(&v[range], out),
            Data::BF16(v) => crate::widen::bf16_into(&v[range], out),
        }
        // SAFETY: every element of `out` was written just above (the
        // ranges have `n` elements), and `MaybeUninit<f32>` has the layout
        // of `f32`.
        unsafe { &*(std::ptr::from_mut(out) as *const [f32]) }
    }

    /// Asks the caches for the values `range` (clamped to the data; a hint
    /// that changes no result), a line at a time: the tile after the one
    /// being computed comes in meanwhile.
    #[inline]
    pub(crate) fn prefetch(&self, range: Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        self.prefetch_hint::<{ std::arch::x86_64::_MM_HINT_T0 }>(range);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = range;
    }

    /// [`Data::prefetch`] into L2 only: for values needed after the work
    /// in between has passed through L1.
    #[inline]
    pub(crate) fn prefetch_l2(&self, range: Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        self.prefetch_hint::<{ std::arch::x86_64::_MM_HINT_T1 }>(range);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = range;
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn prefetch_hint<const HINT: i32>(&self, range: Range<usize>) {
        {
            use std::arch::x86_64::_mm_prefetch;
            let w = self.width();
            let end = range.end.min(self.len());
            let base = match *self {
                Data::F32(v) => v.as_ptr().cast::<i8>(),
                Data::F64(v) => v.as_ptr().cast::<i8>(),
                Data::F16(v) => v.as_ptr().cast::<i8>(),
                Data::BF16(v) => v.as_ptr().cast::<i8>(),
            };
            let mut b = range.start * w;
            while b < end * w {
                // SAFETY: a prefetch is a hint; the address is inside the data.
                unsafe { _mm_prefetch::<HINT>(base.wrapping_add(b)) };
                b += 64;
            }
        }
    }

    /// How the GPU holds these values when they are uploaded as stored:
    /// half as half (the kernels widen them), the others as f32.
    pub(crate) fn dtype(&self) -> crate::widen::Dtype {
        match self {
            Data::F16(_) => crate::widen::Dtype::F16,
            Data::BF16(_) => crate::widen::Dtype::BF16,
            _ => crate::widen::Dtype::F32,
        }
    }

    /// Bytes of one stored value.
    pub(crate) fn width(&self) -> usize {
        match self {
            Data::F32(_) => 4,
            Data::F64(_) => 8,
            Data::F16(_) | Data::BF16(_) => 2,
        }
    }
}

/// f16's unit roundoff, 2⁻¹¹ (see [`Values::F16`]).
pub(crate) const HALF_ROUNDOFF: f32 = crate::widen::F16_ROUNDOFF;
/// bfloat16's unit roundoff, 2⁻⁸ (see [`Values::BF16`]).
pub(crate) const BF16_ROUNDOFF: f32 = crate::widen::BF16_ROUNDOFF;

/// `dst[i] = src[i] as f32` (the checked conversion; equal lengths).
#[inline]
pub(crate) fn convert(src: &[f64], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = narrow(s);
    }
}

#[cfg(test)]
mod tests {
    use super::narrow;

    /// `narrow` is `as f32` bit for bit (subnormal results and ties
    /// included), on values of every exponent.
    #[test]
    fn narrow_is_as_f32() {
        let mut xs = vec![
            0.0f64,
            -0.0,
            f32::MIN_POSITIVE as f64,
            f32::from_bits(1) as f64,
            f32::from_bits(1) as f64 / 2.0,
            f32::from_bits(1) as f64 * 1.5,
            f32::from_bits(3) as f64 * 0.5,
            f32::MIN_POSITIVE as f64 * (1.0 - 1e-9),
            1e-40,
            -1e-40,
            1e-46,
            1e-300,
            f64::MIN_POSITIVE / 4.0,
            f32::MAX as f64,
            f32::MAX as f64 * 1.000_000_1,
            1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..400_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // exponents around the f32 range, with the low bits of ties
            let e = 1023 - 160 + (s >> 56) % 300;
            xs.push(f64::from_bits((s & 0x800f_ffff_f000_0fff) | (e << 52)));
        }
        for x in xs {
            let (got, want) = (narrow(x), x as f32);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{x:e}: {got:e} vs {want:e}"
            );
        }
    }
}
