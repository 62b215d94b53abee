//! The x86-64 micro-kernels of the packed product (AVX2 + FMA, AVX-512F).

use super::{offset, store, PanelTile, TileBase, NR, SUB};
use std::arch::x86_64::*;
use std::ptr::null_mut;

/// Values of `k` per range when a panel's `k` is longer than two of them (see
/// `panel_rows!`). On one core (AVX2, same run): backward's product for LSTM hidden
/// 1024 (`k` = 4096, 64 rows) 70 GFLOP/s whole, 86 in ranges of 512, and the whole
/// backward 4% faster on one thread, 8% on two; with `k` = 1024 (forward's at hidden
/// 1024, backward's at 256) splitting changed nothing beyond noise in the calls.
const K_BLOCK: usize = 512;

/// Defines `$rows(tile, w) -> usize` for elements `$t`: all rows, each panel in strips of
/// `V · lanes` columns (float32: the whole panel with AVX-512, two halves with AVX2;
/// float64 with AVX2: quarters), each strip in blocks of at most `$mr` rows and near-equal
/// height (an `$mr × V` block of vectors of `c` in registers leaves room for the `V`
/// vectors of `w` and the broadcast of `a`, so nothing spills); one or two rows in strips
/// of `$v_few` vectors. `acc = fma(a[r, k], w[k, j], acc)` over `k` in order, as the
/// baseline path does. Returns the number of rows done (all).
macro_rules! panel_rows {
    ($rows:ident, $rows_by:ident, $block:ident, $feat:literal, $t:ty, $vec:ty, $lanes:expr,
     $v:expr, $mr:expr, $v_few:expr, $zero:ident, $load:ident, $set1:ident, $fmadd:ident,
     $add:ident, $storeu:ident) => {
        /// One block of `R` rows from row `r0`, columns `j0..j0 + V · lanes` of the
        /// panel (of which the first `t.cols − j0` are the tile's), over the range `ks`
        /// of `k`: its sums start from `part` unless `ks` starts at 0, and go to `part`
        /// unless it ends at `k` (then to `c`).
        ///
        /// # Safety
        /// The tile's contract (`panel_product`), `r0 + R <= t.m` and `j0 < t.cols`;
        /// `part` valid for `m` rows of NR, exclusively, where `ks` is not all of `k`.
        #[target_feature(enable = $feat)]
        unsafe fn $block<const R: usize, const V: usize, const S: usize>(
            t: PanelTile<$t>,
            r0: usize,
            j0: usize,
            w: &[$t],
            ks: std::ops::Range<usize>,
            part: *mut $t,
        ) {
            let cols_v = V * $lanes;
            assert!(w.len() >= t.k * NR && j0 + cols_v <= NR && ks.end <= t.k && t.sub == S);
            let (first, last) = (ks.start == 0, ks.end == t.k);
            // Row `r0 + r` of `a` (a plain loop: this runs once per block, and an
            // `array::from_fn` here was left as eight calls per block).
            let mut a_rows: [*const $t; R] = [t.a; R];
            for (r, p) in a_rows.iter_mut().enumerate() {
                // SAFETY: rows `r0..r0 + R` of `a` hold `k` readable elements each.
                *p = unsafe { t.a.add((r0 + r) * t.lda) };
            }
            if last && matches!(t.base, TileBase::Out) && j0 + cols_v <= t.cols {
                // The rows of `c` this block adds to are read only after the whole
                // `k` loop: ask for them now, so that a destination that has left the
                // cache (a step's slab of the input projection) arrives meanwhile.
                for r in 0..R {
                    for q in 0..V {
                        // SAFETY: prefetching never faults; the address is in the
                        // tile's row `r0 + r` of `c`.
                        unsafe {
                            _mm_prefetch::<_MM_HINT_T0>(
                                t.c.add((r0 + r) * t.ldc + j0 + q * $lanes).cast(),
                            )
                        };
                    }
                }
            }
            let mut acc = [[$zero(); V]; R];
            if !first {
                // The sums so far over the earlier ranges of `k`, stored exactly.
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    for (q, s) in acc_r.iter_mut().enumerate() {
                        // SAFETY: `part` holds `m` rows of NR (the caller's).
                        *s = unsafe { $load(part.add((r0 + r) * NR + j0 + q * $lanes)) };
                    }
                }
            }
            // Where each vector's columns start in the panel's storage (row 0).
            let mut base = [0usize; V];
            for (q, b) in base.iter_mut().enumerate() {
                *b = offset(S, t.k, 0, j0 + q * $lanes);
            }
            for kk in ks {
                let wv: [$vec; V] = std::array::from_fn(|q| {
                    // SAFETY: `kk < k` and `j0 + q · lanes + lanes <= NR`, so the
                    // vector lies in the panel's `k · NR <= w.len()` elements (asserted
                    // above); `lanes` divides `S`, so it never straddles two parts.
                    unsafe { $load(w.as_ptr().add(base[q] + kk * S)) }
                });
                for (acc_r, a_row) in acc.iter_mut().zip(&a_rows) {
                    // SAFETY: `kk < k`, and the row holds `k` elements.
                    let av = $set1(unsafe { *a_row.add(kk) });
                    for (s, &wq) in acc_r.iter_mut().zip(&wv) {
                        *s = $fmadd(av, wq, *s);
                    }
                }
            }
            let s2 = t.second;
            if last && s2.k > 0 {
                // The second part, on the same accumulators (only where `k` is not split).
                let mut rows2: [*const $t; R] = [s2.a; R];
                for (r, p) in rows2.iter_mut().enumerate() {
                    // SAFETY: rows `r0..r0 + R` of the second `a` hold its `k` elements.
                    *p = unsafe { s2.a.add((r0 + r) * s2.lda) };
                }
                let mut base2 = [0usize; V];
                for (q, b) in base2.iter_mut().enumerate() {
                    *b = offset(S, s2.k, 0, j0 + q * $lanes);
                }
                for kk in 0..s2.k {
                    let wv: [$vec; V] = std::array::from_fn(|q| {
                        // SAFETY: as for the first part, in the second panel's `k · NR`.
                        unsafe { $load(s2.w.add(base2[q] + kk * S)) }
                    });
                    for (acc_r, a_row) in acc.iter_mut().zip(&rows2) {
                        // SAFETY: `kk < k` of the second part.
                        let av = $set1(unsafe { *a_row.add(kk) });
                        for (s, &wq) in acc_r.iter_mut().zip(&wv) {
                            *s = $fmadd(av, wq, *s);
                        }
                    }
                }
            }
            if !last {
                for (r, acc_r) in acc.iter().enumerate() {
                    for (q, &v) in acc_r.iter().enumerate() {
                        // SAFETY: as above.
                        unsafe { $storeu(part.add((r0 + r) * NR + j0 + q * $lanes), v) };
                    }
                }
                return;
            }
            if j0 + cols_v <= t.cols {
                // Whole vectors of the tile: add and store straight from the registers.
                for (r, acc_r) in acc.iter().enumerate() {
                    // SAFETY: row `r0 + r` of the tile of `c` holds `t.cols` columns, ours.
                    let row = unsafe { t.c.add((r0 + r) * t.ldc + j0) };
                    for (q, &v) in acc_r.iter().enumerate() {
                        // SAFETY: as above; `j0 + q · lanes + lanes <= t.cols`.
                        unsafe {
                            let dst = row.add(q * $lanes);
                            let v = match t.base {
                                TileBase::Zero => v,
                                TileBase::Out => $add($load(dst), v),
                                // The row holds the panel's `t.cols` columns.
                                TileBase::Row(b) => $add($load(b.add(j0 + q * $lanes)), v),
                            };
                            $storeu(dst, v);
                        }
                    }
                }
                return;
            }
            let mut buf: [$t; NR] = [0.0; NR];
            for (r, acc_r) in acc.iter().enumerate() {
                for (q, &v) in acc_r.iter().enumerate() {
                    // SAFETY: `buf` holds NR >= V · lanes floats.
                    unsafe { $storeu(buf.as_mut_ptr().add(q * $lanes), v) };
                }
                // SAFETY: row `r0 + r` of the tile of `c` is ours, columns
                // `j0..t.cols` of it; a base row holds the same columns.
                unsafe {
                    let base = match t.base {
                        TileBase::Row(b) => TileBase::Row(b.add(j0)),
                        other => other,
                    };
                    store(&buf[..t.cols - j0], t.c.add((r0 + r) * t.ldc + j0), base)
                };
            }
        }

        /// # Safety
        /// The tile's contract (`panel_product`) and the CPU features `$feat`.
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn $rows(t: PanelTile<$t>, w: &[$t]) -> usize {
            // SAFETY: the caller's contract; `sub` is NR or SUB (`Packed::prepare`),
            // the panel's layout compiled into each instance.
            unsafe {
                if t.sub == NR {
                    $rows_by::<NR>(t, w)
                } else {
                    $rows_by::<SUB>(t, w)
                }
            }
        }

        /// [`$rows`] for panels stored in parts of `S` columns.
        ///
        /// # Safety
        /// As [`$rows`], and `t.sub == S`.
        #[target_feature(enable = $feat)]
        unsafe fn $rows_by<const S: usize>(t: PanelTile<$t>, w: &[$t]) -> usize {
            const COLS: usize = $v * $lanes;
            if t.m <= 2 {
                // One or two rows: strips of `$v_few` vectors (float32: the whole
                // panel), so that enough independent accumulators hide the latency of
                // the fused multiply-add without running out of registers.
                let mut j0 = 0;
                while j0 < t.cols {
                    // SAFETY: rows `0..m`; `j0 < cols`.
                    unsafe {
                        match t.m {
                            1 => $block::<1, { $v_few }, S>(t, 0, j0, w, 0..t.k, null_mut()),
                            2 => $block::<2, { $v_few }, S>(t, 0, j0, w, 0..t.k, null_mut()),
                            _ => {}
                        }
                    }
                    j0 += $v_few * $lanes;
                }
                return t.m;
            }
            // Blocks of near-equal height (16 rows: 6, 5, 5), so that no block is left
            // with too few accumulators to keep the FMA units busy.
            let blocks = t.m.div_ceil($mr);
            let (base, extra) = (t.m / blocks, t.m % blocks);
            // A long `k` in ranges of K_BLOCK, the sums carried between them in `part`
            // (exactly: the same chain per element), so that the range's rows of the
            // panel stay in L1 while every block of rows reads them. `part` is
            // allocated only then, once per panel: next to the panel's `m · k · NR`
            // (k > 1024) multiply-adds its cost does not show.
            let split = t.k > 2 * K_BLOCK && blocks > 1 && t.second.k == 0;
            let mut part = if split {
                vec![0.0 as $t; t.m * NR]
            } else {
                Vec::new()
            };
            let k_step = if split { K_BLOCK } else { t.k.max(1) };
            let mut k0 = 0;
            loop {
                let ks = k0..(k0 + k_step).min(t.k);
                let mut j0 = 0;
                while j0 < t.cols {
                    let mut r0 = 0;
                    for b in 0..blocks {
                        // `3 <= rows <= $mr`: `rows >= m / blocks > $mr / 2` when
                        // `blocks > 1`.
                        let rows = base + usize::from(b < extra);
                        let (ks, p) = (ks.clone(), part.as_mut_ptr());
                        // SAFETY: the blocks cover `0..m` once; `j0 < cols`; `part`
                        // holds `m` rows of NR where `k` is split.
                        unsafe {
                            match rows {
                                3 => $block::<3, { $v }, S>(t, r0, j0, w, ks, p),
                                4 => $block::<4, { $v }, S>(t, r0, j0, w, ks, p),
                                5 => $block::<5, { $v }, S>(t, r0, j0, w, ks, p),
                                6 => $block::<6, { $v }, S>(t, r0, j0, w, ks, p),
                                7 => $block::<7, { $v }, S>(t, r0, j0, w, ks, p),
                                _ => $block::<{ $mr }, { $v }, S>(t, r0, j0, w, ks, p),
                            }
                        }
                        r0 += rows;
                    }
                    j0 += COLS;
                }
                k0 += k_step;
                if k0 >= t.k {
                    break;
                }
            }
            t.m
        }
    };
}

