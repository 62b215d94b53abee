//! The per-step recurrent product `c (+)= a · b` with `b` prepared once per call.
//!
//! `a [M, K]` is the state (`h [B, H]` forward, `drec [B, G·H]` backward), `b [K, N]` the
//! recurrent weights (`W_hhᵀ [H, G·H]` forward, `W_hh [G·H, H]` backward), whose columns
//! form `groups` blocks of `n = N / groups` (the gates forward, one block backward). `M`
//! (the batch) is small and the product runs once per time step, so a general GEMM would
//! spend a large share of each step repacking `b`; here `b` is prepared once per call and
//! every step reads it as it is.
//!
//! The product is computed by tiles: a range of rows of `a` and `c` and a range of units
//! `u` within every group (the columns `g·n + u`), so that a thread of the step team
//! (`team/`) computes exactly the gate pre-activations its cell update needs and reads
//! only its own part of `b`, which stays in its core's cache across steps.
//!
//! Each group is packed into column panels `[K, NR]` of NR = 32 columns, each stored as its
//! two halves `[K, 16]` one after the other (see [`SUB`]) unless the products have at most
//! two rows. On x86-64 the micro-kernel holds an `MR × NR` block of `c` in registers
//! (`f32` with AVX-512: 8 × 32 in 16 registers; with AVX2: 6 × 16 in 12, half a panel at a
//! time; `f64` with AVX2: 6 × 8 in 12) and runs `acc = fma(a[r, k], b[k, :], acc)` over
//! `k` in order; the portable kernel (the baseline level, other targets) does the same
//! with `mul_add`, compiled per instruction set, so every level gives the same bits, and
//! so does every tiling and layout (each element is the same chain of operations).

use crate::float::Float;
use ndarray::{ArrayView2, ArrayViewMut2};
use std::ops::Range;

/// Unit ranges given to [`RecurrentWeights::apply_tile`] start at a multiple of this (and
/// end at one, or at `n`).
pub const UNIT_ALIGN: usize = NR;

/// What a product's sums `Σ_k a[r, k] · b[k, j]` are added to, once each, after the sum
/// over `k` (so every choice gives the bits of writing the sums and adding them apart).
#[derive(Clone, Copy, Debug)]
pub enum Base<'a, T> {
    /// Nothing: `c = Σ`.
    Zero,
    /// What `c` holds: `c += Σ`.
    Out,
    /// One row for every row of `c`, indexed by `c`'s columns (`g·n + u`): `c[r, j] =
    /// row[j] + Σ` (a step's folded bias, without first copying it into every row).
    Row(&'a [T]),
}

/// The order in which a product visits its panels. Every element is the same chain
/// either way (the order only moves whole panels), so it changes no bit; it decides which
/// panels are still in L1 when the product ends. A product of one or a few rows streams
/// `b` from L2 once per step (tiny LSTM, `W_hh` of 64 KiB against 32 KiB of L1): steps that
/// alternate the order start on the panels the step before ended with (inference, one
/// row, H = 64: 1.04–1.07x; 16 rows, H = 128: unchanged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Ascending,
    Descending,
}

impl Order {
    /// Ascending on even steps, descending on odd ones.
    pub fn of_step(i: usize) -> Self {
        if i.is_multiple_of(2) {
            Order::Ascending
        } else {
            Order::Descending
        }
    }
}

