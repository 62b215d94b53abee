//! Bindings of the readout, the embedding gradient, the losses (`crate::readout`) and the
//! optimizers' update steps (`crate::optim`). The Python layer checks shapes and converts
//! dtypes first; here the arrays are read (or, for the optimizers, borrowed writable,
//! C-contiguous) and the core runs with the GIL released, on the pool when large.

use super::convert::dtype_name;
use super::run_released;
use crate::optim::{self, Adam, RmsProp, Sgd};
use crate::readout::{self, elementwise_parallel, SoftmaxFloat};
use crate::Float;
use numpy::{
    Element, IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// Whether `obj` is an array of `f32` (else `f64`, else a `TypeError` naming `arg`).
fn is_f32(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<bool> {
    if obj.cast::<PyArrayDyn<f32>>().is_ok() {
        Ok(true)
    } else if obj.cast::<PyArrayDyn<f64>>().is_ok() {
        Ok(false)
    } else {
        Err(PyTypeError::new_err(format!(
            "{arg}: expected a numpy array of dtype float32 or float64, got {}",
            dtype_name(obj)
        )))
    }
}

fn read<'py, A: FromPyObjectOwned<'py>>(
    obj: &Bound<'py, PyAny>,
    arg: &str,
    what: &str,
) -> PyResult<A> {
    obj.extract::<A>().map_err(|_| {
        PyTypeError::new_err(format!("{arg}: expected {what}, got {}", dtype_name(obj)))
    })
}

fn slice<'a, T: Element>(a: &'a PyReadonlyArrayDyn<'_, T>, arg: &str) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{arg}: expected a C-contiguous array")))
}

fn opt_mask<'py>(
    mask: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<PyReadonlyArray1<'py, bool>>> {
    mask.map(|m| read(m, "mask", "a 1-d numpy array of dtype bool"))
        .transpose()
}

fn mask_slice<'a>(m: &'a Option<PyReadonlyArray1<'_, bool>>) -> PyResult<Option<&'a [bool]>> {
    m.as_ref()
        .map(|m| {
            m.as_slice()
                .map_err(|_| PyValueError::new_err("mask: expected a C-contiguous array"))
        })
        .transpose()
}

fn linear_forward_typed<'py, T: Float + Element>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    b: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let what = format!("a 2-d numpy array of dtype {}", T::NAME);
    let x: PyReadonlyArray2<'py, T> = read(x, "x", &what)?;
    let w: PyReadonlyArray2<'py, T> = read(w, "weight", &what)?;
    let b: Option<PyReadonlyArray1<'py, T>> = b
        .map(|b| {
            read(
                b,
                "bias",
                &format!("a 1-d numpy array of dtype {}", T::NAME),
            )
        })
        .transpose()?;
    let (xv, wv, bv) = (x.as_array(), w.as_array(), b.as_ref().map(|b| b.as_array()));
    let work = xv.len() * wv.nrows();
    let y = run_released(py, readout::linear_parallel(work), work, |_| {
        readout::linear_forward(xv, wv, bv, crate::parallel::current_threads())
    })?;
    Ok(y.into_pyarray(py).into_any())
}

/// `y = x·weightᵀ + bias` for `x` `(N, in)`, `weight` `(out, in)`, `bias` `(out,)` or
/// None, all of one float dtype.
#[pyfunction]
#[pyo3(signature = (x, weight, bias=None))]
pub(super) fn linear_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    if is_f32(weight, "weight")? {
        linear_forward_typed::<f32>(py, x, weight, bias)
    } else {
        linear_forward_typed::<f64>(py, x, weight, bias)
    }
}

fn linear_backward_typed<'py, T: Float + Element>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    dy: &Bound<'py, PyAny>,
    bias: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let what = format!("a 2-d numpy array of dtype {}", T::NAME);
    let x: PyReadonlyArray2<'py, T> = read(x, "x", &what)?;
    let w: PyReadonlyArray2<'py, T> = read(w, "weight", &what)?;
    let dy: PyReadonlyArray2<'py, T> = read(dy, "d_y", &what)?;
    let (xv, wv, dv) = (x.as_array(), w.as_array(), dy.as_array());
    let work = 2 * xv.len() * wv.nrows();
    let (dx, dw, db) = run_released(py, readout::linear_parallel(work), work, |_| {
        readout::linear_backward(xv, wv, dv, bias, crate::parallel::current_threads())
    })?;
    (
        dx.into_pyarray(py),
        dw.into_pyarray(py),
        db.map(|d| d.into_pyarray(py)),
    )
        .into_pyobject(py)
}