/// One row of `a` times two whole panels: 8 ymm accumulators (a single row's 4 per
/// panel leave the FMA units waiting on their latency), each element the same chain
/// `acc = fma(a[k], w[k, j], acc)` over `k` in order as everywhere else.
///
/// # Safety
/// AVX2 and FMA; `a` readable for `k` elements; `c[0]`, `c[1]` writable for NR
/// elements each, exclusively; `w[0]`, `w[1]` panels of `k` rows stored in parts of
/// `S` columns (see `offset`); a base row readable for NR elements; the second part
/// `(a2, k2, w2)` likewise (`k2 = 0`: none).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn one_row_two_panels<const S: usize>(
    a: *const f32,
    k: usize,
    w: [&[f32]; 2],
    second: (*const f32, usize, [*const f32; 2]),
    c: [*mut f32; 2],
    start: [TileBase<f32>; 2],
) {
    assert!(w[0].len() >= k * NR && w[1].len() >= k * NR && S.is_multiple_of(8));
    let mut acc = [[_mm256_setzero_ps(); 4]; 2];
    let (a2, k2, w2) = second;
    for (a, k, w) in [(a, k, w.map(|w| w.as_ptr())), (a2, k2, w2)] {
        let base: [usize; 4] = std::array::from_fn(|q| offset(S, k, 0, q * 8));
        for kk in 0..k {
            // SAFETY: `kk < k`, `a` readable for `k` elements.
            let av = _mm256_set1_ps(unsafe { *a.add(kk) });
            for (acc_p, w) in acc.iter_mut().zip(w) {
                for (q, s) in acc_p.iter_mut().enumerate() {
                    let at = base[q] + kk * S;
                    // SAFETY: `kk < k`, `q · 8 + 8 <= NR` and 8 divides `S`: within the
                    // panel's `k · NR`.
                    let wq = unsafe { _mm256_loadu_ps(w.add(at)) };
                    *s = _mm256_fmadd_ps(av, wq, *s);
                }
            }
        }
    }
    for ((acc_p, c), start) in acc.iter().zip(c).zip(start) {
        for (q, &v) in acc_p.iter().enumerate() {
            // SAFETY: `c` writable for NR = 4 · 8 elements, a base row readable for as
            // many.
            unsafe {
                let dst = c.add(q * 8);
                let v = match start {
                    TileBase::Zero => v,
                    TileBase::Out => _mm256_add_ps(_mm256_loadu_ps(dst), v),
                    TileBase::Row(b) => _mm256_add_ps(_mm256_loadu_ps(b.add(q * 8)), v),
                };
                _mm256_storeu_ps(dst, v);
            }
        }
    }
}

