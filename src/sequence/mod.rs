//! The sequence driver: a stack of layers over a sequence, forward and backward (BPTT).
//!
//! The shape follows PyTorch's `RNN.cpp`: cell (`cell.rs`, one fused step per row) →
//! layer-direction ([`layer`]: the context both passes share; [`forward`](mod@forward)
//! and [`backward`](mod@backward): its time loop) → stack (this file: layers bottom-up
//! forward and top-down backward, both directions of a layer concurrently). What forward
//! keeps is the [`tape`]; how the time axis is walked and what a memory budget buys is the
//! [`plan`].
//!
//! Forward, per layer `l` and direction `d` (`T` steps, batch `B`, `G·H` gates), one chunk
//! of steps at a time: `gates = X_l · W_ihᵀ + b` as one GEMM, then per step
//! `gates[t] += h · W_hhᵀ` and the fused cell update, and `out[t, :, d·H..(d+1)·H] = h`.
//! Backward walks the chunks in reverse: the fused cell backward and `dh ← dh_direct +
//! drec[t] · W_hh` per step, then the weight gradients and `dX_l` as GEMMs per chunk.
//!
//! Variable lengths: row `b` is *masked* at every `t >= lengths[b]`: its state is carried
//! unchanged and its output is zero. The forward direction therefore ends at `b`'s last
//! step, and the reverse direction carries `h0` through the padding and starts at
//! `lengths[b] − 1`, exactly as if `b` had been run alone.

mod backward;
mod dropout;
mod forward;
mod layer;
mod plan;
mod proj;
mod recompute;
mod rows;
mod tape;
mod wgrad;

pub use dropout::Dropout;
pub use plan::budget_range;
pub(crate) use plan::CHUNK_STEPS;
pub use tape::{digest, Keep, Tape};

use crate::buffer::{copy, uninit, zeroed_vec, zeros, Control};
use crate::error::{fmt_shape, Error, Result};
use crate::float::Float;
use crate::model::{
    check_lengths, check_sequence, check_state, check_weights, Config, Grads, LayerGrads,
    LayerWeights, State, StateView,
};
use crate::parallel::per_direction;
use layer::{Direction, LayerInput, Pass, StateSlot};
use ndarray::{s, Array2, Array3, ArrayView1, ArrayView3, ArrayViewMut3, Axis, CowArray, Ix3};
use plan::{checkpoint_interval, DirPlan, PassShape};
use std::mem::MaybeUninit;
use std::ops::Range;
use tape::LayerTape;

/// Output of [`forward`]: `out` in the layout of `x`, the final state, and the tape when
/// one was asked for.
pub type ForwardOutput<T> = (Array3<T>, State<T>, Option<Tape<T>>);

/// Output of [`forward_into`]: [`ForwardOutput`] without `out` when it went to a
/// destination.
type IntoOutput<T> = (Option<Array3<T>>, State<T>, Option<Tape<T>>);

/// A time-major, contiguous copy of a sequence given in the user's layout.
fn to_time_major<T: Float>(cfg: &Config, x: &ArrayView3<'_, T>, what: &str) -> Result<Array3<T>> {
    let v = if cfg.batch_first {
        x.view().permuted_axes([1, 0, 2])
    } else {
        x.view()
    };
    copy(&v, what)
}

/// The user's layout of a time-major array (moves when no transpose is needed).
fn from_time_major<T: Float>(cfg: &Config, a: Array3<T>, what: &str) -> Result<Array3<T>> {
    if cfg.batch_first {
        copy(&a.permuted_axes([1, 0, 2]), what)
    } else {
        Ok(a)
    }
}

