//! Fast activations and the runtime choice of instruction set for the fused cell kernels.
//!
//! The cell kernels in `cell.rs` are written once as branch-free loops over slices and
//! compiled three times (macro [`dispatch!`] around ordinary kernel functions), inside functions with
//! `#[target_feature]` (AVX-512F, AVX2+FMA) and without (the scalar/baseline oracle);
//! [`level`] picks one at run time, so a portable wheel uses the widest vectors the CPU
//! has. All levels give bitwise-identical results: only the vector width changes (the one
//! exception is the f32 LSTM cell, which has its own AVX2 kernels, `lstm_avx2`). The
//! activations' polynomials use `mul_add`, a fused multiply-add with one rounding: an
//! FMA instruction at the vector levels and the exact software routine where the
//! baseline has none, so the bits agree there too.
//!
//! `f32` activations are evaluated in f32 from `e = exp(−|x|)` (see [`sigmoid_f32`],
//! [`tanh_f32`]), so that 16 lanes fit an AVX-512 register; they stay within 4 ulp of
//! the correctly rounded value over the whole f32 range (tested on a sweep of bit
//! patterns, subnormals, ±0, ±inf and NaN). `f64` uses the standard library's `exp` and
//! `tanh`.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level of the fused kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The target's baseline instruction set: the oracle. On aarch64 the baseline includes
    /// NEON (Advanced SIMD) and FMA, and the compiler vectorises the kernels' loops with
    /// them (e.g. the f32 activations, 4 lanes per `fmla`), so the level is named `"neon"`
    /// there; `"scalar"` elsewhere.
    Scalar,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F and AVX-512VL (every AVX-512 CPU but the Xeon Phi), beside AVX2 and FMA;
    /// VL lets the 8-lane LSTM kernels use 32 registers.
    Avx512,
}

impl Level {
    /// The name reported by `build_info`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar if cfg!(target_arch = "aarch64") => "neon",
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Parses a name given by [`Level::name`].
    pub fn parse(name: &str) -> Option<Self> {
        [Level::Scalar, Level::Avx2, Level::Avx512]
            .into_iter()
            .find(|l| l.name() == name)
    }

    fn code(self) -> u8 {
        match self {
            Level::Scalar => 1,
            Level::Avx2 => 2,
            Level::Avx512 => 3,
        }
    }
}

/// The widest level this CPU supports.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        if avx2
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return Level::Avx512;
        }
        if avx2 {
            return Level::Avx2;
        }
    }
    Level::Scalar
}

/// 0: not chosen yet; otherwise [`Level::code`].
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// The level the kernels use: the detected one unless [`set_level`] chose another.
pub fn level() -> Level {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => Level::Scalar,
        2 => Level::Avx2,
        3 => Level::Avx512,
        _ => {
            let l = detected();
            CHOSEN.store(l.code(), Ordering::Relaxed);
            l
        }
    }
}

/// Forces a level (for tests and benchmarks); `None` returns to the detected one.
///
/// # Errors
/// Returns the detected level when `want` needs instructions this CPU lacks.
pub fn set_level(want: Option<Level>) -> Result<Level, Level> {
    let best = detected();
    let l = want.unwrap_or(best);
    if l.code() > best.code() {
        return Err(best);
    }
    CHOSEN.store(l.code(), Ordering::Relaxed);
    Ok(l)
}

/// Defines `fn $name<T: Float>(args) -> R` that runs the ordinary function `$kernel`
/// compiled three times (AVX-512F, AVX2+FMA, baseline), chosen by [`level`]. The kernel is
/// written as plain Rust (rustfmt and clippy see it) and marked `#[inline(always)]`, so each
/// `#[target_feature]` wrapper gets its own copy of the loop; its slices stay arguments of
/// a real (not inlined) function, which lets the compiler treat them as non-aliasing and
/// vectorise the loop.
macro_rules! dispatch {
    ($vis:vis fn $name:ident<T: Float>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $kernel:ident) => {
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<T: Float>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512<T: Float>($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2<T: Float>($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                match $crate::simd::level() {
                    // SAFETY: `level()` only returns a level whose CPU features were
                    // detected on this machine (`set_level` refuses any other).
                    $crate::simd::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::simd::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::Level::Scalar => {}
                }
            }
            $kernel($($arg),*)
        }
    };
}
pub(crate) use dispatch;

/// `1.5 · 2^23`: adding it to an f32 rounds to the nearest integer, kept in the low bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `k · LN2_HI` is exact for the `k` that occur (|k| < 2^9).
const LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 0.693145751953125
const LN2_LO: f32 = 1.428_606_8e-6;