/// Weights prepared for repeated products `c (+)= a · b`.
pub trait RecurrentWeights<T>: Send + Sync + Sized {
    /// Prepares `b [K, N]` (any strides) whose columns are `groups` blocks, for products
    /// with `a` of at most `rows` rows (the batch; any number stays correct).
    fn prepare(b: &ArrayView2<'_, T>, groups: usize, rows: usize) -> Self;

    /// For the rows `rows` and, in every group `g`, the columns `g·n + u` for `u` in
    /// `units`: `c[r, g·n + u] = base + Σ_k a[r, k] · b[k, g·n + u]` (see [`Base`]),
    /// visiting the panels in `order`.
    /// Row `r` of `a` starts at `a + r·lda`, of `c` at `c + r·ldc`, both contiguous.
    ///
    /// # Safety
    /// `a` must be valid for reads of rows `rows` (`K` elements each) and `c` for reads
    /// and writes of the tile's elements, which nobody else accesses during the call;
    /// `units.start` must be a multiple of [`UNIT_ALIGN`] and `units.end <= n`; a
    /// [`Base::Row`] must hold `N` elements.
    #[allow(clippy::too_many_arguments)]
    unsafe fn apply_tile(
        &self,
        a: *const T,
        lda: usize,
        c: *mut T,
        ldc: usize,
        rows: Range<usize>,
        units: Range<usize>,
        base: Base<'_, T>,
        order: Order,
    );

    /// [`RecurrentWeights::apply_tile`] of `[a | a2] · [b; b2]`, `then = (b2, a2, lda2)`
    /// (`b2 [K2, N]` prepared alike, with the same groups): each element's sum runs over
    /// `b`'s `K` rows, then on over `b2`'s, in one chain, and `base` is added once. A
    /// layer's input projection and recurrent product of a step in one pass over `c`.
    ///
    /// # Safety
    /// As [`RecurrentWeights::apply_tile`]; `a2` valid for reads of rows `rows` (`K2`
    /// elements each, `lda2` apart).
    #[allow(clippy::too_many_arguments)]
    unsafe fn apply_tile_then(
        &self,
        a: *const T,
        lda: usize,
        then: (&Self, *const T, usize),
        c: *mut T,
        ldc: usize,
        rows: Range<usize>,
        units: Range<usize>,
        base: Base<'_, T>,
        order: Order,
    );

    /// `c (+)= a · b` over the whole matrix, on the calling thread.
    fn apply(&self, a: &ArrayView2<'_, T>, c: &mut ArrayViewMut2<'_, T>, accumulate: bool) {
        let (k, n) = self.dims();
        assert_eq!(a.ncols(), k, "recurrent product: inner dimension");
        assert_eq!(c.dim(), (a.nrows(), n), "recurrent product: output shape");
        assert!(
            a.strides()[1] == 1
                && c.strides()[1] == 1
                && a.strides()[0] >= 0
                && c.strides()[0] >= 0,
            "recurrent product: rows must be contiguous"
        );
        let (lda, ldc) = (a.strides()[0] as usize, c.strides()[0] as usize);
        // SAFETY: both views cover the rows given, exclusively for `c`.
        unsafe {
            self.apply_tile(
                a.as_ptr(),
                lda,
                c.as_mut_ptr(),
                ldc,
                0..a.nrows(),
                0..n / self.groups(),
                if accumulate { Base::Out } else { Base::Zero },
                Order::Ascending,
            )
        }
    }

    /// `c (+)= a · b` in at most `pieces` blocks of at least `min_rows` rows of `a` and `c`,
    /// each a rayon task that any idle thread of the pool may take. Bitwise the same as
    /// [`RecurrentWeights::apply`]: each element is the same chain whichever block it is in.
    fn apply_in_row_blocks(
        &self,
        a: ArrayView2<'_, T>,
        c: ArrayViewMut2<'_, T>,
        accumulate: bool,
        pieces: usize,
        min_rows: usize,
    ) where
        T: Send + Sync,
    {
        let pieces = pieces.min(a.nrows() / min_rows.max(1));
        crate::linalg::in_row_blocks(pieces, 1, a, c, &|a, mut c| {
            self.apply(&a, &mut c, accumulate)
        });
    }

    /// `(K, N)`.
    fn dims(&self) -> (usize, usize);

    /// The number of column groups.
    fn groups(&self) -> usize;
}

/// Columns per packed panel.
const NR: usize = 32;

/// The side of the square blocks [`PanelKernel::transpose_block`] moves (a divisor of
/// [`SUB`]).
pub const TRANSPOSE: usize = 8;

/// Columns per half of a panel: for products of more than two rows, a panel `[K, NR]` is
/// stored as its two halves `[K, SUB]`, one after the other, so that a kernel reading half
/// a panel (AVX2's 6 × 16 blocks) reads it as one contiguous stream instead of every other
/// cache line. On one core (AVX2, same run, `product_rate` in the tests): 32 × 256 × 1024
/// 85 → 91 GFLOP/s, 32 × 1024 × 256 92 → 98, 64 × 1024 × 4096 82 → 96; 16 × 128 × 512
/// unchanged. One or two rows read whole panel rows, and keep them whole.
const SUB: usize = 16;

/// Where element `[kk, j]` of a panel with `k` rows lies when stored in parts of `sub`
/// columns (NR: whole rows).
#[inline(always)]
fn offset(sub: usize, k: usize, kk: usize, j: usize) -> usize {
    (j / sub) * k * sub + kk * sub + j % sub
}

/// `b [K, N]` packed: each group's `n` columns into `ceil(n / NR)` panels `[K, NR]`
/// (zero-padded), each stored in parts of `sub` columns (see [`SUB`]).
#[derive(Debug, Clone)]
pub struct Packed<T> {
    k: usize,
    /// Columns per group.
    n: usize,
    groups: usize,
    /// Columns per stored part of a panel: [`SUB`] or NR.
    sub: usize,
    panels: Vec<T>,
}

/// The micro-kernel of one element type: `c (+)= a · w` for one panel `w [K, NR]`.
pub trait PanelKernel: Float {
    /// # Safety
    /// `t.a` readable for `m` rows of `k`, `t.c` writable for `m` rows of `cols`,
    /// exclusively; `w.len() >= k · NR`; a second part's `a` readable for `m` rows of its
    /// `k`, its `w` for `k · NR` elements.
    unsafe fn panel(level: crate::simd::Level, t: PanelTile<Self>, w: &[Self]);

