//! What sits on top of the recurrent stack: the linear readout `y = x·Wᵀ + b`, the
//! embedding gradient (rows accumulated by token), and the two losses (mean squared error;
//! softmax cross-entropy fused with its gradient).
//!
//! Shapes are flat: the bindings reshape any leading axes into one, so `x` is `(N, in)`,
//! logits are `(N, C)`, a loss mask has one entry per row. The products go through the
//! one GEMM entry point (`linalg`); the losses split their rows into fixed blocks of
//! [`LOSS_BLOCK_ROWS`], run on the pool when the array is large, and add the blocks'
//! partial sums in block order, so the result does not depend on the number of threads.

use crate::buffer::{zeroed_vec, zeros};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::linalg::{gemm, par};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rayon::prelude::*;

/// Rows per block of a loss (the unit of parallel work and of the ordered partial sums).
pub const LOSS_BLOCK_ROWS: usize = 256;

/// Values from which a loss runs on the pool. A call handed to the pool pays two thread
/// wake-ups (0.1–0.2 ms on the 2-core EPYC VM); measured there, cross-entropy over 103
/// classes on 2 threads against 1: 1.55x the time at 103K values, 0.74x at 412K, 0.58x
/// at 4.8M.
pub const LOSS_PARALLEL_MIN: usize = 1 << 18;

/// Whether a loss over `elems` values is worth the pool.
pub fn elementwise_parallel(elems: usize) -> bool {
    elems >= LOSS_PARALLEL_MIN
}

/// Multiply-adds from which a `Linear` call runs on the pool: as for a sequence's batched
/// GEMMs (`parallel::uses_threads`), eight GEMM shares. Measured (2-core EPYC VM,
/// `Linear(256, 103)` forward, 2 threads against 1): 1.34x the time at 13.5M
/// multiply-adds, 0.81x at 54M, 0.68x at 84M.
pub fn linear_parallel(work: usize) -> bool {
    work >= 8 * crate::parallel::GEMM_WORK_PER_THREAD
}

/// `y = x·wᵀ + b` for `x` `(N, in)`, `w` `(out, in)`, `b` `(out,)`; `threads` bounds the
/// GEMM's threads.
pub fn linear_forward<T: Float>(
    x: ArrayView2<'_, T>,
    w: ArrayView2<'_, T>,
    b: Option<ArrayView1<'_, T>>,
    threads: usize,
) -> Result<Array2<T>> {
    let (n, k) = x.dim();
    let (out, win) = w.dim();
    if win != k {
        return Err(Error::shape("x", format!("(N, {win})"), x.shape()));
    }
    if let Some(b) = &b {
        if b.len() != out {
            return Err(Error::shape("bias", format!("({out},)"), b.shape()));
        }
    }
    let mut y = zeros::<T, _>((n, out), "the output of Linear")?;
    let beta = match &b {
        Some(b) => {
            y.rows_mut().into_iter().for_each(|mut r| r.assign(b));
            T::one()
        }
        None => T::zero(),
    };
    gemm(T::one(), &x, &w.t(), beta, &mut y.view_mut(), par(threads));
    Ok(y)
}

/// Gradients of `y = x·wᵀ + b`: `(dx, dw, db)` with `dx = dy·w`, `dw = dyᵀ·x` and `db` the
/// column sums of `dy` (when `bias`).
pub type LinearGrads<T> = (Array2<T>, Array2<T>, Option<Array1<T>>);

/// The backward pass of [`linear_forward`] from `x` `(N, in)`, `w` `(out, in)` and `dy`
/// `(N, out)`.
pub fn linear_backward<T: Float>(
    x: ArrayView2<'_, T>,
    w: ArrayView2<'_, T>,
    dy: ArrayView2<'_, T>,
    bias: bool,
    threads: usize,
) -> Result<LinearGrads<T>> {
    let (n, k) = x.dim();
    let (out, win) = w.dim();
    if win != k {
        return Err(Error::shape("x", format!("(N, {win})"), x.shape()));
    }
    if dy.dim() != (n, out) {
        return Err(Error::shape("d_y", format!("({n}, {out})"), dy.shape()));
    }
    let mut dx = zeros::<T, _>((n, k), "dL/dx of Linear")?;
    gemm(
        T::one(),
        &dy,
        &w,
        T::zero(),
        &mut dx.view_mut(),
        par(threads),
    );
    let mut dw = zeros::<T, _>((out, k), "dL/dweight of Linear")?;
    gemm(
        T::one(),
        &dy.t(),
        &x,
        T::zero(),
        &mut dw.view_mut(),
        par(threads),
    );
    let db = if bias {
        let mut db = zeros::<T, _>(out, "dL/dbias of Linear")?;
        for row in dy.axis_iter(Axis(0)) {
            db += &row;
        }
        Some(db)
    } else {
        None
    };
    Ok((dx, dw, db))
}

