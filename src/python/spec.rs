//! The `Spec` (a model's validated configuration) and `Tape` classes.

use super::convert::Dtype;
use crate::model::Config;
use crate::sequence::Tape;
use crate::{CellKind, Float};
use numpy::Element;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// The fixed configuration of a model, validated once.
#[pyclass(frozen, module = "bptt._core", name = "Spec")]
#[derive(Debug)]
pub struct Spec {
    pub(super) config: Config,
    pub(super) dtype: Dtype,
}

#[pymethods]
impl Spec {
    #[new]
    #[pyo3(signature = (kind, input_size, hidden_size, num_layers, bidirectional, bias, batch_first, dtype, proj_size=0))]
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
        proj_size: usize,
    ) -> PyResult<Self> {
        let config = Config {
            kind: CellKind::parse(kind)?,
            input_size,
            hidden_size,
            num_layers,
            bidirectional,
            bias,
            batch_first,
            proj_size,
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

    /// The LSTM's projection size `P` (`0`: no projection).
    #[getter]
    fn proj_size(&self) -> usize {
        self.config.proj_size
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

pub(super) enum AnyTape {
    F32(Tape<f32>),
    F64(Tape<f64>),
}

/// What `forward` kept for `backward`; opaque, owned by Rust.
#[pyclass(frozen, module = "bptt._core", name = "Tape")]
pub struct PyTape {
    pub(super) inner: AnyTape,
    /// The identity of the model that made the tape (`owner` of `forward`): `backward`
    /// accepts the tape only with this very object.
    pub(super) owner: Option<Py<PyAny>>,
    /// The `x` given to forward, when the tape refers to it instead of copying it.
    pub(super) x: Option<Py<PyAny>>,
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

pub(super) trait TapeDtype: Float + Element {
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
