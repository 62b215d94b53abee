//! How a pass walks the time axis: chunks of steps, the memory budget and checkpoints.
//!
//! Two words, two meanings: a *chunk* is a run of consecutive steps processed together
//! (one input-projection GEMM, one buffer of gates, one backward GEMM batch); a *segment*
//! is the interval between two checkpoints of a budgeted tape, `k` steps, which is also the
//! chunk that backward recomputes at a time. Without a budget, inference and the full
//! tape's backward walk chunks of [`CHUNK_STEPS`]; the full tape's forward walks the same chunks.

use super::tape::{drops_h_prev, Keep};
use crate::cell::CellKind;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::model::Config;
use std::ops::Range;

/// Steps per chunk of the full tape's forward and backward passes: big enough for
/// efficient GEMMs, small enough that the buffers do not grow with `T`.
pub(crate) const CHUNK_STEPS: usize = 64;

/// A forward pass that keeps no tape runs in chunks whose gate buffer `[S, B, G·H]` (written
/// by the input GEMM, read back step by step) fits in this many bytes, so that it stays in
/// the core's cache, but of at least [`MIN_INFERENCE_CHUNK_STEPS`] steps (the GEMM's
/// rows) and at most [`CHUNK_STEPS`]. Measured in alternating blocks: small LSTM
/// inference ~10% faster on one thread than with 64-step chunks; no shape measurably slower.
const INFERENCE_CHUNK_BYTES: usize = 256 << 10;
const MIN_INFERENCE_CHUNK_STEPS: usize = 16;

/// What one direction keeps while its forward pass runs.
#[derive(Debug, Clone, Copy)]
pub(super) enum DirPlan {
    Nothing,
    Full,
    /// Checkpoints every `k` steps.
    Checkpoints(usize),
}

impl DirPlan {
    /// The plan of every direction under `keep`, given the checkpoint interval chosen by
    /// [`checkpoint_interval`].
    pub(super) fn new(keep: Keep, segment: Option<usize>) -> Self {
        match (keep, segment) {
            (Keep::Nothing, _) => DirPlan::Nothing,
            (_, None) => DirPlan::Full,
            (_, Some(k)) => DirPlan::Checkpoints(k),
        }
    }

    /// Steps per forward chunk over `seq_len` steps (the full tape is written chunk by
    /// chunk too, so that a long call can be stopped between chunks).
    pub(super) fn chunk_len<T: Float>(self, cfg: &Config, seq_len: usize, batch: usize) -> usize {
        match self {
            DirPlan::Full => CHUNK_STEPS.min(seq_len),
            DirPlan::Nothing => (INFERENCE_CHUNK_BYTES
                / (batch * cfg.gate_size() * std::mem::size_of::<T>()).max(1))
            .clamp(MIN_INFERENCE_CHUNK_STEPS, CHUNK_STEPS)
            .min(seq_len),
            DirPlan::Checkpoints(k) => k,
        }
    }
}

/// Elements per time step of each layer-direction's full tape and checkpoint, and of
/// the gradient buffers backward adds per segment step.
fn step_sizes(cfg: &Config, batch: usize) -> (usize, usize, usize) {
    let (h, gh) = (cfg.hidden_size, cfg.gate_size());
    if cfg.proj_size > 0 {
        // Gates, c_prev, r = o·tanh(c') and h_prev (P wide); backward adds the gate and
        // the per-step ∂L/∂h' buffers.
        let p = cfg.proj_size;
        return (batch * (gh + 2 * h + p), batch * (h + p), batch * (gh + p));
    }
    let extra = if cfg.kind == CellKind::Gru || cfg.kind == CellKind::Lstm {
        h
    } else {
        0
    };
    let state = if cfg.kind.has_cell_state() { 2 * h } else { h };
    let grads = if cfg.kind == CellKind::Gru {
        2 * gh
    } else {
        gh
    };
    (batch * (gh + h + extra), batch * state, batch * grads)
}

/// Memory model of a checkpointed tape, in bytes: `cost(k)` is what the tape keeps
/// with checkpoints every `k` steps plus the one segment backward recomputes at a time.
struct MemoryModel {
    seq_len: usize,
    fixed: usize,
    per_checkpoint: usize,
    per_segment_step: usize,
    full: usize,
}

impl MemoryModel {
    fn new<T: Float>(cfg: &Config, shape: PassShape, recompute_inputs: bool) -> Self {
        let PassShape {
            seq_len,
            batch,
            copies_x,
            has_lengths,
        } = shape;
        let sz = std::mem::size_of::<T>();
        let (full_step, ck_step, grad_step) = step_sizes(cfg, batch);
        let dropped = if drops_h_prev(cfg, has_lengths) {
            batch * cfg.hidden_size
        } else {
            0
        };
        let stacks = cfg.num_stacks();
        // Kept whatever the plan: the inputs of the layers above the first, and x if copied.
        let x_elems = if copies_x {
            seq_len * batch * cfg.input_size
        } else {
            0
        };
        let inputs = (cfg.num_layers - 1) * seq_len * batch * cfg.output_size();
        let full = (x_elems + inputs + stacks * (seq_len * (full_step - dropped) + dropped)) * sz;
        let mut per_segment_step = cfg.num_directions() * (full_step + grad_step) * sz;
        let fixed = if recompute_inputs {
            // The layers' inputs above the first are recomputed one segment at a time, from
            // the checkpoints of the layers below: per lower layer, its output segment and
            // one direction's working arrays.
            per_segment_step += (cfg.num_layers - 1) * (batch * cfg.output_size() + full_step) * sz;
            x_elems * sz
        } else {
            (x_elems + inputs) * sz
        };
        MemoryModel {
            seq_len,
            fixed,
            per_checkpoint: stacks * ck_step * sz,
            per_segment_step,
            full,
        }
    }

