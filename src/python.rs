//! The PyO3 bindings: the only file that knows Python exists.
//!
//! Every call does extract → detach → wrap: read-only views of the NumPy arrays are taken
//! with the GIL held, the core runs with the GIL released, and its owned results move into
//! NumPy without a copy. Core errors become `ValueError` (one `From` conversion, so `?`
//! works on core results); an array of the wrong dtype becomes `TypeError`.

use crate::model::{Config, LayerWeights, StateView};
use crate::sequence::{self, Keep, Tape};
use crate::{parallel, simd};
use crate::{CellKind, Control, Error, Float};
use numpy::{
    Element, IntoPyArray, PyArray2, PyArray3, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{
    PyKeyboardInterrupt, PyMemoryError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::sync::mpsc::RecvTimeoutError;

/// The extension's allocator. The core allocates its tape and buffers afresh on every call;
/// mimalloc keeps freed memory for reuse instead of returning it to the OS, so repeated
/// calls do not pay page faults on every new array (measured: LSTM T=100, B=16, H=128
/// forward+backward while the previous result is alive, ~13 ms with the system
/// allocator, see the issue note). Arrays handed to NumPy are freed through it as well.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
/// `parallel::INTERRUPTIBLE_WORK` multiply-adds (`work_size`) runs on its own thread while
/// the calling thread waits for it, taking the GIL every few milliseconds to run Python's
/// signal handlers: when one raises (Ctrl-C: `KeyboardInterrupt`), the call stops at its
/// next check (between chunks) and that exception is raised. Shorter calls run directly.
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
    let (tx, mut rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(move || {
            // The receiver outlives the thread (the scope joins it first).
            let _ = tx.send(parallel::run(parallel, || work(ctl)));
        });
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
    })
}

/// The float type of a model's parameters, arrays and tape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
}

impl Dtype {
    fn parse(name: &str) -> PyResult<Self> {
        match name {
            "float32" => Ok(Dtype::F32),
            "float64" => Ok(Dtype::F64),
            other => Err(PyTypeError::new_err(format!(
                "dtype: expected float32 or float64, got {other}"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => f32::NAME,
            Dtype::F64 => f64::NAME,
        }
    }
}

/// Human name of an array's dtype for messages.
fn dtype_name(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr("dtype")
        .and_then(|d| d.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| {
            obj.get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string())
        })
}

fn extract_array<'py, A: FromPyObjectOwned<'py>, T: Float>(
    obj: &Bound<'py, PyAny>,
    arg: &str,
    ndim: usize,
) -> PyResult<A> {
    if let Ok(u) = obj.cast::<numpy::PyUntypedArray>() {
        if u.ndim() != ndim {
            return Err(PyValueError::new_err(format!(
                "{arg}: expected a {ndim}-d array, got {} dimension(s) with shape {:?}",
                u.ndim(),
                u.shape()
            )));
        }
    }
    obj.extract::<A>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{arg}: expected a {ndim}-d numpy array of dtype {}, got dtype {}",
            T::NAME,
            dtype_name(obj)
        ))
    })
}

/// The fixed configuration of a model, validated once.
#[pyclass(frozen, module = "bptt._core", name = "Spec")]
#[derive(Debug)]
pub struct Spec {
    config: Config,
    dtype: Dtype,
}

#[pymethods]
impl Spec {
    #[new]
    #[pyo3(signature = (kind, input_size, hidden_size, num_layers, bidirectional, bias, batch_first, dtype))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        kind: &str,
        input_size: usize,
        hidden_size: usize,
        num_layers: usize,
        bidirectional: bool,
        bias: bool,
        batch_first: bool,
        dtype: &str,
    ) -> PyResult<Self> {
        let config = Config {
            kind: CellKind::parse(kind)?,
            input_size,
            hidden_size,
            num_layers,
            bidirectional,
            bias,
            batch_first,
        };
        config.validate()?;
        let dtype = Dtype::parse(dtype)?;
        Ok(Spec { config, dtype })
    }

    /// The cell name: `rnn_tanh`, `rnn_relu`, `lstm` or `gru`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.config.kind.name()
    }

    /// `"float32"` or `"float64"`.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }

    /// PyTorch's parameter names and shapes, in `state_dict()` order (the order of the
    /// `weights` list that `forward` and `backward` take and of the gradients returned).
    #[getter]
    fn param_shapes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, shape) in self.config.param_layout() {
            d.set_item(name, PyTuple::new(py, shape)?)?;
        }
        Ok(d)
    }

    /// `(values, arrays)` of `param_shapes`, counted without building it (saturating).
    #[getter]
    fn param_count(&self) -> (u128, u128) {
        self.config.param_count()
    }

    fn __repr__(&self) -> String {
        format!("Spec({:?}, dtype={})", self.config, self.dtype())
    }
}

