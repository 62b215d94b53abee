use super::*;
use crate::linalg::{gemm, par};
use crate::simd::{set_level, Level};
use ndarray::{Array2, ArrayView1};

/// `c = base + a · b` computed by tiles of `rows_per × units_per`, as a team would.
fn by_tiles<T: Float, W: RecurrentWeights<T>>(
    w: &W,
    a: &Array2<T>,
    c: &mut Array2<T>,
    base: Base<'_, T>,
    rows_per: usize,
    units_per: usize,
    order: Order,
) {
    let (m, n) = (a.nrows(), w.dims().1 / w.groups());
    let (lda, ldc) = (a.ncols(), c.ncols());
    for r0 in (0..m).step_by(rows_per) {
        for u0 in (0..n).step_by(units_per) {
            // SAFETY: whole, contiguous, exclusively borrowed arrays; disjoint tiles.
            unsafe {
                w.apply_tile(
                    a.as_ptr(),
                    lda,
                    c.as_mut_ptr(),
                    ldc,
                    r0..(r0 + rows_per).min(m),
                    u0..(u0 + units_per).min(n),
                    base,
                    order,
                )
            }
        }
    }
}

#[test]
fn packed_product_is_exact_and_identical_at_every_level_and_tiling() {
    // Small integers: every product and sum is exact, so any correct order agrees.
    for (m, k, n, groups) in [
        (1, 3, 5, 1),
        (16, 128, 512, 4),
        (9, 7, 33, 3),
        (8, 64, 32, 1),
        (21, 10, 70, 1),
        (8, 512, 1024, 4),
        (5, 40, 120, 3),
        (13, 1500, 64, 2),
        (7, 2100, 32, 1),
    ] {
        let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j * 2) % 13) as f32 - 6.0);
        let mut want = Array2::from_elem((m, n), 1.0f32);
        gemm(1.0, &a.view(), &b.view(), 1.0, &mut want.view_mut(), par(1));
        // Panels by halves (for many rows) and whole (for one or two), each layout used
        // with any number of rows.
        for rows in [m.max(3), 1] {
            let p = Packed::<f32>::prepare(&b.view(), groups, rows);
            assert_eq!(p.sub, if rows > 2 { SUB } else { NR });
            let b_columns = b.t().to_owned();
            let _guard = crate::simd::tests_lock();
            for level in [Level::Scalar, Level::Avx2, Level::Avx512] {
                if set_level(Some(level)).is_err() {
                    continue;
                }
                // The same panels from `b` stored column by column (forward's `W_hhᵀ`,
                // transposed by blocks at the vector levels).
                let pc = Packed::<f32>::prepare(&b_columns.t(), groups, rows);
                assert_eq!(
                    p.panels, pc.panels,
                    "{m}x{k}x{n} at {level:?}: packing by rows and by columns"
                );
                let mut got = Array2::from_elem((m, n), 1.0f32);
                p.apply(&a.view(), &mut got.view_mut(), true);
                assert_eq!(got, want, "{m}x{k}x{n} at {level:?}, {} columns", p.sub);
                for (rows_per, units_per) in [(3, UNIT_ALIGN), (8, 2 * UNIT_ALIGN), (1, n)] {
                    for order in [Order::Ascending, Order::Descending] {
                        let mut fresh = Array2::from_elem((m, n), 7.0f32);
                        by_tiles(&p, &a, &mut fresh, Base::Zero, rows_per, units_per, order);
                        assert_eq!(fresh, &want - 1.0, "tiles {rows_per}x{units_per} {order:?}");
                    }
                }
            }
            set_level(None).unwrap();
        }
    }
}

/// `[a | a2] · [b; b2]` through `apply_tile_then`, by tiles of `rows_per` rows and
/// [`UNIT_ALIGN`] units.
fn then_by_tiles<T: Float>(
    w: (&T::Recurrent, &T::Recurrent),
    a: (&Array2<T>, &Array2<T>),
    c: &mut Array2<T>,
    base: Base<'_, T>,
    rows_per: usize,
    order: Order,
) {
    let (m, n) = (a.0.nrows(), w.0.dims().1 / w.0.groups());
    for r0 in (0..m).step_by(rows_per) {
        for u0 in (0..n).step_by(UNIT_ALIGN) {
            // SAFETY: whole, contiguous, exclusively borrowed arrays; disjoint tiles.
            unsafe {
                w.0.apply_tile_then(
                    a.0.as_ptr(),
                    a.0.ncols(),
                    (w.1, a.1.as_ptr(), a.1.ncols()),
                    c.as_mut_ptr(),
                    c.ncols(),
                    r0..(r0 + rows_per).min(m),
                    u0..(u0 + UNIT_ALIGN).min(n),
                    base,
                    order,
                )
            }
        }
    }
}

