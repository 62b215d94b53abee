//! The one GEMM entry point of the core.
//!
//! `c := alpha * a · b + beta * c` for 2-D views of any strides. Every matrix product of
//! the forward pass and of BPTT goes through [`gemm`], so the backend can change in one
//! place. The backend is faer (runtime AVX2 / AVX-512 dispatch, its own packing); the
//! caller says how many threads it may use, so a GEMM inside a parallel region runs
//! single-threaded.

use crate::float::Float;
use faer::{Accum, MatMut, MatRef, Par};
use ndarray::{ArrayView2, ArrayViewMut2};
use std::num::NonZeroUsize;

/// Threads a GEMM may use: `1` for a call inside a parallel region.
pub fn par(threads: usize) -> Par {
    match NonZeroUsize::new(threads) {
        Some(n) if threads > 1 => Par::Rayon(n),
        _ => Par::Seq,
    }
}

/// `par` with at most the threads the policy gives a product of `work` multiply-adds
/// (see `parallel`).
fn capped(par: Par, work: usize) -> Par {
    match par {
        Par::Rayon(n) => self::par(crate::parallel::gemm_threads(n.get(), work)),
        seq => seq,
    }
}

/// `c := alpha * a · b + beta * c`, on up to the threads `par` allows (fewer for a small
/// product).
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
    par: Par,
) {
    assert_eq!(a.ncols(), b.nrows(), "gemm: inner dimensions");
    assert_eq!(c.dim(), (a.nrows(), b.ncols()), "gemm: output shape");
    if c.is_empty() {
        return;
    }
    let accum = if beta == T::zero() {
        Accum::Replace
    } else {
        if beta != T::one() {
            c.mapv_inplace(|v| v * beta);
        }
        Accum::Add
    };
    let par = capped(par, a.nrows() * a.ncols() * b.ncols());
    let (cs0, cs1) = (c.strides()[0], c.strides()[1]);
    // SAFETY: each view's pointer, dimensions and element strides describe exactly the
    // memory ndarray lets that view address; `c` is borrowed mutably for the whole call,
    // so the faer views are the only access while they live, and `a`, `b` cannot alias
    // `c` (Rust's borrow rules forbid it).
    let (a, b, c) = unsafe {
        (
            MatRef::<T>::from_raw_parts(
                a.as_ptr(),
                a.nrows(),
                a.ncols(),
                a.strides()[0],
                a.strides()[1],
            ),
            MatRef::<T>::from_raw_parts(
                b.as_ptr(),
                b.nrows(),
                b.ncols(),
                b.strides()[0],
                b.strides()[1],
            ),
            MatMut::<T>::from_raw_parts_mut(c.as_mut_ptr(), c.nrows(), c.ncols(), cs0, cs1),
        )
    };
    faer::linalg::matmul::matmul(c, accum, a, b, alpha, par);
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
        gemm(1.0, &a.view(), &b.view(), 1.0, &mut c.view_mut(), par(1));
        assert_eq!(c, array![[4.0, 3.0], [8.0, 5.0]]);
        gemm(2.0, &a.view(), &b.t(), 0.0, &mut c.view_mut(), par(2));
        assert_eq!(c, array![[2.0, 6.0], [6.0, 14.0]]);
    }
}
