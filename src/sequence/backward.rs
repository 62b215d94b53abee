//! BPTT through one layer-direction, chunk by chunk in reverse processing order.
//!
//! Per step (reverse within each chunk), by the step team, each member on its tile: the
//! fused cell backward gives `dxp[t], drec[t] [B, G·H]`; after a barrier,
//! `dh ← dh_direct + drec[t] · W_hh`. After each chunk, as GEMMs over all its steps:
//! `dW_ih += dxpᵀ·X_l`, `dW_hh += drecᵀ·h_prev`, `db_ih += Σ dxp`, `db_hh += Σ drec`,
//! `dX_l = dxp·W_ih`; `dX_l` is the gradient arriving at layer `l − 1`'s output. A
//! checkpointed tape recomputes each segment from its checkpoint first, with the forward
//! kernels, so the gradients are those of the full tape.

use super::forward::{Chunk, Scratch};
use super::layer::{Direction, LayerInput, StateSlot};
use super::plan::{chunks, CHUNK_STEPS};
use super::tape::{DirTape, Steps, StepsView};
use super::wgrad::{add_column_sums, block_steps, pipelined, DirSums, Progress, WeightSums};
use crate::buffer::{copy, uninit, zeros};
use crate::cell::{step_backward, CellKind, StepRowGrad};
use crate::error::Result;
use crate::float::Float;
use crate::linalg::{gemm, gemm_in_row_blocks, par, TransposedSum};
use crate::model::LayerGrads;
use crate::recurrent::{Base, Order, RecurrentWeights, UNIT_ALIGN};
use crate::team::{self, Shared, StateTile};
use faer::Par;
use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut3, Axis};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// The gradients one direction accumulates over its chunks, and the per-chunk buffers.
struct GradBufs<T> {
    /// `[S, B, G·H]` pre-activation gradients of the input side (and of the recurrent
    /// side, except for the GRU, which has its own `drec`). Never cleared: each step's cell
    /// backward writes every element of its slab (a padded row's zeros included) before
    /// anything reads it, and only the steps done are read.
    dxp: Array3<MaybeUninit<T>>,
    drec: Array3<MaybeUninit<T>>,
    grads: LayerGrads<T>,
    /// The weight gradients' sums over the blocks of steps.
    sums: DirSums<T>,
    /// `dX_l [T, B, I_l]`.
    d_x: Array3<T>,
}