    /// `dst[kk · stride + q] = src[q][k0 + kk]` for `q, kk < TRANSPOSE`: a square block
    /// of `TRANSPOSE` columns (`src`) written as rows (packing `W_hhᵀ`). Copies only, so
    /// every level gives the same panel.
    fn transpose_block(
        level: crate::simd::Level,
        src: &[&[Self]; TRANSPOSE],
        k0: usize,
        dst: &mut [Self],
        stride: usize,
    ) {
        let _ = level;
        transpose_block_portable(src, k0, dst, stride);
    }

    /// Two panels' tiles with the same rows of `a` (`t0.a == t1.a`): by default one after
    /// the other; a type may compute them together (more independent accumulators for a
    /// single row), with the same operations per element.
    ///
    /// # Safety
    /// As [`PanelKernel::panel`] for each tile; the two tiles of `c` do not overlap.
    unsafe fn panel_pair(
        level: crate::simd::Level,
        t0: PanelTile<Self>,
        w0: &[Self],
        t1: PanelTile<Self>,
        w1: &[Self],
    ) {
        // SAFETY: the caller's contract, for each tile.
        unsafe {
            Self::panel(level, t0, w0);
            Self::panel(level, t1, w1);
        }
    }
}

impl<T> Packed<T> {
    fn panels_per_group(&self) -> usize {
        self.n.div_ceil(NR)
    }
}

impl<T: PanelKernel> RecurrentWeights<T> for Packed<T> {
    fn prepare(b: &ArrayView2<'_, T>, groups: usize, rows: usize) -> Self {
        let (k, total) = b.dim();
        assert_eq!(total % groups, 0, "recurrent weights: columns per group");
        let n = total / groups;
        let np = n.div_ceil(NR);
        let sub = if rows <= 2 { NR } else { SUB };
        let mut panels = vec![T::zero(); groups * np * k * NR];
        let level = crate::simd::level();
        for g in 0..groups {
            for p in 0..np {
                let at = (g * np + p) * k * NR;
                let panel = &mut panels[at..at + k * NR];
                let (c0, cols) = (g * n + p * NR, NR.min(n - p * NR));
                // Read `b` as a stream: row by row where its rows are contiguous
                // (backward's `W_hh`: a half panel's row is one copy; 0.2 ns per element
                // against 1–2 column by column), else column by column (forward's
                // `W_hhᵀ`, whose columns are rows of `W_hh`).
                if b.strides()[1] == 1 {
                    for (kk, src) in b.rows().into_iter().enumerate() {
                        let src = src.to_slice().expect("unit stride");
                        for j in (0..cols).step_by(sub) {
                            let len = sub.min(cols - j);
                            let dst = offset(sub, k, kk, j);
                            panel[dst..dst + len].copy_from_slice(&src[c0 + j..c0 + j + len]);
                        }
                    }
                } else if b.strides()[0] == 1 {
                    // Columns contiguous (forward's `W_hhᵀ`, whose columns are rows of
                    // `W_hh`): blocks of 8 columns × 8 rows transposed at once, so that
                    // each panel row gets 8 adjacent elements per store.
                    for j in (0..cols).step_by(TRANSPOSE) {
                        let w = TRANSPOSE.min(cols - j);
                        let src: [&[T]; TRANSPOSE] = std::array::from_fn(|q| {
                            let col = b.column(c0 + j + q.min(w - 1));
                            &col.to_slice().expect("unit stride")[..k]
                        });
                        let whole = if w == TRANSPOSE { k - k % TRANSPOSE } else { 0 };
                        for k0 in (0..whole).step_by(TRANSPOSE) {
                            let dst = offset(sub, k, k0, j);
                            T::transpose_block(level, &src, k0, &mut panel[dst..], sub);
                        }
                        for kk in whole..k {
                            let dst = offset(sub, k, kk, j);
                            for (d, s) in panel[dst..dst + w].iter_mut().zip(&src) {
                                *d = s[kk];
                            }
                        }
                    }
                } else {
                    for j in 0..cols {
                        let column = b.column(c0 + j);
                        let dst = panel[offset(sub, k, 0, j)..].iter_mut().step_by(sub);
                        for (dst, &v) in dst.zip(&column) {
                            *dst = v;
                        }
                    }
                }
            }
        }
        Packed {
            k,
            n,
            groups,
            sub,
            panels,
        }
    }