// AVX-512: 8 rows × 2 zmm = the whole 32-column panel (16 of 32 registers hold `c`);
// AVX2: 6 rows × 2 ymm = half a panel (12 of 16 registers hold `c`, 2 `w`, 1 `a`).
panel_rows!(
    rows_avx512,
    rows_by_avx512,
    block_avx512,
    "avx512f",
    f32,
    __m512,
    16,
    2,
    8,
    2,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_storeu_ps
);
panel_rows!(
    rows_avx2,
    rows_by_avx2,
    block_avx2,
    "avx2,fma",
    f32,
    __m256,
    8,
    2,
    6,
    4,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    _mm256_storeu_ps
);
// float64, AVX2 (also at the AVX-512 level): 6 rows × 2 ymm of 4 doubles, strips of 8
// columns (12 registers hold `c`, as for float32); one or two rows in strips of 16.
panel_rows!(
    rows_avx2_f64,
    rows_by_avx2_f64,
    block_avx2_f64,
    "avx2,fma",
    f64,
    __m256d,
    4,
    2,
    6,
    4,
    _mm256_setzero_pd,
    _mm256_loadu_pd,
    _mm256_set1_pd,
    _mm256_fmadd_pd,
    _mm256_add_pd,
    _mm256_storeu_pd
);

/// `dst[kk · stride + q] = src[q][kk]` for `q, kk < 8`: an 8 × 8 block transposed in
/// registers (packing `W_hhᵀ`).
///
/// # Safety
/// The CPU must have AVX2; `src[q]` readable for 8 elements, `dst` writable at
/// `kk · stride .. kk · stride + 8` for `kk < 8`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transpose8(src: [*const f32; 8], dst: *mut f32, stride: usize) {
    // SAFETY: the caller's contract.
    let r = src.map(|p| unsafe { _mm256_loadu_ps(p) });
    let t = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    let u = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    for q in 0..4 {
        let (lo, hi) = (
            _mm256_permute2f128_ps::<0x20>(u[q], u[q + 4]),
            _mm256_permute2f128_ps::<0x31>(u[q], u[q + 4]),
        );
        // SAFETY: the caller's contract.
        unsafe {
            _mm256_storeu_ps(dst.add(q * stride), lo);
            _mm256_storeu_ps(dst.add((q + 4) * stride), hi);
        }
    }
}
