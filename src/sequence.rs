//! The sequence driver: the time loop over layers and directions, variable lengths, the
//! tape, and BPTT.
//!
//! Forward, per layer `l` and direction `d` (`T` steps, batch `B`, `G·H` gates):
//! 1. `gates[T·B, G·H] = X_l[T·B, I_l] · W_ihᵀ + b_ih` — one GEMM for all steps;
//! 2. per step `t` (`t = 0..T` forward, `T−1..0` reverse): `rec[B, G·H] = h · W_hhᵀ`, then
//!    the fused cell step overwrites `gates[t]` with the activated gates and updates `h`
//!    (and `c`) in place;
//! 3. `out[t, :, d·H..(d+1)·H] = h`.
//!
//! Variable lengths: row `b` is *masked* at every `t >= lengths[b]`: its state is carried
//! unchanged and its output is zero. The forward direction therefore ends at `b`'s last
//! step, and the reverse direction carries `h0` through the padding and starts at
//! `lengths[b] − 1`, exactly as if `b` had been run alone.
//!
//! The tape keeps, per layer, its input `X_l [T, B, I_l]`, and per direction the activated
//! gates `[T, B, G·H]`, the state entering each step `h_prev [T, B, H]` (and `c_prev` for the
//! LSTM), and for the GRU `rec_n + b_hn [T, B, H]`.
//!
//! Backward (BPTT), per layer from the top and per direction, steps in reverse processing
//! order: the fused cell backward gives `dxp[t], drec[t] [B, G·H]`, then
//! `dh ← dh_direct + drec[t] · W_hh`. After the loop, each as one GEMM over all steps:
//! `dW_ih = dxpᵀ·X_l`, `dW_hh = drecᵀ·h_prev`, `db_ih = Σ dxp`, `db_hh = Σ drec`,
//! `dX_l += dxp·W_ih`; `dX_l` is the gradient arriving at layer `l − 1`'s output.

use crate::cell::{step_backward, step_forward, CellKind, StepRow, StepRowGrad};
use crate::error::{fmt_shape, Error, Result};
use crate::float::Float;
use crate::linalg::gemm;
use crate::model::{
    check_state, check_weights, Config, Grads, LayerGrads, LayerWeights, State, StateView,
};
use ndarray::{s, Array1, Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis};

/// What forward keeps for backward. Owned by the core; its size is [`Tape::nbytes`].
#[derive(Debug, Clone)]
pub struct Tape<T> {
    config: Config,
    seq_len: usize,
    batch: usize,
    lengths: Option<Vec<usize>>,
    layers: Vec<LayerTape<T>>,
}

#[derive(Debug, Clone)]
struct LayerTape<T> {
    /// `X_l [T, B, I_l]`, time-major.
    input: Array3<T>,
    dirs: Vec<DirTape<T>>,
}

#[derive(Debug, Clone)]
struct DirTape<T> {
    /// Activated gates `[T, B, G·H]`.
    gates: Array3<T>,
    /// State entering the step that processes `t`: `[T, B, H]`.
    h_prev: Array3<T>,
    /// LSTM: cell entering the step that processes `t`: `[T, B, H]`.
    c_prev: Option<Array3<T>>,
    /// GRU: `h_prev·W_hnᵀ + b_hn`: `[T, B, H]`.
    gh_n: Option<Array3<T>>,
}

impl<T: Float> Tape<T> {
    /// Bytes held by the tape's arrays.
    pub fn nbytes(&self) -> usize {
        let elems: usize = self
            .layers
            .iter()
            .map(|l| {
                l.input.len()
                    + l.dirs
                        .iter()
                        .map(|d| {
                            d.gates.len()
                                + d.h_prev.len()
                                + d.c_prev.as_ref().map_or(0, |a| a.len())
                                + d.gh_n.as_ref().map_or(0, |a| a.len())
                        })
                        .sum::<usize>()
            })
            .sum();
        elems * std::mem::size_of::<T>()
            + self
                .lengths
                .as_ref()
                .map_or(0, |l| l.len() * std::mem::size_of::<usize>())
    }

