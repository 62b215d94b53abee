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

    /// Logistic sigmoid `1 / (1 + exp(-x))`; saturates to 0 and 1, NaN stays NaN.
    fn sigmoid(self) -> Self;

    /// `tanh` as the cell kernels use it (f32: the fast kernel of `simd`, within 1 ulp).
    fn act_tanh(self) -> Self;

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

    #[inline(always)]
    fn sigmoid(self) -> Self {
        crate::simd::sigmoid_f32(self)
    }

    #[inline(always)]
    fn act_tanh(self) -> Self {
        crate::simd::tanh_f32(self)
    }
}

impl Float for f64 {
    const NAME: &'static str = "float64";
    type Recurrent = crate::recurrent::Packed<f64>;

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