impl<T: Float> Direction<'_, '_, T> {
    /// BPTT through the direction over `input [T, B, I_l]` with `d_y [T, B, D·H]` from
    /// above. `grad` enters as `∂L/∂` final state and leaves as `∂L/∂` initial state;
    /// `dh_norm [T]` receives the norms. Returns the parameter gradients and `dX_l`.
    pub(super) fn backward(
        &self,
        tape: &DirTape<T>,
        segment: Option<usize>,
        (input, d_y): (&LayerInput<'_, T>, ArrayView3<'_, T>),
        grad: &mut StateSlot<T>,
        dh_norm: &mut [T],
    ) -> Result<(LayerGrads<T>, Array3<T>)> {
        if self.cfg.proj_size > 0 {
            return self.backward_projected(tape, segment, (input, d_y), grad, dh_norm);
        }
        let cfg = self.cfg;
        let (seq_len, batch, in_size) = input.dim();
        let (hidden, gh) = (cfg.hidden_size, cfg.gate_size());
        let chunk_len = segment.unwrap_or(CHUNK_STEPS).min(seq_len);
        let block_rows = block_steps::<T>(batch, gh, in_size + hidden) * batch;
        let dxp = uninit((chunk_len, batch, gh), "the gate gradients")?;
        let split_rec = cfg.kind == CellKind::Gru;
        let bias = || cfg.bias.then(|| zeros(gh, "the gradients")).transpose();
        let mut bufs = GradBufs {
            drec: uninit(
                if split_rec { dxp.dim() } else { (0, 0, 0) },
                "the gate gradients",
            )?,
            dxp,
            grads: LayerGrads {
                w_ih: zeros((gh, in_size), "the gradients")?,
                w_hh: zeros((gh, hidden), "the gradients")?,
                b_ih: bias()?,
                b_hh: bias()?,
                w_hr: None,
            },
            sums: DirSums {
                w_ih: TransposedSum::new(gh, in_size, block_rows)?,
                w_hh: TransposedSum::new(gh, hidden, block_rows)?,
            },
            d_x: zeros((seq_len, batch, in_size), "dx")?,
        };
        let w_hh = self.backward_weights(batch);
        let w_ih = packed_dx::<T>(gh, in_size)
            .then(|| T::Recurrent::prepare(&self.w.w_ih, 1, chunk_len * batch));
        let ctx = ChunkGrad {
            d: self,
            w_hh: &w_hh,
            w_ih: w_ih.as_ref(),
            d_y,
        };
        let order = chunks(seq_len, chunk_len, self.reverse);
        match tape {
            DirTape::Full { steps, h0 } => {
                let mut rebuilt: Array3<T> = zeros(
                    if h0.is_some() {
                        (chunk_len, batch, hidden)
                    } else {
                        (0, 0, 0)
                    },
                    "the rebuilt states",
                )?;
                for r in order.into_iter().rev() {
                    self.ctl.check()?;
                    let mut view = steps.view(r.clone());
                    if let Some(h0) = h0 {
                        let mut buf = rebuilt.slice_mut(s![..r.len(), .., ..]);
                        rebuild_lstm_h_prev(
                            steps,
                            h0,
                            r.clone(),
                            self.reverse,
                            &mut buf,
                            self.threads,
                        );
                        view.h_prev = rebuilt.slice(s![..r.len(), .., ..]);
                    }
                    let x = input.segment(r.clone(), self.threads)?;
                    ctx.run(view, x.view(), r, grad, &mut bufs, dh_norm);
                }
            }
            DirTape::Checkpoints { h: ck_h, c: ck_c } => {
                let fw = self.forward_weights(batch);
                let mut steps = Steps::new(cfg, chunk_len, batch, true, None)?;
                let mut scratch = Scratch::new(self, batch)?;
                for (i, r) in order.into_iter().enumerate().rev() {
                    self.ctl.check()?;
                    let checkpoint = |a: &Array3<T>| copy(&a.index_axis(Axis(0), i), "the state");
                    let mut state = StateSlot {
                        h: checkpoint(ck_h)?,
                        c: ck_c.as_ref().map(checkpoint).transpose()?,
                    };
                    let (gates, states) = steps.view_mut(0..r.len());
                    let x = input.segment(r.clone(), self.threads)?;
                    let chunk = Chunk {
                        input: x.view(),
                        t0: r.start,
                        gates,
                        biased: false,
                        tape: Some(states),
                        out: None,
                    };
                    self.forward_chunk(&fw, chunk, &mut state, &mut scratch);
                    ctx.run(
                        steps.view(0..r.len()),
                        x.view(),
                        r,
                        grad,
                        &mut bufs,
                        dh_norm,
                    );
                }
            }
            DirTape::Projected { .. } => {
                return Err(crate::error::Error::value(
                    "tape",
                    "holds a projected LSTM's steps, not a plain cell's",
                ))
            }
        }
        let GradBufs {
            mut grads,
            sums,
            d_x,
            ..
        } = bufs;
        sums.w_ih.finish(&mut grads.w_ih.view_mut(), self.threads);
        sums.w_hh.finish(&mut grads.w_hh.view_mut(), self.threads);
        Ok((grads, d_x))
    }
}

