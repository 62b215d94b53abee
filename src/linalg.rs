//! The one GEMM entry point of the core.
//!
//! `c := alpha * a · b + beta * c` for 2-D views of any strides. Every matrix product of
//! the forward pass and of BPTT goes through [`gemm`], so the backend can change in one
//! place. The backend is faer (runtime AVX2 / AVX-512 dispatch, its own packing); the
//! caller says how many threads it may use, so a GEMM inside a parallel region runs
//! single-threaded.

use crate::buffer::zeros;
use crate::error::Result;
use crate::float::Float;
use faer::{Accum, MatMut, MatRef, Par};
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis, ShapeBuilder};
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
    if transposed_product(a, b, c) {
        column_major_product(alpha, a, b, accum, c, par);
    } else {
        split_or_faer(alpha, a, b, accum, c, par);
    }
}

/// `c := a · b` in row blocks of at least [`SPLIT_MIN_ROWS`] (at most `pieces`), each a
/// task that any idle thread of the pool may take: for a product issued while the pool's
/// other threads are still busy, which join in as they finish. Bitwise the same as
/// [`gemm`] (the blocks' rows are independent; see [`by_rows`]); `a` and `b` row-major
/// products only (not the [`transposed_product`] route).
pub fn gemm_in_row_blocks<T: Float>(
    a: &ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    c: &mut ArrayViewMut2<'_, T>,
    pieces: usize,
) {
    assert_eq!(a.ncols(), b.nrows(), "gemm: inner dimensions");
    assert_eq!(c.dim(), (a.nrows(), b.ncols()), "gemm: output shape");
    assert!(
        !transposed_product(a, b, c),
        "gemm_in_row_blocks: transposed product"
    );
    let pieces = pieces.min(a.nrows() / SPLIT_MIN_ROWS).max(1);
    by_rows(pieces, T::one(), a.view(), b, Accum::Replace, c.view_mut());
}

/// `c := alpha · a · b (+ c)`: split by rows ([`by_rows`]) when `a` has enough rows for
/// the threads `par` allows, else faer on them.
fn split_or_faer<T: Float>(
    alpha: T,
    a: &ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    accum: Accum,
    c: &mut ArrayViewMut2<'_, T>,
    par: Par,
) {
    match par {
        Par::Rayon(n) if a.nrows() >= n.get() * SPLIT_MIN_ROWS => {
            by_rows(n.get(), alpha, a.view(), b, accum, c.view_mut());
        }
        _ => faer_gemm(alpha, a, b, accum, c, par),
    }
}

/// From these rows and columns of `c` and this inner dimension, [`transposed_product`]s
/// go through column-major copies. Below, they cost about what they save, or more: a
/// 512 × 1600 × 64 product ran as fast either way; a 103 × 3200 × 256 readout gradient
/// (even with only the result column-major) ran 1.06–1.14x faster on one thread but 0.89x
/// on two, and the route must not depend on the number of threads (each element's sum
/// would round differently); `benches/results/gemm-layout-2core.md`.
const TRANSPOSED_MIN_ROWS: usize = 256;
const TRANSPOSED_MIN_COLS: usize = 128;
const TRANSPOSED_MIN_INNER: usize = 256;

/// The inner dimension is copied in blocks of this many rows of `b`, which bounds the
/// copy's memory.
const TRANSPOSED_BLOCK: usize = 2048;

/// Whether `c (+)= a · b` is a weight gradient `dᵀ · x`: `a` the transpose of a row-major
/// matrix (column-major), `b` and `c` row-major, over a long inner dimension (time ×
/// batch). faer runs this layout at 45–75% of its column-major rate on one core (a
/// 1024 × 3200 × 256 product: about 50 GFLOP/s against 65–80 with `b` and `c`
/// column-major; 4096 × 6400 × 1024: 30 against 60–70; 103 × 3200 × 256: 35 against 45–50
/// with `c` column-major), so [`column_major_product`] copies `b` and the result.
fn transposed_product<T>(
    a: &ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    c: &ArrayViewMut2<'_, T>,
) -> bool {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    m >= TRANSPOSED_MIN_ROWS
        && n >= TRANSPOSED_MIN_COLS
        && k >= TRANSPOSED_MIN_INNER
        && a.strides()[0] == 1
        && b.strides()[1] == 1
        && c.strides()[1] == 1
}