    unsafe fn apply_tile(
        &self,
        a: *const T,
        lda: usize,
        c: *mut T,
        ldc: usize,
        rows: Range<usize>,
        units: Range<usize>,
        base: Base<'_, T>,
        order: Order,
    ) {
        // SAFETY: the caller's contract.
        unsafe { self.tiles(a, lda, None, c, ldc, rows, units, base, order) }
    }

    unsafe fn apply_tile_then(
        &self,
        a: *const T,
        lda: usize,
        then: (&Self, *const T, usize),
        c: *mut T,
        ldc: usize,
        rows: Range<usize>,
        units: Range<usize>,
        base: Base<'_, T>,
        order: Order,
    ) {
        let b2 = then.0;
        assert!(
            b2.n == self.n && b2.groups == self.groups && b2.sub == self.sub,
            "recurrent product: the second weights' columns"
        );
        // SAFETY: the caller's contract.
        unsafe { self.tiles(a, lda, Some(then), c, ldc, rows, units, base, order) }
    }

    fn dims(&self) -> (usize, usize) {
        (self.k, self.n * self.groups)
    }

    fn groups(&self) -> usize {
        self.groups
    }
}

impl<T: PanelKernel> Packed<T> {
    /// [`RecurrentWeights::apply_tile_then`], or `apply_tile` without a second part.
    ///
    /// # Safety
    /// As [`RecurrentWeights::apply_tile_then`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn tiles(
        &self,
        a: *const T,
        lda: usize,
        then: Option<(&Self, *const T, usize)>,
        c: *mut T,
        ldc: usize,
        rows: Range<usize>,
        units: Range<usize>,
        base: Base<'_, T>,
        order: Order,
    ) {
        debug_assert!(units.start.is_multiple_of(NR) && units.end <= self.n);
        if let Base::Row(row) = base {
            assert_eq!(
                row.len(),
                self.n * self.groups,
                "recurrent product: base row"
            );
        }
        let level = crate::simd::level();
        // SAFETY: row `rows.start` of `a` lies in the memory the caller vouches for.
        let a = unsafe { a.add(rows.start * lda) };
        // SAFETY: as above, for `c`.
        let c = unsafe { c.add(rows.start * ldc) };
        // SAFETY: as above, for `a2`.
        let then = then.map(|(b2, a2, lda2)| (b2, unsafe { a2.add(rows.start * lda2) }, lda2));
        let panels = units.start / NR..units.end.div_ceil(NR);
        // What every panel's tile shares; `tile` sets the panel's own fields.
        let template = PanelTile {
            a,
            lda,
            m: rows.len(),
            k: self.k,
            c,
            ldc,
            cols: NR,
            base: TileBase::Zero,
            sub: self.sub,
            second: then.map_or(Segment::NONE, |(b2, a2, lda2)| Segment {
                a: a2,
                lda: lda2,
                k: b2.k,
                // Each panel's own, set by `tile`.
                w: std::ptr::null(),
            }),
        };
        // Every (group, panel) of the tile in `order`, two at a time.
        let (count, per_group) = (self.groups * panels.len(), panels.len());
        let mut all = (0..count).map(|i| {
            let i = match order {
                Order::Ascending => i,
                Order::Descending => count - 1 - i,
            };
            (i / per_group, panels.start + i % per_group)
        });
        while let Some(gp0) = all.next() {
            let (t0, w0) = self.tile(&template, then, gp0, units.end, base);
            match all.next() {
                // SAFETY: the tiles' rows and columns are the caller's, and distinct.
                Some(gp1) => unsafe {
                    let (t1, w1) = self.tile(&template, then, gp1, units.end, base);
                    T::panel_pair(level, t0, w0, t1, w1);
                },
                // SAFETY: as above.
                None => unsafe { T::panel(level, t0, w0) },
            }
        }
    }