/// The two-part product: exact on small integers (`[a | a2] · [b; b2]`, plus a base row),
/// and on rounded values the same bits at every level, tiling and layout as the
/// baseline's.
fn two_parts_are_one_product<T: Float>() {
    for (m, k, k2, n) in [
        (1, 3, 5, 64),
        (2, 32, 64, 96),
        (19, 77, 40, 100),
        (32, 64, 256, 512),
    ] {
        let f = |v: f64| T::from(v).expect("a float");
        let int = |i: usize, j: usize, p: usize| f(((i * 7 + j * 3 + p) % 11) as f64 - 5.0);
        let a = Array2::from_shape_fn((m, k), |(i, j)| int(i, j, 0));
        let a2 = Array2::from_shape_fn((m, k2), |(i, j)| int(i, j, 1));
        let b = Array2::from_shape_fn((k, n), |(i, j)| int(i, j, 2));
        let b2 = Array2::from_shape_fn((k2, n), |(i, j)| int(i, j, 3));
        let row: Vec<T> = (0..n).map(|j| f((j % 5) as f64)).collect();
        let mut want = a.dot(&b) + a2.dot(&b2);
        want.rows_mut()
            .into_iter()
            .for_each(|mut r| r += &ArrayView1::from(&row[..]));
        let _guard = crate::simd::tests_lock();
        let mut baseline = None;
        for level in [Level::Scalar, Level::Avx2, Level::Avx512] {
            if set_level(Some(level)).is_err() {
                continue;
            }
            for layout in [1, m] {
                let (p, p2) = (
                    T::Recurrent::prepare(&b.view(), 2, layout),
                    T::Recurrent::prepare(&b2.view(), 2, layout),
                );
                for rows_per in [1, 2, 5, m] {
                    let mut got = Array2::from_elem((m, n), f(9.0));
                    // Both panel orders across the tilings.
                    let (base, order) = (Base::Row(&row), Order::of_step(rows_per));
                    then_by_tiles::<T>((&p, &p2), (&a, &a2), &mut got, base, rows_per, order);
                    assert_eq!(got, want, "{m}x({k}+{k2})x{n} {level:?} {rows_per} rows");
                }
            }
            // Rounded values: the baseline's bits at every level and tiling.
            let s = |x: &Array2<T>, p: f64| x.mapv(|v| f((v.to_f64().unwrap() * 1.37 + p).sin()));
            let (ra, ra2, rb, rb2) = (s(&a, 0.1), s(&a2, 0.2), s(&b, 0.3), s(&b2, 0.4));
            for layout in [1, m] {
                let (p, p2) = (
                    T::Recurrent::prepare(&rb.view(), 2, layout),
                    T::Recurrent::prepare(&rb2.view(), 2, layout),
                );
                for rows_per in [1, 2, 5, m] {
                    let mut got = Array2::from_elem((m, n), f(9.0));
                    let order = Order::of_step(rows_per); // both orders, as above
                    then_by_tiles::<T>(
                        (&p, &p2),
                        (&ra, &ra2),
                        &mut got,
                        Base::Zero,
                        rows_per,
                        order,
                    );
                    let want = baseline.get_or_insert_with(|| got.clone());
                    assert_eq!(
                        &got, want,
                        "rounded {m}x({k}+{k2})x{n} {level:?} {rows_per}"
                    );
                }
            }
        }
        set_level(None).unwrap();
    }
}

#[test]
fn two_part_products_are_exact_and_identical_at_every_level_and_tiling() {
    two_parts_are_one_product::<f32>();
    two_parts_are_one_product::<f64>();
}

#[test]
fn rounding_is_the_same_at_every_level_and_tiling() {
    rounding_is_the_same::<f32>();
    rounding_is_the_same::<f64>();
}