/// `exp(y)` for `y <= 0` in f32 (subnormal results included), branch-free.
///
/// `k = round(y / ln 2)`, `r = y − k·ln 2` (`|r| ≤ ln2/2`), `exp(r)` by its degree-7 Taylor
/// polynomial (truncation < 6e-9 relative), then `2^k` applied in two halves so that
/// results down to the subnormal range round once. `y` below −110 gives 0; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_neg(y: f32) -> f32 {
    let y = y.max(-110.0);
    let t = y * LOG2E + ROUND_MAGIC;
    let k = t - ROUND_MAGIC;
    let r = (y - k * LN2_HI) - k * LN2_LO;
    let mut p: f32 = 1.0 / 5040.0;
    p = p.mul_add(r, 1.0 / 720.0);
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // k in [-159, 0] sits in the low bits of t; split it into two normal powers of two.
    let ki = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let k1 = ki >> 1;
    let k2 = ki - k1;
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    p * pow2(k1) * pow2(k2)
}

/// Logistic sigmoid of an f32 (within 4 ulp, tested over the whole range):
/// `1 / (1 + e)` for `x ≥ 0` and `e / (1 + e)` below, with `e = exp(−|x|)`, so neither
/// side cancels and tiny results keep their subnormal precision.
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    // `y.max()` above maps NaN to -110; keep NaN by taking it from `x` itself.
    let e = exp_neg(-x.abs());
    let num = if x >= 0.0 { 1.0 } else { e };
    let s = num / (1.0 + e);
    if x.is_nan() {
        x
    } else {
        s
    }
}

/// `tanh` of an f32 (within 4 ulp, tested over the whole range); keeps the sign of ±0.
/// `|x| < 0.3`: `x·(1 + x²·P(x²))`, the Taylor series to `x¹³` (truncation < 2e-9
/// relative); above: `(1 − e)/(1 + e)` with `e = exp(−2|x|)`, which does not cancel there.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let e = exp_neg(-2.0 * a);
    let big = (1.0 - e) / (1.0 + e);
    let big = if x < 0.0 { -big } else { big };
    let z = x * x;
    let mut p: f32 = 21_844.0 / 6_081_075.0;
    p = p.mul_add(z, -1_382.0 / 155_925.0);
    p = p.mul_add(z, 62.0 / 2_835.0);
    p = p.mul_add(z, -17.0 / 315.0);
    p = p.mul_add(z, 2.0 / 15.0);
    p = p.mul_add(z, -1.0 / 3.0);
    let small = x * (1.0 + z * p);
    if a < 0.3 || x.is_nan() {
        small
    } else {
        big
    }
}

/// Serialises the tests that force a level (the choice is global).
#[cfg(test)]
pub(crate) fn tests_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Test helpers shared with the other activation kernels' tests (`lstm_avx2`).
#[cfg(test)]
pub(crate) mod testing {
    /// The distance in ulp of two f32 (0 for two NaN, `u32::MAX` for one).
    pub(crate) fn ulp_diff(a: f32, b: f32) -> u32 {
        if a.is_nan() || b.is_nan() {
            return if a.is_nan() && b.is_nan() {
                0
            } else {
                u32::MAX
            };
        }
        // Map the floats onto a monotone integer line (−0 and +0 coincide).
        let k = |v: f32| {
            let b = v.to_bits();
            if b >> 31 == 1 {
                -i64::from(b & 0x7fff_ffff)
            } else {
                i64::from(b)
            }
        };
        (k(a) - k(b)).unsigned_abs() as u32
    }

    /// Every 97th bit pattern (both signs, all exponents) plus the special values.
    pub(crate) fn sweep(mut check: impl FnMut(f32)) {
        let mut bits = 0u32;
        while let Some(next) = bits.checked_add(97) {
            check(f32::from_bits(bits));
            bits = next;
        }
        for v in [
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            1e-45,
        ] {
            check(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{sweep, ulp_diff};
    use super::*;

    #[test]
    fn f32_activations_within_four_ulp_over_the_whole_range() {
        let mut worst = (0u32, 0u32);
        sweep(|x| {
            let want_t = (x as f64).tanh() as f32;
            let want_s = (1.0 / (1.0 + (-(x as f64)).exp())) as f32;
            let dt = ulp_diff(tanh_f32(x), want_t);
            let ds = ulp_diff(sigmoid_f32(x), want_s);
            assert!(dt <= 4, "tanh({x:e}) = {:e}, want {want_t:e}", tanh_f32(x));
            assert!(
                ds <= 4,
                "sigmoid({x:e}) = {:e}, want {want_s:e}",
                sigmoid_f32(x)
            );
            worst = (worst.0.max(dt), worst.1.max(ds));
        });
        // Seen here: tanh 2 ulp, sigmoid 2 ulp.
        eprintln!("max ulp error: tanh {}, sigmoid {}", worst.0, worst.1);
    }

    #[test]
    fn special_values() {
        assert_eq!(tanh_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
        assert!(tanh_f32(-0.0).is_sign_negative() && tanh_f32(-0.0) == 0.0);
        assert!(tanh_f32(0.0).is_sign_positive() && tanh_f32(0.0) == 0.0);
        assert!(tanh_f32(f32::NAN).is_nan());
        assert_eq!(sigmoid_f32(f32::INFINITY), 1.0);
        assert_eq!(sigmoid_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(sigmoid_f32(0.0), 0.5);
        assert!(sigmoid_f32(f32::NAN).is_nan());
    }
}
