//! The per-step recurrent product `c (+)= a · b` with `b` packed once per call.
//!
//! `a [M, K]` is the state (`h [B, H]` forward, `drec [B, G·H]` backward), `b [K, N]` the
//! recurrent weights (`W_hhᵀ [H, G·H]` forward, `W_hh [G·H, H]` backward). `M` (the batch)
//! is small and the product runs once per time step, so a general GEMM would spend a
//! large share of each step repacking `b`; here `b` is packed once per call into column
//! panels `[K, NR]` and every step reads them as they are.
//!
//! For `f32` the micro-kernel holds an `MR × NR` block of `c` in registers (AVX-512:
//! 8 × 32 in 16 registers; AVX2: 4 × 32 in 16) and runs `acc = fma(a[r, k], b[k, :], acc)`
//! over `k` in order; the baseline path does the same with `f32::mul_add`, so every level
//! gives the same bits, and so does every thread count (threads take whole panels). `f64`
//! calls the general GEMM of `linalg`.

use crate::float::Float;
use crate::linalg::{gemm, par};
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// Weights prepared for repeated products `c (+)= a · b`.
pub trait RecurrentWeights<T>: Send + Sync + Sized {
    /// Prepares `b [K, N]` (any strides).
    fn prepare(b: &ArrayView2<'_, T>) -> Self;
    /// `c := a · b` (`accumulate == false`) or `c += a · b`; `a` and `c` have contiguous
    /// rows.
    fn apply(
        &self,
        a: &ArrayView2<'_, T>,
        c: &mut ArrayViewMut2<'_, T>,
        accumulate: bool,
        threads: usize,
    );
}

/// The `f64` path: a contiguous copy of `b` and the general GEMM.
#[derive(Debug, Clone)]
pub struct GemmWeights<T>(Array2<T>);

impl<T: Float> RecurrentWeights<T> for GemmWeights<T> {
    fn prepare(b: &ArrayView2<'_, T>) -> Self {
        GemmWeights(b.as_standard_layout().into_owned())
    }

    fn apply(
        &self,
        a: &ArrayView2<'_, T>,
        c: &mut ArrayViewMut2<'_, T>,
        accumulate: bool,
        threads: usize,
    ) {
        let beta = if accumulate { T::one() } else { T::zero() };
        let work = a.nrows() * a.ncols() * self.0.ncols();
        gemm(
            T::one(),
            a,
            &self.0.view(),
            beta,
            c,
            par(if work >= 1 << 22 { threads } else { 1 }),
        );
    }
}

/// Columns per packed panel.
const NR: usize = 32;

/// `b [K, N]` packed into `ceil(N / NR)` panels `[K, NR]` (zero-padded), for `f32`.
#[derive(Debug, Clone)]
pub struct PackedF32 {
    k: usize,
    n: usize,
    panels: Vec<f32>,
}

impl RecurrentWeights<f32> for PackedF32 {
    fn prepare(b: &ArrayView2<'_, f32>) -> Self {
        let (k, n) = b.dim();
        let np = n.div_ceil(NR);
        let mut panels = vec![0.0f32; np * k * NR];
        for p in 0..np {
            let panel = &mut panels[p * k * NR..(p + 1) * k * NR];
            for kk in 0..k {
                for j in 0..NR.min(n - p * NR) {
                    panel[kk * NR + j] = b[[kk, p * NR + j]];
                }
            }
        }
        PackedF32 { k, n, panels }
    }