/// Gradients of `linear_forward`: `(dx, dweight, dbias or None)` from `x` `(N, in)`,
/// `weight` `(out, in)` and `d_y` `(N, out)`.
#[pyfunction]
#[pyo3(signature = (x, weight, d_y, bias))]
pub(super) fn linear_backward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    d_y: &Bound<'py, PyAny>,
    bias: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    if is_f32(weight, "weight")? {
        linear_backward_typed::<f32>(py, x, weight, d_y, bias)
    } else {
        linear_backward_typed::<f64>(py, x, weight, d_y, bias)
    }
}

fn embedding_backward_typed<'py, T: Float + Element>(
    py: Python<'py>,
    ids: &[i64],
    d_out: &Bound<'py, PyAny>,
    num_embeddings: usize,
    padding_idx: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let d: PyReadonlyArray2<'py, T> = read(
        d_out,
        "d_out",
        &format!("a 2-d numpy array of dtype {}", T::NAME),
    )?;
    let dv = d.as_array();
    let g = run_released(py, false, dv.len(), |_| {
        readout::embedding_backward(ids, dv, num_embeddings, padding_idx)
    })?;
    Ok(g.into_pyarray(py).into_any())
}

/// The gradient of an embedding table `(num_embeddings, dim)`: the rows of `d_out`
/// `(N, dim)` added by token (`ids`, int64 `(N,)`); `padding_idx`'s row stays zero.
#[pyfunction]
#[pyo3(signature = (ids, d_out, num_embeddings, padding_idx=None))]
pub(super) fn embedding_backward<'py>(
    py: Python<'py>,
    ids: &Bound<'py, PyAny>,
    d_out: &Bound<'py, PyAny>,
    num_embeddings: usize,
    padding_idx: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let ids: PyReadonlyArray1<'py, i64> = read(ids, "x", "a 1-d numpy array of dtype int64")?;
    let ids_s = ids
        .as_slice()
        .map_err(|_| PyValueError::new_err("x: expected a C-contiguous array"))?;
    if is_f32(d_out, "d_out")? {
        embedding_backward_typed::<f32>(py, ids_s, d_out, num_embeddings, padding_idx)
    } else {
        embedding_backward_typed::<f64>(py, ids_s, d_out, num_embeddings, padding_idx)
    }
}

fn mse_typed<'py, T: Float + Element>(
    py: Python<'py>,
    pred: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    width: usize,
    mask: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let what = format!("a numpy array of dtype {}", T::NAME);
    let p: PyReadonlyArrayDyn<'py, T> = read(pred, "pred", &what)?;
    let t: PyReadonlyArrayDyn<'py, T> = read(target, "target", &what)?;
    let m = opt_mask(mask)?;
    let (ps, ts, ms) = (slice(&p, "pred")?, slice(&t, "target")?, mask_slice(&m)?);
    let r = run_released(py, elementwise_parallel(ps.len()), ps.len(), |_| {
        readout::mse(ps, ts, width, ms)
    })?;
    (r.loss, r.grad.into_pyarray(py)).into_pyobject(py)
}

/// Mean squared error over C-contiguous `pred` and `target` of one dtype, seen as rows of
/// `width` values, with an optional bool row `mask`: `(loss, flat d_pred)`.
#[pyfunction]
#[pyo3(signature = (pred, target, width, mask=None))]
pub(super) fn mse_loss<'py>(
    py: Python<'py>,
    pred: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    width: usize,
    mask: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    if is_f32(pred, "pred")? {
        mse_typed::<f32>(py, pred, target, width, mask)
    } else {
        mse_typed::<f64>(py, pred, target, width, mask)
    }
}

fn ce_typed<'py, T: SoftmaxFloat + Element>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    labels: &[i64],
    classes: usize,
    mask: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let z: PyReadonlyArrayDyn<'py, T> = read(
        logits,
        "logits",
        &format!("a numpy array of dtype {}", T::NAME),
    )?;
    let m = opt_mask(mask)?;
    let (zs, ms) = (slice(&z, "logits")?, mask_slice(&m)?);
    let r = run_released(py, elementwise_parallel(zs.len()), zs.len(), |_| {
        readout::cross_entropy(zs, classes, labels, ms)
    })?;
    (r.loss, r.grad.into_pyarray(py)).into_pyobject(py)
}