/// The gradient of an embedding table `(num_embeddings, dim)` from `d_out` `(N, dim)` and
/// the `N` token ids: row `i` is the sum of the `d_out` rows whose token is `i`, except
/// `padding_idx`'s row, which stays zero.
pub fn embedding_backward<T: Float>(
    ids: &[i64],
    d_out: ArrayView2<'_, T>,
    num_embeddings: usize,
    padding_idx: Option<usize>,
) -> Result<Array2<T>> {
    let (n, dim) = d_out.dim();
    if ids.len() != n {
        return Err(Error::shape(
            "d_out",
            format!("({}, {dim})", ids.len()),
            d_out.shape(),
        ));
    }
    let mut g = zeros::<T, _>((num_embeddings, dim), "the embedding gradient")?;
    for (&id, row) in ids.iter().zip(d_out.axis_iter(Axis(0))) {
        let i = token(id, num_embeddings)?;
        if Some(i) != padding_idx {
            let mut dst = g.row_mut(i);
            dst += &row;
        }
    }
    Ok(g)
}

/// `id` as a row of a table with `rows` rows.
fn token(id: i64, rows: usize) -> Result<usize> {
    usize::try_from(id)
        .ok()
        .filter(|&i| i < rows)
        .ok_or_else(|| Error::value("x", format!("expected token ids in [0, {rows}), got {id}")))
}

/// Splits `rows × width` values into blocks of [`LOSS_BLOCK_ROWS`] rows and runs `f(first
/// row, rows of the block, the block's slice of `grad`)` on each, on the pool when large;
/// returns the blocks' `(sum, selected rows)` added in block order.
fn by_blocks<T: Float>(
    grad: &mut [T],
    width: usize,
    f: impl Fn(usize, &mut [T]) -> Result<(f64, usize)> + Sync,
) -> Result<(f64, usize)> {
    let block = LOSS_BLOCK_ROWS * width.max(1);
    let parts: Vec<Result<(f64, usize)>> =
        if elementwise_parallel(grad.len()) && crate::parallel::current_threads() > 1 {
            grad.par_chunks_mut(block)
                .enumerate()
                .map(|(b, g)| f(b * LOSS_BLOCK_ROWS, g))
                .collect()
        } else {
            grad.chunks_mut(block)
                .enumerate()
                .map(|(b, g)| f(b * LOSS_BLOCK_ROWS, g))
                .collect()
        };
    let mut total = (0.0, 0);
    for p in parts {
        let (s, k) = p?;
        total.0 += s;
        total.1 += k;
    }
    Ok(total)
}

/// A loss and its gradient with respect to the prediction (shaped like it, flat).
#[derive(Debug, Clone)]
pub struct LossGrad<T> {
    /// The mean over the selected elements (0.0 when none is selected).
    pub loss: f64,
    /// `dL/dpred`, zero at unselected positions.
    pub grad: Vec<T>,
}

fn check_mask(mask: Option<&[bool]>, rows: usize) -> Result<()> {
    match mask {
        Some(m) if m.len() != rows => Err(Error::shape("mask", format!("({rows},)"), &[m.len()])),
        _ => Ok(()),
    }
}

/// Mean squared error over `pred` and `target` (`rows × width` values each, row-major) with
/// an optional row `mask`: `loss = Σ (p − t)² / n`, `grad = 2 (p − t) / n` at selected
/// rows (`n` selected rows × `width`), computed in f64.
pub fn mse<T: Float>(
    pred: &[T],
    target: &[T],
    width: usize,
    mask: Option<&[bool]>,
) -> Result<LossGrad<T>> {
    if target.len() != pred.len() {
        return Err(Error::shape(
            "target",
            format!("({},)", pred.len()),
            &[target.len()],
        ));
    }
    let rows = pred.len().checked_div(width).unwrap_or(0);
    check_mask(mask, rows)?;
    let selected = mask.map_or(rows, |m| m.iter().filter(|&&s| s).count());
    let n = selected * width;
    let mut grad = zeroed_vec::<T>(pred.len(), "the gradient of mse_loss")?;
    if n == 0 {
        return Ok(LossGrad { loss: 0.0, grad });
    }
    let scale = 2.0 / n as f64;
    let (sum, _) = by_blocks(&mut grad, width, |r0, g| {
        let mut s = 0.0f64;
        for (i, g_row) in g.chunks_mut(width).enumerate() {
            let r = r0 + i;
            if mask.is_some_and(|m| !m[r]) {
                continue;
            }
            let span = r * width..(r + 1) * width;
            for ((gv, &p), &t) in g_row.iter_mut().zip(&pred[span.clone()]).zip(&target[span]) {
                let d = to_f64(p) - to_f64(t);
                s += d * d;
                *gv = from_f64(d * scale);
            }
        }
        Ok((s, 0))
    })?;
    Ok(LossGrad {
        loss: sum / n as f64,
        grad,
    })
}