    /// The tile of panel `p` of group `g`: `template` with that panel's columns of `c`,
    /// of the base row and of the second part's weights (inlined into the loop over the
    /// panels: a tile returned through memory stalled each of them on store forwarding).
    #[inline(always)]
    fn tile(
        &self,
        template: &PanelTile<T>,
        then: Option<(&Self, *const T, usize)>,
        (g, p): (usize, usize),
        end: usize,
        base: Base<'_, T>,
    ) -> (PanelTile<T>, &[T]) {
        let panel = g * self.panels_per_group() + p;
        let mut t = *template;
        if let Some((b2, _, _)) = then {
            // The same panel of `b2` (same groups, columns and layout: asserted).
            t.second.w = b2.panels[panel * b2.k * NR..][..b2.k * NR].as_ptr();
        }
        // SAFETY: column `g·n + p·NR` of the tile's rows of `c` is the caller's.
        t.c = unsafe { t.c.add(g * self.n + p * NR) };
        t.cols = NR.min(end - p * NR);
        t.base = match base {
            Base::Zero => TileBase::Zero,
            Base::Out => TileBase::Out,
            // In bounds: `g·n + p·NR < N` (asserted length).
            Base::Row(row) => TileBase::Row(row[g * self.n + p * NR..].as_ptr()),
        };
        (t, &self.panels[panel * self.k * NR..][..self.k * NR])
    }
}

/// One panel's share of a tile: `c[r, 0..cols] (+)= Σ_k a[r, k] · w[k, 0..cols]` for `r < m`.
#[derive(Clone, Copy)]
pub struct PanelTile<T> {
    a: *const T,
    lda: usize,
    m: usize,
    k: usize,
    c: *mut T,
    ldc: usize,
    cols: usize,
    base: TileBase<T>,
    /// Columns per stored part of the panel (see [`offset`]).
    sub: usize,
    /// The sums' second part, after the `k` rows of the panel.
    second: Segment<T>,
}

/// The second part of a tile's sums (`k = 0`: none): `Σ_k a[r, k] · w[k, 0..cols]` on
/// the same accumulators, `a`'s rows `lda` apart, `w` a panel of `k` rows stored like the
/// first.
#[derive(Clone, Copy)]
struct Segment<T> {
    a: *const T,
    lda: usize,
    k: usize,
    w: *const T,
}

impl<T> Segment<T> {
    const NONE: Self = Segment {
        a: std::ptr::null(),
        lda: 0,
        k: 0,
        w: std::ptr::null(),
    };
}

/// [`Base`] for one panel's columns: a row starts at the panel's first column and holds
/// `cols` elements.
#[derive(Clone, Copy)]
enum TileBase<T> {
    Zero,
    Out,
    Row(*const T),
}

