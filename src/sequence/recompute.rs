//! Recomputing a layer's output, one segment at a time, from the checkpoints of the layer
//! and of the layers below: what lets a stacked model's checkpointed tape drop the inputs
//! of the layers above the first (see `plan`'s memory model).
//!
//! Both directions of every layer checkpoint the same boundaries `0, k, 2k, …` (see
//! [`chunks`](super::plan::chunks)), so the output of layer `l` over a segment `[a, b)` is
//! each direction run over `[a, b)` from its checkpoint at `a` (forward) or `b` (reverse),
//! on the input of the segment, itself recomputed the same way below.

use super::forward::{Chunk, Scratch};
use super::layer::{Direction, Pass, StateSlot};
use super::plan::chunk_index;
use super::proj::ProjSteps;
use super::tape::{DirTape, Tape};
use crate::buffer::{copy, uninit, zeros};
use crate::error::{Error, Result};
use crate::float::Float;
use ndarray::{s, Array3, ArrayView3, ArrayViewMut3, Axis, CowArray, Ix3};
use std::mem::MaybeUninit;
use std::ops::Range;

/// The output of layer `layer` (after dropout, as the layer above read it) over the time
/// steps `r`, a union of whole segments, time-major `[|r|, B, D·H]`.
pub(super) fn layer_output<T: Float>(
    pass: &Pass<'_, '_, T>,
    tape: &Tape<T>,
    x0: Option<ArrayView3<'_, T>>,
    layer: usize,
    r: Range<usize>,
    threads: usize,
) -> Result<Array3<T>> {
    let cfg = pass.cfg;
    let (seq_len, batch) = (tape.seq_len, tape.batch);
    let k = tape
        .segment
        .ok_or_else(|| Error::value("tape", "recomputes layer inputs without checkpoints"))?;
    let lt = &tape.layers[layer];
    let input: CowArray<'_, T, Ix3> = match (&lt.input, x0, layer) {
        (Some(a), _, _) => CowArray::from(a.slice(s![r.clone(), .., ..])),
        (None, Some(x), 0) => CowArray::from(x.slice_move(s![r.clone(), .., ..])),
        (None, None, 0) => {
            return Err(Error::value(
                "tape",
                "has no input for the first layer and refers to no x",
            ))
        }
        (None, _, _) => {
            CowArray::from(layer_output(pass, tape, x0, layer - 1, r.clone(), threads)?)
        }
    };
    let hidden = cfg.real_hidden_size();
    let width = cfg.output_size();
    let mut out = uninit::<T, _>((r.len(), batch, width), "a recomputed layer output")?;
    for (d, mut block) in out.axis_chunks_iter_mut(Axis(2), hidden).enumerate() {
        let dir = Direction::new(pass, layer, d, threads);
        let DirTape::Checkpoints { h, c } = &lt.dirs[d] else {
            return Err(Error::value(
                "tape",
                "recomputes layer inputs without checkpoints",
            ));
        };
        // Segment by segment, in the direction's processing order, from the checkpoint
        // of the first.
        let mut ranges: Vec<Range<usize>> = (r.start..r.end)
            .step_by(k)
            .map(|t0| t0..(t0 + k).min(r.end))
            .collect();
        if dir.reverse {
            ranges.reverse();
        }
        let Some(first) = ranges.first() else {
            continue;
        };
        let i = chunk_index(seq_len, k, dir.reverse, first.start);
        let at = |a: &Array3<T>| copy(&a.index_axis(Axis(0), i), "the state");
        let mut state = StateSlot {
            h: at(h)?,
            c: c.as_ref().map(at).transpose()?,
        };
        for seg in ranges {
            let local = seg.start - r.start..seg.end - r.start;
            let x = input.slice(s![local.clone(), .., ..]);
            let o = block.slice_mut(s![local, .., ..]);
            dir.forward_segment(x, seg.start, &mut state, o)?;
        }
    }
    // SAFETY: every direction has written every element of its block (see `Chunk::out`).
    let mut out = unsafe { out.assume_init() };
    if let (Some(d), true) = (&tape.dropout, layer + 1 < cfg.num_layers) {
        d.apply_from(layer, r.start * batch * width, &mut out.view_mut());
    }
    Ok(out)
}

impl<T: Float> Direction<'_, '_, T> {
    /// Forward over the steps of `input` (`[S, B, I_l]` from time `t0`, one segment or
    /// less) from `state`, which leaves as the state after them; writes `out [S, B, H]`.
    fn forward_segment(
        &self,
        input: ArrayView3<'_, T>,
        t0: usize,
        state: &mut StateSlot<T>,
        out: ArrayViewMut3<'_, MaybeUninit<T>>,
    ) -> Result<()> {
        let (len, batch, _) = input.dim();
        if self.cfg.proj_size > 0 {
            let mut steps = ProjSteps::new(self, len, batch)?;
            let mut next = zeros((batch, self.cfg.proj_size), "the state")?;
            let buf = steps.view_mut(0..len);
            self.forward_projected_chunk(input, t0, buf, Some(out), state, &mut next);
        } else {
            let fw = self.forward_weights(batch);
            let mut gates: Array3<T> = zeros((len, batch, self.cfg.gate_size()), "the gates")?;
            let mut scratch = Scratch::new(self, batch)?;
            let chunk = Chunk {
                input,
                t0,
                gates: gates.view_mut(),
                biased: false,
                tape: None,
                out: Some(out),
            };
            self.forward_chunk(&fw, chunk, state, &mut scratch);
        }
        Ok(())
    }
}