/// Runs the stack over `x` (`[T, B, I]`, or `[B, T, I]` with `batch_first`).
///
/// `state` is the initial state (zeros when `None`); `lengths` the valid length of each
/// sequence (all `T` when `None`); `keep` what to keep for [`backward`]. When the returned
/// tape's [`Tape::needs_x`] is true, backward must be given the same `x` again. `ctl`
/// lets another thread stop the call.
///
/// # Errors
/// [`Error::Shape`] / [`Error::Value`] naming `x`, `state`, `lengths`, `memory_budget` or
/// a weight; [`Error::Memory`] when a buffer cannot be allocated; [`Error::Interrupted`]
/// when `ctl` was stopped.
pub fn forward<T: Float>(
    cfg: &Config,
    weights: &[LayerWeights<'_, T>],
    x: ArrayView3<'_, T>,
    state: Option<StateView<'_, T>>,
    lengths: Option<&[usize]>,
    keep: Keep,
    ctl: &Control,
) -> Result<ForwardOutput<T>> {
    let opts = ForwardOptions {
        lengths,
        keep,
        dropout: None,
    };
    forward_with(cfg, weights, x, state, &opts, ctl)
}

/// How a forward pass runs besides its data: see [`forward`] for `lengths` and `keep`.
#[derive(Debug, Clone, Copy)]
pub struct ForwardOptions<'a> {
    pub lengths: Option<&'a [usize]>,
    pub keep: Keep,
    /// Dropout between layers: applied only when a tape is kept (a training pass, `keep`
    /// not [`Keep::Nothing`]) and the model has more than one layer; the tape keeps it
    /// so that backward regenerates the same masks (see [`Dropout`]).
    pub dropout: Option<Dropout>,
}