/// `c (+)= alpha · a · b` with `b` copied column-major block by block of its rows and the
/// product accumulated in a column-major buffer, then added to `c`. Each element is
/// summed over the inner dimension in the same order for any number of threads (the
/// blocks do not depend on them, and the split is by rows), so the result does not
/// depend on `par`.
fn column_major_product<T: Float>(
    alpha: T,
    a: &ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    accum: Accum,
    c: &mut ArrayViewMut2<'_, T>,
    par: Par,
) {
    let (k, n) = b.dim();
    let threads = match par {
        Par::Rayon(t) => t.get(),
        Par::Seq => 1,
    };
    let mut acc = Array2::<T>::zeros(c.raw_dim().f());
    let mut panel = Array2::<T>::zeros((TRANSPOSED_BLOCK.min(k), n).f());
    for (i, k0) in (0..k).step_by(TRANSPOSED_BLOCK).enumerate() {
        let k1 = (k0 + TRANSPOSED_BLOCK).min(k);
        let mut p = panel.slice_mut(s![..k1 - k0, ..]);
        by_tiles(threads, b.slice(s![k0..k1, ..]), p.view_mut(), &|d, v| {
            *d = v
        });
        let how = if i == 0 { Accum::Replace } else { Accum::Add };
        split_or_faer(
            alpha,
            &a.slice(s![.., k0..k1]),
            &p.view(),
            how,
            &mut acc.view_mut(),
            par,
        );
    }
    match accum {
        Accum::Replace => by_tiles(threads, acc.view(), c.view_mut(), &|d, v| *d = v),
        Accum::Add => by_tiles(threads, acc.view(), c.view_mut(), &|d, v| *d += v),
    }
}

/// `c += Σᵢ aᵢᵀ·bᵢ` over blocks of rows `(aᵢ, bᵢ)` given one at a time, in order: a
/// weight gradient `Σ dᵀ·x` over the steps of a sequence, taken block by block as the
/// steps are done. When `c` is a [`transposed_product`] by its rows and columns, the sum
/// is kept column-major (each block's `b` copied column-major into a panel, the route of
/// [`column_major_product`]) until [`finish`](Self::finish) adds it to `c`; else each
/// block goes through [`gemm`] into `c`. Each element is summed block after block, a
/// block in the GEMM's own order, so the result depends on the blocks, not on `par`.
pub struct TransposedSum<T> {
    /// The column-major sum `[m, n]` and the panel `[rows, n]`, on the copying route.
    copies: Option<(Array2<T>, Array2<T>)>,
}

impl<T: Float> TransposedSum<T> {
    /// For `c [m, n]`, with blocks copied at most `rows` rows at a time.
    pub fn new(m: usize, n: usize, rows: usize) -> Result<Self> {
        let copies = m >= TRANSPOSED_MIN_ROWS && n >= TRANSPOSED_MIN_COLS;
        let column_major =
            |r: usize, c: usize| zeros::<T, _>((c, r), "the gradients").map(|a| a.reversed_axes());
        Ok(TransposedSum {
            copies: if copies {
                Some((column_major(m, n)?, column_major(rows.max(1), n)?))
            } else {
                None
            },
        })
    }

    /// Adds `aᵀ·b` (`a [k, m]`, `b [k, n]`) to the sum (to `c [m, n]` when not copying).
    pub fn add(
        &mut self,
        a: &ArrayView2<'_, T>,
        b: &ArrayView2<'_, T>,
        c: &mut ArrayViewMut2<'_, T>,
        par: Par,
    ) {
        assert_eq!(a.nrows(), b.nrows(), "gemm: inner dimensions");
        let Some((acc, panel)) = &mut self.copies else {
            gemm(T::one(), &a.t(), b, T::one(), c, par);
            return;
        };
        assert_eq!(acc.dim(), (a.ncols(), b.ncols()), "gemm: output shape");
        let par = capped(par, a.len() * b.ncols());
        let threads = match par {
            Par::Rayon(t) => t.get(),
            Par::Seq => 1,
        };
        let step = panel.nrows();
        for k0 in (0..a.nrows()).step_by(step) {
            let k1 = (k0 + step).min(a.nrows());
            let mut p = panel.slice_mut(s![..k1 - k0, ..]);
            by_tiles(threads, b.slice(s![k0..k1, ..]), p.view_mut(), &|d, v| {
                *d = v
            });
            split_or_faer(
                T::one(),
                &a.slice(s![k0..k1, ..]).t(),
                &p.view(),
                Accum::Add,
                &mut acc.view_mut(),
                par,
            );
        }
    }

