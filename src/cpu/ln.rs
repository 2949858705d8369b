//! Branch-free f32 natural log and exp that LLVM vectorises.
//!
//! Both take the mantissa and exponent apart with bit operations and evaluate
//! the Cephes `logf` / `expf` polynomials; every special case is a select, so a
//! loop over lanes compiles to straight-line vector code. Subnormals are exact:
//! the log reads a subnormal's mantissa field as an integer (a normal number)
//! and takes 149 off the exponent, with no subnormal arithmetic (hardware
//! that flushes subnormals, or MXCSR's FTZ/DAZ, gives the same result), the
//! CPU form of `ln_bits` in `shaders/common.wgsl`; the exp splits 2^n into
//! two normal factors so that results down to 2^-149 come out as subnormals.
//!
//! The log is returned in two parts, `ln x = hi + lo` with `hi = e·LN2_HI`
//! exact: a difference of logs `(hi_p - hi_q) + (lo_p - lo_q)` then loses
//! nothing to cancellation (KL on the CPU forms ln p − ln q this way).

/// How `a·b + c` is evaluated: two roundings, or one fused instruction. The
/// fused form is used only where the `fma` target feature is enabled (elsewhere
/// `mul_add` is a slow library call).
pub(crate) trait Arith: Copy {
    /// `a·b + c`.
    fn madd(a: f32, b: f32, c: f32) -> f32;
}

/// `a·b + c` with two roundings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plain;

