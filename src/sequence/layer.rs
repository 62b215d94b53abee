//! One layer-direction: the context forward and backward share, its prepared weights, and
//! its slot of the recurrent state.

use crate::buffer::{copy, zeros, Control};
use crate::cell::CellKind;
use crate::error::Result;
use crate::float::Float;
use crate::model::{Config, LayerWeights, State, StateView};
use crate::recurrent::RecurrentWeights;
use ndarray::{s, Array1, Array2, Array3, ArrayView3, Axis, CowArray, Ix3};
use std::ops::Range;

/// What stays fixed while one direction of one layer runs, forward or backward: PyTorch's
/// "struct of references passed around" instead of the same arguments threaded by hand.
pub(super) struct Direction<'a, 'w, T> {
    pub(super) cfg: &'a Config,
    pub(super) w: &'a LayerWeights<'w, T>,
    /// `0` forward in time, `1` reverse.
    pub(super) dir: usize,
    pub(super) reverse: bool,
    /// Valid length of each sequence (all `T` when `None`).
    pub(super) lengths: Option<&'a [usize]>,
    /// Threads this direction may use (its share of the call's).
    pub(super) threads: usize,
    /// The batch of the whole call (see [`Pass::call_batch`]).
    pub(super) call_batch: usize,
    /// Looked at between chunks: the caller may stop the call.
    pub(super) ctl: &'a Control,
}

impl<'a, 'w, T: Float> Direction<'a, 'w, T> {
    /// Direction `dir` of layer `layer` of a pass (`pass.threads` is this direction's
    /// share).
    pub(super) fn new(pass: &Pass<'a, 'w, T>, layer: usize, dir: usize, threads: usize) -> Self {
        let cfg = pass.cfg;
        Direction {
            cfg,
            w: &pass.weights[layer * cfg.num_directions() + dir],
            dir,
            reverse: dir == 1,
            lengths: pass.lengths,
            threads,
            call_batch: pass.call_batch,
            ctl: pass.ctl,
        }
    }

    /// Whether the input projection runs step by step (`forward::step_projection`).
    pub(super) fn step_projection(&self) -> bool {
        super::forward::step_projection(self.cfg.hidden_size, self.call_batch)
    }

    /// The weights forward needs, prepared once per pass.
    pub(super) fn forward_weights(&self, batch: usize) -> ForwardWeights<T> {
        ForwardWeights {
            bias: Bias::new(self.cfg, self.w),
            w_ih_t: self
                .step_projection()
                .then(|| T::Recurrent::prepare(&self.w.w_ih.t(), self.cfg.kind.gates(), batch)),
            w_hh_t: T::Recurrent::prepare(&self.w.w_hh.t(), self.cfg.kind.gates(), batch),
        }
    }

    /// `W_hh [G·H, H]` prepared for backward's per-step `dh += drec · W_hh`.
    pub(super) fn backward_weights(&self, batch: usize) -> T::Recurrent {
        T::Recurrent::prepare(&self.w.w_hh, 1, batch)
    }
}

/// What a whole pass over the stack shares: the model, its weights, the lengths and the
/// caller's control.
pub(super) struct Pass<'a, 'w, T> {
    pub(super) cfg: &'a Config,
    pub(super) weights: &'a [LayerWeights<'w, T>],
    pub(super) lengths: Option<&'a [usize]>,
    pub(super) ctl: &'a Control,
    /// The batch of the whole call, of which a pass over a group of rows (`rows.rs`) has a
    /// part: what depends on the batch follows it, so that every split gives the same bits.
    pub(super) call_batch: usize,
}

/// The forward pass's view of the weights: the folded biases, and `W_ihᵀ` and `W_hhᵀ`
/// packed by gate.
pub(super) struct ForwardWeights<T: Float> {
    pub(super) bias: Bias<T>,
    /// Where the input projection runs step by step (`forward::step_projection`).
    pub(super) w_ih_t: Option<T::Recurrent>,
    pub(super) w_hh_t: T::Recurrent,
}

