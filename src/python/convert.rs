//! Python arguments to core views: dtypes, arrays with their shape and dtype checked (the
//! message names the argument), the weight list, the initial state, lengths.

use crate::model::{Config, LayerWeights, StateView};
use crate::Float;
use numpy::{Element, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;

/// The float type of a model's parameters, arrays and tape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dtype {
    F32,
    F64,
}

impl Dtype {
    pub(super) fn parse(name: &str) -> PyResult<Self> {
        match name {
            "float32" => Ok(Dtype::F32),
            "float64" => Ok(Dtype::F64),
            other => Err(PyTypeError::new_err(format!(
                "dtype: expected float32 or float64, got {other}"
            ))),
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Dtype::F32 => f32::NAME,
            Dtype::F64 => f64::NAME,
        }
    }
}

/// Human name of an array's dtype for messages.
pub(super) fn dtype_name(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr("dtype")
        .and_then(|d| d.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| {
            obj.get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string())
        })
}

pub(super) fn extract_array<'py, A: FromPyObjectOwned<'py>, T: Float>(
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

/// Read-only views of the flat weight list `[w_ih, w_hh, (b_ih, b_hh), (w_hr)]` per
/// layer-direction.
pub(super) struct WeightArrays<'py, T: Element> {
    mats: Vec<(PyReadonlyArray2<'py, T>, PyReadonlyArray2<'py, T>)>,
    biases: Vec<Option<(PyReadonlyArray1<'py, T>, PyReadonlyArray1<'py, T>)>>,
    projections: Vec<Option<PyReadonlyArray2<'py, T>>>,
}

impl<'py, T: Float + Element> WeightArrays<'py, T> {
    pub(super) fn extract(cfg: &Config, weights: &Bound<'py, PyList>) -> PyResult<Self> {
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
        let mut projections = Vec::with_capacity(cfg.num_stacks());
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
            projections.push(if cfg.proj_size > 0 {
                Some(extract_array::<_, T>(&item(per - 1)?, name(per - 1), 2)?)
            } else {
                None
            });
        }
        Ok(WeightArrays {
            mats,
            biases,
            projections,
        })
    }

    pub(super) fn views(&self) -> Vec<LayerWeights<'_, T>> {
        self.mats
            .iter()
            .zip(&self.biases)
            .zip(&self.projections)
            .map(|(((w_ih, w_hh), b), p)| LayerWeights {
                w_ih: w_ih.as_array(),
                w_hh: w_hh.as_array(),
                b_ih: b.as_ref().map(|b| b.0.as_array()),
                b_hh: b.as_ref().map(|b| b.1.as_array()),
                w_hr: p.as_ref().map(|p| p.as_array()),
            })
            .collect()
    }
}

/// `h` and, for the LSTM, `c`.
pub(super) type StateArrays<'py, T> = (PyReadonlyArray3<'py, T>, Option<PyReadonlyArray3<'py, T>>);

pub(super) fn extract_state<'py, T: Float + Element>(
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

pub(super) fn state_view<'a, T: Element>(
    s: &'a Option<StateArrays<'_, T>>,
) -> Option<StateView<'a, T>> {
    s.as_ref().map(|(h, c)| StateView {
        h: h.as_array(),
        c: c.as_ref().map(|c| c.as_array()),
    })
}

pub(super) fn lengths_vec(
    lengths: Option<PyReadonlyArray1<'_, i64>>,
) -> PyResult<Option<Vec<usize>>> {
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
