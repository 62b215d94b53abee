//! The tape: what forward keeps for backward.
//!
//! The full tape keeps, per layer, its input `X_l [T, B, I_l]` (for layer 0 the caller's
//! `x` itself when it is time-major without `lengths`: no copy, checked by a [`digest`]),
//! and per direction the activated gates `[T, B, G·H]`, the state entering each step
//! `h_prev [T, B, H]` (and `c_prev` for the LSTM), and for the GRU `rec_n + b_hn [T, B, H]`.
//! Under a memory budget it keeps, instead of the per-step arrays, the state at the start
//! of every segment of `k` steps (checkpoints); backward recomputes one segment at a time.

use super::proj::ProjSteps;
use crate::buffer::{repeated_rows, zeros};
use crate::cell::CellKind;
use crate::error::Result;
use crate::float::Float;
use crate::model::Config;
use ndarray::{s, Array2, Array3, ArrayView3, ArrayViewMut3};
use std::ops::Range;

/// What [`forward`](super::forward) keeps for [`backward`](super::backward).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Inference: nothing; extra memory does not grow with `T` beyond `out`.
    Nothing,
    /// The full tape.
    Everything,
    /// At most this many bytes, counting what the tape keeps and the one segment
    /// backward recomputes at a time (the full tape when it fits).
    Budget(usize),
}

/// What forward keeps for backward. Owned by the core; its size is [`Tape::nbytes`].
#[derive(Debug, Clone)]
pub struct Tape<T> {
    pub(super) config: Config,
    pub(super) seq_len: usize,
    pub(super) batch: usize,
    pub(super) lengths: Option<Vec<usize>>,
    /// `Some(k)`: per-step arrays were dropped for checkpoints every `k` steps.
    pub(super) segment: Option<usize>,
    /// A digest of the caller's `x` when the tape does not copy it (see [`digest`]).
    pub(super) x_digest: Option<u64>,
    /// Dropout between the layers of the forward pass, whose masks backward regenerates.
    pub(super) dropout: Option<super::Dropout>,
    pub(super) layers: Vec<LayerTape<T>>,
}

#[derive(Debug, Clone)]
pub(super) struct LayerTape<T> {
    /// `X_l [T, B, I_l]`, time-major; `None` for layer 0 when it is the caller's `x`.
    pub(super) input: Option<Array3<T>>,
    pub(super) dirs: Vec<DirTape<T>>,
}

#[derive(Debug, Clone)]
pub(super) enum DirTape<T> {
    /// The per-step arrays, and `h0` when they leave `h_prev` out.
    Full {
        steps: Box<Steps<T>>,
        h0: Option<Array2<T>>,
    },
    /// The state entering each segment (in processing order): `[segments, B, H]`.
    Checkpoints { h: Array3<T>, c: Option<Array3<T>> },
    /// The per-step arrays of an LSTM with projections.
    Projected { steps: Box<ProjSteps<T>> },
}

/// Per-step arrays of one direction over `S` steps (time-major, index `t − t0`).
#[derive(Debug, Clone)]
pub(super) struct Steps<T> {
    /// Activated gates `[S, B, G·H]`.
    pub(super) gates: Array3<T>,
    /// State entering the step that processes `t`: `[S, B, H]`. Not kept by a full LSTM
    /// tape without lengths: backward rebuilds it as `o·tanh(c)` of the step before.
    pub(super) h_prev: Option<Array3<T>>,
    /// LSTM: cell entering the step: `[S, B, H]`.
    pub(super) c_prev: Option<Array3<T>>,
    /// GRU: `h_prev·W_hnᵀ + b_hn`: `[S, B, H]`.
    pub(super) gh_n: Option<Array3<T>>,
}

impl<T: Float> Steps<T> {
    /// Steps for `len` steps over `batch` rows; the gates start as `bias` in every row
    /// when given (what the forward pass would first write there), else zeros.
    pub(super) fn new(
        cfg: &Config,
        len: usize,
        batch: usize,
        with_h_prev: bool,
        bias: Option<&[T]>,
    ) -> Result<Self> {
        let h = (len, batch, cfg.hidden_size);
        let states = |keep: bool| keep.then(|| zeros(h, "the tape")).transpose();
        let gates = (len, batch, cfg.gate_size());
        Ok(Steps {
            gates: match bias {
                Some(b) => repeated_rows(gates, b, "the tape")?,
                None => zeros(gates, "the tape")?,
            },
            h_prev: states(with_h_prev)?,
            c_prev: states(cfg.kind == CellKind::Lstm)?,
            gh_n: states(cfg.kind == CellKind::Gru)?,
        })
    }

    fn len(&self) -> usize {
        self.gates.len()
            + self.h_prev.as_ref().map_or(0, |a| a.len())
            + self.c_prev.as_ref().map_or(0, |a| a.len())
            + self.gh_n.as_ref().map_or(0, |a| a.len())
    }

