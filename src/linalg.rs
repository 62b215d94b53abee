//! The one GEMM entry point of the core.
//!
//! `c := alpha * a · b + beta * c` for 2-D views of any strides. Every matrix product of
//! the forward pass and of BPTT goes through [`gemm`], so the backend can change in one
//! place.

use crate::float::Float;
use ndarray::{ArrayView2, ArrayViewMut2};

/// `c := alpha * a · b + beta * c`.
///
/// # Panics
/// When the shapes do not agree (`a: (m, k)`, `b: (k, n)`, `c: (m, n)`); callers in the
/// core size their buffers from validated shapes, so this is an internal invariant.
#[inline]
pub fn gemm<T: Float>(
    alpha: T,
    a: &ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    beta: T,
    c: &mut ArrayViewMut2<'_, T>,
) {
    debug_assert_eq!(a.ncols(), b.nrows());
    debug_assert_eq!(c.dim(), (a.nrows(), b.ncols()));
    if a.nrows() == 0 || b.ncols() == 0 {
        return;
    }
    ndarray::linalg::general_mat_mul(alpha, a, b, beta, c);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn accumulates_with_beta() {
        let a = array![[1.0f64, 2.0], [3.0, 4.0]];
        let b = array![[1.0f64, 0.0], [1.0, 1.0]];
        let mut c = array![[1.0f64, 1.0], [1.0, 1.0]];
        gemm(1.0, &a.view(), &b.view(), 1.0, &mut c.view_mut());
        assert_eq!(c, array![[4.0, 3.0], [8.0, 5.0]]);
        gemm(2.0, &a.view(), &b.t(), 0.0, &mut c.view_mut());
        assert_eq!(c, array![[2.0, 6.0], [6.0, 14.0]]);
    }
}
