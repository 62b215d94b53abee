//! Dropout between stacked layers (PyTorch's `dropout=p`): in a training forward pass the
//! output of every layer but the last is multiplied, element by element, by a mask of
//! `0` (probability `p`) and `1/(1−p)` before the layer above reads it.
//!
//! The mask is a pure function of `(seed, layer, t, b, j)`: element `e = (t·B + b)·W + j`
//! of boundary `l` (time-major, `W = D·H`) is kept when the `e`-th output of a SplitMix64
//! stream keyed by `(seed, l)`, as a uniform number in `[0, 1)` (53 bits), is `>= p`.
//! The tape keeps only `(p, seed)`, and backward regenerates the mask (no bits stored),
//! so the mask does not depend on the number of threads and costs no tape memory.

use crate::error::{Error, Result};
use crate::float::Float;
use ndarray::{Array3, ArrayViewMut3};

/// Dropout of probability `p` between layers, with the masks of `seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    pub p: f64,
    pub seed: u64,
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Dropout {
    /// Checks `p` (in `[0, 1]`).
    ///
    /// # Errors
    /// [`Error::Value`] naming `dropout`.
    pub fn validate(&self) -> Result<()> {
        if (0.0..=1.0).contains(&self.p) {
            Ok(())
        } else {
            Err(Error::value(
                "dropout",
                format!("expected a probability in [0, 1], got {}", self.p),
            ))
        }
    }

    /// Whether it changes anything.
    pub fn is_active(&self) -> bool {
        self.p > 0.0
    }

    /// The factor of every kept element: `1/(1−p)` (`0` when `p = 1`: nothing is kept).
    fn scale<T: Float>(&self) -> T {
        if self.p >= 1.0 {
            T::zero()
        } else {
            <T as num_traits::NumCast>::from(1.0 / (1.0 - self.p)).unwrap_or_else(T::zero)
        }
    }

    /// Calls `f(e, keep)` for the elements `offset..offset + n` of boundary `layer`'s
    /// mask, in order (`e` counted from `offset`).
    fn for_each(&self, layer: usize, offset: usize, n: usize, mut f: impl FnMut(usize, bool)) {
        let key = mix(self.seed ^ mix((layer as u64 + 1).wrapping_mul(GOLDEN)));
        let threshold = self.p;
        let mut state = key.wrapping_add((offset as u64).wrapping_mul(GOLDEN));
        for e in 0..n {
            state = state.wrapping_add(GOLDEN);
            let u = (mix(state) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            f(e, u >= threshold);
        }
    }

    /// Multiplies `a` (`[T, B, W]`, time-major, contiguous) by boundary `layer`'s mask.
    pub(crate) fn apply<T: Float>(&self, layer: usize, a: &mut ArrayViewMut3<'_, T>) {
        self.apply_from(layer, 0, a);
    }

    /// Multiplies `a` by the elements of boundary `layer`'s mask from `offset` on (a
    /// segment of time steps: `offset = t0·B·W`).
    pub(crate) fn apply_from<T: Float>(
        &self,
        layer: usize,
        offset: usize,
        a: &mut ArrayViewMut3<'_, T>,
    ) {
        let scale = self.scale::<T>();
        let s = a.as_slice_mut().expect("contiguous time-major buffer");
        self.for_each(layer, offset, s.len(), |e, keep| {
            s[e] = if keep { s[e] * scale } else { T::zero() };
        });
    }

    /// The mask of boundary `layer` (after layer `layer`, before layer `layer + 1`) for a
    /// pass of shape `[T, B, W]`: `0` or `1/(1−p)` per element.
    ///
    /// # Errors
    /// [`Error::Value`] for a bad `p`; [`Error::Memory`] when it cannot be allocated.
    pub fn mask<T: Float>(&self, layer: usize, shape: (usize, usize, usize)) -> Result<Array3<T>> {
        self.validate()?;
        let mut m: Array3<T> = crate::buffer::zeros(shape, "the dropout mask")?;
        let scale = self.scale::<T>();
        let s = m.as_slice_mut().expect("contiguous");
        self.for_each(layer, 0, s.len(), |e, keep| {
            if keep {
                s[e] = scale;
            }
        });
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_have_the_asked_rate_and_scale_and_differ_by_seed_and_layer() {
        let d = Dropout { p: 0.3, seed: 42 };
        let m: Array3<f64> = d.mask(0, (50, 8, 40)).unwrap();
        let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / m.len() as f64;
        assert!((kept - 0.7).abs() < 0.02, "kept {kept}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-15));
        let again: Array3<f64> = d.mask(0, (50, 8, 40)).unwrap();
        assert_eq!(m, again);
        let other_layer: Array3<f64> = d.mask(1, (50, 8, 40)).unwrap();
        assert_ne!(m, other_layer);
        let other_seed: Array3<f64> = Dropout { p: 0.3, seed: 43 }.mask(0, (50, 8, 40)).unwrap();
        assert_ne!(m, other_seed);
        let mut a = Array3::<f64>::ones((50, 8, 40));
        d.apply(0, &mut a.view_mut());
        assert_eq!(a, m);
        let mut tail = Array3::<f64>::ones((20, 8, 40));
        d.apply_from(0, 30 * 8 * 40, &mut tail.view_mut());
        assert_eq!(tail, m.slice(ndarray::s![30.., .., ..]));
        assert!(Dropout { p: 1.5, seed: 0 }.validate().is_err());
        let all: Array3<f32> = Dropout { p: 1.0, seed: 0 }.mask(0, (2, 2, 2)).unwrap();
        assert!(all.iter().all(|&v| v == 0.0));
    }
}