/// Rebuilds the LSTM's `h_prev` of the steps `r` as `o·tanh(c)` of the step processed
/// before each (`h0` before the first), with the forward pass's own expression, so the
/// values are bitwise those forward had.
fn rebuild_lstm_h_prev<T: Float>(
    steps: &Steps<T>,
    h0: &Array2<T>,
    r: Range<usize>,
    reverse: bool,
    out: &mut ArrayViewMut3<'_, T>,
    threads: usize,
) {
    use rayon::prelude::*;
    let seq_len = steps.gates.shape()[0];
    let (batch, hidden) = h0.dim();
    let c_prev = steps.c_prev.as_ref().expect("the LSTM keeps c_prev");
    let out = out.as_slice_mut().expect("contiguous rebuild buffer");
    let gates = steps.gates.as_slice().expect("contiguous tape");
    let c_prev = c_prev.as_slice().expect("contiguous tape");
    let gh = 4 * hidden;
    // Steps are independent: they run in parallel on the pool.
    let one_step = |(dst, t): (&mut [T], usize)| {
        let before = if reverse { t + 1 } else { t.wrapping_sub(1) };
        if before >= seq_len {
            dst.copy_from_slice(h0.as_slice().expect("contiguous"));
            return;
        }
        // Rows of the step's output gate (the last of each gate row) and of `c_prev`.
        let o_rows = gates[before * batch * gh..(before + 1) * batch * gh].chunks_exact(gh);
        let c_rows = c_prev[t * batch * hidden..(t + 1) * batch * hidden].chunks_exact(hidden);
        for ((row, o), c) in dst.chunks_exact_mut(hidden).zip(o_rows).zip(c_rows) {
            T::lstm_output(&o[3 * hidden..], c, row);
        }
    };
    if threads < 2 {
        out.chunks_mut(batch * hidden).zip(r).for_each(one_step);
    } else {
        out.par_chunks_mut(batch * hidden)
            .zip(r.into_par_iter())
            .for_each(one_step);
    }
}

/// Whether `dX_l = dxp · W_ih` (`dxp [S·B, gates]`, `W_ih [gates, inputs]`) goes through the
/// per-step product's packed kernel (`recurrent.rs`) rather than the GEMM: it reads each
/// row of `dxp` once per 16 columns of the result, which pays while those are few and the
/// rows short. One core, AVX2, two runs (GFLOP/s, GEMM → packed; `dx_product_rate` in
/// `recurrent/tests.rs`): 2048 × 1024 × 32 (the char model's LSTM) 74–76 → 91–95,
/// 2048 × 1024 × 256 79–91 → 88–94, 1024 × 512 × 64 92–97 → 91–94; with 4096 gates
/// 75–85 → 56–81. Backward alone on two threads against the GEMM route (in-process,
/// alternating blocks): the char model's LSTM 0.98 of the time, hidden 256 over 32 rows
/// 0.95, hidden 128 over 16 rows 1.00. Only for a type whose kernel is vectorised
/// ([`Float::RECURRENT_VECTOR`]); the route depends on the shapes and the type alone,
/// never on the threads.
fn packed_dx<T: Float>(gates: usize, inputs: usize) -> bool {
    T::RECURRENT_VECTOR && gates <= 1024 && inputs <= 256
}

/// What stays fixed while backward walks the chunks of one direction.
struct ChunkGrad<'a, 'w, T: Float> {
    d: &'a Direction<'a, 'w, T>,
    /// `W_hh [G·H, H]` prepared for the per-step `dh += drec · W_hh`.
    w_hh: &'a T::Recurrent,
    /// `W_ih [G·H, I_l]` prepared for `dX_l = dxp · W_ih`, where that kernel is the faster
    /// ([`packed_dx`]).
    w_ih: Option<&'a T::Recurrent>,
    /// `∂L/∂out_l [T, B, D·H]`.
    d_y: ArrayView3<'a, T>,
}

