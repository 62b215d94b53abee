//! The float types the core is generic over (`f32`, `f64`) and their scalar activations.
//!
//! `sigmoid(x) = 1 / (1 + exp(-x))`, `tanh(x)`, `relu(x) = max(x, 0)`: `f64` uses the
//! standard library; `f32` the fast kernels of `simd` (tested there against `f64`).

use ndarray::{LinalgScalar, ScalarOperand};
use std::fmt::{Debug, Display};

/// A floating-point element type of the core: implemented for `f32` and `f64`.
pub trait Float:
    num_traits::Float
    + LinalgScalar
    + ScalarOperand
    + Send
    + Sync
    + Debug
    + Display
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::MulAssign
    + faer::traits::ComplexField
    + 'static
{
    /// Name of the type as NumPy spells it, for messages.
    const NAME: &'static str;

    /// How the per-step recurrent product is computed for this type (`recurrent.rs`).
    type Recurrent: crate::recurrent::RecurrentWeights<Self>;

    /// Whether [`Float::Recurrent`]'s vector kernels outrun the GEMM on some products
    /// other than the per-step one (f32 at the AVX2 and AVX-512 levels); `f64`'s AVX2
    /// kernel stays below the GEMM's rate there (2048 × 1024 × 32: 33 against 40 GFLOP/s
    /// on one core, `dx_product_rate`).
    const RECURRENT_VECTOR: bool;

    /// Logistic sigmoid `1 / (1 + exp(-x))`; saturates to 0 and 1, NaN stays NaN.
    fn sigmoid(self) -> Self;

    /// `tanh` as the cell kernels use it (f32: the fast kernel of `simd`, within 1 ulp).
    fn act_tanh(self) -> Self;

    /// The LSTM's forward step over a row's units (`cell::lstm_forward`); `f32` uses the
    /// AVX2 kernels of `lstm_avx2` at the AVX2 and AVX-512 levels.
    #[inline(always)]
    fn lstm_forward(
        gi: &mut [Self],
        gf: &mut [Self],
        gg: &mut [Self],
        go: &mut [Self],
        c: &mut [Self],
        h: &mut [Self],
    ) {
        crate::cell::lstm_forward(gi, gf, gg, go, c, h);
    }

    /// `h = o·tanh(c)` over a row, bitwise as [`Float::lstm_forward`] computes it.
    #[inline(always)]
    fn lstm_output(o: &[Self], c: &[Self], h: &mut [Self]) {
        crate::cell::lstm_output(o, c, h);
    }

    /// The LSTM's backward step over a row's units (`cell::lstm_backward`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)] // one slice per gate
    fn lstm_backward(
        gi: &[Self],
        gf: &[Self],
        gg: &[Self],
        go: &[Self],
        c_prev: &[Self],
        dh: &mut [Self],
        dc: &mut [Self],
        di: &mut [Self],
        df: &mut [Self],
        dg: &mut [Self],
        d_o: &mut [Self],
    ) {
        crate::cell::lstm_backward(gi, gf, gg, go, c_prev, dh, dc, di, df, dg, d_o);
    }

    /// Rectified linear unit; NaN stays NaN.
    #[inline(always)]
    fn relu(self) -> Self {
        if self < Self::zero() {
            Self::zero()
        } else {
            self
        }
    }
}

impl Float for f32 {
    const NAME: &'static str = "float32";
    type Recurrent = crate::recurrent::Packed<f32>;
    const RECURRENT_VECTOR: bool = true;

    #[inline(always)]
    fn sigmoid(self) -> Self {
        crate::simd::sigmoid_f32(self)
    }

    #[inline(always)]
    fn act_tanh(self) -> Self {
        crate::simd::tanh_f32(self)
    }

    #[inline(always)]
    fn lstm_forward(
        gi: &mut [f32],
        gf: &mut [f32],
        gg: &mut [f32],
        go: &mut [f32],
        c: &mut [f32],
        h: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        match crate::simd::level() {
            crate::simd::Level::Avx512 => {
                // SAFETY: `level()` reports AVX2 or AVX-512 only where the CPU has AVX2 and
                // FMA, and AVX-512 only where it also has AVX-512F and AVX-512VL.
                return unsafe { crate::lstm_avx2::lstm_forward_avx512(gi, gf, gg, go, c, h) };
            }
            crate::simd::Level::Avx2 => {
                // SAFETY: as above.
                return unsafe { crate::lstm_avx2::lstm_forward(gi, gf, gg, go, c, h) };
            }
            crate::simd::Level::Scalar => {}
        }
        crate::cell::lstm_forward(gi, gf, gg, go, c, h);
    }

    #[inline(always)]
    fn lstm_output(o: &[f32], c: &[f32], h: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        match crate::simd::level() {
            crate::simd::Level::Avx512 => {
                // SAFETY: as in `lstm_forward`.
                return unsafe { crate::lstm_avx2::lstm_output_avx512(o, c, h) };
            }
            crate::simd::Level::Avx2 => {
                // SAFETY: as above.
                return unsafe { crate::lstm_avx2::lstm_output(o, c, h) };
            }
            crate::simd::Level::Scalar => {}
        }
        crate::cell::lstm_output(o, c, h);
    }

    #[inline(always)]
    fn lstm_backward(
        gi: &[f32],
        gf: &[f32],
        gg: &[f32],
        go: &[f32],
        c_prev: &[f32],
        dh: &mut [f32],
        dc: &mut [f32],
        di: &mut [f32],
        df: &mut [f32],
        dg: &mut [f32],
        d_o: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        match crate::simd::level() {
            crate::simd::Level::Avx512 => {
                // SAFETY: as in `lstm_forward`.
                return unsafe {
                    crate::lstm_avx2::lstm_backward_avx512(
                        gi, gf, gg, go, c_prev, dh, dc, di, df, dg, d_o,
                    )
                };
            }
            crate::simd::Level::Avx2 => {
                // SAFETY: as above.
                return unsafe {
                    crate::lstm_avx2::lstm_backward(gi, gf, gg, go, c_prev, dh, dc, di, df, dg, d_o)
                };
            }
            crate::simd::Level::Scalar => {}
        }
        crate::cell::lstm_backward(gi, gf, gg, go, c_prev, dh, dc, di, df, dg, d_o);
    }
}

impl Float for f64 {
    const NAME: &'static str = "float64";
    type Recurrent = crate::recurrent::Packed<f64>;
    const RECURRENT_VECTOR: bool = false;

    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }

    #[inline(always)]
    fn act_tanh(self) -> Self {
        self.tanh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_saturates_and_propagates_nan() {
        assert_eq!(1000.0f32.sigmoid(), 1.0);
        assert_eq!((-1000.0f32).sigmoid(), 0.0);
        assert!(f64::NAN.sigmoid().is_nan());
        assert!((0.0f64.sigmoid() - 0.5).abs() < 1e-15);
    }

    #[test]
    fn relu_keeps_nan() {
        assert!(f32::NAN.relu().is_nan());
        assert_eq!((-2.0f64).relu(), 0.0);
        assert_eq!(3.0f64.relu(), 3.0);
    }
}