    fn apply(
        &self,
        a: &ArrayView2<'_, f32>,
        c: &mut ArrayViewMut2<'_, f32>,
        accumulate: bool,
        threads: usize,
    ) {
        assert_eq!(a.ncols(), self.k, "recurrent product: inner dimension");
        assert_eq!(
            c.dim(),
            (a.nrows(), self.n),
            "recurrent product: output shape"
        );
        assert!(
            a.strides()[1] == 1 && c.strides()[1] == 1,
            "recurrent product: rows must be contiguous"
        );
        let m = a.nrows();
        let (lda, ldc) = (a.strides()[0] as usize, c.strides()[0] as usize);
        let a = a.as_slice_memory_order().expect("contiguous rows");
        let c = c.as_slice_memory_order_mut().expect("contiguous rows");
        let np = self.n.div_ceil(NR);
        let level = crate::simd::level();
        let run = |panels: std::ops::Range<usize>, c: &mut [f32]| {
            for p in panels {
                let w = &self.panels[p * self.k * NR..(p + 1) * self.k * NR];
                let cols = NR.min(self.n - p * NR);
                panel_product(
                    level,
                    a,
                    lda,
                    m,
                    self.k,
                    w,
                    c,
                    ldc,
                    p * NR,
                    cols,
                    accumulate,
                );
            }
        };
        if threads < 2 || np < 2 || m * self.k * self.n < (1 << 22) {
            return run(0..np, c);
        }
        // Halve the panels across the threads with `rayon::join` (no allocation per step).
        fn split(
            panels: std::ops::Range<usize>,
            threads: usize,
            out: &SharedOut,
            run: &(dyn Fn(std::ops::Range<usize>, &mut [f32]) + Sync),
        ) {
            if threads < 2 || panels.len() < 2 {
                // SAFETY: `out` covers all of `c`, which outlives the call; the panels
                // of this range write only their own columns of each row, and the
                // ranges given to concurrent calls are disjoint.
                return run(panels, unsafe { out.slice() });
            }
            let mid = panels.start + panels.len() / 2;
            let half = threads / 2;
            rayon::join(
                || split(panels.start..mid, threads - half, out, run),
                || split(mid..panels.end, half, out, run),
            );
        }
        split(0..np, threads, &SharedOut(c.as_mut_ptr(), c.len()), &run);
    }
}

/// The output of a product shared by tasks that write disjoint columns.
struct SharedOut(*mut f32, usize);

// SAFETY: only used to hand disjoint column panels of one slice to rayon tasks.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// The slice must be alive and concurrent users must write disjoint elements.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self) -> &mut [f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0, self.1) }
    }
}