impl<T: Float> ChunkGrad<'_, '_, T> {
    /// Backward through the steps `r` (tape `steps` and the chunk's input `x`, local index
    /// `t − r.start`), then the chunk's share of the weight gradients, block by block of
    /// steps, and its rows of `d_x`.
    ///
    /// On two threads the two run at once (see [`pipelined`]): the leader walks the steps
    /// alone, and the other thread adds each block's weight gradients as soon as the
    /// block's steps are done, while the leader goes on. Otherwise the step team walks
    /// the steps and the blocks follow on all threads. The blocks are the same and are
    /// added in the same order either way, so the result does not depend on the threads.
    fn run(
        &self,
        steps: StepsView<'_, T>,
        x: ArrayView3<'_, T>,
        r: Range<usize>,
        grad: &mut StateSlot<T>,
        bufs: &mut GradBufs<T>,
        dh_norm: &mut [T],
    ) {
        let (cfg, d) = (self.d.cfg, self.d);
        let (len, batch) = (r.len(), grad.h.nrows());
        let (hidden, gh, kind) = (cfg.hidden_size, cfg.gate_size(), cfg.kind);
        let split_rec = kind == CellKind::Gru;
        let in_size = x.shape()[2];
        let blocks = hidden.div_ceil(UNIT_ALIGN);
        // `Σ (∂L/∂h')²` per step, row and block of units, summed below in a fixed order
        // so that `dh_norm` does not depend on the tiling.
        let mut sumsq = vec![T::zero(); len * batch * blocks];
        let per_block = block_steps::<T>(batch, gh, in_size + hidden);
        let pipelined = pipelined(d.threads, len * batch * gh * (in_size + hidden));
        let tiles = team::plan(if pipelined { 1 } else { d.threads }, batch, hidden, gh);
        let sh = BwdShared {
            dh: Shared::new(grad.h.as_slice_mut().expect("contiguous")),
            dc: Shared::new(
                grad.c
                    .as_mut()
                    .map_or(&mut [][..], |dc| dc.as_slice_mut().expect("contiguous")),
            ),
            dxp: shared_uninit(&mut bufs.dxp),
            drec: shared_uninit(&mut bufs.drec),
            sumsq: Shared::new(&mut sumsq),
        };
        let rows_of = |i0: usize, i1: usize| {
            let (l0, l1) = if d.reverse {
                (i0, i1)
            } else {
                (len - i1, len - i0)
            };
            l0 * batch..l1 * batch
        };
        let x2 = flat(x, len * batch, in_size);
        let h2 = flat(steps.h_prev, len * batch, hidden);
        let rec = if split_rec { &sh.drec } else { &sh.dxp };
        // Block `j` of the processing order into the weight gradients.
        let block = |w: &mut WeightSums<'_, T>, j: usize, par: Par| {
            let rows = rows_of(j * per_block, ((j + 1) * per_block).min(len));
            let at = |buf: &Shared<T>| {
                // SAFETY: the block's steps are done (the caller's order), so no one writes
                // these rows of `dxp`/`drec` until the chunk ends.
                let v = unsafe { buf.read(rows.start * gh..rows.end * gh) };
                ArrayView2::from_shape((rows.len(), gh), v).expect("sized from the rows")
            };
            let (xb, hb) = (
                x2.slice(s![rows.clone(), ..]),
                h2.slice(s![rows.clone(), ..]),
            );
            w.sums.w_ih.add(&at(&sh.dxp), &xb, &mut w.w_ih, par);
            w.sums.w_hh.add(&at(rec), &hb, &mut w.w_hh, par);
        };
        let n_blocks = len.div_ceil(per_block);
        let grads = &mut bufs.grads;
        let work = Mutex::new(WeightSums {
            next: 0,
            sums: &mut bufs.sums,
            w_ih: grads.w_ih.view_mut(),
            w_hh: grads.w_hh.view_mut(),
        });
        // The rest of the chunk, once its steps are done: bias sums and `dX_l`; on two
        // threads (`pieces > 1`) called while the other thread may still be adding
        // blocks, `dX_l` in row blocks it takes up once it is done.
        let mut rest = |threads: usize, pieces: usize| {
            // SAFETY: the steps are done; `dxp`/`drec` are only read from now on.
            let all = |buf: &Shared<T>| unsafe { buf.read(0..len * batch * gh) };
            let flat2 = |v| ArrayView2::from_shape((len * batch, gh), v).expect("sized");
            let (dxp2, drec2) = (flat2(all(&sh.dxp)), flat2(all(rec)));
            if let (Some(bi), Some(bh)) = (grads.b_ih.as_mut(), grads.b_hh.as_mut()) {
                if split_rec {
                    add_column_sums(&mut [bi], &dxp2, threads);
                    add_column_sums(&mut [bh], &drec2, threads);
                } else {
                    add_column_sums(&mut [bi, bh], &dxp2, threads);
                }
            }
            let mut dx2 = bufs
                .d_x
                .slice_mut(s![r.clone(), .., ..])
                .into_shape_with_order((len * batch, in_size))
                .expect("contiguous [T, B, I] buffer");
            if let Some(w_ih) = self.w_ih {
                // The same bits however the rows are split.
                w_ih.apply_in_row_blocks(dxp2, dx2, false, pieces.max(threads), 256);
            } else if pieces > 1 {
                gemm_in_row_blocks(&dxp2, &d.w.w_ih, &mut dx2, pieces);
            } else {
                gemm(
                    T::one(),
                    &dxp2,
                    &d.w.w_ih,
                    T::zero(),
                    &mut dx2,
                    par(threads),
                );
            }
        };
        let lock = || work.lock().unwrap_or_else(PoisonError::into_inner);
        if pipelined {
            let progress = Progress::default();
            let leader_free = AtomicBool::new(false);
            rayon::join(
                || {
                    let done = progress.finish_on_drop();
                    self.steps(&tiles, &sh, &steps, &r, &|i| {
                        if (i + 1) % per_block == 0 || i + 1 == len {
                            progress.set(i + 1);
                        }
                    });
                    drop(done);
                    // `dX_l` in at most 8 row blocks of at least 256 rows.
                    rest(1, 8);
                    // From here this thread waits in `join`, taking up the split blocks.
                    leader_free.store(true, Ordering::Release);
                },
                || loop {
                    let mut w = lock();
                    let j = w.next;
                    if j >= n_blocks || !progress.wait_for(((j + 1) * per_block).min(len)) {
                        return;
                    }
                    // The blocks left once the leader is free, split over both threads
                    // (by rows of the gradients: the same bits as on one).
                    let free = leader_free.load(Ordering::Acquire);
                    block(&mut w, j, if free { par(2) } else { Par::Seq });
                    w.next += 1;
                },
            );
        } else {
            self.steps(&tiles, &sh, &steps, &r, &|_| {});
            let mut w = lock();
            for j in 0..n_blocks {
                block(&mut w, j, par(d.threads));
            }
            drop(w);
            rest(d.threads, 1);
        }
        for (i, per_step) in sumsq.chunks_exact(batch * blocks).enumerate() {
            let local = if d.reverse { i } else { len - 1 - i };
            dh_norm[r.start + local] = per_step.iter().fold(T::zero(), |acc, &v| acc + v).sqrt();
        }
    }

    /// The steps `r` of the chunk, by the team of `tiles`; `done(i)` after step `i` (in
    /// processing order) when the team is one member.
    fn steps(
        &self,
        tiles: &[StateTile],
        sh: &BwdShared<T>,
        steps: &StepsView<'_, T>,
        r: &Range<usize>,
        done: &(dyn Fn(usize) + Sync),
    ) {
        let d = self.d;
        let (len, batch) = (r.len(), self.d_y.shape()[1]);
        let (hidden, gh, kind) = (d.cfg.hidden_size, d.cfg.gate_size(), d.cfg.kind);
        let split_rec = kind == CellKind::Gru;
        let cx = BwdCtx {
            kind,
            hidden,
            batch,
            lengths: d.lengths,
        };
        let (cx, d_y) = (&cx, &self.d_y);
        let dy_stride = d_y.shape()[2];
        let dy_offset = d.dir * hidden;
        team::run(tiles, |member| {
            for i in 0..len {
                let local = if d.reverse { i } else { len - 1 - i };
                let at = BwdAt {
                    i,
                    local,
                    t: r.start + local,
                };
                let tape = StepTape {
                    gates: at_step(&steps.gates, local),
                    h_prev: if steps.h_prev.is_empty() {
                        &[]
                    } else {
                        at_step(&steps.h_prev, local)
                    },
                    c_prev: steps.c_prev.as_ref().map_or(&[][..], |a| at_step(a, local)),
                    gh_n: steps.gh_n.as_ref().map_or(&[][..], |a| at_step(a, local)),
                    dy: at_step(d_y, at.t),
                    dy_stride,
                    dy_offset,
                };
                for tile in member.tiles() {
                    // SAFETY: members write only their tiles of `dh`, `dc`, this step's
                    // `dxp`/`drec` and `sumsq`; the barrier separates the cell updates
                    // from the product, which reads the tile's rows of this step's `drec`
                    // written by the members sharing them (with whole-row tiles, the
                    // member itself: `Member::end_step` then does not wait).
                    unsafe { backward_tile(sh, &tape, cx, at, tile) };
                }
                if !member.end_step() {
                    return;
                }
                // SAFETY: as above; this step's `drec` is no longer written.
                unsafe {
                    let drec_t = if split_rec {
                        sh.drec.ptr()
                    } else {
                        sh.dxp.ptr()
                    }
                    .add(local * batch * gh);
                    for tile in member.tiles() {
                        self.w_hh.apply_tile(
                            drec_t,
                            gh,
                            sh.dh.ptr(),
                            hidden,
                            tile.rows.clone(),
                            tile.units.clone(),
                            Base::Out,
                            // Consecutive steps in opposite orders (see [`Order`]).
                            Order::of_step(i),
                        );
                    }
                }
                if tiles.len() == 1 {
                    done(i);
                }
            }
        });
    }
}

