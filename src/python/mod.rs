//! The PyO3 bindings: the only code that knows Python exists.
//!
//! Every call does extract → detach → wrap: read-only views of the NumPy arrays are taken
//! with the GIL held, the core runs with the GIL released, and its owned results move into
//! NumPy without a copy. Core errors become `ValueError` (one `From` conversion, so `?`
//! works on core results); an array of the wrong dtype becomes `TypeError`.
//!
//! `convert` turns Python arguments into core views, `spec` holds the `Spec` and `Tape`
//! classes, `calls` the sequence entry points, `readout` the readout, losses and optimizer
//! steps; this file the error mapping, the released
//! call, the thread and SIMD controls and the module itself.

mod calls;
mod convert;
mod readout;
mod spec;

use crate::{parallel, simd};
use crate::{Control, Error};
use pyo3::exceptions::{PyKeyboardInterrupt, PyMemoryError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::mpsc::RecvTimeoutError;

/// The extension's allocator. The core allocates its tape and buffers afresh on every call;
/// mimalloc keeps freed memory for reuse instead of returning it to the OS, so repeated
/// calls do not pay page faults on every new array (measured: LSTM T=100, B=16, H=128
/// forward+backward while the previous result is alive, ~13 ms with the system
/// allocator, see the issue note). Arrays handed to NumPy are freed through it as well.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its option enum, `mimalloc.h`, v3), which the
/// Rust binding does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays mapped for reuse (mimalloc's default is 10 ms). A call's
/// buffers (a few MB) are freed when it returns; with 10 ms they went back to the OS
/// between calls and the next call paid a page fault and the kernel's zeroing for every
/// page (measured: 5–6% of a small LSTM inference call, see `benches/results/`). A
/// second keeps them for a loop of calls and returns them soon after it stops.
/// `MIMALLOC_PURGE_DELAY` in the environment still decides when set.
const PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// The one mapping of core errors to Python exceptions: shape and value problems are
/// `ValueError`, with the core's message (argument, expected, given) unchanged.
impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Shape { .. } | Error::Value { .. } => PyValueError::new_err(e.to_string()),
            Error::Memory { .. } => PyMemoryError::new_err(e.to_string()),
            // Only `run_released` stops a call, and it raises the signal's own exception.
            Error::Interrupted => PyKeyboardInterrupt::new_err(e.to_string()),
        }
    }
}

/// How often a long call's calling thread looks for pending signals (Ctrl-C).
const SIGNAL_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Runs `work` with the GIL released, on the pool when `parallel`. A call of at least
/// `parallel::INTERRUPTIBLE_WORK` multiply-adds (`work_size`) is spawned on the pool, or,
/// on one thread, runs on bptt's call thread (`parallel::claim_call_thread`; on a thread
/// of its own when another call holds that one), while the calling thread waits for it,
/// taking the GIL every few milliseconds to run Python's signal handlers: when one raises
/// (Ctrl-C: `KeyboardInterrupt`), the call stops at its next check (between chunks) and
/// that exception is raised. Shorter calls run directly.
fn run_released<R: Send>(
    py: Python<'_>,
    parallel: bool,
    work_size: usize,
    work: impl FnOnce(&Control) -> crate::Result<R> + Send,
) -> PyResult<R> {
    let ctl = &Control::default();
    if work_size < parallel::INTERRUPTIBLE_WORK {
        return Ok(py.detach(|| parallel::run(parallel, || work(ctl)))?);
    }
    // Planned here, before the hand-over (see `parallel::plan_call`).
    let plan = py.detach(|| parallel::plan_call(parallel));
    let pool = plan.pool().cloned();
    let (tx, rx) = std::sync::mpsc::channel();
    // The receiver outlives the call: each scope below ends only after the call has (a
    // panic in the call resumes there, as PyO3's `PanicException`).
    let call = move || {
        let _ = tx.send(plan.run(|| work(ctl)));
    };
    // A call on the pool is spawned there from here: handed over through the call thread,
    // a worker of another rayon pool, that thread would wait for the pool's work as a
    // rayon worker does, yielding its core some dozens of times on the way to sleep, to
    // the pool's threads' cost (small LSTM inference on 2 threads up to 7%).
    let claim = pool.is_none().then(parallel::claim_call_thread).flatten();
    match pool.as_deref().or(claim.as_ref().map(|c| c.pool())) {
        Some(target) => target.in_place_scope(|s| {
            s.spawn(move |_| call());
            wait_polling(py, rx, ctl)
        }),
        None => std::thread::scope(|s| {
            s.spawn(call);
            wait_polling(py, rx, ctl)
        }),
    }
}