    /// Adds the sum to `c` (a no-op when the blocks went into `c` directly).
    pub fn finish(self, c: &mut ArrayViewMut2<'_, T>, threads: usize) {
        if let Some((acc, _)) = self.copies {
            by_tiles(threads, acc.view(), c.view_mut(), &|d, v| *d += v);
        }
    }
}

/// `f(&mut dst[i, j], src[i, j])` for every element, in square tiles, so that a copy
/// between a row-major and a column-major matrix reads and writes whole cache lines
/// (element by element, one side would be read with a stride of a row); split by rows
/// over `threads` threads when large.
fn by_tiles<T: Copy + Send + Sync>(
    threads: usize,
    src: ArrayView2<'_, T>,
    dst: ArrayViewMut2<'_, T>,
    f: &(impl Fn(&mut T, T) + Sync),
) {
    const TILE: usize = 32;
    assert_eq!(src.dim(), dst.dim(), "copy: shapes");
    let (rows, cols) = src.dim();
    if threads > 1 && rows >= 2 * TILE && rows * cols >= 1 << 16 {
        let first = threads / 2;
        let mid = (rows * first / threads).div_ceil(TILE) * TILE;
        let (s0, s1) = src.split_at(Axis(0), mid);
        let (d0, d1) = dst.split_at(Axis(0), mid);
        rayon::join(
            || by_tiles(first, s0, d0, f),
            || by_tiles(threads - first, s1, d1, f),
        );
        return;
    }
    // Within a tile, walk `dst` along its contiguous axis (both tiles stay in L1): make
    // that axis the first one, the inner loop's.
    let (src, mut dst) = if dst.strides()[0].unsigned_abs() <= dst.strides()[1].unsigned_abs() {
        (src, dst)
    } else {
        (src.reversed_axes(), dst.reversed_axes())
    };
    let (inner, outer) = src.dim();
    let (ss, ds) = (src.strides(), dst.strides());
    let (ss, ds) = ([ss[0], ss[1]], [ds[0], ds[1]]);
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    let at = |st: [isize; 2], i: usize, j: usize| i as isize * st[0] + j as isize * st[1];
    for i0 in (0..inner).step_by(TILE) {
        let i1 = (i0 + TILE).min(inner);
        for j0 in (0..outer).step_by(TILE) {
            for j in j0..(j0 + TILE).min(outer) {
                for i in i0..i1 {
                    // SAFETY: `i < inner` and `j < outer`, the shape of both views
                    // (asserted), so each offset addresses an element of its view; `dst`
                    // is borrowed mutably.
                    unsafe { f(&mut *dp.offset(at(ds, i, j)), *sp.offset(at(ss, i, j))) };
                }
            }
        }
    }
}

/// Rows per thread from which a GEMM is split by rows.
const SPLIT_MIN_ROWS: usize = 256;

/// Row blocks of a split GEMM start at a multiple of this (a multiple of the micro-tile
/// heights of faer's x86 kernels, e.g. 24 rows for f32 and 12 for f64 with AVX2), so that
/// a split adds no partial tiles.
const SPLIT_ALIGN: usize = 48;

/// `c := alpha · a · b (+ c)` on `threads` threads, each a block of the rows of `a` and
/// `c` with faer on one thread. For a product of many rows this is about as fast as
/// faer's own split or faster: on 2 cores, at 12 GEMM shapes of the LSTM benchmarks, 0.62
/// to 1.05 of its time (median 0.89, two runs), the most for a short inner dimension (a
/// 32-wide input projection: 0.62–0.73, where faer's split gained little on a second
/// thread); `benches/results/gemm-split-2core.md`. Every element is the same chain of
/// operations either way (faer's blocking of the inner dimension does not depend on the
/// rows), so the result is bitwise the same; the test below holds that.
fn by_rows<T: Float>(
    threads: usize,
    alpha: T,
    a: ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    accum: Accum,
    c: ArrayViewMut2<'_, T>,
) {
    in_row_blocks(threads, SPLIT_ALIGN, a, c, &|a, mut c| {
        faer_gemm(alpha, &a, b, accum, &mut c, Par::Seq)
    });
}