/// Products of rounded values at each vector level against the baseline's, bitwise: one
/// and two rows (whole panels, or strips of them), blocks of rows, tails of columns;
/// written, added to `c`, and added to a row (which gives the bits of copying the row
/// into every row of `c` and adding to it).
fn rounding_is_the_same<T: Float>() {
    // Incl. a tall product with a long `k` (70 × 600), written and accumulated.
    for (m, k, n) in [(19, 77, 100), (70, 600, 64), (13, 300, 40)] {
        let f = |v: f64| T::from(v).expect("a float");
        let a = Array2::from_shape_fn((m, k), |(i, j)| f(((i * 31 + j * 17) as f64).sin()));
        let b = Array2::from_shape_fn((k, n), |(i, j)| f(((i * 13 + j * 7) as f64).cos()));
        let c0 = Array2::from_shape_fn((m, n), |(i, j)| f(((i * 3 + j * 5) as f64).sin()));
        let row: Vec<T> = (0..n).map(|j| f((j as f64 * 0.37).cos())).collect();
        let _guard = crate::simd::tests_lock();
        for base in [Base::Zero, Base::Out, Base::Row(&row[..])] {
            set_level(Some(Level::Scalar)).unwrap();
            let whole = T::Recurrent::prepare(&b.view(), 2, 1);
            let mut want = c0.clone();
            if let Base::Row(row) = base {
                want.rows_mut()
                    .into_iter()
                    .for_each(|mut r| r.assign(&ArrayView1::from(row)));
            }
            whole.apply(&a.view(), &mut want.view_mut(), !matches!(base, Base::Zero));
            for level in [Level::Scalar, Level::Avx2, Level::Avx512] {
                if set_level(Some(level)).is_ok() {
                    for (rows_per, layout) in [(1, 1), (2, 1), (5, m), (m, m), (1, m)] {
                        let p = T::Recurrent::prepare(&b.view(), 2, layout);
                        let mut got = c0.clone();
                        // One-row tiles over all units, their panels descending (as every
                        // other step of a product of one row).
                        let (units, order) = match rows_per {
                            1 => (n, Order::Descending),
                            _ => (UNIT_ALIGN, Order::Ascending),
                        };
                        by_tiles(&p, &a, &mut got, base, rows_per, units, order);
                        assert_eq!(
                            got,
                            want,
                            "{} {m}x{k}x{n} {level:?} {rows_per} rows, layout {layout}, {base:?}",
                            T::NAME
                        );
                    }
                }
            }
        }
        set_level(None).unwrap();
    }
}

#[test]
fn row_blocks_give_the_bits_of_one_product() {
    let (m, k, n) = (300, 200, 40);
    let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 31 + j * 17) as f32).sin());
    let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 13 + j * 7) as f32).cos());
    let w = Packed::<f32>::prepare(&b.view(), 1, m);
    let mut want = Array2::zeros((m, n));
    w.apply(&a.view(), &mut want.view_mut(), false);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (pieces, min_rows) in [(1, 1), (2, 100), (5, 7), (8, 64), (64, 1)] {
        let mut got = Array2::from_elem((m, n), f32::NAN);
        pool.install(|| w.apply_in_row_blocks(a.view(), got.view_mut(), false, pieces, min_rows));
        assert_eq!(got, want, "{pieces} pieces of at least {min_rows} rows");
    }
}

#[test]
fn f64_weights_compute_the_same_product_by_tiles() {
    let (m, k, n) = (7, 33, 96);
    let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f64 - 5.0);
    let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j * 2) % 13) as f64 - 6.0);
    let want = a.dot(&b);
    let w = Packed::<f64>::prepare(&b.view(), 3, m);
    let mut got = Array2::from_elem((m, n), 9.0);
    w.apply(&a.view(), &mut got.view_mut(), false);
    assert_eq!(got, want);
    let (lda, ldc) = (k, n);
    for r0 in (0..m).step_by(3) {
        // SAFETY: contiguous arrays, disjoint row tiles.
        unsafe {
            w.apply_tile(
                a.as_ptr(),
                lda,
                got.as_mut_ptr(),
                ldc,
                r0..(r0 + 3).min(m),
                0..32,
                Base::Out,
                Order::Descending,
            )
        };
    }
    assert_eq!(got, &want * 2.0);
}

