//! Fallible buffers and the caller's control over a running call.
//!
//! Every array whose size follows from the caller's input is allocated here: a request
//! the machine cannot give (or whose size overflows) is an [`Error::Memory`] that names
//! the buffer and its size, never an abort of the process. Small zeroed buffers come from
//! the allocator's zeroed path (fresh pages are not written twice); large ones, whose
//! memory the allocator mostly reuses and has to clear anyway, are written on the call's
//! threads.

use crate::error::{Error, Result};
use crate::float::Float;
use ndarray::{Array, ArrayBase, Data, Dimension, IntoDimension, ShapeBuilder};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

/// Elements from which [`zeroed_vec`] and [`repeated_rows`] write on all the call's
/// threads ([`crate::parallel::call_threads`]; 4 MiB of float32): memory the allocator
/// reuses has to be written, and a call's large buffers are allocated while its other
/// threads wait.
const PARALLEL_ZEROS_MIN: usize = 1 << 20;

/// `n` zeros, or [`Error::Memory`] for `what`.
pub(crate) fn zeroed_vec<T: Float>(n: usize, what: &str) -> Result<Vec<T>> {
    let too_big = || Error::Memory {
        what: what.to_string(),
        bytes: n as u128 * std::mem::size_of::<T>() as u128,
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    let threads = threads_for(n);
    if threads > 1 {
        return written(n, 1, threads, what, |part| {
            part.fill(MaybeUninit::new(T::zero()))
        });
    }
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| too_big())?;
    // SAFETY: `layout` has a non-zero size (n > 0 and T is f32 or f64).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(too_big());
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of `[T; n]`
    // (what `Vec<T>` with capacity `n` deallocates with), and all-zero bits are `0.0`
    // for the floats `T` can be, so all `n` elements are initialised.
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// The number of elements of `dims`, or [`Error::Memory`] for `what` when it overflows.
fn elements(dims: &[usize], what: &str, size: usize) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|n| {
            n.checked_mul(size)
                .is_some_and(|b| b <= isize::MAX as usize)
        })
        .ok_or_else(|| Error::Memory {
            what: what.to_string(),
            bytes: dims
                .iter()
                .fold(size as u128, |b, &d| b.saturating_mul(d as u128)),
        })
}

/// An array of zeros of `shape`, or [`Error::Memory`] naming `what`.
pub(crate) fn zeros<T: Float, D: Dimension>(
    shape: impl IntoDimension<Dim = D>,
    what: &str,
) -> Result<Array<T, D>> {
    let dim = shape.into_dimension();
    let n = elements(dim.slice(), what, std::mem::size_of::<T>())?;
    let v = zeroed_vec(n, what)?;
    Ok(Array::from_shape_vec(dim.into_shape_with_order(), v).expect("sized from the shape"))
}

/// The threads a buffer of `n` elements is written on: the call's from
/// [`PARALLEL_ZEROS_MIN`] elements, else one.
fn threads_for(n: usize) -> usize {
    if n >= PARALLEL_ZEROS_MIN {
        crate::parallel::call_threads()
    } else {
        1
    }
}

/// `n` elements, each written by `write` (given parts of whole `unit`s, in parallel over
/// `threads` threads of the current pool when more than one), or [`Error::Memory`] naming
/// `what`.
fn written<T: Float>(
    n: usize,
    unit: usize,
    threads: usize,
    what: &str,
    write: impl Fn(&mut [MaybeUninit<T>]) + Sync,
) -> Result<Vec<T>> {
    use rayon::prelude::*;
    let mut v = reserved::<T>(n, what)?;
    let spare = &mut v.spare_capacity_mut()[..n];
    if threads > 1 {
        let per = (n / unit).div_ceil(threads).max(1) * unit;
        spare.par_chunks_mut(per).for_each(&write);
    } else {
        write(spare);
    }
    // SAFETY: the capacity is at least `n` (reserved), and `write` wrote every one of
    // the first `n` elements (its contract).
    unsafe { v.set_len(n) };
    Ok(v)
}

/// An empty vector with room for `n` elements, or [`Error::Memory`] naming `what`.
fn reserved<V>(n: usize, what: &str) -> Result<Vec<V>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::Memory {
        what: what.to_string(),
        bytes: n as u128 * std::mem::size_of::<V>() as u128,
    })?;
    Ok(v)
}