/// `b_ih + b_hh` folded (the GRU's `n` block only `b_in`), and the GRU's `b_hn`.
pub(super) struct Bias<T> {
    pub(super) folded: Option<Array1<T>>,
    pub(super) b_hn: Vec<T>,
}

impl<T: Float> Bias<T> {
    fn new(cfg: &Config, w: &LayerWeights<'_, T>) -> Self {
        let (h, gru) = (cfg.hidden_size, cfg.kind == CellKind::Gru);
        let mut b_hn = vec![T::zero(); if gru { h } else { 0 }];
        let folded = match (&w.b_ih, &w.b_hh) {
            (Some(bi), Some(bh)) => {
                let mut b = bi.to_owned();
                let n = if gru { 2 * h } else { b.len() };
                b.slice_mut(s![..n])
                    .zip_mut_with(&bh.slice(s![..n]), |a, &v| *a += v);
                if gru {
                    b_hn.iter_mut()
                        .zip(bh.slice(s![2 * h..]))
                        .for_each(|(d, &v)| *d = v);
                }
                Some(b)
            }
            _ => None,
        };
        Bias { folded, b_hn }
    }
}

/// One layer-direction's slot `k = l·D + d` of a state (or of its gradient): `h [B, H]`,
/// and `c` for the LSTM.
pub(super) struct StateSlot<T> {
    pub(super) h: Array2<T>,
    pub(super) c: Option<Array2<T>>,
}

impl<T: Float> StateSlot<T> {
    /// A copy of slot `k` of `state`, or zeros when there is none.
    pub(super) fn read(
        cfg: &Config,
        state: Option<&StateView<'_, T>>,
        batch: usize,
        k: usize,
    ) -> Result<Self> {
        let slot = |a: Option<ArrayView3<'_, T>>, width: usize| match a {
            Some(a) => copy(&a.index_axis(Axis(0), k), "state"),
            None => zeros((batch, width), "state"),
        };
        Ok(StateSlot {
            h: slot(state.map(|st| st.h.view()), cfg.real_hidden_size())?,
            c: match cfg.kind.has_cell_state() {
                true => Some(slot(
                    state.and_then(|st| st.c.as_ref().map(|c| c.view())),
                    cfg.hidden_size,
                )?),
                false => None,
            },
        })
    }

    /// Writes the slot into slot `k` of `state`.
    pub(super) fn write(&self, state: &mut State<T>, k: usize) {
        state.h.index_axis_mut(Axis(0), k).assign(&self.h);
        if let (Some(all), Some(c)) = (state.c.as_mut(), self.c.as_ref()) {
            all.index_axis_mut(Axis(0), k).assign(c);
        }
    }
}

/// The input `X_l [T, B, I_l]` of a layer in backward: kept by the tape (or the caller's
/// `x`), or recomputed one segment at a time from the checkpoints of the layers below.
pub(super) enum LayerInput<'a, T> {
    Kept(ArrayView3<'a, T>),
    Recomputed {
        /// `(T, B, I_l)`.
        dims: (usize, usize, usize),
        /// The rows `r` of `X_l`, computed with (up to) the given number of threads.
        segment: &'a (dyn Fn(Range<usize>, usize) -> Result<Array3<T>> + Sync),
    },
}

impl<T: Float> LayerInput<'_, T> {
    pub(super) fn dim(&self) -> (usize, usize, usize) {
        match self {
            LayerInput::Kept(a) => a.dim(),
            LayerInput::Recomputed { dims, .. } => *dims,
        }
    }

    /// The rows `r` (time steps) of the input, time-major and contiguous.
    pub(super) fn segment(&self, r: Range<usize>, threads: usize) -> Result<CowArray<'_, T, Ix3>> {
        Ok(match self {
            LayerInput::Kept(a) => CowArray::from(a.slice(s![r, .., ..])),
            LayerInput::Recomputed { segment, .. } => CowArray::from(segment(r, threads)?),
        })
    }
}