/// `leaf` on `pieces` blocks of the rows of `a` and `c` (at most one per row), split in
/// halves recursively by `rayon::join`, so that any idle thread of the pool takes one; the
/// blocks start at multiples of `align` where the rows allow.
pub(crate) fn in_row_blocks<T: Send + Sync>(
    pieces: usize,
    align: usize,
    a: ArrayView2<'_, T>,
    c: ArrayViewMut2<'_, T>,
    leaf: &(dyn Fn(ArrayView2<'_, T>, ArrayViewMut2<'_, T>) + Sync),
) {
    let m = a.nrows();
    if pieces < 2 || m < 2 {
        leaf(a, c);
        return;
    }
    let first = pieces / 2;
    let mid = (m * first / pieces + align / 2) / align * align;
    let mid = mid.clamp(1, m - 1);
    let (a0, a1) = a.split_at(Axis(0), mid);
    let (c0, c1) = c.split_at(Axis(0), mid);
    rayon::join(
        || in_row_blocks(first, align, a0, c0, leaf),
        || in_row_blocks(pieces - first, align, a1, c1, leaf),
    );
}

/// faer's `matmul` on ndarray views (shapes checked by [`gemm`]).
fn faer_gemm<T: Float>(
    alpha: T,
    a: &ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    accum: Accum,
    c: &mut ArrayViewMut2<'_, T>,
    par: Par,
) {
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

    fn filled<T: Float>(rows: usize, cols: usize, seed: usize) -> ndarray::Array2<T> {
        ndarray::Array2::from_shape_fn((rows, cols), |(i, j)| {
            let v = ((i * 7919 + j * 104_729 + seed * 31) % 1000) as f64 / 997.0 - 0.5;
            T::from(v).expect("small value")
        })
    }

    fn split_matches_one_thread<T: Float>() {
        // Tall products (split by rows on several threads) of inner dimensions that faer
        // blocks differently, with `b` row- and column-major, replacing and accumulating.
        for (m, k, n) in [
            (512, 32, 96),
            (1100, 300, 40),
            (2048, 1024, 7),
            (777, 5, 130),
        ] {
            let a = filled::<T>(m, k, 1);
            let b = filled::<T>(k, n, 2);
            let bt = filled::<T>(n, k, 3);
            let c0 = filled::<T>(m, n, 4);
            for b in [b.view(), bt.t()] {
                for accum in [Accum::Replace, Accum::Add] {
                    let mut want = c0.clone();
                    faer_gemm(
                        T::one(),
                        &a.view(),
                        &b,
                        accum,
                        &mut want.view_mut(),
                        Par::Seq,
                    );
                    for threads in [2, 3, 4] {
                        let mut got = c0.clone();
                        by_rows(threads, T::one(), a.view(), &b, accum, got.view_mut());
                        let same = got.iter().zip(&want).all(|(g, w)| {
                            g.to_f64().unwrap().to_bits() == w.to_f64().unwrap().to_bits()
                        });
                        assert!(same, "{m}x{k}x{n} on {threads} threads differs from one");
                    }
                    if accum == Accum::Replace && b.strides()[1] == 1 {
                        for pieces in [2, 3, 8] {
                            let mut got = c0.clone();
                            gemm_in_row_blocks(&a.view(), &b, &mut got.view_mut(), pieces);
                            assert!(
                                got.iter().zip(&want).all(|(g, w)| {
                                    g.to_f64().unwrap().to_bits() == w.to_f64().unwrap().to_bits()
                                }),
                                "{m}x{k}x{n} in {pieces} row blocks differs from one"
                            );
                        }
                    }
                }
            }
        }
    }

    /// `c` against `beta·c0 + atᵀ·b` summed in f64, element by element.
    fn assert_near_plain_sum<T: Float>(
        c: &Array2<T>,
        at: &Array2<T>,
        b: &Array2<T>,
        beta: T,
        c0: &Array2<T>,
    ) {
        let (k, (m, n)) = (at.nrows(), c.dim());
        for ((i, j), &got) in c.indexed_iter() {
            let mut want = beta.to_f64().unwrap() * c0[[i, j]].to_f64().unwrap();
            let mut scale = want.abs();
            for p in 0..k {
                let v = at[[p, i]].to_f64().unwrap() * b[[p, j]].to_f64().unwrap();
                want += v;
                scale += v.abs();
            }
            let eps = T::epsilon().to_f64().unwrap();
            let err = (got.to_f64().unwrap() - want).abs();
            // Rounding of a blocked sum of `k` terms: well within `√k` ulps of the sum of
            // magnitudes (a wrong element would be off by `scale`).
            let bound = 4.0 * (k as f64).sqrt() * eps * scale;
            assert!(err <= bound, "{m}x{k}x{n} [{i}, {j}]: {err} > {bound}");
        }
    }

    fn transposed_products_are_exact_and_independent_of_threads<T: Float>() {
        // `aᵀ·b` with `a` row-major (as the weight gradients pass it), over an inner
        // dimension of several copy blocks, against a plain sum in f64.
        for (m, k, n) in [(260, 2 * TRANSPOSED_BLOCK + 404, 130), (1100, 300, 128)] {
            let at = filled::<T>(k, m, 5);
            let b = filled::<T>(k, n, 6);
            let c0 = filled::<T>(m, n, 7);
            assert!(transposed_product(
                &at.t(),
                &b.view(),
                &c0.clone().view_mut()
            ));
            for beta in [T::zero(), T::one()] {
                let mut first: Option<ndarray::Array2<T>> = None;
                for threads in [1, 2, 3] {
                    let mut c = c0.clone();
                    gemm(
                        T::one(),
                        &at.t(),
                        &b.view(),
                        beta,
                        &mut c.view_mut(),
                        par(threads),
                    );
                    if let Some(f) = &first {
                        assert!(
                            f.iter().zip(&c).all(|(x, y)| {
                                x.to_f64().unwrap().to_bits() == y.to_f64().unwrap().to_bits()
                            }),
                            "{m}x{k}x{n} on {threads} threads differs from one"
                        );
                        continue;
                    }
                    assert_near_plain_sum(&c, &at, &b, beta, &c0);
                    first = Some(c);
                }
            }
        }
    }

    fn block_sums_are_exact_and_independent_of_threads<T: Float>() {
        // `Σ aᵢᵀ·bᵢ` over blocks of rows, on both routes (copying: 300 × 130; direct: a
        // narrow `c` of 40 columns), blocks longer than the panel included.
        for (m, n) in [(300, 130), (300, 40)] {
            let blocks = [70, 256, 3, 600];
            let k: usize = blocks.iter().sum();
            let at = filled::<T>(k, m, 8);
            let b = filled::<T>(k, n, 9);
            let mut first: Option<ndarray::Array2<T>> = None;
            for threads in [1, 2, 3] {
                let mut c = Array2::<T>::zeros((m, n));
                let mut sum = TransposedSum::new(m, n, 256).expect("small");
                let mut k0 = 0;
                for rows in blocks {
                    let r = s![k0..k0 + rows, ..];
                    sum.add(&at.slice(r), &b.slice(r), &mut c.view_mut(), par(threads));
                    k0 += rows;
                }
                sum.finish(&mut c.view_mut(), threads);
                if let Some(f) = &first {
                    let same = f.iter().zip(&c).all(|(x, y)| {
                        x.to_f64().unwrap().to_bits() == y.to_f64().unwrap().to_bits()
                    });
                    assert!(same, "{m}x{k}x{n} on {threads} threads differs from one");
                    continue;
                }
                assert_near_plain_sum(&c, &at, &b, T::zero(), &c);
                first = Some(c);
            }
        }
    }

    #[test]
    fn block_sums_match_the_plain_sum() {
        block_sums_are_exact_and_independent_of_threads::<f32>();
        block_sums_are_exact_and_independent_of_threads::<f64>();
    }

    #[test]
    fn transposed_products_go_through_column_major_copies_exactly() {
        transposed_products_are_exact_and_independent_of_threads::<f32>();
        transposed_products_are_exact_and_independent_of_threads::<f64>();
    }

    #[test]
    fn row_split_is_bitwise_the_one_thread_product() {
        split_matches_one_thread::<f32>();
        split_matches_one_thread::<f64>();
    }
}
