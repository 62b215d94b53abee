//! Backward's weight gradients block by block of steps, and what lets them run beside the
//! steps on a second thread.
//!
//! `dW_ih += Σ dxpᵀ·X_l` and `dW_hh += Σ drecᵀ·h_prev` are summed over blocks of a
//! chunk's steps ([`block_steps`]), in processing order, each element block after block.
//! On two threads ([`pipelined`]) the leader walks the steps alone while the other thread
//! adds each block as soon as its steps are done ([`Progress`]): the step team's split
//! of a backward step gains little on two cores (its members meet twice per step and read
//! each other's `drec`; 0.67 of the one-thread time for a 256-unit LSTM over 32 rows) and
//! the GEMMs' split not much more (0.61), while each thread alone runs at its core's full
//! rate. The blocks, and the
//! order they are added in, do not depend on the threads, so neither does the result.

use crate::float::Float;
use crate::linalg::TransposedSum;
use crate::parallel::PARALLEL_SUM_MIN_ELEMS;
use ndarray::{Array1, ArrayView2, ArrayViewMut2};
use std::sync::{Condvar, Mutex, PoisonError};

/// Rows of a block of the weight gradients (the GEMMs' inner dimension) for gradients of
/// `elems` elements of `elem_bytes`: each block reads and writes all of them, which costs
/// little while they stay in a core's L2, and on two threads the smaller the blocks the
/// sooner the helper starts and the less is left to add after the last step; but a block
/// of fewer than 2^22 multiply-adds pays the GEMMs' fixed cost per call. Backward on two
/// threads, against blocks of 256 rows (same run): LSTM hidden 128 over 16 rows (384 KiB
/// of gradients) 0.90 of the time with 64 rows, 0.92 with 128; hidden 256 over 32 rows
/// (1–2 MiB) 0.95–0.98 with 128 (1.00–1.02 on one thread); hidden 1024 (24 MiB) the same
/// with 128, while 64 cost 8% on one thread there. Small gradients (a vanilla RNN's; an
/// LSTM's of hidden 64) keep blocks of 256 rows by the floor on the work.
fn block_rows(elems: usize, elem_bytes: usize) -> usize {
    let bytes = elems * elem_bytes;
    let by_cache = if bytes <= 512 << 10 {
        64
    } else if bytes <= 4 << 20 {
        128
    } else {
        256
    };
    let by_work = (1usize << 22).div_ceil(elems.max(1)).next_power_of_two();
    by_cache.max(by_work.min(256))
}

/// Steps per block of the weight gradients for `batch` rows per step, `gates` gate rows
/// and `inputs_and_hidden` columns of `W_ih` and `W_hh` together ([`block_rows`]); blocks
/// of whole steps.
pub(super) fn block_steps<T>(batch: usize, gates: usize, inputs_and_hidden: usize) -> usize {
    let rows = block_rows(gates * inputs_and_hidden, std::mem::size_of::<T>());
    rows.div_ceil(batch.max(1))
}

/// Whether a chunk's steps and weight gradients run at once on two threads, for
/// `threads` allowed and `work` multiply-adds of weight gradients: only on two threads
/// with work enough for both (on more, the step team and the GEMMs' split are the better
/// use of the cores), and not while the process backs off from splitting work.
pub(super) fn pipelined(threads: usize, work: usize) -> bool {
    threads == 2 && crate::parallel::gemm_threads(2, work) == 2
}

/// The weight gradients the blocks add to, behind the lock that orders them.
pub(super) struct WeightSums<'a, T> {
    /// The next block to add.
    pub(super) next: usize,
    pub(super) sums: &'a mut DirSums<T>,
    pub(super) w_ih: ArrayViewMut2<'a, T>,
    pub(super) w_hh: ArrayViewMut2<'a, T>,
}

/// How many of a chunk's steps the leader has done, for the thread that adds the weight
/// gradients behind it.
#[derive(Default)]
pub(super) struct Progress {
    done: Mutex<usize>,
    moved: Condvar,
}

impl Progress {
    pub(super) fn set(&self, steps: usize) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = steps;
        self.moved.notify_all();
    }

    /// Waits until `steps` are done; `false` when the leader stopped before them (it
    /// panicked).
    pub(super) fn wait_for(&self, steps: usize) -> bool {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        while *done < steps {
            done = self
                .moved
                .wait(done)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *done != usize::MAX
    }

    /// Releases the waiter however the leader leaves the steps.
    pub(super) fn finish_on_drop(&self) -> impl Drop + '_ {
        struct Finish<'p>(&'p Progress);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                let mut done = self.0.done.lock().unwrap_or_else(PoisonError::into_inner);
                if std::thread::panicking() {
                    *done = usize::MAX;
                }
                drop(done);
                self.0.moved.notify_all();
            }
        }
        Finish(self)
    }
}

/// One direction's sums of `dxpᵀ·X_l` and `drecᵀ·h_prev` over its blocks of steps.
pub(super) struct DirSums<T> {
    pub(super) w_ih: TransposedSum<T>,
    pub(super) w_hh: TransposedSum<T>,
}

/// `acc[j] += Σ_r m[r, j]` for each accumulator in `accs` (the sums taken once: LSTM and
/// RNN add the same gate gradients to both biases), rows summed in order (the same bits
/// for any thread count). Each thread streams the rows through its own range of columns,
/// whose partial sums stay in L1 (walking one narrow column block down the rows at a time
/// instead, with a row-length stride, ran at a tenth of the memory bandwidth).
pub(super) fn add_column_sums<T: Float>(
    accs: &mut [&mut Array1<T>],
    m: &ArrayView2<'_, T>,
    threads: usize,
) {
    use rayon::prelude::*;
    /// Columns per thread are a multiple of this (whole cache lines).
    const ALIGN: usize = 16;
    let m = m.as_standard_layout();
    let cols = m.ncols();
    let rows = m.as_slice().expect("standard layout");
    let sum_cols = |j0: usize, s: &mut [T]| {
        let j1 = j0 + s.len();
        for row in rows.chunks_exact(cols) {
            for (s, &v) in s.iter_mut().zip(&row[j0..j1]) {
                *s += v;
            }
        }
    };
    let mut sums = vec![T::zero(); cols];
    if threads < 2 || rows.len() < PARALLEL_SUM_MIN_ELEMS || cols == 0 {
        sum_cols(0, &mut sums);
    } else {
        let per = cols.div_ceil(threads).next_multiple_of(ALIGN);
        sums.par_chunks_mut(per)
            .enumerate()
            .for_each(|(j, s)| sum_cols(j * per, s));
    }
    for acc in accs {
        for (a, &s) in acc.iter_mut().zip(&sums) {
            *a += s;
        }
    }
}