/// Softmax cross-entropy fused with its gradient over C-contiguous `logits` (rows of
/// `classes` values), int64 `labels` (one per row) and an optional bool row `mask`:
/// `(loss, flat d_logits)`.
#[pyfunction]
#[pyo3(signature = (logits, labels, classes, mask=None))]
pub(super) fn cross_entropy_loss<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
    classes: usize,
    mask: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let lab: PyReadonlyArray1<'py, i64> =
        read(labels, "labels", "a 1-d numpy array of dtype int64")?;
    let ls = lab
        .as_slice()
        .map_err(|_| PyValueError::new_err("labels: expected a C-contiguous array"))?;
    if is_f32(logits, "logits")? {
        ce_typed::<f32>(py, logits, ls, classes, mask)
    } else {
        ce_typed::<f64>(py, logits, ls, classes, mask)
    }
}

/// A writable, C-contiguous borrow of an optimizer array.
fn writable<'py, T: Float + Element>(
    obj: &Bound<'py, PyAny>,
    arg: &str,
) -> PyResult<PyReadwriteArrayDyn<'py, T>> {
    let arr = obj.cast::<PyArrayDyn<T>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{arg}: expected a numpy array of dtype {}, got {}",
            T::NAME,
            dtype_name(obj)
        ))
    })?;
    if !arr.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{arg}: expected a C-contiguous array"
        )));
    }
    arr.try_readwrite()
        .map_err(|e| PyValueError::new_err(format!("{arg}: cannot be written ({e})")))
}

fn slice_mut<'a, T: Element>(
    a: &'a mut PyReadwriteArrayDyn<'_, T>,
    arg: &str,
) -> PyResult<&'a mut [T]> {
    a.as_slice_mut()
        .map_err(|_| PyValueError::new_err(format!("{arg}: expected a C-contiguous array")))
}

/// The borrows of one optimizer call: the parameter, the gradient, up to three buffers.
struct Step<'py, T: Element> {
    p: PyReadwriteArrayDyn<'py, T>,
    g: PyReadonlyArrayDyn<'py, T>,
    bufs: Vec<Option<PyReadwriteArrayDyn<'py, T>>>,
}

impl<'py, T: Float + Element> Step<'py, T> {
    fn new(
        p: &Bound<'py, PyAny>,
        g: &Bound<'py, PyAny>,
        bufs: &[(&str, Option<&Bound<'py, PyAny>>)],
    ) -> PyResult<Self> {
        let p = writable::<T>(p, "param")?;
        let g = read(g, "grad", &format!("a numpy array of dtype {}", T::NAME))?;
        let bufs = bufs
            .iter()
            .map(|(name, b)| b.map(|b| writable::<T>(b, name)).transpose())
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Step { p, g, bufs })
    }

    /// Runs `f(param, grad, buffers)` with the GIL released.
    fn run(
        &mut self,
        py: Python<'_>,
        f: impl FnOnce(&mut [T], &[T], Vec<Option<&mut [T]>>) -> crate::Result<()> + Send,
    ) -> PyResult<()> {
        let g = slice(&self.g, "grad")?;
        let p = slice_mut(&mut self.p, "param")?;
        let bufs = self
            .bufs
            .iter_mut()
            .map(|b| b.as_mut().map(|b| slice_mut(b, "buffer")).transpose())
            .collect::<PyResult<Vec<_>>>()?;
        let n = p.len();
        run_released(py, optim::step_parallel(n), n, move |_| f(p, g, bufs))
    }
}

fn take<'a, T>(bufs: &mut [Option<&'a mut [T]>], i: usize) -> Option<&'a mut [T]> {
    bufs.get_mut(i).and_then(Option::take)
}