/// [`forward`] with dropout between layers (see [`ForwardOptions`]).
///
/// # Errors
/// As [`forward`], and [`Error::Value`] naming `dropout` for a probability outside
/// `[0, 1]`.
pub fn forward_with<T: Float>(
    cfg: &Config,
    weights: &[LayerWeights<'_, T>],
    x: ArrayView3<'_, T>,
    state: Option<StateView<'_, T>>,
    opts: &ForwardOptions<'_>,
    ctl: &Control,
) -> Result<ForwardOutput<T>> {
    let (_, batch) = check_pass(cfg, weights, &x, state.as_ref(), opts)?;
    if opts.keep == Keep::Nothing {
        if let Some(groups) = rows::groups(cfg, batch, crate::parallel::call_threads()) {
            return rows::forward(cfg, weights, x, state, opts.lengths, ctl, &groups);
        }
    }
    let (out, st, tape) = forward_into(cfg, weights, x, state, opts, ctl, None)?;
    let out = out.expect("no destination given, so the pass owns its output");
    Ok((out, st, tape))
}

/// The checks of a forward pass's arguments; `(seq_len, batch)`.
fn check_pass<T: Float>(
    cfg: &Config,
    weights: &[LayerWeights<'_, T>],
    x: &ArrayView3<'_, T>,
    state: Option<&StateView<'_, T>>,
    opts: &ForwardOptions<'_>,
) -> Result<(usize, usize)> {
    if let Some(d) = &opts.dropout {
        d.validate()?;
    }
    cfg.validate()?;
    check_weights(cfg, weights)?;
    let (seq_len, batch) = check_sequence(cfg, x, "x", cfg.input_size)?;
    if let Some(st) = state {
        check_state(cfg, batch, st, "state")?;
    }
    check_lengths(opts.lengths, seq_len, batch)?;
    Ok((seq_len, batch))
}

/// [`forward_with`] without the split by rows, on arguments [`check_pass`] accepted (the
/// caller's, or a group of their rows); with `group = (dest, call_batch)` (`dest` of
/// `out`'s shape, in the layout of `x`, may start uninitialised; `call_batch` the whole
/// call's rows, see `Pass::call_batch`) the last layer writes its output there and no
/// `out` is returned.
fn forward_into<T: Float>(
    cfg: &Config,
    weights: &[LayerWeights<'_, T>],
    x: ArrayView3<'_, T>,
    state: Option<StateView<'_, T>>,
    opts: &ForwardOptions<'_>,
    ctl: &Control,
    group: Option<(ArrayViewMut3<'_, MaybeUninit<T>>, usize)>,
) -> Result<IntoOutput<T>> {
    let (lengths, keep) = (opts.lengths, opts.keep);
    let (seq_len, batch) = cfg.seq_dims(x.shape());
    let (mut dest, call_batch) = match group {
        Some((d, b)) => (Some(d), b),
        None => (None, batch),
    };
    let dest_given = dest.is_some();
    debug_assert!(dest.as_ref().is_none_or(|d| {
        let mut want = x.raw_dim();
        want[2] = cfg.output_size();
        d.raw_dim() == want
    }));
    let dropout = opts
        .dropout
        .filter(|d| d.is_active() && keep != Keep::Nothing && cfg.num_layers > 1);
    let threads = crate::parallel::call_threads();
    // The caller's x serves as layer 0's input (and is referenced, not copied, by the
    // tape) when it is already time-major and no padding must be hidden.
    let borrow_x = !cfg.batch_first && lengths.is_none() && x.is_standard_layout();
    let shape = PassShape {
        seq_len,
        batch,
        copies_x: !borrow_x,
        has_lengths: lengths.is_some(),
    };
    let segments = checkpoint_interval::<T>(cfg, shape, keep)?;
    let segment = segments.map(|s| s.k);
    let recompute_inputs = segments.is_some_and(|s| s.recompute_inputs);

    let dirs = cfg.num_directions();
    let hidden = cfg.real_hidden_size();
    let mut final_state = State::zeros(cfg, batch)?;
    let mut input: CowArray<'_, T, Ix3> = if borrow_x {
        CowArray::from(x.view())
    } else {
        let mut owned = to_time_major(cfg, &x, "the tape's copy of x")?;
        if let Some(lengths) = lengths {
            // Padding never reaches the arithmetic, so even NaN padding cannot leak into
            // the weight gradients (0 · NaN would).
            for (b, &len) in lengths.iter().enumerate() {
                owned.slice_mut(s![len.., b, ..]).fill(T::zero());
            }
        }
        CowArray::from(owned)
    };
    let plan = DirPlan::new(keep, segment);
    let pass = Pass {
        cfg,
        weights,
        lengths,
        ctl,
        call_batch,
    };
    let mut layers = Vec::new();
    for layer in 0..cfg.num_layers {
        // Not zeroed: every element is written (a masked step writes zeros).
        let into = if layer + 1 == cfg.num_layers {
            dest.take()
        } else {
            None
        };
        let mut own = None;
        let mut out = match into {
            Some(d) if cfg.batch_first => d.permuted_axes([1, 0, 2]),
            Some(d) => d,
            None => own
                .insert(uninit::<T, _>((seq_len, batch, dirs * hidden), "out")?)
                .view_mut(),
        };
        let jobs = out
            .axis_chunks_iter_mut(Axis(2), hidden)
            .enumerate()
            .map(|(d, block)| {
                let slot = StateSlot::read(cfg, state.as_ref(), batch, layer * dirs + d)?;
                Ok((d, block, slot))
            })
            .collect::<Result<Vec<_>>>()?;
        let layer_input = input.view();
        let results = per_direction(jobs, threads, |(d, block, mut slot), threads| {
            let dir = Direction::new(&pass, layer, d, threads);
            let tape = dir.forward(layer_input.view(), &mut slot, block, plan)?;
            Ok((slot, tape))
        });
        let mut dir_tapes = Vec::new();
        for (d, result) in results.into_iter().enumerate() {
            let (slot, tape) = result?;
            slot.write(&mut final_state, layer * dirs + d);
            dir_tapes.extend(tape);
        }
        let produced = match own {
            None => CowArray::from(Array3::zeros((0, 0, 0))),
            Some(out) => {
                // SAFETY: every direction returned `Ok`, so each has written every element
                // of its block of `out` (see `Chunk::out`).
                let mut out = unsafe { out.assume_init() };
                if let (Some(d), true) = (&dropout, layer + 1 < cfg.num_layers) {
                    d.apply(layer, &mut out.view_mut());
                }
                CowArray::from(out)
            }
        };
        let next = std::mem::replace(&mut input, produced);
        if keep != Keep::Nothing {
            layers.push(LayerTape {
                // Under a tight budget the inputs above the first layer are recomputed.
                input: if next.is_view() || (recompute_inputs && layer > 0) {
                    None
                } else {
                    Some(next.into_owned())
                },
                dirs: dir_tapes,
            });
        }
    }
    let tape = (keep != Keep::Nothing).then(|| Tape {
        config: *cfg,
        seq_len,
        batch,
        lengths: lengths.map(<[usize]>::to_vec),
        segment,
        x_digest: borrow_x.then(|| digest(&x)),
        dropout,
        layers,
    });
    let out = if dest_given {
        None
    } else {
        Some(from_time_major(cfg, input.into_owned(), "out")?)
    };
    Ok((out, final_state, tape))
}

/// Full backpropagation through time over the whole sequence.
///
/// `d_out` is `∂L/∂out` (layout of `x`), `d_state` is `∂L/∂` final state (zeros when
/// `None`). `x` must be the `x` given to forward when [`Tape::needs_x`] (it is checked
/// against a digest), and is ignored otherwise. Uses the current `weights`, which must be
/// those the tape was made with.
///
/// # Errors
/// [`Error::Value`] when the tape comes from another configuration or `x` is missing or
/// changed; [`Error::Shape`] when `d_out` or `d_state` do not match the forward pass;
/// [`Error::Memory`] and [`Error::Interrupted`] as for [`forward`].
pub fn backward<T: Float>(
    cfg: &Config,
    weights: &[LayerWeights<'_, T>],
    tape: &Tape<T>,
    x: Option<ArrayView3<'_, T>>,
    d_out: ArrayView3<'_, T>,
    d_state: Option<StateView<'_, T>>,
    ctl: &Control,
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
    let x0 = match (tape.x_digest, x) {
        (None, _) => None,
        (Some(want), Some(x))
            if x.shape() == [seq_len, batch, cfg.input_size] && digest(&x) == want =>
        {
            Some(x)
        }
        (Some(_), Some(_)) => {
            return Err(Error::value(
                "x",
                "differs from the x given to forward(); the tape refers to that array, which \
                 must not change before backward()",
            ))
        }
        (Some(_), None) => {
            return Err(Error::value(
                "x",
                "the tape refers to the x given to forward(); pass it again",
            ))
        }
    };

    let dirs = cfg.num_directions();
    let lengths = tape.lengths.as_deref();
    let mut dstate = State::zeros(cfg, batch)?;
    let mut dh_norm: Array2<T> = zeros((cfg.num_stacks(), seq_len), "dh_norm")?;
    let mut params: Vec<Option<LayerGrads<T>>> = vec![None; cfg.num_stacks()];
    let mut d_y: CowArray<'_, T, Ix3> = if cfg.batch_first || !d_out.is_standard_layout() {
        CowArray::from(to_time_major(cfg, &d_out, "a copy of d_out")?)
    } else {
        CowArray::from(d_out)
    };
    let threads = crate::parallel::call_threads();
    let pass = Pass {
        cfg,
        weights,
        lengths,
        ctl,
        call_batch: batch,
    };
    for layer in (0..cfg.num_layers).rev() {
        let lt = &tape.layers[layer];
        let recompute = |r: Range<usize>, threads: usize| {
            recompute::layer_output(&pass, tape, x0, layer - 1, r, threads)
        };
        let input = match (&lt.input, x0, layer) {
            (Some(a), _, _) => LayerInput::Kept(a.view()),
            (None, Some(x), 0) => LayerInput::Kept(x),
            (None, _, 0) => {
                return Err(Error::value(
                    "tape",
                    "has no input for the first layer and refers to no x",
                ))
            }
            (None, _, _) => LayerInput::Recomputed {
                dims: (seq_len, batch, cfg.layer_input_size(layer)),
                segment: &recompute,
            },
        };
        let jobs = (0..dirs)
            .map(|d| {
                let slot = StateSlot::read(cfg, d_state.as_ref(), batch, layer * dirs + d)?;
                Ok((d, slot))
            })
            .collect::<Result<Vec<_>>>()?;
        let d_y_view = d_y.view();
        let results = per_direction(jobs, threads, |(d, mut grad), threads| {
            let mut norm = zeroed_vec(seq_len, "dh_norm")?;
            let dir = Direction::new(&pass, layer, d, threads);
            let io = (&input, d_y_view.view());
            let (grads, d_x) = dir.backward(&lt.dirs[d], tape.segment, io, &mut grad, &mut norm)?;
            Ok((grads, d_x, grad, norm))
        });
        let mut d_x: Option<Array3<T>> = None;
        for (d, result) in results.into_iter().enumerate() {
            let (grads, dx_d, grad, norm) = result?;
            let k = layer * dirs + d;
            grad.write(&mut dstate, k);
            dh_norm.row_mut(k).assign(&ArrayView1::from(&norm));
            params[k] = Some(grads);
            d_x = Some(match d_x {
                None => dx_d,
                Some(mut acc) => {
                    acc += &dx_d;
                    acc
                }
            });
        }
        let mut d_x = d_x.expect("at least one direction");
        if let (Some(d), true) = (&tape.dropout, layer > 0) {
            // The layer read the masked output of the layer below.
            d.apply(layer - 1, &mut d_x.view_mut());
        }
        d_y = CowArray::from(d_x);
    }
    Ok(Grads {
        dx: from_time_major(cfg, d_y.into_owned(), "dx")?,
        dstate,
        params: params
            .into_iter()
            .map(|p| p.expect("every layer-direction visited"))
            .collect(),
        dh_norm,
    })
}

#[cfg(test)]
mod tests;