    /// The configuration of the model that made the tape.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `(T, B)` of the forward pass that made the tape.
    pub fn dims(&self) -> (usize, usize) {
        (self.seq_len, self.batch)
    }
}

/// Output of [`forward`]: `out` in the layout of `x`, the final state, and the tape when
/// one was asked for.
pub type ForwardOutput<T> = (Array3<T>, State<T>, Option<Tape<T>>);

fn check_lengths(lengths: Option<&[usize]>, seq_len: usize, batch: usize) -> Result<()> {
    let Some(lengths) = lengths else {
        return Ok(());
    };
    if lengths.len() != batch {
        return Err(Error::shape(
            "lengths",
            format!("({batch},) (one length per sequence in the batch)"),
            &[lengths.len()],
        ));
    }
    if let Some((b, &l)) = lengths
        .iter()
        .enumerate()
        .find(|&(_, &l)| l == 0 || l > seq_len)
    {
        return Err(Error::value(
            "lengths",
            format!(
                "expected every length in [1, {seq_len}] (T = {seq_len}), got lengths[{b}] = {l}"
            ),
        ));
    }
    Ok(())
}

/// Checks `x` against `cfg` and returns `(T, B)`.
fn check_sequence<T>(
    cfg: &Config,
    x: &ArrayView3<'_, T>,
    arg: &str,
    width: usize,
) -> Result<(usize, usize)> {
    if x.shape()[2] != width {
        return Err(Error::shape(arg, cfg.seq_shape_text(width), x.shape()));
    }
    let (t, b) = cfg.seq_dims(x.shape());
    if t == 0 || b == 0 {
        return Err(Error::value(
            arg,
            format!(
                "expected at least one time step and one sequence, got shape {} (T = {t}, B = {b})",
                fmt_shape(x.shape())
            ),
        ));
    }
    Ok((t, b))
}

/// A time-major, contiguous copy of a sequence given in the user's layout.
fn to_time_major<T: Float>(cfg: &Config, x: &ArrayView3<'_, T>) -> Array3<T> {
    let v = if cfg.batch_first {
        x.view().permuted_axes([1, 0, 2])
    } else {
        x.view()
    };
    v.as_standard_layout().into_owned()
}

/// The user's layout of a time-major array (moves when no transpose is needed).
fn from_time_major<T: Float>(cfg: &Config, a: Array3<T>) -> Array3<T> {
    if cfg.batch_first {
        a.permuted_axes([1, 0, 2]).as_standard_layout().into_owned()
    } else {
        a
    }
}

fn is_masked(lengths: Option<&[usize]>, t: usize, b: usize) -> bool {
    lengths.is_some_and(|l| t >= l[b])
}