enum AnyTape {
    F32(Tape<f32>),
    F64(Tape<f64>),
}

/// What `forward` kept for `backward`; opaque, owned by Rust.
#[pyclass(frozen, module = "bptt._core", name = "Tape")]
pub struct PyTape {
    inner: AnyTape,
    /// The identity of the model that made the tape (`owner` of `forward`): `backward`
    /// accepts the tape only with this very object.
    owner: Option<Py<PyAny>>,
    /// The `x` given to forward, when the tape refers to it instead of copying it.
    x: Option<Py<PyAny>>,
}

#[pymethods]
impl PyTape {
    /// Bytes held by the tape.
    #[getter]
    fn nbytes(&self) -> usize {
        match &self.inner {
            AnyTape::F32(t) => t.nbytes(),
            AnyTape::F64(t) => t.nbytes(),
        }
    }

    /// Number of time steps `T` of the forward pass that made the tape.
    #[getter]
    fn seq_len(&self) -> usize {
        self.dims().0
    }

    /// Batch size `B` of the forward pass that made the tape.
    #[getter]
    fn batch_size(&self) -> usize {
        self.dims().1
    }

    /// Steps per checkpointed segment under a memory budget, or None for a full tape.
    #[getter]
    fn segment(&self) -> Option<usize> {
        match &self.inner {
            AnyTape::F32(t) => t.segment(),
            AnyTape::F64(t) => t.segment(),
        }
    }

    fn __repr__(&self) -> String {
        let (t, b) = self.dims();
        let seg = self
            .segment()
            .map_or_else(String::new, |k| format!(", segment={k}"));
        format!("Tape(T={t}, B={b}, nbytes={}{seg})", self.nbytes())
    }

    /// Refuses pickling and copying (both go through `__reduce__`): the activations live in
    /// this process's memory, the tape may refer to the `x` given to forward, and it is
    /// only valid with the model object (and parameters) that made it.
    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err(format!(
            "cannot pickle or copy a bptt {}: it holds what forward() kept for backward() \
             in this process's memory, tied to the model object that made it; pickle the \
             model instead and run forward() where backward() will run",
            self.__repr__()
        )))
    }
}

impl PyTape {
    fn dims(&self) -> (usize, usize) {
        match &self.inner {
            AnyTape::F32(t) => t.dims(),
            AnyTape::F64(t) => t.dims(),
        }
    }
}

/// Read-only views of the flat weight list `[w_ih, w_hh, (b_ih, b_hh)]` per layer-direction.
struct WeightArrays<'py, T: Element> {
    mats: Vec<(PyReadonlyArray2<'py, T>, PyReadonlyArray2<'py, T>)>,
    biases: Vec<Option<(PyReadonlyArray1<'py, T>, PyReadonlyArray1<'py, T>)>>,
}

impl<'py, T: Float + Element> WeightArrays<'py, T> {
    fn extract(cfg: &Config, weights: &Bound<'py, PyList>) -> PyResult<Self> {
        let layout = cfg.param_layout();
        if weights.len() != layout.len() {
            return Err(PyValueError::new_err(format!(
                "weights: expected {} arrays, got {}",
                layout.len(),
                weights.len()
            )));
        }
        let per = cfg.params_per_stack();
        let mut mats = Vec::with_capacity(cfg.num_stacks());
        let mut biases = Vec::with_capacity(cfg.num_stacks());
        for (k, names) in layout.chunks(per).enumerate() {
            let item = |i: usize| weights.get_item(per * k + i);
            let name = |i: usize| names[i].0.as_str();
            mats.push((
                extract_array::<_, T>(&item(0)?, name(0), 2)?,
                extract_array::<_, T>(&item(1)?, name(1), 2)?,
            ));
            biases.push(if cfg.bias {
                Some((
                    extract_array::<_, T>(&item(2)?, name(2), 1)?,
                    extract_array::<_, T>(&item(3)?, name(3), 1)?,
                ))
            } else {
                None
            });
        }
        Ok(WeightArrays { mats, biases })
    }