/// `m,k,n;…` from the environment variable `var`, else from `default`.
fn shapes_from(var: &str, default: &str) -> Vec<(usize, usize, usize)> {
    let spec = std::env::var(var).unwrap_or_else(|_| default.to_string());
    spec.split(';')
        .map(|shape| {
            let v: Vec<usize> = shape
                .split(',')
                .map(|x| x.parse().expect("m,k,n"))
                .collect();
            (v[0], v[1], v[2])
        })
        .collect()
}

/// The median over 5 rounds of `f`'s rate in GFLOP/s, each round about `total` flops of
/// `flops` each.
fn median_rate(flops: f64, total: f64, f: &mut dyn FnMut()) -> f64 {
    let reps = ((total / flops) as usize).max(3);
    let mut rates: Vec<f64> = (0..5)
        .map(|_| {
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                f();
            }
            flops * reps as f64 / t0.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[2]
}

/// The product's rate on one core, and its weights' packing, for measuring kernels and
/// layouts (not a check):
/// `PRODUCT_SHAPES="m,k,n;…" cargo test --release --lib product_rate -- --ignored --nocapture`
/// (by default the per-step products of the LSTM benchmarks' shapes).
#[test]
#[ignore]
fn product_rate() {
    let default = "1,64,256;16,128,512;32,256,1024;32,1024,256;64,1024,4096";
    for (m, k, n) in shapes_from("PRODUCT_SHAPES", default) {
        // Forward's `W_hhᵀ` (four gate groups, read by columns) or backward's `W_hh`.
        let groups = if n == 4 * k { 4 } else { 1 };
        let b = Array2::from_shape_fn((n, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 * 0.01);
        let w = Packed::<f32>::prepare(&b.t(), groups, m);
        let a = Array2::from_shape_fn((m, k), |(i, j)| ((i + j) % 5) as f32 * 0.1);
        let mut c = Array2::<f32>::zeros((m, n));
        let flops = 2.0 * (m * k * n) as f64;
        let rate = median_rate(flops, 4e9, &mut || {
            w.apply(&a.view(), &mut c.view_mut(), true)
        });
        let elements = (k * n) as f64;
        let packing = median_rate(elements, 1e8, &mut || {
            std::hint::black_box(Packed::<f32>::prepare(&b.t(), groups, m));
        });
        println!("{m} x {k} x {n}: {rate:.1} GFLOP/s, packing {packing:.2} G elements/s");
    }
}

/// The packed kernel against the GEMM on a tall product (backward's `dX = dxp · W_ih`),
/// for the route `sequence::backward` chooses (not a check):
/// `DX_SHAPES="m,k,n;…" cargo test --release --lib dx_product_rate -- --ignored --nocapture`
#[test]
#[ignore]
fn dx_product_rate() {
    fn rates<T: Float>(m: usize, k: usize, n: usize) -> (f64, f64) {
        let a = Array2::from_shape_fn((m, k), |(i, j)| T::from((i + j) % 5).unwrap());
        let b = Array2::from_shape_fn((k, n), |(i, j)| T::from((i * 7 + j * 3) % 11).unwrap());
        let mut c = Array2::<T>::zeros((m, n));
        let flops = 2.0 * (m * k * n) as f64;
        let w = <T::Recurrent as RecurrentWeights<T>>::prepare(&b.view(), 1, m);
        let (av, bv) = (a.view(), b.view());
        let gemm_rate = median_rate(flops, 1e9, &mut || {
            gemm(T::one(), &av, &bv, T::zero(), &mut c.view_mut(), par(1))
        });
        let packed_rate = median_rate(flops, 1e9, &mut || w.apply(&av, &mut c.view_mut(), false));
        (gemm_rate, packed_rate)
    }
    let default = "2048,1024,32;2048,1024,128;2048,1024,256;1024,512,64;4096,1024,512;4096,4096,64";
    for (m, k, n) in shapes_from("DX_SHAPES", default) {
        let (g32, p32) = rates::<f32>(m, k, n);
        let (g64, p64) = rates::<f64>(m, k, n);
        let rates = format!("f32 {g32:.1} / {p32:.1}, f64 {g64:.1} / {p64:.1}");
        println!("{m} x {k} x {n} (GFLOP/s, GEMM / packed): {rates}");
    }
}