#[inline(always)]
fn to_f64<T: Float>(v: T) -> f64 {
    v.to_f64().unwrap_or(f64::NAN)
}

#[inline(always)]
fn from_f64<T: Float>(v: f64) -> T {
    T::from(v).unwrap_or_else(T::nan)
}

/// The float types the softmax row kernel runs on.
pub trait SoftmaxFloat: Float {
    /// Writes `exp(z − max z)` into `e` and returns `(max z, Σ e)` (sum in f64).
    fn exp_shifted(z: &[Self], e: &mut [Self]) -> (Self, f64);
}

impl SoftmaxFloat for f64 {
    fn exp_shifted(z: &[f64], e: &mut [f64]) -> (f64, f64) {
        let m = lane_max(z);
        let mut s = 0.0;
        for (ev, &v) in e.iter_mut().zip(z) {
            *ev = (v - m).exp();
            s += *ev;
        }
        (m, s)
    }
}

impl SoftmaxFloat for f32 {
    fn exp_shifted(z: &[f32], e: &mut [f32]) -> (f32, f64) {
        crate::readout_kernels::exp_shifted_f32(z, e)
    }
}

/// The maximum of a row, in lanes the compiler vectorises. NaN entries are skipped: they
/// reach the loss through `exp(NaN − max) = NaN` anyway.
#[inline(always)]
pub(crate) fn lane_max<T: Float>(z: &[T]) -> T {
    const L: usize = 16;
    let mut acc = [T::neg_infinity(); L];
    let chunks = z.chunks_exact(L);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter()
        .chain(rest)
        .fold(T::neg_infinity(), |m, &v| if v > m { v } else { m })
}

/// Softmax cross-entropy with integer labels over `logits` (`rows × classes`, row-major),
/// fused with its gradient: `loss = −mean_selected log softmax(z)[label]`, `grad =
/// (softmax(z) − onehot(label)) / n` at selected rows, 0 elsewhere (`n` selected rows).
/// Labels at unselected rows are not read; a selected label outside `[0, classes)` is an
/// error.
pub fn cross_entropy<T: SoftmaxFloat>(
    logits: &[T],
    classes: usize,
    labels: &[i64],
    mask: Option<&[bool]>,
) -> Result<LossGrad<T>> {
    let rows = labels.len();
    if classes == 0 || logits.len() != rows * classes {
        return Err(Error::shape(
            "logits",
            format!("({rows}, C) with C >= 1 (labels has {rows} entries)"),
            &[logits.len()],
        ));
    }
    check_mask(mask, rows)?;
    let mut selected = 0usize;
    for (r, &l) in labels.iter().enumerate() {
        if mask.is_some_and(|m| !m[r]) {
            continue;
        }
        if l < 0 || l as u64 >= classes as u64 {
            return Err(Error::value(
                "labels",
                format!("expected values in [0, {classes}), got {l}"),
            ));
        }
        selected += 1;
    }
    let mut grad = zeroed_vec::<T>(logits.len(), "the gradient of cross_entropy_loss")?;
    if selected == 0 {
        return Ok(LossGrad { loss: 0.0, grad });
    }
    let inv_n = 1.0 / selected as f64;
    let (sum, _) = by_blocks(&mut grad, classes, |r0, g| {
        let mut s = 0.0f64;
        for (i, e) in g.chunks_mut(classes).enumerate() {
            let r = r0 + i;
            if mask.is_some_and(|m| !m[r]) {
                continue;
            }
            let z = &logits[r * classes..(r + 1) * classes];
            let (m, total) = T::exp_shifted(z, e);
            let label = labels[r] as usize;
            s += total.ln() + to_f64(m) - to_f64(z[label]);
            let scale: T = from_f64(inv_n / total);
            for v in e.iter_mut() {
                *v *= scale;
            }
            let picked = e[label];
            e[label] = picked - from_f64::<T>(inv_n);
        }
        Ok((s, 0))
    })?;
    Ok(LossGrad {
        loss: sum * inv_n,
        grad,
    })
}

#[cfg(test)]
mod tests;