/// Waits for a call's result on `rx`, running Python's signal handlers every
/// [`SIGNAL_POLL`]; when one raises, stops the call (`ctl`), waits for it to end and
/// returns the handler's exception.
fn wait_polling<R: Send>(
    py: Python<'_>,
    mut rx: std::sync::mpsc::Receiver<crate::Result<R>>,
    ctl: &Control,
) -> PyResult<R> {
    loop {
        let (received, back) = py.detach(move || (rx.recv_timeout(SIGNAL_POLL), rx));
        rx = back;
        match received {
            Ok(result) => return Ok(result?),
            Err(RecvTimeoutError::Timeout) => {
                if let Err(signal) = py.check_signals() {
                    ctl.stop();
                    // Wait for the call to stop; its result is dropped.
                    let _ = py.detach(move || rx.recv());
                    return Err(signal);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err("the call ended without a result"))
            }
        }
    }
}

/// Sets the number of threads bptt uses from now on: 1 to `4 × max(CPUs, 16)`.
#[pyfunction]
fn set_num_threads(n: i64) -> PyResult<()> {
    let cap = parallel::max_threads();
    match usize::try_from(n) {
        Ok(n) if (1..=cap).contains(&n) => {
            parallel::set_num_threads(n);
            Ok(())
        }
        _ => Err(PyValueError::new_err(format!(
            "n: expected a number of threads from 1 to {cap} (4 x max(CPUs, 16)), got {n}"
        ))),
    }
}

/// The number of threads bptt uses.
#[pyfunction]
fn get_num_threads() -> usize {
    parallel::num_threads()
}

/// Forces the SIMD level of the cell kernels (`"scalar"`, `"avx2"`, `"avx512"`; on aarch64
/// the one level is `"neon"`), or `None` for the best this CPU has; returns the level now
/// in use. For tests and benchmarks; results are bitwise identical across levels, except
/// the float32 LSTM cell, which differs by a few ulp between the scalar and the vector levels.
#[pyfunction]
#[pyo3(signature = (level=None))]
fn set_simd_level(level: Option<&str>) -> PyResult<&'static str> {
    let want = match level {
        None => None,
        Some(name) => Some(simd::Level::parse(name).ok_or_else(|| {
            PyValueError::new_err(format!(
                "level: expected '{}', 'avx2', 'avx512' or None, got {name:?}",
                simd::Level::Scalar.name()
            ))
        })?),
    };
    simd::set_level(want)
        .map(simd::Level::name)
        .map_err(|best| {
            PyValueError::new_err(format!(
                "level: {:?} needs instructions this CPU lacks (best: {})",
                level.unwrap_or_default(),
                best.name()
            ))
        })
}

/// Version, SIMD levels (in use and detected), threads, the CPUs other processes leave
/// idle now (None where unknown), GEMM backend, target.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("version", env!("CARGO_PKG_VERSION"))?;
    d.set_item("simd", simd::level().name())?;
    d.set_item("simd_detected", simd::detected().name())?;
    d.set_item("num_threads", parallel::num_threads())?;
    d.set_item("idle_cpus", parallel::idle_cpus())?;
    d.set_item("gemm", "faer 0.24")?;
    d.set_item(
        "target",
        format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
    )?;
    d.set_item("debug_assertions", cfg!(debug_assertions))?;
    Ok(d)
}

/// The compiled core of bptt.
#[pymodule]
mod _core {
    #[pymodule_export]
    use super::calls::{backward, dropout_mask, forward};
    #[pymodule_export]
    use super::readout::{
        adam_step, cross_entropy_loss, embedding_backward, linear_backward, linear_forward,
        mse_loss, rmsprop_step, sgd_step,
    };
    #[pymodule_export]
    use super::spec::{PyTape, Spec};
    #[pymodule_export]
    use super::{build_info, get_num_threads, set_num_threads, set_simd_level};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: sets one of the allocator's options, which it reads atomically.
            unsafe {
                libmimalloc_sys::mi_option_set(super::MI_OPTION_PURGE_DELAY, super::PURGE_DELAY_MS)
            };
        }
        if let Some(level) = std::env::var("BPTT_SIMD")
            .ok()
            .and_then(|v| crate::simd::Level::parse(&v))
        {
            // An unsupported request keeps the detected level.
            let _ = crate::simd::set_level(Some(level));
        }
        Ok(())
    }
}