/// `c[:, c0..c0 + cols] (+)= a · w` for one panel `w [K, NR]`, at `level`.
#[allow(clippy::too_many_arguments)]
fn panel_product(
    level: crate::simd::Level,
    a: &[f32],
    lda: usize,
    m: usize,
    k: usize,
    w: &[f32],
    c: &mut [f32],
    ldc: usize,
    c0: usize,
    cols: usize,
    accumulate: bool,
) {
    let mut acc = [0.0f32; NR];
    let mut r = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::Level;
        match level {
            // SAFETY: `level()` only reports AVX-512F when the CPU has it.
            Level::Avx512 => {
                r = unsafe { x86::rows_avx512(a, lda, m, k, w, c, ldc, c0, cols, accumulate) }
            }
            // SAFETY: as above, for AVX2 and FMA.
            Level::Avx2 => {
                r = unsafe { x86::rows_avx2(a, lda, m, k, w, c, ldc, c0, cols, accumulate) }
            }
            Level::Scalar => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    // Rows the vector kernels left (all of them at the baseline level): one at a time, the
    // same fused multiply-adds in the same order.
    while r < m {
        acc.fill(0.0);
        for kk in 0..k {
            let av = a[r * lda + kk];
            for (s, &wv) in acc.iter_mut().zip(&w[kk * NR..(kk + 1) * NR]) {
                *s = av.mul_add(wv, *s);
            }
        }
        store(
            &acc[..cols],
            &mut c[r * ldc + c0..r * ldc + c0 + cols],
            accumulate,
        );
        r += 1;
    }
}

#[inline(always)]
fn store(acc: &[f32], dst: &mut [f32], accumulate: bool) {
    for (d, &v) in dst.iter_mut().zip(acc) {
        *d = if accumulate { *d + v } else { v };
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{store, NR};
    use std::arch::x86_64::*;

    /// Defines `$rows(a, lda, m, k, w, c, ldc, c0, cols, accumulate) -> usize`: all rows,
    /// in blocks of `$mr` (an `$mr × NR` block of `c` in registers), then one at a time;
    /// `acc = fma(a[r, k], w[k, :], acc)` over `k` in order, as the baseline path does.
    macro_rules! panel_rows {
        ($rows:ident, $block:ident, $feat:literal, $vec:ty, $lanes:expr, $mr:expr,
         $zero:ident, $load:ident, $set1:ident, $fmadd:ident, $storeu:ident) => {
            /// One block of `R` rows starting at row `r0`.
            #[target_feature(enable = $feat)]
            #[allow(clippy::too_many_arguments)]
            fn $block<const R: usize>(
                a: &[f32],
                lda: usize,
                r0: usize,
                k: usize,
                w: &[f32],
                c: &mut [f32],
                ldc: usize,
                c0: usize,
                cols: usize,
                accumulate: bool,
            ) {
                const V: usize = NR / $lanes;
                assert!(w.len() >= k * NR && (r0 + R - 1) * lda + k <= a.len());
                let mut acc = [[$zero(); V]; R];
                for kk in 0..k {
                    // SAFETY: `kk * NR + NR <= k * NR <= w.len()` (asserted above).
                    let wv: [$vec; V] = std::array::from_fn(|q| unsafe {
                        $load(w.as_ptr().add(kk * NR + q * $lanes))
                    });
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        // SAFETY: `(r0 + r) * lda + kk < a.len()` (asserted above).
                        let av = $set1(unsafe { *a.get_unchecked((r0 + r) * lda + kk) });
                        for (s, &wq) in acc_r.iter_mut().zip(&wv) {
                            *s = $fmadd(av, wq, *s);
                        }
                    }
                }
                let mut buf = [0.0f32; NR];
                for (r, acc_r) in acc.iter().enumerate() {
                    for (q, &v) in acc_r.iter().enumerate() {
                        // SAFETY: `buf` holds NR = V · lanes floats.
                        unsafe { $storeu(buf.as_mut_ptr().add(q * $lanes), v) };
                    }
                    let row = (r0 + r) * ldc + c0;
                    store(&buf[..cols], &mut c[row..row + cols], accumulate);
                }
            }

            #[target_feature(enable = $feat)]
            #[allow(clippy::too_many_arguments)]
            pub(super) fn $rows(
                a: &[f32],
                lda: usize,
                m: usize,
                k: usize,
                w: &[f32],
                c: &mut [f32],
                ldc: usize,
                c0: usize,
                cols: usize,
                accumulate: bool,
            ) -> usize {
                let mut r0 = 0;
                while r0 + $mr <= m {
                    $block::<{ $mr }>(a, lda, r0, k, w, c, ldc, c0, cols, accumulate);
                    r0 += $mr;
                }
                while r0 < m {
                    $block::<1>(a, lda, r0, k, w, c, ldc, c0, cols, accumulate);
                    r0 += 1;
                }
                r0
            }
        };
    }

    // AVX-512: 8 rows × 2 zmm; AVX2: 4 rows × 4 ymm (16 accumulator registers each).
    panel_rows!(
        rows_avx512,
        block_avx512,
        "avx512f",
        __m512,
        16,
        8,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps
    );
    panel_rows!(
        rows_avx2,
        block_avx2,
        "avx2,fma",
        __m256,
        8,
        4,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{set_level, Level};
    use ndarray::Array2;

    #[test]
    fn packed_product_is_exact_and_identical_at_every_level() {
        // Small integers: every product and sum is exact, so any correct order agrees.
        for (m, k, n) in [
            (1, 3, 5),
            (16, 128, 512),
            (9, 7, 33),
            (8, 64, 32),
            (21, 10, 70),
            (8, 512, 1024),
        ] {
            let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
            let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j * 2) % 13) as f32 - 6.0);
            let mut want = Array2::from_elem((m, n), 1.0f32);
            gemm(1.0, &a.view(), &b.view(), 1.0, &mut want.view_mut(), par(1));
            let p = PackedF32::prepare(&b.view());
            let _guard = crate::simd::tests_lock();
            for level in [Level::Scalar, Level::Avx2, Level::Avx512] {
                if set_level(Some(level)).is_err() {
                    continue;
                }
                for threads in [1, 3] {
                    let mut got = Array2::from_elem((m, n), 1.0f32);
                    p.apply(&a.view(), &mut got.view_mut(), true, threads);
                    assert_eq!(got, want, "{m}x{k}x{n} at {level:?}, {threads} threads");
                    let mut fresh = Array2::from_elem((m, n), 7.0f32);
                    p.apply(&a.view(), &mut fresh.view_mut(), false, threads);
                    assert_eq!(fresh, &want - 1.0);
                }
            }
            set_level(None).unwrap();
        }
    }

    #[test]
    fn rounding_is_the_same_at_every_level() {
        let (m, k, n) = (19, 77, 100);
        let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 31 + j * 17) as f32).sin());
        let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 13 + j * 7) as f32).cos());
        let p = PackedF32::prepare(&b.view());
        let _guard = crate::simd::tests_lock();
        set_level(Some(Level::Scalar)).unwrap();
        let mut want = Array2::zeros((m, n));
        p.apply(&a.view(), &mut want.view_mut(), false, 1);
        for level in [Level::Avx2, Level::Avx512] {
            if set_level(Some(level)).is_ok() {
                let mut got = Array2::zeros((m, n));
                p.apply(&a.view(), &mut got.view_mut(), false, 2);
                assert_eq!(got, want, "{level:?}");
            }
        }
        set_level(None).unwrap();
    }
}