    fn cost(&self, k: usize) -> usize {
        self.fixed + self.seq_len.div_ceil(k) * self.per_checkpoint + k * self.per_segment_step
    }

    fn minimum(&self) -> usize {
        (1..=self.seq_len)
            .map(|k| self.cost(k))
            .min()
            .unwrap_or(self.full)
            .min(self.full)
    }
}

/// `(smallest budget, full tape)` in bytes for this model and input: the range in which a
/// memory budget changes anything. `copies_x`: whether the tape holds its own copy of `x`
/// (it does with `batch_first` or `lengths`); `has_lengths`: whether `lengths` is given.
pub fn budget_range<T: Float>(
    cfg: &Config,
    seq_len: usize,
    batch: usize,
    copies_x: bool,
    has_lengths: bool,
) -> (usize, usize) {
    let shape = PassShape {
        seq_len,
        batch,
        copies_x,
        has_lengths,
    };
    let m = MemoryModel::new::<T>(cfg, shape, false);
    let minimum = match cfg.num_layers > 1 {
        true => m
            .minimum()
            .min(MemoryModel::new::<T>(cfg, shape, true).minimum()),
        false => m.minimum(),
    };
    (minimum, m.full)
}

/// The shape of a forward pass that a plan depends on.
#[derive(Debug, Clone, Copy)]
pub(super) struct PassShape {
    pub(super) seq_len: usize,
    pub(super) batch: usize,
    pub(super) copies_x: bool,
    pub(super) has_lengths: bool,
}

/// How a checkpointed tape is laid out: checkpoints every `k` steps, and whether the
/// inputs of the layers above the first are recomputed in backward instead of kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segments {
    pub(super) k: usize,
    pub(super) recompute_inputs: bool,
}

/// How forward keeps the tape under `keep`: `None` for the full tape, else checkpoints
/// every `k` steps, the largest `k` that fits the budget, keeping the layers' inputs when
/// some `k` fits so and recomputing them (stacked models) otherwise.
///
/// # Errors
/// [`Error::Value`] naming `memory_budget` and the minimum when no `k` fits.
pub(super) fn checkpoint_interval<T: Float>(
    cfg: &Config,
    shape: PassShape,
    keep: Keep,
) -> Result<Option<Segments>> {
    let Keep::Budget(budget) = keep else {
        return Ok(None);
    };
    let kept = MemoryModel::new::<T>(cfg, shape, false);
    if budget >= kept.full {
        return Ok(None);
    }
    let largest = |m: &MemoryModel| (1..=shape.seq_len).rev().find(|&k| m.cost(k) <= budget);
    if let Some(k) = largest(&kept) {
        return Ok(Some(Segments {
            k,
            recompute_inputs: false,
        }));
    }
    let mut minimum = kept.minimum();
    if cfg.num_layers > 1 {
        let recomputed = MemoryModel::new::<T>(cfg, shape, true);
        if let Some(k) = largest(&recomputed) {
            return Ok(Some(Segments {
                k,
                recompute_inputs: true,
            }));
        }
        minimum = minimum.min(recomputed.minimum());
    }
    Err(Error::value(
        "memory_budget",
        format!(
            "expected at least {minimum} bytes for this model and input (checkpoints plus one \
             recomputed segment; the full tape takes {}), got {budget}",
            kept.full
        ),
    ))
}

/// The time ranges of the chunks of `k` steps, in processing order. Both directions
/// share the boundaries `0, k, 2k, …` (the reverse direction walks them last to first), so
/// that a checkpoint of either direction of any layer sits at a segment boundary of every
/// other: what recomputing a layer's input segment by segment needs.
pub(super) fn chunks(seq_len: usize, k: usize, reverse: bool) -> Vec<Range<usize>> {
    let fwd = (0..seq_len)
        .step_by(k.max(1))
        .map(|t0| t0..(t0 + k).min(seq_len));
    if reverse {
        let mut all: Vec<_> = fwd.collect();
        all.reverse();
        all
    } else {
        fwd.collect()
    }
}

/// The index, in `reverse`'s processing order, of the chunk of `k` steps that starts at
/// `t0` (see [`chunks`]).
pub(super) fn chunk_index(seq_len: usize, k: usize, reverse: bool, t0: usize) -> usize {
    let i = t0 / k.max(1);
    if reverse {
        seq_len.div_ceil(k.max(1)) - 1 - i
    } else {
        i
    }
}