/// The buffers of one backward chunk, shared by the step team.
struct BwdShared<T> {
    /// `∂L/∂h` `[B, H]`: in, from the step after; out, to the step before.
    dh: Shared<T>,
    /// LSTM `∂L/∂c` `[B, H]` (empty otherwise).
    dc: Shared<T>,
    /// See [`GradBufs`].
    dxp: Shared<T>,
    drec: Shared<T>,
    /// `[S, B, blocks]`.
    sumsq: Shared<T>,
}

/// What every backward step of a chunk needs besides the buffers.
struct BwdCtx<'a> {
    kind: CellKind,
    hidden: usize,
    batch: usize,
    lengths: Option<&'a [usize]>,
}

/// Where one backward step sits: `i` its position in the chunk's processing order (for
/// `sumsq`), `local` its buffer index, `t` its time index.
#[derive(Clone, Copy)]
struct BwdAt {
    i: usize,
    local: usize,
    t: usize,
}

/// The tape and `d_out` rows of one backward step (flat `[B, ·]` slices).
struct StepTape<'a, T> {
    gates: &'a [T],
    h_prev: &'a [T],
    c_prev: &'a [T],
    gh_n: &'a [T],
    /// `[B, D·H]` rows of the gradient from above; this direction's block starts at
    /// `dy_offset`.
    dy: &'a [T],
    dy_stride: usize,
    dy_offset: usize,
}

