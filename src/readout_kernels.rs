//! The f32 softmax row kernel of the losses (`readout`): `exp(z − max z)` over a row,
//! compiled for AVX-512F, AVX2+FMA and the baseline and chosen by `simd::level()`, as the
//! cell kernels are.

/// `exp(y)` for `y <= 0` (the cells' [`crate::simd::exp_neg`], within a few ulp, subnormal
/// results included); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_nonpositive(y: f32) -> f32 {
    let v = crate::simd::exp_neg(y);
    if y.is_nan() {
        y
    } else {
        v
    }
}

#[inline(always)]
fn kernel(z: &[f32], e: &mut [f32]) -> (f32, f64) {
    const L: usize = 16;
    let m = crate::readout::lane_max(z);
    let mut acc = [0.0f32; L];
    let n = z.len().min(e.len());
    let full = n - n % L;
    for (zc, ec) in z[..full].chunks_exact(L).zip(e[..full].chunks_exact_mut(L)) {
        for ((a, ev), &zv) in acc.iter_mut().zip(ec.iter_mut()).zip(zc) {
            let v = exp_nonpositive(zv - m);
            *ev = v;
            *a += v;
        }
    }
    let mut s: f64 = acc.iter().map(|&a| f64::from(a)).sum();
    for (ev, &zv) in e[full..n].iter_mut().zip(&z[full..n]) {
        *ev = exp_nonpositive(zv - m);
        s += f64::from(*ev);
    }
    (m, s)
}

/// Writes `exp(z − max z)` into `e` and returns `(max z, Σ e)`.
pub(crate) fn exp_shifted_f32(z: &[f32], e: &mut [f32]) -> (f32, f64) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn avx512(z: &[f32], e: &mut [f32]) -> (f32, f64) {
            kernel(z, e)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(z: &[f32], e: &mut [f32]) -> (f32, f64) {
            kernel(z, e)
        }
        match crate::simd::level() {
            // SAFETY: `level()` only returns a level whose CPU features were detected on
            // this machine (`set_level` refuses any other).
            crate::simd::Level::Avx512 => return unsafe { avx512(z, e) },
            // SAFETY: as above.
            crate::simd::Level::Avx2 => return unsafe { avx2(z, e) },
            crate::simd::Level::Scalar => {}
        }
    }
    kernel(z, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_over_the_softmax_range() {
        let mut worst = 0.0f64;
        let mut y = 0.0f32;
        while y > -87.0 {
            let got = f64::from(exp_nonpositive(y));
            let want = f64::from(y).exp();
            worst = worst.max(((got - want) / want).abs());
            y -= 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
        assert!(exp_nonpositive(-1e30) < 1e-37);
    }

    #[test]
    fn row_kernel_sums_and_shifts() {
        let z: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let mut e = vec![0.0f32; z.len()];
        let (m, s) = exp_shifted_f32(&z, &mut e);
        let want_m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(m, want_m);
        let want_s: f64 = z.iter().map(|&v| f64::from(v - m).exp()).sum();
        assert!((s - want_s).abs() < 1e-6 * want_s);
        assert!(e
            .iter()
            .zip(&z)
            .all(|(&a, &v)| (f64::from(a) - f64::from(v - m).exp()).abs() < 1e-6));
    }
}