/// One SGD step in place (see `bptt.optim.SGD`); `momentum_buffer` is required when
/// `momentum > 0`, `first` says it is new (it is then set to the gradient).
#[pyfunction]
#[pyo3(signature = (param, grad, momentum_buffer, first, lr, momentum, dampening, weight_decay, nesterov))]
#[allow(clippy::too_many_arguments)]
pub(super) fn sgd_step<'py>(
    py: Python<'py>,
    param: &Bound<'py, PyAny>,
    grad: &Bound<'py, PyAny>,
    momentum_buffer: Option<&Bound<'py, PyAny>>,
    first: bool,
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
) -> PyResult<()> {
    let h = Sgd {
        lr,
        momentum,
        dampening,
        weight_decay,
        nesterov,
    };
    let bufs = [("momentum_buffer", momentum_buffer)];
    fn go<T: Float + Element>(
        py: Python<'_>,
        mut s: Step<'_, T>,
        h: Sgd,
        first: bool,
    ) -> PyResult<()> {
        s.run(py, move |p, g, mut b| {
            optim::sgd_step(&h, p, g, take(&mut b, 0), first)
        })
    }
    if is_f32(param, "param")? {
        go(py, Step::<f32>::new(param, grad, &bufs)?, h, first)
    } else {
        go(py, Step::<f64>::new(param, grad, &bufs)?, h, first)
    }
}

/// One RMSprop step in place (see `bptt.optim.RMSprop`).
#[pyfunction]
#[pyo3(signature = (param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, weight_decay, momentum, centered))]
#[allow(clippy::too_many_arguments)]
pub(super) fn rmsprop_step<'py>(
    py: Python<'py>,
    param: &Bound<'py, PyAny>,
    grad: &Bound<'py, PyAny>,
    square_avg: &Bound<'py, PyAny>,
    grad_avg: Option<&Bound<'py, PyAny>>,
    momentum_buffer: Option<&Bound<'py, PyAny>>,
    lr: f64,
    alpha: f64,
    eps: f64,
    weight_decay: f64,
    momentum: f64,
    centered: bool,
) -> PyResult<()> {
    let h = RmsProp {
        lr,
        alpha,
        eps,
        weight_decay,
        momentum,
        centered,
    };
    let bufs = [
        ("square_avg", Some(square_avg)),
        ("grad_avg", grad_avg),
        ("momentum_buffer", momentum_buffer),
    ];
    fn go<T: Float + Element>(py: Python<'_>, mut s: Step<'_, T>, h: RmsProp) -> PyResult<()> {
        s.run(py, move |p, g, mut b| {
            let v = take(&mut b, 0).ok_or_else(|| crate::Error::value("square_avg", "required"))?;
            optim::rmsprop_step(&h, p, g, v, take(&mut b, 1), take(&mut b, 2))
        })
    }
    if is_f32(param, "param")? {
        go(py, Step::<f32>::new(param, grad, &bufs)?, h)
    } else {
        go(py, Step::<f64>::new(param, grad, &bufs)?, h)
    }
}

/// One Adam (or, with `decoupled`, AdamW) step in place (see `bptt.optim.Adam`); `step`
/// is the parameter's step count including this one.
#[pyfunction]
#[pyo3(signature = (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, step))]
#[allow(clippy::too_many_arguments)]
pub(super) fn adam_step<'py>(
    py: Python<'py>,
    param: &Bound<'py, PyAny>,
    grad: &Bound<'py, PyAny>,
    exp_avg: &Bound<'py, PyAny>,
    exp_avg_sq: &Bound<'py, PyAny>,
    max_exp_avg_sq: Option<&Bound<'py, PyAny>>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    amsgrad: bool,
    step: u64,
) -> PyResult<()> {
    let h = Adam {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        decoupled,
        amsgrad,
        step,
    };
    let bufs = [
        ("exp_avg", Some(exp_avg)),
        ("exp_avg_sq", Some(exp_avg_sq)),
        ("max_exp_avg_sq", max_exp_avg_sq),
    ];
    fn go<T: Float + Element>(py: Python<'_>, mut s: Step<'_, T>, h: Adam) -> PyResult<()> {
        s.run(py, move |p, g, mut b| {
            let m = take(&mut b, 0).ok_or_else(|| crate::Error::value("exp_avg", "required"))?;
            let v = take(&mut b, 1).ok_or_else(|| crate::Error::value("exp_avg_sq", "required"))?;
            optim::adam_step(&h, p, g, m, v, take(&mut b, 2))
        })
    }
    if is_f32(param, "param")? {
        go(py, Step::<f32>::new(param, grad, &bufs)?, h)
    } else {
        go(py, Step::<f64>::new(param, grad, &bufs)?, h)
    }
}