/// The fused cell backward of one step for one tile.
///
/// # Safety
/// The team's contract (see the call site): the tile's elements are this member's.
unsafe fn backward_tile<T: Float>(
    sh: &BwdShared<T>,
    tp: &StepTape<'_, T>,
    cx: &BwdCtx<'_>,
    at: BwdAt,
    tile: &StateTile,
) {
    let (n, batch, kind) = (cx.hidden, cx.batch, cx.kind);
    let g = kind.gates();
    let gh = g * n;
    let blocks = n.div_ceil(UNIT_ALIGN);
    let u = tile.units.clone();
    let (blk0, blk1) = (u.start / UNIT_ALIGN, u.end.div_ceil(UNIT_ALIGN));
    let state = |b: usize| b * n + u.start..b * n + u.end;
    let gru = kind == CellKind::Gru;
    // SAFETY: every element reached through `sh` below is in this member's tile (rows
    // `tile.rows`, units `tile.units` of every gate block), the caller's contract.
    unsafe {
        for b in tile.rows.clone() {
            let row0 = (at.local * batch + b) * gh;
            let block = |buf: &Shared<T>, k: usize| {
                if k < g && !buf.is_empty() {
                    buf.part(row0 + k * n + u.start..row0 + k * n + u.end)
                } else {
                    &mut [][..]
                }
            };
            let dxp = [
                block(&sh.dxp, 0),
                block(&sh.dxp, 1),
                block(&sh.dxp, 2),
                block(&sh.dxp, 3),
            ];
            let drec = [block(&sh.drec, 0), block(&sh.drec, 1), block(&sh.drec, 2)];
            let s0 = (at.i * batch + b) * blocks;
            let sumsq = sh.sumsq.part(s0 + blk0..s0 + blk1);
            let dh = sh.dh.part(state(b));
            if cx.lengths.is_some_and(|l| at.t >= l[b]) {
                // The carried state passes through a padded step unchanged; the buffers
                // are reused across chunks, so the row's gate gradients are cleared.
                for (s, chunk) in sumsq.iter_mut().zip(dh.chunks(UNIT_ALIGN)) {
                    *s = sum_squares(chunk);
                }
                dxp.into_iter().chain(drec).for_each(|d| d.fill(T::zero()));
                continue;
            }
            let gate = |k: usize| {
                if k < g {
                    &tp.gates[b * gh + k * n + u.start..b * gh + k * n + u.end]
                } else {
                    &[][..]
                }
            };
            let dy0 = b * tp.dy_stride + tp.dy_offset;
            step_backward(
                kind,
                StepRowGrad {
                    gates: [gate(0), gate(1), gate(2), gate(3)],
                    h_prev: if gru {
                        part_or_empty(tp.h_prev, state(b))
                    } else {
                        &[]
                    },
                    c_prev: part_or_empty(tp.c_prev, state(b)),
                    gh_n: part_or_empty(tp.gh_n, state(b)),
                    dy: &tp.dy[dy0 + u.start..dy0 + u.end],
                    dh,
                    dc: if sh.dc.is_empty() {
                        &mut []
                    } else {
                        sh.dc.part(state(b))
                    },
                    dxp,
                    drec,
                    sumsq,
                },
            );
        }
    }
}