impl Arith for Plain {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `a·b + c` fused (one rounding).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fused;

impl Arith for Fused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

pub(crate) const EXP_MASK: u32 = 0x7f80_0000;
pub(crate) const MANT_MASK: u32 = 0x007f_ffff;
pub(crate) const ABS_MASK: u32 = 0x7fff_ffff;
pub(crate) const POS_INF_BITS: u32 = 0x7f80_0000;
pub(crate) const NEG_INF_BITS: u32 = 0xff80_0000;

/// ln 2 = LN2_HI + LN2_LO; LN2_HI has 9 significant bits, so e·LN2_HI is exact
/// for every exponent e of an f32.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;

const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// ln x = `e`·LN2_HI + `lo` for a finite x > 0 (subnormals included); the
/// value for 0, negative or non-finite x is finite garbage for the caller to
/// select away. Returns `(e, lo)` with e an integer.
#[inline(always)]
pub(crate) fn ln_parts<A: Arith>(x: f32) -> (f32, f32) {
    let b = x.to_bits();
    let sub = (b & EXP_MASK) == 0;
    // a subnormal x is n · 2^-149 with n its mantissa field: n as f32 is a
    // normal number (exact), found from the bits, never by subnormal
    // arithmetic (hardware that flushes reads x as 0). The same bits as
    // scaling x by 2^23.
    let bs = if sub {
        ((b & MANT_MASK) as f32).to_bits()
    } else {
        b
    };
    // x = m · 2^e with m in [0.5, 1)
    let e0 = (bs >> 23) as i32 - 126 - if sub { 149 } else { 0 };
    let m = f32::from_bits((bs & MANT_MASK) | 0x3f00_0000);
    // m in [sqrt(.5), sqrt(2)) after moving a factor 2 into e
    let small = m < SQRT_HALF;
    let e = (e0 - small as i32) as f32;
    let r = if small { (m + m) - 1.0 } else { m - 1.0 };
    let z = r * r;
    let mut y = 7.037_683_6e-2;
    y = A::madd(y, r, -1.151_461e-1);
    y = A::madd(y, r, 1.167_699_9e-1);
    y = A::madd(y, r, -1.242_014_1e-1);
    y = A::madd(y, r, 1.424_932_3e-1);
    y = A::madd(y, r, -1.666_805_8e-1);
    y = A::madd(y, r, 2.000_071_5e-1);
    y = A::madd(y, r, -2.499_999_4e-1);
    y = A::madd(y, r, 3.333_333e-1);
    y = y * r * z;
    y = A::madd(e, LN2_LO, y);
    y = A::madd(-0.5, z, y);
    (e, r + y)
}

/// ln x as `(hi, lo)` with hi = e·LN2_HI exact; same domain as [`ln_parts`].
#[inline(always)]
pub(crate) fn ln_hilo<A: Arith>(x: f32) -> (f32, f32) {
    let (e, lo) = ln_parts::<A>(x);
    (e * LN2_HI, lo)
}

/// ln x for a finite x > 0 (subnormals included), without special cases.
#[inline(always)]
pub(crate) fn ln_pos<A: Arith>(x: f32) -> f32 {
    let (hi, lo) = ln_hilo::<A>(x);
    hi + lo
}

/// ln x with IEEE special cases: ln ±0 = -inf, ln +inf = +inf, NaN for x < 0 or NaN.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "the kernels use ln_pos; kept for tests")
)]
#[inline(always)]
pub(crate) fn ln<A: Arith>(x: f32) -> f32 {
    let b = x.to_bits();
    let y = ln_pos::<A>(x);
    let y = if b == POS_INF_BITS { f32::INFINITY } else { y };
    let y = if (b & ABS_MASK) == 0 {
        f32::NEG_INFINITY
    } else {
        y
    };
    if (b & ABS_MASK) > POS_INF_BITS || (b >> 31 != 0 && (b & ABS_MASK) != 0) {
        f32::NAN
    } else {
        y
    }
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
const ROUND_MAGIC_BITS: i32 = 0x4b40_0000;

/// e^x for x ≤ 88 (NaN gives NaN, -inf and x < -104 give 0); results below
/// 2^-126 come out as subnormals.
#[inline(always)]
pub(crate) fn exp<A: Arith>(x: f32) -> f32 {
    let xc = if x < -104.0 { -104.0 } else { x };
    let xc = if xc > 88.0 { 88.0 } else { xc };
    let t = A::madd(xc, LOG2E, ROUND_MAGIC);
    let n = t - ROUND_MAGIC;
    let ni = t.to_bits() as i32 - ROUND_MAGIC_BITS;
    // r = x - n ln 2 in two steps (n·LN2_HI is exact)
    let r = A::madd(-n, LN2_HI, xc);
    let r = A::madd(-n, LN2_LO, r);
    let z = r * r;
    let mut y = 1.987_569_1e-4;
    y = A::madd(y, r, 1.398_199_9e-3);
    y = A::madd(y, r, 8.333_452e-3);
    y = A::madd(y, r, 4.166_579_6e-2);
    y = A::madd(y, r, 1.666_666_5e-1);
    y = A::madd(y, r, 0.5);
    y = A::madd(y, z, r) + 1.0;
    // 2^n as two normal factors (n in [-150, 127])
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    let res = y * s1 * s2;
    if x < -104.0 { 0.0 } else { res }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place of the f32 nearest `want`.
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let ulp = if w == 0.0 {
            f32::from_bits(1) as f64
        } else {
            (f32::from_bits(w.abs().to_bits() + 1) - w.abs()) as f64
        };
        (got as f64 - want).abs() / ulp
    }

    fn samples() -> Vec<f32> {
        let mut v = vec![
            1e-40,
            3e-44,
            f32::from_bits(1),
            f32::from_bits(2),
            f32::from_bits(0x007f_ffff),
            f32::MIN_POSITIVE,
            1.0,
            f32::MAX,
            0.5,
            2.0,
            std::f32::consts::FRAC_1_SQRT_2,
            f32::from_bits(std::f32::consts::FRAC_1_SQRT_2.to_bits() - 1),
            std::f32::consts::SQRT_2,
            1.0 + f32::EPSILON,
            1.0 - f32::EPSILON / 2.0,
            1e-6,
            0.999,
            1.001,
        ];
        for k in -149i32..128 {
            v.push(if k >= -126 {
                f32::from_bits(((k + 127) as u32) << 23)
            } else {
                f32::from_bits(1 << (k + 149))
            });
        }
        // a deterministic sweep over all exponents and many mantissas
        let mut rng = crate::test_support::random::Rng::new(0x1234_5678);
        for _ in 0..200_000 {
            let x = f32::from_bits(rng.next_u32() & 0x7f7f_ffff);
            if x > 0.0 {
                v.push(x);
            }
        }
        v
    }

    fn check_ln<A: Arith>() -> f64 {
        let mut worst = 0.0f64;
        for x in samples() {
            let want = (x as f64).ln();
            let got = ln::<A>(x);
            let u = ulps(got, want);
            assert!(u <= 2.0, "ln({x:e}) = {got:e}, want {want:e} ({u} ulp)");
            // the two parts agree with the one value to an ulp
            let (hi, lo) = ln_hilo::<A>(x);
            assert!(((hi + lo) - got).abs() <= 0.0);
            worst = worst.max(u);
        }
        worst
    }

    #[test]
    fn ln_within_2_ulp_plain() {
        let w = check_ln::<Plain>();
        eprintln!("ln (two roundings): worst {w:.3} ulp");
        assert!(w <= 2.0, "{w}");
    }

    #[test]
    fn ln_within_2_ulp_fused() {
        let w = check_ln::<Fused>();
        eprintln!("ln (fused): worst {w:.3} ulp");
        assert!(w <= 2.0, "{w}");
    }

    #[test]
    fn ln_subnormals_are_exact_in_approach() {
        // WGSL's log gives -88.02 for 1e-40 on lavapipe; the true value is -92.10.
        let got = ln::<Plain>(1e-40);
        assert!((got as f64 - (1e-40f32 as f64).ln()).abs() < 1e-5, "{got}");
        let got = ln::<Plain>(f32::from_bits(1));
        assert!((got as f64 - (-149.0 * std::f64::consts::LN_2)).abs() < 1e-5);
    }

    #[test]
    fn ln_special_cases() {
        assert_eq!(ln::<Plain>(0.0), f32::NEG_INFINITY);
        assert_eq!(ln::<Plain>(-0.0), f32::NEG_INFINITY);
        assert_eq!(ln::<Plain>(f32::INFINITY), f32::INFINITY);
        assert!(ln::<Plain>(-1.0).is_nan());
        assert!(ln::<Plain>(f32::NAN).is_nan());
        assert!(ln::<Plain>(f32::NEG_INFINITY).is_nan());
        assert_eq!(ln::<Plain>(1.0), 0.0);
    }

    fn check_exp<A: Arith>() {
        let mut x = -104.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = exp::<A>(x);
            if want >= f32::MIN_POSITIVE as f64 {
                let u = ulps(got, want);
                assert!(u <= 2.0, "exp({x}) = {got:e}, want {want:e} ({u} ulp)");
            } else {
                // subnormal results: within 1.5 of the smallest step
                let d = (got as f64 - want).abs() / f32::from_bits(1) as f64;
                assert!(d <= 1.5, "exp({x}) = {got:e}, want {want:e}");
            }
            x += 0.001_37;
        }
        for x in [0.0f32, -0.0, 1e-8, -1e-8, -1e-30, -87.5, -100.0, -103.9] {
            let want = (x as f64).exp();
            let got = exp::<A>(x) as f64;
            assert!((got - want).abs() <= 2.0 * f32::EPSILON as f64 * want + 2e-45);
        }
        assert_eq!(exp::<A>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp::<A>(-200.0), 0.0);
        assert!(exp::<A>(f32::NAN).is_nan());
    }

    #[test]
    fn exp_within_2_ulp() {
        check_exp::<Plain>();
        check_exp::<Fused>();
    }
}
