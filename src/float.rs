//! The float types the core is generic over (`f32`, `f64`) and their scalar activations.
//!
//! `sigmoid(x) = 1 / (1 + exp(-x))`, `tanh(x)`, `relu(x) = max(x, 0)`. These scalar
//! versions are the reference every faster kernel is tested against.

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
    + 'static
{
    /// Name of the type as NumPy spells it, for messages.
    const NAME: &'static str;

    /// Logistic sigmoid `1 / (1 + exp(-x))`; saturates to exactly 0 and 1, NaN stays NaN.
    #[inline]
    fn sigmoid(self) -> Self {
        Self::one() / (Self::one() + (-self).exp())
    }

    /// Rectified linear unit; NaN stays NaN.
    #[inline]
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
}

impl Float for f64 {
    const NAME: &'static str = "float64";
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
