//! The portable micro-kernel of the packed product (the baseline level, and the rows the
//! vector kernels leave), and the portable transpose used in packing.

use super::{store, PanelTile, NR, TRANSPOSE};
use crate::float::Float;
use crate::simd::dispatch;

/// Rows per block of the portable kernel.
const MR_PORTABLE: usize = 4;

dispatch!(fn portable_block<T: Float>(
    a: [&[T]; MR_PORTABLE],
    rows: usize,
    w: &[T],
    sub: usize,
    second: ([&[T]; MR_PORTABLE], &[T]),
) -> [[T; NR]; MR_PORTABLE] = portable_block_kernel);

/// `acc[r] = Σ_k a[r][k] · w[k, :]` for the first `rows` of up to four rows, then on
/// over the second part `(a2, w2)` (empty rows: none), with `mul_add` in `k` order: one
/// rounding per step at every level (a fused multiply-add where the CPU has one, the
/// exact software one elsewhere), so the bits never change.
#[inline(always)]
fn portable_block_kernel<T: Float>(
    a: [&[T]; MR_PORTABLE],
    rows: usize,
    w: &[T],
    sub: usize,
    second: ([&[T]; MR_PORTABLE], &[T]),
) -> [[T; NR]; MR_PORTABLE] {
    let mut acc = [[T::zero(); NR]; MR_PORTABLE];
    for (a, w) in [(a, w), second] {
        let k = a[0].len();
        if k == 0 {
            continue;
        }
        for (h, part) in w[..k * NR].chunks_exact(k * sub).enumerate() {
            for (kk, wr) in part.chunks_exact(sub).enumerate() {
                for (acc_r, a_r) in acc.iter_mut().zip(&a).take(rows) {
                    let av = a_r[kk];
                    for (s, &wv) in acc_r[h * sub..(h + 1) * sub].iter_mut().zip(wr) {
                        *s = av.mul_add(wv, *s);
                    }
                }
            }
        }
    }
    acc
}

/// The portable kernel, from row `r0` on.
///
/// # Safety
/// As [`super::PanelKernel::panel`].
pub(super) unsafe fn portable_rows<T: Float>(t: PanelTile<T>, w: &[T], r0: usize) {
    let mut r = r0;
    while r < t.m {
        let rows = MR_PORTABLE.min(t.m - r);
        // SAFETY: rows `r..r + rows` of `a` hold `k` readable elements (the first row is
        // repeated where fewer than four are left; those results are not stored).
        let a: [&[T]; MR_PORTABLE] = std::array::from_fn(|q| unsafe {
            std::slice::from_raw_parts(t.a.add((r + q.min(rows - 1)) * t.lda), t.k)
        });
        let s2 = t.second;
        // SAFETY: as above, for the second part's `k` elements per row and its panel (the
        // tile's contract); none: empty slices.
        let second = unsafe {
            if s2.k == 0 {
                ([&[][..]; MR_PORTABLE], &[][..])
            } else {
                (
                    std::array::from_fn(|q| {
                        std::slice::from_raw_parts(s2.a.add((r + q.min(rows - 1)) * s2.lda), s2.k)
                    }),
                    std::slice::from_raw_parts(s2.w, s2.k * NR),
                )
            }
        };
        let acc = portable_block(a, rows, w, t.sub, second);
        for (q, acc_r) in acc.iter().enumerate().take(rows) {
            // SAFETY: row `r + q` of the tile of `c` is ours.
            unsafe { store(&acc_r[..t.cols], t.c.add((r + q) * t.ldc), t.base) };
        }
        r += rows;
    }
}

/// [`super::PanelKernel::transpose_block`] element by element.
pub(super) fn transpose_block_portable<T: Copy>(
    src: &[&[T]; TRANSPOSE],
    k0: usize,
    dst: &mut [T],
    stride: usize,
) {
    for kk in 0..TRANSPOSE {
        for (d, s) in dst[kk * stride..kk * stride + TRANSPOSE]
            .iter_mut()
            .zip(src)
        {
            *d = s[k0 + kk];
        }
    }
}