/// Runs the stack over `x` (`[T, B, I]`, or `[B, T, I]` with `batch_first`).
///
/// `state` is the initial state (zeros when `None`); `lengths` the valid length of each
/// sequence (all `T` when `None`). With `keep_tape` the tape for [`backward`] is returned.
///
/// # Errors
/// [`Error::Shape`] / [`Error::Value`] naming `x`, `state`, `lengths` or a weight.
pub fn forward<T: Float>(
    cfg: &Config,
    weights: &[LayerWeights<'_, T>],
    x: ArrayView3<'_, T>,
    state: Option<StateView<'_, T>>,
    lengths: Option<&[usize]>,
    keep_tape: bool,
) -> Result<ForwardOutput<T>> {
    cfg.validate()?;
    check_weights(cfg, weights)?;
    let (seq_len, batch) = check_sequence(cfg, &x, "x", cfg.input_size)?;
    if let Some(st) = &state {
        check_state(cfg, batch, st, "state")?;
    }
    check_lengths(lengths, seq_len, batch)?;

    let dirs = cfg.num_directions();
    let hidden = cfg.hidden_size;
    let mut final_state = State::zeros(cfg, batch);
    let mut input = to_time_major(cfg, &x);
    if let Some(lengths) = lengths {
        // Padding never reaches the arithmetic, so even NaN padding cannot leak into the
        // weight gradients (0 · NaN would).
        for (b, &len) in lengths.iter().enumerate() {
            input.slice_mut(s![len.., b, ..]).fill(T::zero());
        }
    }
    let mut layers = Vec::new();
    for layer in 0..cfg.num_layers {
        let mut out = Array3::<T>::zeros((seq_len, batch, dirs * hidden));
        let mut dir_tapes = Vec::new();
        for d in 0..dirs {
            let k = layer * dirs + d;
            let mut h = match &state {
                Some(st) => st.h.index_axis(Axis(0), k).to_owned(),
                None => Array2::zeros((batch, hidden)),
            };
            let mut c = cfg.kind.has_cell_state().then(|| match &state {
                Some(StateView { c: Some(c), .. }) => c.index_axis(Axis(0), k).to_owned(),
                _ => Array2::zeros((batch, hidden)),
            });
            let tape = run_direction(
                cfg,
                &weights[k],
                &input,
                d == 1,
                lengths,
                &mut h,
                c.as_mut(),
                &mut out,
                d,
                keep_tape,
            );
            final_state.h.index_axis_mut(Axis(0), k).assign(&h);
            if let (Some(fc), Some(c)) = (final_state.c.as_mut(), c) {
                fc.index_axis_mut(Axis(0), k).assign(&c);
            }
            dir_tapes.extend(tape);
        }
        let next = std::mem::replace(&mut input, out);
        if keep_tape {
            layers.push(LayerTape {
                input: next,
                dirs: dir_tapes,
            });
        }
    }
    let tape = keep_tape.then(|| Tape {
        config: *cfg,
        seq_len,
        batch,
        lengths: lengths.map(<[usize]>::to_vec),
        layers,
    });
    Ok((from_time_major(cfg, input), final_state, tape))
}

/// One direction of one layer over all steps; see the module docs.
#[allow(clippy::too_many_arguments)]
fn run_direction<T: Float>(
    cfg: &Config,
    w: &LayerWeights<'_, T>,
    input: &Array3<T>,
    reverse: bool,
    lengths: Option<&[usize]>,
    h: &mut Array2<T>,
    mut c: Option<&mut Array2<T>>,
    out: &mut Array3<T>,
    dir: usize,
    keep_tape: bool,
) -> Option<DirTape<T>> {
    let (seq_len, batch, in_size) = input.dim();
    let hidden = cfg.hidden_size;
    let gh = cfg.gate_size();
    let kind = cfg.kind;

    // gates = X · W_ihᵀ + b_ih, all steps at once.
    let mut gates = Array3::<T>::zeros((seq_len, batch, gh));
    {
        let x2 = input
            .view()
            .into_shape_with_order((seq_len * batch, in_size))
            .expect("time-major input is contiguous");
        let mut g2 = gates
            .view_mut()
            .into_shape_with_order((seq_len * batch, gh))
            .expect("fresh array is contiguous");
        if let Some(b) = &w.b_ih {
            g2.assign(
                &b.broadcast((seq_len * batch, gh))
                    .expect("bias has G·H entries"),
            );
        }
        gemm(T::one(), &x2, &w.w_ih.t(), T::one(), &mut g2);
    }

    let mut h_prev_tape = keep_tape.then(|| Array3::<T>::zeros((seq_len, batch, hidden)));
    let mut c_prev_tape =
        (keep_tape && kind == CellKind::Lstm).then(|| Array3::<T>::zeros((seq_len, batch, hidden)));
    let mut gh_n_tape =
        (keep_tape && kind == CellKind::Gru).then(|| Array3::<T>::zeros((seq_len, batch, hidden)));
    let mut gh_n_scratch = vec![T::zero(); if kind == CellKind::Gru { hidden } else { 0 }];
    let mut rec = Array2::<T>::zeros((batch, gh));
    let b_hh = w
        .b_hh
        .as_ref()
        .map(|b| b.as_slice().expect("bias is contiguous"));
    let mut c_scratch: Vec<T> = Vec::new();

    for step in 0..seq_len {
        let t = if reverse { seq_len - 1 - step } else { step };
        gemm(
            T::one(),
            &h.view(),
            &w.w_hh.t(),
            T::zero(),
            &mut rec.view_mut(),
        );
        if let Some(tp) = h_prev_tape.as_mut() {
            tp.index_axis_mut(Axis(0), t).assign(h);
        }
        if let (Some(tp), Some(c)) = (c_prev_tape.as_mut(), c.as_deref()) {
            tp.index_axis_mut(Axis(0), t).assign(c);
        }
        let mut gates_t = gates.index_axis_mut(Axis(0), t);
        let mut out_t = out.slice_mut(s![t, .., dir * hidden..(dir + 1) * hidden]);
        for b in 0..batch {
            let mut out_row = out_t.row_mut(b);
            if is_masked(lengths, t, b) {
                out_row.fill(T::zero());
                continue;
            }
            let c_row: &mut [T] = match c.as_deref_mut() {
                Some(c) => c
                    .row_mut(b)
                    .into_slice()
                    .expect("state rows are contiguous"),
                None => &mut c_scratch,
            };
            let gh_n: &mut [T] = match gh_n_tape.as_mut() {
                Some(tp) => tp
                    .slice_mut(s![t, b, ..])
                    .into_slice()
                    .expect("tape rows are contiguous"),
                None => &mut gh_n_scratch,
            };
            let h_row = h
                .row_mut(b)
                .into_slice()
                .expect("state rows are contiguous");
            step_forward(
                kind,
                hidden,
                StepRow {
                    gates: gates_t
                        .row_mut(b)
                        .into_slice()
                        .expect("gate rows are contiguous"),
                    rec: rec.row(b).to_slice().expect("rec rows are contiguous"),
                    b_hh,
                    h: h_row,
                    c: c_row,
                    gh_n,
                },
            );
            out_row.assign(&h.row(b));
        }
    }
    keep_tape.then(|| DirTape {
        gates,
        h_prev: h_prev_tape.expect("kept with the tape"),
        c_prev: c_prev_tape,
        gh_n: gh_n_tape,
    })
}

/// Full backpropagation through time over the whole sequence.
///
/// `d_out` is `∂L/∂out` (layout of `x`), `d_state` is `∂L/∂` final state (zeros when
/// `None`). Uses the current `weights`, which must be those the tape was made with.
///
/// # Errors
/// [`Error::Value`] when the tape comes from another configuration; [`Error::Shape`] when
/// `d_out` or `d_state` do not match the forward pass.
pub fn backward<T: Float>(
    cfg: &Config,
    weights: &[LayerWeights<'_, T>],
    tape: &Tape<T>,
    d_out: ArrayView3<'_, T>,
    d_state: Option<StateView<'_, T>>,
) -> Result<Grads<T>> {
    if tape.config != *cfg {
        return Err(Error::value(
            "tape",
            format!(
                "was made by a model of another configuration ({:?}), not by this one ({:?})",
                tape.config, cfg
            ),
        ));
    }
    check_weights(cfg, weights)?;
    let (seq_len, batch) = (tape.seq_len, tape.batch);
    let out_shape = if cfg.batch_first {
        [batch, seq_len, cfg.output_size()]
    } else {
        [seq_len, batch, cfg.output_size()]
    };
    if d_out.shape() != out_shape {
        return Err(Error::shape("d_out", fmt_shape(&out_shape), d_out.shape()));
    }
    if let Some(ds) = &d_state {
        check_state(cfg, batch, ds, "d_state")?;
    }

    let dirs = cfg.num_directions();
    let hidden = cfg.hidden_size;
    let lengths = tape.lengths.as_deref();
    let mut dstate = State::zeros(cfg, batch);
    let mut dh_norm = Array2::<T>::zeros((cfg.num_stacks(), seq_len));
    let mut params: Vec<Option<LayerGrads<T>>> = vec![None; cfg.num_stacks()];
    let mut d_y = to_time_major(cfg, &d_out);
    for layer in (0..cfg.num_layers).rev() {
        let lt = &tape.layers[layer];
        let in_size = cfg.layer_input_size(layer);
        let mut d_x = Array2::<T>::zeros((seq_len * batch, in_size));
        for d in 0..dirs {
            let k = layer * dirs + d;
            let mut dh = match &d_state {
                Some(ds) => ds.h.index_axis(Axis(0), k).to_owned(),
                None => Array2::zeros((batch, hidden)),
            };
            let mut dc = cfg.kind.has_cell_state().then(|| match &d_state {
                Some(StateView { c: Some(c), .. }) => c.index_axis(Axis(0), k).to_owned(),
                _ => Array2::zeros((batch, hidden)),
            });
            let grads = backward_direction(
                cfg,
                &weights[k],
                &lt.dirs[d],
                &lt.input,
                d_y.slice(s![.., .., d * hidden..(d + 1) * hidden]),
                d == 1,
                lengths,
                &mut dh,
                dc.as_mut(),
                d_x.view_mut(),
                dh_norm
                    .row_mut(k)
                    .into_slice()
                    .expect("fresh array is contiguous"),
            );
            dstate.h.index_axis_mut(Axis(0), k).assign(&dh);
            if let (Some(fc), Some(c)) = (dstate.c.as_mut(), dc) {
                fc.index_axis_mut(Axis(0), k).assign(&c);
            }
            params[k] = Some(grads);
        }
        d_y = d_x
            .into_shape_with_order((seq_len, batch, in_size))
            .expect("fresh array is contiguous");
    }
    Ok(Grads {
        dx: from_time_major(cfg, d_y),
        dstate,
        params: params
            .into_iter()
            .map(|p| p.expect("every layer-direction visited"))
            .collect(),
        dh_norm,
    })
}

/// BPTT through one direction of one layer; accumulates `dX_l` into `d_x` and returns
/// the parameter gradients. `dh`/`dc` enter as `∂L/∂` final state and leave as `∂L/∂h0`.
#[allow(clippy::too_many_arguments)]
fn backward_direction<T: Float>(
    cfg: &Config,
    w: &LayerWeights<'_, T>,
    tape: &DirTape<T>,
    input: &Array3<T>,
    d_y: ArrayView3<'_, T>,
    reverse: bool,
    lengths: Option<&[usize]>,
    dh: &mut Array2<T>,
    mut dc: Option<&mut Array2<T>>,
    mut d_x: ArrayViewMut2<'_, T>,
    dh_norm: &mut [T],
) -> LayerGrads<T> {
    let (seq_len, batch, in_size) = input.dim();
    let hidden = cfg.hidden_size;
    let gh = cfg.gate_size();
    let kind = cfg.kind;
    let split_rec = kind == CellKind::Gru;

    let mut dxp = Array3::<T>::zeros((seq_len, batch, gh));
    let mut drec = if split_rec {
        Array3::<T>::zeros((seq_len, batch, gh))
    } else {
        Array3::<T>::zeros((0, 0, 0))
    };
    let empty: [T; 0] = [];
    let mut dc_scratch: Vec<T> = Vec::new();
    let mut drec_scratch: Vec<T> = Vec::new();

    for step in 0..seq_len {
        let t = if reverse { step } else { seq_len - 1 - step };
        let mut sumsq = T::zero();
        let gates_t = tape.gates.index_axis(Axis(0), t);
        let h_prev_t = tape.h_prev.index_axis(Axis(0), t);
        let mut dxp_t = dxp.index_axis_mut(Axis(0), t);
        let mut drec_t = if split_rec {
            Some(drec.index_axis_mut(Axis(0), t))
        } else {
            None
        };
        for b in 0..batch {
            if is_masked(lengths, t, b) {
                // The carried state passes through a padded step unchanged.
                sumsq += dh.row(b).iter().map(|&v| v * v).sum::<T>();
                continue;
            }
            let dc_row: &mut [T] = match dc.as_deref_mut() {
                Some(dc) => dc
                    .row_mut(b)
                    .into_slice()
                    .expect("state rows are contiguous"),
                None => &mut dc_scratch,
            };
            let drec_row: &mut [T] = match drec_t.as_mut() {
                Some(d) => d
                    .row_mut(b)
                    .into_slice()
                    .expect("fresh rows are contiguous"),
                None => &mut drec_scratch,
            };
            let c_prev: &[T] = match &tape.c_prev {
                Some(cp) => cp
                    .slice(s![t, b, ..])
                    .to_slice()
                    .expect("tape rows are contiguous"),
                None => &empty,
            };
            let gh_n: &[T] = match &tape.gh_n {
                Some(g) => g
                    .slice(s![t, b, ..])
                    .to_slice()
                    .expect("tape rows are contiguous"),
                None => &empty,
            };
            let dy_row = d_y.slice(s![t, b, ..]);
            let dy_owned;
            let dy: &[T] = match dy_row.as_slice() {
                Some(sl) => sl,
                None => {
                    dy_owned = dy_row.to_vec();
                    &dy_owned
                }
            };
            sumsq += step_backward(
                kind,
                hidden,
                StepRowGrad {
                    gates: gates_t.row(b).to_slice().expect("tape rows are contiguous"),
                    h_prev: h_prev_t
                        .row(b)
                        .to_slice()
                        .expect("tape rows are contiguous"),
                    c_prev,
                    gh_n,
                    dy,
                    dh: dh
                        .row_mut(b)
                        .into_slice()
                        .expect("state rows are contiguous"),
                    dc: dc_row,
                    dxp: dxp_t
                        .row_mut(b)
                        .into_slice()
                        .expect("fresh rows are contiguous"),
                    drec: drec_row,
                },
            );
        }
        dh_norm[t] = sumsq.sqrt();
        let drec_view = if split_rec {
            drec.index_axis(Axis(0), t)
        } else {
            dxp.index_axis(Axis(0), t)
        };
        gemm(T::one(), &drec_view, &w.w_hh, T::one(), &mut dh.view_mut());
    }

    // Weight gradients and dX: one GEMM each over all steps.
    let rows = seq_len * batch;
    let dxp2 = flat(&dxp, rows, gh);
    let drec2 = if split_rec {
        flat(&drec, rows, gh)
    } else {
        dxp2
    };
    let mut w_ih = Array2::<T>::zeros((gh, in_size));
    gemm(
        T::one(),
        &dxp2.t(),
        &flat(input, rows, in_size),
        T::zero(),
        &mut w_ih.view_mut(),
    );
    let mut w_hh = Array2::<T>::zeros((gh, hidden));
    gemm(
        T::one(),
        &drec2.t(),
        &flat(&tape.h_prev, rows, hidden),
        T::zero(),
        &mut w_hh.view_mut(),
    );
    gemm(T::one(), &dxp2, &w.w_ih, T::one(), &mut d_x);
    let (b_ih, b_hh) = if cfg.bias {
        (Some(column_sums(&dxp2)), Some(column_sums(&drec2)))
    } else {
        (None, None)
    };
    LayerGrads {
        w_ih,
        w_hh,
        b_ih,
        b_hh,
    }
}

fn flat<T: Float>(a: &Array3<T>, rows: usize, cols: usize) -> ArrayView2<'_, T> {
    a.view()
        .into_shape_with_order((rows, cols))
        .expect("contiguous [T, B, ·] buffer")
}

fn column_sums<T: Float>(a: &ArrayView2<'_, T>) -> Array1<T> {
    a.sum_axis(Axis(0))
}

#[cfg(test)]
#[path = "sequence_tests.rs"]
mod tests;
