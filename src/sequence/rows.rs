//! Inference split by batch rows: rows never read each other's state, so a pass that
//! keeps no tape runs as independent passes over groups of rows, one thread each, with
//! no meeting per step or per chunk (what a step team pays), and each thread's products
//! over all the units of its rows.
//!
//! Every element goes through the same instructions as in the whole pass (the products
//! and the cell are computed row by row, the input projection's rows do not depend on
//! the others), so the results are bitwise those of one thread.

use super::{forward_into, ForwardOptions, ForwardOutput, Keep};
use crate::buffer::{uninit, Control};
use crate::error::Result;
use crate::float::Float;
use crate::model::{Config, LayerWeights, State, StateView};
use crate::team;
use ndarray::{ArrayView3, Axis, Slice};
use rayon::prelude::*;
use std::ops::Range;

/// The row groups of a pass over `batch` rows when `threads` may run it: those of one
/// step ([`team::row_groups`]), `None` (no split) where a step is not split into whole rows
/// and for a bidirectional stack, whose directions already run on threads of their own.
pub(super) fn groups(cfg: &Config, batch: usize, threads: usize) -> Option<Vec<Range<usize>>> {
    if cfg.bidirectional {
        return None;
    }
    team::row_groups(threads, batch, cfg.hidden_size, cfg.gate_size())
}

/// [`forward_with`](super::forward_with) without a tape over each of `groups` on a thread
/// of its own, each writing its rows of the output in place; the final states are put
/// back together in the rows they came from. The arguments are checked by the caller.
pub(super) fn forward<T: Float>(
    cfg: &Config,
    weights: &[LayerWeights<'_, T>],
    x: ArrayView3<'_, T>,
    state: Option<StateView<'_, T>>,
    lengths: Option<&[usize]>,
    ctl: &Control,
    groups: &[Range<usize>],
) -> Result<ForwardOutput<T>> {
    let batch_axis = Axis(usize::from(!cfg.batch_first));
    let rows = |r: &Range<usize>| Slice::from(r.clone());
    // The whole pass's arrays first: a request too large fails at once, naming its size.
    let mut out_dim = x.raw_dim();
    out_dim[2] = cfg.output_size();
    let batch = x.len_of(batch_axis);
    let mut out = uninit::<T, _>(out_dim, "out")?;
    let mut h = uninit::<T, _>(cfg.state_shape(batch), "state")?;
    let mut c = cfg
        .kind
        .has_cell_state()
        .then(|| uninit::<T, _>(cfg.cell_state_shape(batch), "state"))
        .transpose()?;
    // Each group writes its rows of `out` in place (the groups are consecutive ranges).
    debug_assert!(
        groups.first().is_none_or(|g| g.start == 0)
            && groups.windows(2).all(|w| w[0].end == w[1].start)
            && groups.last().is_none_or(|g| g.end == batch),
        "row groups cover the batch in order"
    );
    let mut dests = Vec::with_capacity(groups.len());
    let mut rest = out.view_mut();
    for r in groups {
        let (head, tail) = rest.split_at(batch_axis, r.len());
        dests.push(head);
        rest = tail;
    }
    let states = groups
        .par_iter()
        .zip(dests)
        .map(|(r, dest)| {
            let state = state.as_ref().map(|st| StateView {
                h: st.h.slice_axis(Axis(1), rows(r)),
                c: st.c.as_ref().map(|c| c.slice_axis(Axis(1), rows(r))),
            });
            let opts = ForwardOptions {
                lengths: lengths.map(|l| &l[r.clone()]),
                keep: Keep::Nothing,
                dropout: None,
            };
            let x = x.slice_axis(batch_axis, rows(r));
            crate::parallel::alone(|| {
                forward_into(cfg, weights, x, state, &opts, ctl, Some((dest, batch)))
                    .map(|(_, st, _)| st)
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for (r, st) in groups.iter().zip(&states) {
        st.h.assign_to(h.slice_axis_mut(Axis(1), rows(r)));
        if let (Some(c), Some(src)) = (c.as_mut(), st.c.as_ref()) {
            src.assign_to(c.slice_axis_mut(Axis(1), rows(r)));
        }
    }
    // SAFETY: the groups cover `0..batch` in order (see [`groups`]) and each returned
    // `Ok`, so every element of `out` was written by its group's pass (which writes its
    // whole destination) and every element of the states above.
    let (out, h, c) = unsafe {
        (
            out.assume_init(),
            h.assume_init(),
            c.map(|c| c.assume_init()),
        )
    };
    Ok((out, State { h, c }, None))
}
