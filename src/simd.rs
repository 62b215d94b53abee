//! Fast activations and the runtime choice of instruction set for the fused cell kernels.
//!
//! The cell kernels in `cell.rs` are written once as branch-free loops over slices and
//! compiled three times (`sequence.rs`, macro `dispatched!`), inside functions with
//! `#[target_feature]` (AVX-512F, AVX2+FMA) and without (the scalar/baseline oracle);
//! [`level`] picks one at run time,
//! so a portable wheel uses the widest vectors the CPU has. No kernel uses `mul_add`, so
//! all levels give bitwise-identical results: only the vector width changes.
//!
//! `f32` activations are evaluated in `f64` and rounded once:
//! `exp(y) = 2^k · p(r)`, `k = round(y / ln 2)`, `r = y − k·ln 2` (`|r| ≤ ln2 / 2`),
//! `p` the degree-11 Taylor polynomial (relative error < 1e-13 before rounding);
//! `sigmoid(x) = 1 / (1 + exp(−x))`; `tanh(x) = 1 − 2 / (exp(2x) + 1)`, and
//! `tanh(x) = x·(1 − x²/3)` for `|x| < 2⁻⁷`, where the first form would cancel. The
//! result is within 1 ulp of the correctly rounded value; ±inf saturate, NaN propagates.
//! `f64` uses the standard library's `exp` and `tanh`.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level of the fused kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Baseline x86-64 / any other target: the oracle.
    Scalar,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F.
    Avx512,
}

impl Level {
    /// The name reported by `build_info`.
    pub fn name(self) -> &'static str {
        match self {
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
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Level::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
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

/// Defines `fn $name<T: Float>(args) -> R` compiled three times (AVX-512F, AVX2+FMA,
/// baseline) and dispatched on [`level`]. The kernel's slices stay arguments of a real
/// (not inlined) function: that is what lets the compiler treat them as non-aliasing and
/// vectorise the loop.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<T: Float>($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments, clippy::unused_unit)]
        $vis fn $name<T: Float>($($arg: $ty),*) -> $ret {
            #[inline(always)]
            #[allow(clippy::too_many_arguments, clippy::unused_unit)]
            fn kernel<T: Float>($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512<T: Float>($($arg: $ty),*) -> $ret {
                    kernel($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2<T: Float>($($arg: $ty),*) -> $ret {
                    kernel($($arg),*)
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
            kernel($($arg),*)
        }
    };
}
pub(crate) use multiversion;

const LN2_HI: f64 = 0.693_147_180_369_123_8;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
const LOG2E: f64 = std::f64::consts::LOG2_E;
/// `1.5 · 2^52`: adding it rounds to the nearest integer, kept in the low mantissa bits.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

/// `exp(y)` in f64, branch-free (vectorisable), relative error < 1e-13 for the clamped
/// range `|y| ≤ 708`; larger `|y|` saturate there, NaN propagates.
#[inline(always)]
pub fn exp_approx(y: f64) -> f64 {
    // `clamp` (unlike min/max) lets NaN through.
    let y = y.clamp(-708.0, 708.0);
    let t = y * LOG2E + ROUND_MAGIC;
    let k = t - ROUND_MAGIC;
    let r = (y - k * LN2_HI) - k * LN2_LO;
    // 2^k from the integer k sitting in the low bits of t.
    let ki = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    let scale = f64::from_bits(ki.wrapping_add(1023) << 52);
    // Taylor polynomial of degree 11 on |r| <= ln2/2, Horner form.
    let mut p = 1.0 / 39_916_800.0;
    p = p * r + 1.0 / 3_628_800.0;
    p = p * r + 1.0 / 362_880.0;
    p = p * r + 1.0 / 40_320.0;
    p = p * r + 1.0 / 5_040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    p * scale
}

/// Logistic sigmoid of an f32, within 1 ulp.
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    (1.0 / (1.0 + exp_approx(-(x as f64)))) as f32
}

/// `tanh` of an f32, within 1 ulp; keeps the sign of ±0.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let xd = x as f64;
    let big = 1.0 - 2.0 / (exp_approx(2.0 * xd) + 1.0);
    let small = xd * (1.0 - xd * xd * (1.0 / 3.0));
    (if xd.abs() < 1.0 / 128.0 { small } else { big }) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp_diff(a: f32, b: f32) -> u32 {
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

    fn sweep(mut check: impl FnMut(f32)) {
        // Every 97th bit pattern (both signs, all exponents) plus the special values.
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

    #[test]
    fn f32_activations_within_one_ulp_over_the_whole_range() {
        let mut worst = (0u32, 0u32);
        sweep(|x| {
            let want_t = (x as f64).tanh() as f32;
            let want_s = (1.0 / (1.0 + (-(x as f64)).exp())) as f32;
            let dt = ulp_diff(tanh_f32(x), want_t);
            let ds = ulp_diff(sigmoid_f32(x), want_s);
            assert!(dt <= 1, "tanh({x:e}) = {:e}, want {want_t:e}", tanh_f32(x));
            assert!(
                ds <= 1,
                "sigmoid({x:e}) = {:e}, want {want_s:e}",
                sigmoid_f32(x)
            );
            worst = (worst.0.max(dt), worst.1.max(ds));
        });
        assert!(worst.0 <= 1 && worst.1 <= 1);
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