    /// The gates and the per-step states of the steps `r`.
    pub(super) fn view_mut(&mut self, r: Range<usize>) -> (ArrayViewMut3<'_, T>, StatesMut<'_, T>) {
        (
            self.gates.slice_mut(s![r.clone(), .., ..]),
            StatesMut {
                h_prev: self
                    .h_prev
                    .as_mut()
                    .map(|a| a.slice_mut(s![r.clone(), .., ..])),
                c_prev: self
                    .c_prev
                    .as_mut()
                    .map(|a| a.slice_mut(s![r.clone(), .., ..])),
                gh_n: self.gh_n.as_mut().map(|a| a.slice_mut(s![r, .., ..])),
            },
        )
    }

    /// Read-only views of the steps `r`; `h_prev` is empty when the tape left it out.
    pub(super) fn view(&self, r: Range<usize>) -> StepsView<'_, T> {
        StepsView {
            gates: self.gates.slice(s![r.clone(), .., ..]),
            h_prev: match &self.h_prev {
                Some(a) => a.slice(s![r.clone(), .., ..]),
                None => ArrayView3::from_shape((0, 0, 0), &[]).expect("empty view"),
            },
            c_prev: self.c_prev.as_ref().map(|a| a.slice(s![r.clone(), .., ..])),
            gh_n: self.gh_n.as_ref().map(|a| a.slice(s![r, .., ..])),
        }
    }
}

/// Where forward writes the per-step states of a chunk for the tape.
pub(super) struct StatesMut<'a, T> {
    pub(super) h_prev: Option<ArrayViewMut3<'a, T>>,
    pub(super) c_prev: Option<ArrayViewMut3<'a, T>>,
    pub(super) gh_n: Option<ArrayViewMut3<'a, T>>,
}

/// Read-only views of [`Steps`] over a chunk.
pub(super) struct StepsView<'a, T> {
    pub(super) gates: ArrayView3<'a, T>,
    pub(super) h_prev: ArrayView3<'a, T>,
    pub(super) c_prev: Option<ArrayView3<'a, T>>,
    pub(super) gh_n: Option<ArrayView3<'a, T>>,
}

/// Whether a full tape leaves `h_prev` out (rebuilt from `o` and `c` in backward): for the
/// LSTM without lengths, where the state entering a step is the previous step's output.
pub(super) fn drops_h_prev(cfg: &Config, has_lengths: bool) -> bool {
    cfg.kind == CellKind::Lstm && !has_lengths && cfg.proj_size == 0
}

impl<T: Float> Tape<T> {
    /// Bytes held by the tape's arrays.
    pub fn nbytes(&self) -> usize {
        let elems: usize = self
            .layers
            .iter()
            .map(|l| {
                l.input.as_ref().map_or(0, |a| a.len())
                    + l.dirs
                        .iter()
                        .map(|d| match d {
                            DirTape::Full { steps, h0 } => {
                                steps.len() + h0.as_ref().map_or(0, |h| h.len())
                            }
                            DirTape::Checkpoints { h, c } => {
                                h.len() + c.as_ref().map_or(0, |c| c.len())
                            }
                            DirTape::Projected { steps } => steps.len(),
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

    /// Steps per checkpointed segment, or `None` for a full tape.
    pub fn segment(&self) -> Option<usize> {
        self.segment
    }

    /// Whether [`backward`](super::backward) needs the `x` given to forward again (the
    /// tape did not copy it).
    pub fn needs_x(&self) -> bool {
        self.x_digest.is_some()
    }
}

/// A 64-bit digest of every element's bits, so backward can tell whether the caller's `x`
/// changed since forward (a check, not a cryptographic hash).
pub fn digest<T: Float>(x: &ArrayView3<'_, T>) -> u64 {
    const LANES: usize = 8;
    const WORD: usize = std::mem::size_of::<u64>();
    let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(17);
    let word = |b: &[u8]| {
        let mut w = [0u8; WORD];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    let seed = 0xcbf2_9ce4_8422_2325u64;
    let x = x.as_standard_layout();
    let s = x.as_slice().expect("standard layout");
    // SAFETY: `T` is `f32` or `f64` (plain bits, no padding), so the elements' memory is
    // `size_of_val(s)` initialised bytes; reading it as bytes needs no alignment.
    let bytes =
        unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) };
    // Eight independent chains over interleaved 64-bit words of the elements' bits (two
    // float32 or one float64 each, in logical order), then combined: every bit counts,
    // without one long dependency chain.
    let mut lanes: [u64; LANES] = std::array::from_fn(|k| seed.wrapping_add(k as u64));
    let mut blocks = bytes.chunks_exact(LANES * WORD);
    for block in &mut blocks {
        for (l, w) in lanes.iter_mut().zip(block.chunks_exact(WORD)) {
            *l = mix(*l, word(w));
        }
    }
    let tail = blocks.remainder().chunks(WORD).map(word).fold(seed, mix);
    lanes.iter().fold(tail, |h, &l| mix(h, l))
}
