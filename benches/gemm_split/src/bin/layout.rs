//! Weight-gradient products `c += aᵀ · b` (`a` and `b` row-major with a long inner
//! dimension of time × batch rows, `c` row-major) as faer takes them directly, against the
//! route of `bptt`'s `linalg::gemm` for them (products of at least 256 rows): `b` copied
//! column-major and the result accumulated in a column-major buffer, then added to `c`
//! (the copies are timed too). For fewer rows (the readout's 103) only the result is
//! column-major here, a variant `bptt` does not take (it lost on two threads).
//!
//! float32, at the weight-gradient shapes of the LSTM benchmarks and the character model's
//! readout; the two are timed in alternation, nine rounds of the best of three calls; the
//! table gives the medians in GFLOP/s and of the per-round ratios.
//!
//! Run: `cargo run --release --manifest-path benches/gemm_split/Cargo.toml --bin layout -- [threads]`

use faer::{Accum, Mat, MatMut, MatRef, Par};
use gemm_split::{best_of_three, median};

/// A row-major `[rows, cols]` matrix as a faer view.
fn row_major(v: &[f32], rows: usize, cols: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(v, rows, cols)
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map_or(1, |s| s.parse().expect("threads"));
    let par = if threads > 1 {
        Par::rayon(threads)
    } else {
        Par::Seq
    };
    // (what, m = rows of c, k = time × batch, n = columns of c)
    let cases = [
        ("small dW_hh (H=128, B=16)", 512, 1600, 128),
        ("char model dW_hh (H=256, B=32)", 1024, 3200, 256),
        ("char model readout dW (V=103)", 103, 3200, 256),
        ("medium dW_ih, dW_hh", 1024, 3200, 256),
        ("large dW_ih (in=512)", 4096, 6400, 512),
        ("large dW_hh (H=1024)", 4096, 6400, 1024),
    ];
    println!("threads: {threads}\n");
    println!("| product | m × k × n | faer direct GFLOP/s | column-major GFLOP/s | direct time / column-major time |");
    println!("|---|---|---|---|---|");
    for (what, m, k, n) in cases {
        let fill = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7 + seed) % 13) as f32 * 0.01 - 0.06)
                .collect()
        };
        // `a` is stored as the row-major [k, m] matrix it is the transpose of.
        let (a_store, b_store) = (fill(k * m, 1), fill(k * n, 2));
        let a = row_major(&a_store, k, m).transpose();
        let b = row_major(&b_store, k, n);
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let (mut direct, mut copied, mut ratio) = (vec![], vec![], vec![]);
        for round in 0..9 {
            let run_direct = |c: &mut [f32]| {
                let c = MatMut::from_row_major_slice_mut(c, m, n);
                faer::linalg::matmul::matmul(c, Accum::Add, a, b, 1.0, par);
            };
            let mut acc = Mat::<f32>::zeros(m, n);
            let mut run_copied = |c: &mut [f32]| {
                if m >= 256 {
                    let bf = b.to_owned();
                    faer::linalg::matmul::matmul(
                        acc.as_mut(),
                        Accum::Replace,
                        a,
                        bf.as_ref(),
                        1.0,
                        par,
                    );
                } else {
                    faer::linalg::matmul::matmul(acc.as_mut(), Accum::Replace, a, b, 1.0, par);
                }
                // In 32 × 32 tiles, as bptt adds it.
                let mut c = MatMut::from_row_major_slice_mut(c, m, n);
                for i0 in (0..m).step_by(32) {
                    for j0 in (0..n).step_by(32) {
                        for i in i0..(i0 + 32).min(m) {
                            for j in j0..(j0 + 32).min(n) {
                                c[(i, j)] += acc[(i, j)];
                            }
                        }
                    }
                }
            };
            let (td, tc) = if round % 2 == 0 {
                let td = best_of_three(&mut || run_direct(&mut c));
                (td, best_of_three(&mut || run_copied(&mut c)))
            } else {
                let tc = best_of_three(&mut || run_copied(&mut c));
                (best_of_three(&mut || run_direct(&mut c)), tc)
            };
            direct.push(flops / td / 1e9);
            copied.push(flops / tc / 1e9);
            ratio.push(td / tc);
        }
        println!(
            "| {what} | {m} × {k} × {n} | {:.1} | {:.1} | {:.2} |",
            median(direct),
            median(copied),
            median(ratio)
        );
    }
}
