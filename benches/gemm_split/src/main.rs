//! faer's own split of a GEMM over threads against a split by rows (each thread a block of
//! rows with faer on one thread, as `bptt`'s `linalg::gemm` does for an `a` of at
//! least 256 rows per thread), and one thread, at the GEMM shapes of the LSTM benchmarks
//! (float32). The three are timed in alternation, nine rounds; the table gives the medians
//! of each round's best of three calls, and the median of the per-round ratios.

use faer::{Accum, Mat, MatMut, MatRef, Par};
use gemm_split::{best_of_three, median};

fn by_rows(threads: usize, a: MatRef<'_, f32>, b: MatRef<'_, f32>, c: MatMut<'_, f32>) {
    if threads < 2 {
        faer::linalg::matmul::matmul(c, Accum::Add, a, b, 1.0, Par::Seq);
        return;
    }
    let first = threads / 2;
    let mid = (a.nrows() * first / threads + 24) / 48 * 48;
    let (a0, a1) = a.split_at_row(mid);
    let (c0, c1) = c.split_at_row_mut(mid);
    rayon::join(
        || by_rows(first, a0, b, c0),
        || by_rows(threads - first, a1, b, c1),
    );
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map_or(2, |s| s.parse().expect("threads"));
    // (what, m, k, n, whether `a` is the transpose of a row-major matrix)
    let cases = [
        ("small inference x·W_ihᵀ", 256, 64, 512, false),
        ("medium inference x·W_ihᵀ", 512, 256, 1024, false),
        ("large inference x·W_ihᵀ", 1024, 512, 4096, false),
        ("char model x·W_ihᵀ", 2048, 32, 1024, false),
        ("medium training x·W_ihᵀ", 2048, 256, 1024, false),
        ("large training x·W_ihᵀ", 4096, 512, 4096, false),
        ("char model dx", 2048, 1024, 32, false),
        ("medium dx", 2048, 1024, 256, false),
        ("large dx", 4096, 4096, 512, false),
        ("char model readout", 3200, 256, 103, false),
        ("char model dW_hh (aᵀ)", 1024, 2048, 256, true),
        ("medium dW_ih (aᵀ)", 1024, 2048, 256, true),
    ];
    println!("threads: {threads}");
    println!("| product | m×k×n | faer split ms | row split ms | 1 thread ms | row/faer |");
    println!("|---|---|---|---|---|---|");
    for (what, m, k, n, transposed) in cases {
        let value = |i: usize, j: usize| ((i * 7 + j * 3) % 13) as f32 * 0.01;
        let stored: Mat<f32> = if transposed {
            Mat::from_fn(k, m, value)
        } else {
            Mat::from_fn(m, k, value)
        };
        let a = if transposed {
            stored.transpose()
        } else {
            stored.as_ref()
        };
        let b: Mat<f32> = Mat::from_fn(k, n, value);
        let mut c: Mat<f32> = Mat::zeros(m, n);
        let (mut faer_t, mut rows_t, mut one_t, mut ratio) = (vec![], vec![], vec![], vec![]);
        for _ in 0..9 {
            let mut faer_split = || {
                let par = Par::rayon(threads);
                faer::linalg::matmul::matmul(c.as_mut(), Accum::Add, a, b.as_ref(), 1.0, par)
            };
            let f = best_of_three(&mut faer_split);
            let r = best_of_three(&mut || by_rows(threads, a, b.as_ref(), c.as_mut()));
            let o = best_of_three(&mut || by_rows(1, a, b.as_ref(), c.as_mut()));
            faer_t.push(f);
            rows_t.push(r);
            one_t.push(o);
            ratio.push(r / f);
        }
        println!(
            "| {what} | {m}×{k}×{n} | {:.3} | {:.3} | {:.3} | {:.2} |",
            1e3 * median(faer_t),
            1e3 * median(rows_t),
            1e3 * median(one_t),
            median(ratio)
        );
    }
}