/// An array of `shape` whose rows (along the last axis) are each `row`, written once (no
/// zeroing first), or [`Error::Memory`] naming `what`.
pub(crate) fn repeated_rows<T: Float, D: Dimension>(
    shape: impl IntoDimension<Dim = D>,
    row: &[T],
    what: &str,
) -> Result<Array<T, D>> {
    let dim = shape.into_dimension();
    assert_eq!(
        dim.slice().last(),
        Some(&row.len()),
        "repeated_rows: row length"
    );
    let n = elements(dim.slice(), what, std::mem::size_of::<T>())?;
    let v = written(n, row.len().max(1), threads_for(n), what, |part| {
        if row.is_empty() {
            return;
        }
        for dst in part.chunks_exact_mut(row.len()) {
            for (d, &v) in dst.iter_mut().zip(row) {
                d.write(v);
            }
        }
    })?;
    Ok(Array::from_shape_vec(dim.into_shape_with_order(), v).expect("sized from the shape"))
}

/// An array of `shape` whose elements the caller writes before it reads any (then
/// `assume_init`), or [`Error::Memory`] naming `what`. Unlike [`zeros`], no page of it is
/// touched here: a large output is written once, by the pass that computes it.
pub(crate) fn uninit<T: Float, D: Dimension>(
    shape: impl IntoDimension<Dim = D>,
    what: &str,
) -> Result<Array<MaybeUninit<T>, D>> {
    let dim = shape.into_dimension();
    let n = elements(dim.slice(), what, std::mem::size_of::<T>())?;
    let mut v = reserved::<MaybeUninit<T>>(n, what)?;
    // SAFETY: capacity is `n`, and `MaybeUninit` elements need no initialisation.
    unsafe { v.set_len(n) };
    Ok(Array::from_shape_vec(dim.into_shape_with_order(), v).expect("sized from the shape"))
}

/// A standard-layout copy of `a`, or [`Error::Memory`] naming `what`.
pub(crate) fn copy<T: Float, S: Data<Elem = T>, D: Dimension>(
    a: &ArrayBase<S, D>,
    what: &str,
) -> Result<Array<T, D>> {
    let mut out = zeros(a.raw_dim(), what)?;
    out.assign(a);
    Ok(out)
}

/// What the caller of a long call controls while it runs: a flag that asks it to stop.
/// The core looks at it between chunks of steps (every few milliseconds of work) and then
/// returns [`Error::Interrupted`], having written nothing the caller can see.
#[derive(Debug, Default)]
pub struct Control {
    stop: AtomicBool,
}

impl Control {
    /// Asks the running call to stop at its next check.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// [`Error::Interrupted`] once [`Control::stop`] was called.
    ///
    /// # Errors
    /// As above.
    pub fn check(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn large_buffers_written_on_several_threads_hold_their_values() {
        // Sizes that do not split evenly over three threads, on one thread and on three.
        let row: Vec<f64> = (0..1001).map(|i| i as f64 - 500.5).collect();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a pool");
            pool.install(|| {
                let z = zeros::<f32, _>((3, PARALLEL_ZEROS_MIN / 2 + 7), "z").expect("fits");
                assert!(z.iter().all(|&v| v.to_bits() == 0), "{threads} threads");
                let r = repeated_rows((1100, 1, row.len()), &row, "r").expect("fits");
                assert!(r.len() >= PARALLEL_ZEROS_MIN);
                for lane in r.lanes(ndarray::Axis(2)) {
                    assert_eq!(lane.as_slice(), Some(&row[..]), "{threads} threads");
                }
                let empty = repeated_rows((4, 0), &[] as &[f32], "e").expect("fits");
                assert_eq!(empty.dim(), (4, 0));
            });
        }
    }

    #[test]
    fn impossible_sizes_are_errors_that_name_the_buffer() {
        let e = zeros::<f32, _>((usize::MAX / 2, 3, 1), "out").unwrap_err();
        assert!(
            matches!(e, Error::Memory { ref what, .. } if what == "out"),
            "{e}"
        );
        // 2^62 floats: the size fits in usize, the allocation cannot succeed.
        let e = zeros::<f64, _>((1usize << 31, 1usize << 31), "tape").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot allocate {} bytes for tape", 8u128 << 62)
        );
        let z: Array3<f32> = zeros((2, 0, 3), "empty").unwrap();
        assert_eq!(z.dim(), (2, 0, 3));
        let z: Array3<f64> = zeros((2, 3, 4), "small").unwrap();
        assert!(z.iter().all(|&v| v == 0.0) && z.is_standard_layout());
    }

    #[test]
    fn a_stopped_control_interrupts() {
        let c = Control::default();
        assert!(c.check().is_ok());
        c.stop();
        assert_eq!(c.check(), Err(Error::Interrupted));
    }
}