    fn views(&self) -> Vec<LayerWeights<'_, T>> {
        self.mats
            .iter()
            .zip(&self.biases)
            .map(|((w_ih, w_hh), b)| LayerWeights {
                w_ih: w_ih.as_array(),
                w_hh: w_hh.as_array(),
                b_ih: b.as_ref().map(|b| b.0.as_array()),
                b_hh: b.as_ref().map(|b| b.1.as_array()),
            })
            .collect()
    }
}

/// `h` and, for the LSTM, `c`.
type StateArrays<'py, T> = (PyReadonlyArray3<'py, T>, Option<PyReadonlyArray3<'py, T>>);

fn extract_state<'py, T: Float + Element>(
    cfg: &Config,
    h: Option<&Bound<'py, PyAny>>,
    c: Option<&Bound<'py, PyAny>>,
    arg: &str,
) -> PyResult<Option<StateArrays<'py, T>>> {
    let lstm = cfg.kind.has_cell_state();
    let name = |i: usize| {
        if lstm {
            format!("{arg}[{i}]")
        } else {
            arg.to_string()
        }
    };
    let Some(h) = h else { return Ok(None) };
    let h = extract_array::<_, T>(h, &name(0), 3)?;
    let c = c
        .map(|c| extract_array::<_, T>(c, &name(1), 3))
        .transpose()?;
    Ok(Some((h, c)))
}

fn state_view<'a, T: Element>(s: &'a Option<StateArrays<'_, T>>) -> Option<StateView<'a, T>> {
    s.as_ref().map(|(h, c)| StateView {
        h: h.as_array(),
        c: c.as_ref().map(|c| c.as_array()),
    })
}

trait TapeDtype: Float + Element {
    fn wrap(t: Tape<Self>) -> AnyTape;
    fn unwrap(t: &AnyTape) -> Option<&Tape<Self>>;
}

impl TapeDtype for f32 {
    fn wrap(t: Tape<f32>) -> AnyTape {
        AnyTape::F32(t)
    }
    fn unwrap(t: &AnyTape) -> Option<&Tape<f32>> {
        match t {
            AnyTape::F32(t) => Some(t),
            AnyTape::F64(_) => None,
        }
    }
}

impl TapeDtype for f64 {
    fn wrap(t: Tape<f64>) -> AnyTape {
        AnyTape::F64(t)
    }
    fn unwrap(t: &AnyTape) -> Option<&Tape<f64>> {
        match t {
            AnyTape::F64(t) => Some(t),
            AnyTape::F32(_) => None,
        }
    }
}

fn lengths_vec(lengths: Option<PyReadonlyArray1<'_, i64>>) -> PyResult<Option<Vec<usize>>> {
    let Some(l) = lengths else { return Ok(None) };
    l.as_array()
        .iter()
        .enumerate()
        .map(|(b, &v)| {
            usize::try_from(v).map_err(|_| {
                PyValueError::new_err(format!(
                    "lengths: expected every length >= 1, got lengths[{b}] = {v}"
                ))
            })
        })
        .collect::<PyResult<Vec<_>>>()
        .map(Some)
}

