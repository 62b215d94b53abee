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
use crate::linalg::{gemm, par};
use crate::model::{
    check_state, check_weights, Config, Grads, LayerGrads, LayerWeights, State, StateView,
};
use ndarray::{
    s, Array1, Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis,
};

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
    let threads = rayon::current_num_threads();
    let mut layers = Vec::new();
    for layer in 0..cfg.num_layers {
        let mut out = Array3::<T>::zeros((seq_len, batch, dirs * hidden));
        let blocks: Vec<_> = out
            .axis_chunks_iter_mut(Axis(2), hidden)
            .enumerate()
            .map(|(d, block)| {
                let k = layer * dirs + d;
                let h = match &state {
                    Some(st) => st.h.index_axis(Axis(0), k).to_owned(),
                    None => Array2::zeros((batch, hidden)),
                };
                let c = cfg.kind.has_cell_state().then(|| match &state {
                    Some(StateView { c: Some(c), .. }) => c.index_axis(Axis(0), k).to_owned(),
                    _ => Array2::zeros((batch, hidden)),
                });
                (d, block, h, c)
            })
            .collect();
        let results = per_direction(blocks, threads, |(d, block, mut h, mut c), threads| {
            let tape = run_direction(
                cfg,
                &weights[layer * dirs + d],
                &input,
                d == 1,
                lengths,
                &mut h,
                c.as_mut(),
                block,
                keep_tape,
                threads,
            );
            (h, c, tape)
        });
        let mut dir_tapes = Vec::new();
        for (d, (h, c, tape)) in results.into_iter().enumerate() {
            let k = layer * dirs + d;
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
    mut out: ArrayViewMut3<'_, T>,
    keep_tape: bool,
    threads: usize,
) -> Option<DirTape<T>> {
    let (seq_len, batch, in_size) = input.dim();
    let hidden = cfg.hidden_size;
    let gh = cfg.gate_size();
    let kind = cfg.kind;
    let gru = kind == CellKind::Gru;

    // gates = X · W_ihᵀ + bias, all steps at once. The bias folds in b_hh, except the
    // GRU's b_hn, which the reset gate scales.
    let mut gates = Array3::<T>::zeros((seq_len, batch, gh));
    let mut b_hn = vec![T::zero(); if gru { hidden } else { 0 }];
    {
        if let (Some(bi), Some(bh)) = (&w.b_ih, &w.b_hh) {
            let mut bias = bi.to_owned();
            let folded = if gru { 2 * hidden } else { gh };
            bias.slice_mut(s![..folded])
                .zip_mut_with(&bh.slice(s![..folded]), |a, &b| *a += b);
            if gru {
                b_hn.copy_from_slice(bh.slice(s![2 * hidden..]).as_slice().expect("1-d"));
            }
            gates.assign(&bias);
        }
        let x2 = flat(input, seq_len * batch, in_size);
        let mut g2 = flat_mut(&mut gates, seq_len * batch, gh);
        gemm(T::one(), &x2, &w.w_ih.t(), T::one(), &mut g2, par(threads));
    }

    let mut h_prev_tape = keep_tape.then(|| Array3::<T>::zeros((seq_len, batch, hidden)));
    let mut c_prev_tape =
        (keep_tape && kind == CellKind::Lstm).then(|| Array3::<T>::zeros((seq_len, batch, hidden)));
    let mut gh_n_tape = (keep_tape && gru).then(|| Array3::<T>::zeros((seq_len, batch, hidden)));
    let mut rec = Array2::<T>::zeros(if gru { (batch, gh) } else { (0, 0) });
    let w_hh_t_owned = w.w_hh.t().as_standard_layout().into_owned();
    let w_hh_t = w_hh_t_owned.view();
    let step_par = par(if batch * gh * hidden >= PAR_GEMM_MIN {
        threads
    } else {
        1
    });

    for step in 0..seq_len {
        let t = if reverse { seq_len - 1 - step } else { step };
        if let Some(tp) = h_prev_tape.as_mut() {
            tp.index_axis_mut(Axis(0), t).assign(h);
        }
        if let (Some(tp), Some(c)) = (c_prev_tape.as_mut(), c.as_deref()) {
            tp.index_axis_mut(Axis(0), t).assign(c);
        }
        let mut gates_t = gates.index_axis_mut(Axis(0), t);
        if gru {
            gemm(
                T::one(),
                &h.view(),
                &w_hh_t,
                T::zero(),
                &mut rec.view_mut(),
                step_par,
            );
        } else {
            gemm(
                T::one(),
                &h.view(),
                &w_hh_t,
                T::one(),
                &mut gates_t,
                step_par,
            );
        }
        let rows = ForwardRows {
            kind,
            hidden,
            batch,
            mask: lengths.map(|l| (l, t)),
            gates: gates_t.as_slice_mut().expect("contiguous"),
            rec: rec.as_slice().expect("contiguous"),
            b_hn: &b_hn,
            h: h.as_slice_mut().expect("contiguous"),
            c: match c.as_deref_mut() {
                Some(c) => c.as_slice_mut().expect("contiguous"),
                None => Default::default(),
            },
            gh_n: match gh_n_tape.as_mut() {
                Some(tp) => tp
                    .index_axis_mut(Axis(0), t)
                    .into_slice()
                    .expect("contiguous"),
                None => Default::default(),
            },
        };
        forward_rows(rows);
        let mut out_t = out.index_axis_mut(Axis(0), t);
        out_t.assign(h);
        if let Some(l) = lengths {
            for (b, &len) in l.iter().enumerate() {
                if t >= len {
                    out_t.row_mut(b).fill(T::zero());
                }
            }
        }
    }
    keep_tape.then(|| DirTape {
        gates,
        h_prev: h_prev_tape.expect("kept with the tape"),
        c_prev: c_prev_tape,
        gh_n: gh_n_tape,
    })
}

/// Below this many multiply-adds a per-step GEMM runs on one thread: forking costs more.
const PAR_GEMM_MIN: usize = 1 << 20;

/// All rows of one forward step (flat `[B, ·]` slices; empty where the cell has none).
struct ForwardRows<'a, T> {
    kind: CellKind,
    hidden: usize,
    batch: usize,
    /// `(lengths, t)`: row `b` is skipped when `t >= lengths[b]`.
    mask: Option<(&'a [usize], usize)>,
    gates: &'a mut [T],
    rec: &'a [T],
    b_hn: &'a [T],
    h: &'a mut [T],
    c: &'a mut [T],
    gh_n: &'a mut [T],
}

fn forward_rows<T: Float>(r: ForwardRows<'_, T>) {
    let (n, gh) = (r.hidden, r.kind.gates() * r.hidden);
    let row = |len: usize, b: usize, w: usize| if len == 0 { 0..0 } else { b * w..(b + 1) * w };
    let (c_len, gh_n_len) = (r.c.len(), r.gh_n.len());
    for b in 0..r.batch {
        if r.mask.is_some_and(|(l, t)| t >= l[b]) {
            continue;
        }
        step_forward(
            r.kind,
            n,
            StepRow {
                gates: &mut r.gates[b * gh..(b + 1) * gh],
                rec: &r.rec[row(r.rec.len(), b, gh)],
                b_hn: r.b_hn,
                h: &mut r.h[b * n..(b + 1) * n],
                c: &mut r.c[row(c_len, b, n)],
                gh_n: &mut r.gh_n[row(gh_n_len, b, n)],
            },
        );
    }
}

/// All rows of one backward step.
struct BackwardRows<'a, T> {
    kind: CellKind,
    hidden: usize,
    batch: usize,
    mask: Option<(&'a [usize], usize)>,
    gates: &'a [T],
    h_prev: &'a [T],
    c_prev: &'a [T],
    gh_n: &'a [T],
    /// `[B, D·H]` rows of the gradient from above; this direction's block starts at
    /// `dy_offset`.
    dy: &'a [T],
    dy_stride: usize,
    dy_offset: usize,
    dh: &'a mut [T],
    dc: &'a mut [T],
    dxp: &'a mut [T],
    drec: &'a mut [T],
}

fn backward_rows<T: Float>(r: BackwardRows<'_, T>) -> T {
    let (n, gh) = (r.hidden, r.kind.gates() * r.hidden);
    let row = |len: usize, b: usize, w: usize| if len == 0 { 0..0 } else { b * w..(b + 1) * w };
    let mut sumsq = T::zero();
    let (dc_len, drec_len) = (r.dc.len(), r.drec.len());
    for b in 0..r.batch {
        if r.mask.is_some_and(|(l, t)| t >= l[b]) {
            // The carried state passes through a padded step unchanged.
            sumsq += sum_squares(&r.dh[b * n..(b + 1) * n]);
            continue;
        }
        let dy0 = b * r.dy_stride + r.dy_offset;
        sumsq += step_backward(
            r.kind,
            n,
            StepRowGrad {
                gates: &r.gates[b * gh..(b + 1) * gh],
                h_prev: &r.h_prev[b * n..(b + 1) * n],
                c_prev: &r.c_prev[row(r.c_prev.len(), b, n)],
                gh_n: &r.gh_n[row(r.gh_n.len(), b, n)],
                dy: &r.dy[dy0..dy0 + n],
                dh: &mut r.dh[b * n..(b + 1) * n],
                dc: &mut r.dc[row(dc_len, b, n)],
                dxp: &mut r.dxp[b * gh..(b + 1) * gh],
                drec: &mut r.drec[row(drec_len, b, gh)],
            },
        );
    }
    sumsq
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
    let threads = rayon::current_num_threads();
    for layer in (0..cfg.num_layers).rev() {
        let lt = &tape.layers[layer];
        let jobs: Vec<_> = (0..dirs)
            .map(|d| {
                let k = layer * dirs + d;
                let dh = match &d_state {
                    Some(ds) => ds.h.index_axis(Axis(0), k).to_owned(),
                    None => Array2::zeros((batch, hidden)),
                };
                let dc = cfg.kind.has_cell_state().then(|| match &d_state {
                    Some(StateView { c: Some(c), .. }) => c.index_axis(Axis(0), k).to_owned(),
                    _ => Array2::zeros((batch, hidden)),
                });
                (d, dh, dc)
            })
            .collect();
        let results = per_direction(jobs, threads, |(d, mut dh, mut dc), threads| {
            let mut norm = vec![T::zero(); seq_len];
            let (grads, d_x) = backward_direction(
                cfg,
                &weights[layer * dirs + d],
                &lt.dirs[d],
                &lt.input,
                &d_y,
                d,
                lengths,
                &mut dh,
                dc.as_mut(),
                &mut norm,
                threads,
            );
            (grads, d_x, dh, dc, norm)
        });
        let mut d_x: Option<Array2<T>> = None;
        for (d, (grads, dx_d, dh, dc, norm)) in results.into_iter().enumerate() {
            let k = layer * dirs + d;
            dstate.h.index_axis_mut(Axis(0), k).assign(&dh);
            if let (Some(fc), Some(c)) = (dstate.c.as_mut(), dc) {
                fc.index_axis_mut(Axis(0), k).assign(&c);
            }
            dh_norm.row_mut(k).assign(&ndarray::ArrayView1::from(&norm));
            params[k] = Some(grads);
            d_x = Some(match d_x {
                None => dx_d,
                Some(acc) => acc + dx_d,
            });
        }
        d_y = d_x
            .expect("at least one direction")
            .into_shape_with_order((seq_len, batch, cfg.layer_input_size(layer)))
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
    d_y: &Array3<T>,
    dir: usize,
    lengths: Option<&[usize]>,
    dh: &mut Array2<T>,
    mut dc: Option<&mut Array2<T>>,
    dh_norm: &mut [T],
    threads: usize,
) -> (LayerGrads<T>, Array2<T>) {
    let (seq_len, batch, in_size) = input.dim();
    let hidden = cfg.hidden_size;
    let gh = cfg.gate_size();
    let kind = cfg.kind;
    let split_rec = kind == CellKind::Gru;
    let reverse = dir == 1;

    let mut dxp = Array3::<T>::zeros((seq_len, batch, gh));
    let mut drec = Array3::<T>::zeros(if split_rec {
        (seq_len, batch, gh)
    } else {
        (0, 0, 0)
    });
    let step_par = par(if batch * gh * hidden >= PAR_GEMM_MIN {
        threads
    } else {
        1
    });
    let empty: [T; 0] = [];
    let dy_stride = d_y.shape()[2];

    for step in 0..seq_len {
        let t = if reverse { step } else { seq_len - 1 - step };
        let mut dxp_t = dxp.index_axis_mut(Axis(0), t);
        let mut drec_t = if split_rec {
            Some(drec.index_axis_mut(Axis(0), t))
        } else {
            None
        };
        let rows = BackwardRows {
            kind,
            hidden,
            batch,
            mask: lengths.map(|l| (l, t)),
            gates: tape
                .gates
                .index_axis(Axis(0), t)
                .to_slice()
                .expect("contiguous"),
            h_prev: tape
                .h_prev
                .index_axis(Axis(0), t)
                .to_slice()
                .expect("contiguous"),
            c_prev: match &tape.c_prev {
                Some(cp) => cp.index_axis(Axis(0), t).to_slice().expect("contiguous"),
                None => &empty,
            },
            gh_n: match &tape.gh_n {
                Some(g) => g.index_axis(Axis(0), t).to_slice().expect("contiguous"),
                None => &empty,
            },
            dy: d_y.index_axis(Axis(0), t).to_slice().expect("contiguous"),
            dy_stride,
            dy_offset: dir * hidden,
            dh: dh.as_slice_mut().expect("contiguous"),
            dc: match dc.as_deref_mut() {
                Some(dc) => dc.as_slice_mut().expect("contiguous"),
                None => Default::default(),
            },
            dxp: dxp_t.as_slice_mut().expect("contiguous"),
            drec: match drec_t.as_mut() {
                Some(d) => d.as_slice_mut().expect("contiguous"),
                None => Default::default(),
            },
        };
        dh_norm[t] = backward_rows(rows).sqrt();
        let drec_view = if split_rec {
            drec.index_axis(Axis(0), t)
        } else {
            dxp.index_axis(Axis(0), t)
        };
        gemm(
            T::one(),
            &drec_view,
            &w.w_hh,
            T::one(),
            &mut dh.view_mut(),
            step_par,
        );
    }

    // Weight gradients and dX: one GEMM each over all steps.
    let rows = seq_len * batch;
    let all = par(threads);
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
        all,
    );
    let mut w_hh = Array2::<T>::zeros((gh, hidden));
    gemm(
        T::one(),
        &drec2.t(),
        &flat(&tape.h_prev, rows, hidden),
        T::zero(),
        &mut w_hh.view_mut(),
        all,
    );
    let mut d_x = Array2::<T>::zeros((rows, in_size));
    gemm(
        T::one(),
        &dxp2,
        &w.w_ih,
        T::zero(),
        &mut d_x.view_mut(),
        all,
    );
    let (b_ih, b_hh) = if cfg.bias {
        (Some(column_sums(&dxp2)), Some(column_sums(&drec2)))
    } else {
        (None, None)
    };
    (
        LayerGrads {
            w_ih,
            w_hh,
            b_ih,
            b_hh,
        },
        d_x,
    )
}

/// Runs `f` on each direction's job: both at once, each with half the threads, when
/// there are two and more than one thread; in order otherwise.
fn per_direction<A: Send, R: Send>(
    jobs: Vec<A>,
    threads: usize,
    f: impl Fn(A, usize) -> R + Sync,
) -> Vec<R> {
    let mut jobs = jobs.into_iter();
    match (jobs.next(), jobs.next()) {
        (Some(a), Some(b)) if threads > 1 => {
            let half = threads / 2;
            let (ra, rb) = rayon::join(|| f(a, threads - half), || f(b, half));
            vec![ra, rb]
        }
        (Some(a), Some(b)) => vec![f(a, 1), f(b, 1)],
        (Some(a), None) => vec![f(a, threads)],
        _ => Vec::new(),
    }
}

fn sum_squares<T: Float>(v: &[T]) -> T {
    v.iter().fold(T::zero(), |s, &x| s + x * x)
}

fn flat_mut<T: Float>(a: &mut Array3<T>, rows: usize, cols: usize) -> ArrayViewMut2<'_, T> {
    a.view_mut()
        .into_shape_with_order((rows, cols))
        .expect("contiguous [T, B, ·] buffer")
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
