//! `forward` and `backward`: the sequence entry points.

use super::convert::{
    dtype_name, extract_array, extract_state, lengths_vec, state_view, Dtype, WeightArrays,
};
use super::run_released;
use super::spec::{PyTape, Spec, TapeDtype};
use crate::parallel;
use crate::sequence::{self, Dropout, ForwardOptions, Keep};
use numpy::{IntoPyArray, PyArray2, PyArray3, PyReadonlyArray1, PyReadonlyArray3};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

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
    dropout: Option<Dropout>,
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
            let opts = ForwardOptions {
                lengths: lengths.as_deref(),
                keep,
                dropout,
            };
            sequence::forward_with(&cfg, &wv, xv, sv, &opts, ctl)
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
/// same object. `dropout` is `(p, seed)`: with a tape, the output of every layer but the
/// last is multiplied by the mask of `seed` (see `dropout_mask`); ignored without a tape.
#[pyfunction]
#[pyo3(signature = (spec, weights, x, h0=None, c0=None, lengths=None, keep_tape=false, owner=None, memory_budget=None, dropout=None))]
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<'py>(
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
    dropout: Option<(f64, u64)>,
) -> PyResult<Bound<'py, PyTuple>> {
    let dropout = dropout.map(|(p, seed)| Dropout { p, seed });
    if let Some(d) = &dropout {
        d.validate()?;
    }
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
        Dtype::F32 => {
            forward_typed::<f32>(py, spec, weights, x, h0, c0, lengths, keep, owner, dropout)
        }
        Dtype::F64 => {
            forward_typed::<f64>(py, spec, weights, x, h0, c0, lengths, keep, owner, dropout)
        }
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
        if let Some(hr) = g.w_hr {
            params.append(hr.into_pyarray(py))?;
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
pub(super) fn backward<'py>(
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

/// The dropout mask `forward` applies, with `dropout=(p, seed)`, to the output of layer
/// `layer` (before layer `layer + 1` reads it) in a pass of time-major shape
/// `(T, B, width)`: `0` or `1/(1-p)` per element, of dtype `dtype`.
#[pyfunction]
#[pyo3(signature = (p, seed, layer, shape, dtype))]
pub(super) fn dropout_mask<'py>(
    py: Python<'py>,
    p: f64,
    seed: u64,
    layer: usize,
    shape: (usize, usize, usize),
    dtype: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let d = Dropout { p, seed };
    Ok(match Dtype::parse(dtype)? {
        Dtype::F32 => d.mask::<f32>(layer, shape)?.into_pyarray(py).into_any(),
        Dtype::F64 => d.mask::<f64>(layer, shape)?.into_pyarray(py).into_any(),
    })
}