#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn forward_typed<'py, T: TapeDtype>(
    py: Python<'py>,
    spec: &Spec,
    weights: &Bound<'py, PyList>,
    x: &Bound<'py, PyAny>,
    h0: Option<&Bound<'py, PyAny>>,
    c0: Option<&Bound<'py, PyAny>>,
    lengths: Option<Vec<usize>>,
    keep: Keep,
    owner: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let cfg = spec.config;
    let w = WeightArrays::<T>::extract(&cfg, weights)?;
    let x_obj = x.clone().unbind();
    let x = extract_array::<PyReadonlyArray3<'py, T>, T>(x, "x", 3)?;
    let state = extract_state::<T>(&cfg, h0, c0, "state")?;
    let (out, fin, tape) = {
        let wv = w.views();
        let xv = x.as_array();
        let sv = state_view(&state);
        let (seq_len, batch) = cfg.seq_dims(xv.shape());
        let threads = parallel::uses_threads(&cfg, seq_len, batch);
        let size = parallel::call_work(&cfg, seq_len, batch);
        run_released(py, threads, size, move |ctl| {
            sequence::forward(&cfg, &wv, xv, sv, lengths.as_deref(), keep, ctl)
        })?
    };
    let out = out.into_pyarray(py);
    let h = fin.h.into_pyarray(py);
    let c = fin.c.map(|c| c.into_pyarray(py));
    let tape = tape
        .map(|t| {
            let x = t.needs_x().then_some(x_obj);
            Bound::new(
                py,
                PyTape {
                    inner: T::wrap(t),
                    owner,
                    x,
                },
            )
        })
        .transpose()?;
    (out, h, c, tape).into_pyobject(py)
}

/// Runs the layer stack over `x`; returns `(out, h_n, c_n or None, tape or None)`.
///
/// All arrays must already have the spec's dtype (the Python layer converts); the GIL is
/// released while the core runs. `lengths` is an int64 array `(B,)` or None. With
/// `keep_tape`, `memory_budget` (bytes, or None for the full tape) bounds what the tape
/// keeps; the tape may refer to `x`, which must then not change before `backward`. The
/// tape keeps `owner` (the model's identity object): `backward` accepts it only with that
/// same object.
#[pyfunction]
#[pyo3(signature = (spec, weights, x, h0=None, c0=None, lengths=None, keep_tape=false, owner=None, memory_budget=None))]
#[allow(clippy::too_many_arguments)]
fn forward<'py>(
    py: Python<'py>,
    spec: &Spec,
    weights: &Bound<'py, PyList>,
    x: &Bound<'py, PyAny>,
    h0: Option<&Bound<'py, PyAny>>,
    c0: Option<&Bound<'py, PyAny>>,
    lengths: Option<&Bound<'py, PyAny>>,
    keep_tape: bool,
    owner: Option<&Bound<'py, PyAny>>,
    memory_budget: Option<usize>,
) -> PyResult<Bound<'py, PyTuple>> {
    let keep = match (keep_tape, memory_budget) {
        (false, _) => Keep::Nothing,
        (true, None) => Keep::Everything,
        (true, Some(b)) => Keep::Budget(b),
    };
    let lengths = lengths
        .map(|l| {
            l.extract::<PyReadonlyArray1<'py, i64>>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "lengths: expected a 1-d numpy array of dtype int64, got {}",
                    dtype_name(l)
                ))
            })
        })
        .transpose()?;
    let lengths = lengths_vec(lengths)?;
    let owner = owner.map(|o| o.clone().unbind());
    match spec.dtype {
        Dtype::F32 => forward_typed::<f32>(py, spec, weights, x, h0, c0, lengths, keep, owner),
        Dtype::F64 => forward_typed::<f64>(py, spec, weights, x, h0, c0, lengths, keep, owner),
    }
}