impl PanelKernel for f64 {
    unsafe fn panel(level: crate::simd::Level, t: PanelTile<f64>, w: &[f64]) {
        assert!(w.len() >= t.k * NR && t.cols <= NR && t.sub.is_multiple_of(16));
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut r = 0;
        #[cfg(target_arch = "x86_64")]
        if level != crate::simd::Level::Scalar {
            // SAFETY: both vector levels have AVX2 and FMA (`level()` reports them only
            // then); the tile's contract is passed on.
            r = unsafe { x86::rows_avx2_f64(t, w) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = level;
        // Rows left (all of them at the baseline level): the same fused multiply-adds in
        // the same order.
        // SAFETY: the caller's contract.
        unsafe { portable_rows(t, w, r) }
    }
}

impl PanelKernel for f32 {
    fn transpose_block(
        level: crate::simd::Level,
        src: &[&[f32]; TRANSPOSE],
        k0: usize,
        dst: &mut [f32],
        stride: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if level != crate::simd::Level::Scalar {
            assert!(src.iter().all(|s| s.len() >= k0 + TRANSPOSE));
            assert!(stride >= TRANSPOSE && dst.len() >= (TRANSPOSE - 1) * stride + TRANSPOSE);
            // SAFETY: both vector levels have AVX2 (`level()` reports them only then); the
            // reads and writes are in bounds (asserted above).
            return unsafe {
                x86::transpose8(src.map(|s| s[k0..].as_ptr()), dst.as_mut_ptr(), stride)
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = level;
        transpose_block_portable(src, k0, dst, stride);
    }

    unsafe fn panel(level: crate::simd::Level, t: PanelTile<f32>, w: &[f32]) {
        assert!(w.len() >= t.k * NR && t.cols <= NR && t.sub.is_multiple_of(16));
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut r = 0;
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::Level;
            match level {
                // SAFETY: `level()` only reports AVX-512F when the CPU has it; the tile's
                // contract is passed on.
                Level::Avx512 => r = unsafe { x86::rows_avx512(t, w) },
                // SAFETY: as above, for AVX2 and FMA.
                Level::Avx2 => r = unsafe { x86::rows_avx2(t, w) },
                Level::Scalar => {}
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = level;
        // Rows the vector kernels left (all of them at the baseline level): the same
        // fused multiply-adds in the same order.
        // SAFETY: the caller's contract.
        unsafe { portable_rows(t, w, r) }
    }

    unsafe fn panel_pair(
        level: crate::simd::Level,
        t0: PanelTile<f32>,
        w0: &[f32],
        t1: PanelTile<f32>,
        w1: &[f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if level != crate::simd::Level::Scalar
            && t0.m == 1
            && t0.cols == NR
            && t1.cols == NR
            && t1.m == 1
        {
            assert!(w0.len() >= t0.k * NR && w1.len() >= t1.k * NR && t0.k == t1.k);
            assert_eq!(t0.sub, t1.sub);
            assert!(t0.second.k == t1.second.k && t0.second.a == t1.second.a);
            let (a, k, w, c, base) = (t0.a, t0.k, [w0, w1], [t0.c, t1.c], [t0.base, t1.base]);
            let second = (t0.second.a, t0.second.k, [t0.second.w, t1.second.w]);
            // SAFETY: AVX2 and FMA are present at both vector levels; the tiles are the
            // caller's, one row of `k` in `a` (and of the second part's `k`) and NR
            // columns of `c` each, stored in parts of `sub` columns.
            return unsafe {
                if t0.sub == NR {
                    x86::one_row_two_panels::<NR>(a, k, w, second, c, base)
                } else {
                    x86::one_row_two_panels::<SUB>(a, k, w, second, c, base)
                }
            };
        }
        // SAFETY: the caller's contract, for each tile.
        unsafe {
            Self::panel(level, t0, w0);
            Self::panel(level, t1, w1);
        }
    }
}

/// `dst[j] = base[j] + acc[j]`.
///
/// # Safety
/// `dst` writable for `acc.len()` elements, exclusively; a [`TileBase::Row`] readable for
/// as many.
#[inline(always)]
unsafe fn store<T: Float>(acc: &[T], dst: *mut T, base: TileBase<T>) {
    // SAFETY: the caller's contract.
    let dst = unsafe { std::slice::from_raw_parts_mut(dst, acc.len()) };
    match base {
        TileBase::Zero => dst.copy_from_slice(acc),
        TileBase::Out => dst.iter_mut().zip(acc).for_each(|(d, &v)| *d += v),
        TileBase::Row(row) => {
            // SAFETY: the caller's contract.
            let row = unsafe { std::slice::from_raw_parts(row, acc.len()) };
            for ((d, &v), &b) in dst.iter_mut().zip(acc).zip(row) {
                *d = b + v;
            }
        }
    }
}

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use portable::{portable_rows, transpose_block_portable};

#[cfg(test)]
mod tests;