/// Shares a buffer whose elements the team writes before it reads them (see
/// [`GradBufs::dxp`]).
fn shared_uninit<T>(a: &mut Array3<MaybeUninit<T>>) -> Shared<T> {
    let len = a.len();
    // SAFETY: a standard-layout array of `len` elements, mutably borrowed while the
    // handle is used; `MaybeUninit<T>` has the layout of `T`, and every element is
    // written before it is read.
    unsafe { Shared::from_raw(a.as_mut_ptr().cast::<T>(), len) }
}

/// Step `i` of a contiguous `[S, B, C]` view, flat.
fn at_step<'a, T>(a: &ArrayView3<'a, T>, i: usize) -> &'a [T] {
    (*a).index_axis_move(Axis(0), i)
        .to_slice()
        .expect("contiguous step")
}

/// `a[r]`, or `a` itself when empty (a buffer the cell does not have).
fn part_or_empty<T>(a: &[T], r: Range<usize>) -> &[T] {
    if a.is_empty() {
        a
    } else {
        &a[r]
    }
}

/// A contiguous `[S, B, C]` view as `[S·B, C]`.
fn flat<T: Float>(a: ArrayView3<'_, T>, rows: usize, cols: usize) -> ArrayView2<'_, T> {
    a.into_shape_with_order((rows, cols))
        .expect("contiguous [S, B, ·] buffer")
}

fn sum_squares<T: Float>(v: &[T]) -> T {
    v.iter().fold(T::zero(), |s, &x| s + x * x)
}