#[allow(clippy::too_many_arguments)]
fn backward_typed<'py, T: TapeDtype>(
    py: Python<'py>,
    spec: &Spec,
    weights: &Bound<'py, PyList>,
    tape: &PyTape,
    d_out: &Bound<'py, PyAny>,
    dh: Option<&Bound<'py, PyAny>>,
    dc: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let cfg = spec.config;
    let Some(core_tape) = T::unwrap(&tape.inner) else {
        return Err(PyValueError::new_err(format!(
            "tape: was made by a model of another dtype, not {}",
            T::NAME
        )));
    };
    let w = WeightArrays::<T>::extract(&cfg, weights)?;
    let x = tape
        .x
        .as_ref()
        .map(|x| extract_array::<PyReadonlyArray3<'py, T>, T>(x.bind(py), "x", 3))
        .transpose()?;
    let d_out = extract_array::<PyReadonlyArray3<'py, T>, T>(d_out, "d_out", 3)?;
    let d_state = extract_state::<T>(&cfg, dh, dc, "d_state")?;
    let grads = {
        let wv = w.views();
        let dv = d_out.as_array();
        let xv = x.as_ref().map(|x| x.as_array());
        let sv = state_view(&d_state);
        let (seq_len, batch) = cfg.seq_dims(dv.shape());
        let threads = parallel::uses_threads(&cfg, seq_len, batch);
        let size = 2 * parallel::call_work(&cfg, seq_len, batch);
        run_released(py, threads, size, move |ctl| {
            sequence::backward(&cfg, &wv, core_tape, xv, dv, sv, ctl)
        })?
    };
    let params = PyList::empty(py);
    for g in grads.params {
        params.append(g.w_ih.into_pyarray(py))?;
        params.append(g.w_hh.into_pyarray(py))?;
        if let (Some(bi), Some(bh)) = (g.b_ih, g.b_hh) {
            params.append(bi.into_pyarray(py))?;
            params.append(bh.into_pyarray(py))?;
        }
    }
    let dx: Bound<'py, PyArray3<T>> = grads.dx.into_pyarray(py);
    let dh0 = grads.dstate.h.into_pyarray(py);
    let dc0 = grads.dstate.c.map(|c| c.into_pyarray(py));
    let norm: Bound<'py, PyArray2<T>> = grads.dh_norm.into_pyarray(py);
    (dx, dh0, dc0, params, norm).into_pyobject(py)
}

/// Full BPTT; returns `(dx, dh0, dc0 or None, [param grads in weights' order], dh_norm)`.
///
/// `owner` must be the object given to the `forward` call that made `tape` (compared with
/// `is`).
#[pyfunction]
#[pyo3(signature = (spec, weights, tape, d_out, dh=None, dc=None, owner=None))]
#[allow(clippy::too_many_arguments)]
fn backward<'py>(
    py: Python<'py>,
    spec: &Spec,
    weights: &Bound<'py, PyList>,
    tape: &Bound<'py, PyAny>,
    d_out: &Bound<'py, PyAny>,
    dh: Option<&Bound<'py, PyAny>>,
    dc: Option<&Bound<'py, PyAny>>,
    owner: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let tape = tape.cast::<PyTape>().map_err(|_| {
        PyTypeError::new_err(format!(
            "tape: expected a Tape returned by forward(), got {}",
            tape.get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string())
        ))
    })?;
    let tape = tape.get();
    let same_owner = match (&tape.owner, owner) {
        (None, None) => true,
        (Some(made_by), Some(owner)) => owner.is(made_by),
        _ => false,
    };
    if !same_owner {
        return Err(PyValueError::new_err(
            "tape: was made by another model; a tape can only be used with the model whose forward() made it",
        ));
    }
    match spec.dtype {
        Dtype::F32 => backward_typed::<f32>(py, spec, weights, tape, d_out, dh, dc),
        Dtype::F64 => backward_typed::<f64>(py, spec, weights, tape, d_out, dh, dc),
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

/// Forces the SIMD level of the cell kernels (`"scalar"`, `"avx2"`, `"avx512"`), or
/// `None` for the best this CPU has; returns the level now in use. For tests and
/// benchmarks; results are bitwise identical across levels.
#[pyfunction]
#[pyo3(signature = (level=None))]
fn set_simd_level(level: Option<&str>) -> PyResult<&'static str> {
    let want = match level {
        None => None,
        Some(name) => Some(simd::Level::parse(name).ok_or_else(|| {
            PyValueError::new_err(format!(
                "level: expected 'scalar', 'avx2', 'avx512' or None, got {name:?}"
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

/// Version, SIMD levels (in use and detected), threads, GEMM backend, target.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("version", env!("CARGO_PKG_VERSION"))?;
    d.set_item("simd", simd::level().name())?;
    d.set_item("simd_detected", simd::detected().name())?;
    d.set_item("num_threads", parallel::num_threads())?;
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
    use super::{
        backward, build_info, forward, get_num_threads, set_num_threads, set_simd_level, PyTape,
        Spec,
    };

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
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
