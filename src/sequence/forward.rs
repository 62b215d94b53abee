//! The forward time loop of one layer-direction, chunk by chunk.
//!
//! Per chunk of `S` steps from `t0` (`t` ascending forward, descending reverse):
//! 1. the input projection `gates[t] = b + x_t · W_ihᵀ`, `b = b_ih + b_hh` (the GRU keeps
//!    `b_hn` apart: the reset gate scales it): for small layers one GEMM over the chunk's
//!    `S·B` rows first; from [`STEP_PROJECTION_HIDDEN`] units on, step by step in step 2,
//!    each member on its tile through the packed kernel (`recurrent.rs`), so that a
//!    step's gates are written and read while they are in the core's cache (and without
//!    a tape, one slab of gates serves every step);
//! 2. per step, by the step team (`team/`), each member on its tile of the state (rows,
//!    and the same units of every gate): `gates[t] += h · W_hhᵀ` (the GRU: `rec = h ·
//!    W_hhᵀ`; the LSTM and RNN projecting step by step: `gates[t] = b + x_t · W_ihᵀ + h ·
//!    W_hhᵀ` in one pass, each sum running over the inputs and on over the state), then
//!    the fused cell step (`cell.rs`) overwrites `gates[t]` with the activated gates and
//!    writes `h'` (and `c'`);
//! 3. `out[t, :, d·H..(d+1)·H] = h'`.
//!
//! The state is double-buffered: step `i` of a chunk reads `h[i % 2]` and writes the
//! other, so one barrier per step separates the writers of a state from its readers.

use super::layer::{Direction, ForwardWeights, StateSlot};
use super::plan::{chunks, DirPlan};
use super::tape::{drops_h_prev, DirTape, StatesMut, Steps};
use crate::buffer::{copy, zeros};
use crate::cell::{step_forward, CellKind, StepRow};
use crate::error::Result;
use crate::float::Float;
use crate::linalg::{gemm, par};
use crate::recurrent::{Base, Order, RecurrentWeights};
use crate::team::{self, Shared, StateTile};
use ndarray::{s, Array2, Array3, ArrayView3, ArrayViewMut3, Axis};
use std::mem::MaybeUninit;

/// Hidden sizes from which the input projection runs step by step in the step team,
/// through the packed kernel (`W_ihᵀ` packed once per call): each member projects its
/// tile of a step's gates while the step needs them (the LSTM and RNN in the same pass as
/// the recurrent product), and reads only its units' columns of `W_ih`. Below, one GEMM
/// per chunk before its steps, whose many rows a small layer's short products need.
/// Measured on one thread in alternating blocks against the GEMM per chunk: inference of
/// medium (H = 256) LSTM 1.04–1.09x, GRU 1.09x; large (H = 1024) unchanged.
const STEP_PROJECTION_HIDDEN: usize = 256;

/// From this many units, and [`STEP_PROJECTION_BATCH`] rows in the call, too. With the
/// projection and the recurrent product in one pass, against the GEMM per chunk
/// (inference, one thread, alternating blocks, H = 128): LSTM over 16 rows 1.05x, 8 rows
/// 1.03x, 4 rows 0.97x, one row 0.89x (one row's products stream the weights from L2 for
/// two columns per element; the chunk's GEMM has 16 rows); RNN and GRU over 16 rows
/// 1.01–1.03x.
const STEP_PROJECTION_HIDDEN_BATCHED: usize = 128;
const STEP_PROJECTION_BATCH: usize = 8;

/// Whether a layer of `hidden` units projects its inputs step by step in a call over
/// `call_batch` rows. Depends on the shape of the call only (a split by rows keeps the
/// call's batch), so every thread count and plan gives the same bits.
pub(super) fn step_projection(hidden: usize, call_batch: usize) -> bool {
    hidden >= STEP_PROJECTION_HIDDEN
        || (hidden >= STEP_PROJECTION_HIDDEN_BATCHED && call_batch >= STEP_PROJECTION_BATCH)
}

/// The buffers one chunk reads and writes.
pub(super) struct Chunk<'a, T> {
    /// `X_l` of the chunk's steps `[S, B, I_l]`, time-major and contiguous.
    pub(super) input: ArrayView3<'a, T>,
    /// The time index of the chunk's first step (in time, not processing, order).
    pub(super) t0: usize,
    /// `[S, B, G·H]`, or `[1, B, G·H]` reused by every step: receives the projection, then
    /// the activated gates.
    pub(super) gates: ArrayViewMut3<'a, T>,
    /// Whether `gates` already hold the folded bias in every row (zeros without one): a
    /// full tape's are allocated so where the chunk's GEMM projects the inputs, which
    /// spares a pass over them.
    pub(super) biased: bool,
    /// Where the tape keeps the per-step states, if it does.
    pub(super) tape: Option<StatesMut<'a, T>>,
    /// `[S, B, H]`: this direction's block of the outputs, if wanted; every element is
    /// written, so it may start uninitialised.
    pub(super) out: Option<ArrayViewMut3<'a, MaybeUninit<T>>>,
}

/// Buffers reused by every chunk of a direction.
pub(super) struct Scratch<T> {
    /// The second state buffer `[B, H]`.
    h_next: Array2<T>,
    /// GRU: `h·W_hhᵀ` `[B, G·H]` (empty otherwise).
    rec: Array2<T>,
}

impl<T: Float> Scratch<T> {
    pub(super) fn new<'w>(d: &Direction<'_, 'w, T>, batch: usize) -> Result<Self> {
        let cfg = d.cfg;
        Ok(Scratch {
            h_next: zeros((batch, cfg.hidden_size), "the state")?,
            rec: zeros(
                if cfg.kind == CellKind::Gru {
                    (batch, cfg.gate_size())
                } else {
                    (0, 0)
                },
                "the recurrent product",
            )?,
        })
    }
}

impl<T: Float> Direction<'_, '_, T> {
    /// Runs the direction over `input [T, B, I_l]` from `state`, which leaves as the final
    /// state; writes `out [T, B, H]` and keeps what `plan` asks for.
    pub(super) fn forward(
        &self,
        input: ArrayView3<'_, T>,
        state: &mut StateSlot<T>,
        mut out: ArrayViewMut3<'_, MaybeUninit<T>>,
        plan: DirPlan,
    ) -> Result<Option<DirTape<T>>> {
        if self.cfg.proj_size > 0 {
            return self.forward_projected(input, state, out, plan);
        }
        let cfg = self.cfg;
        let (seq_len, batch, _) = input.dim();
        let fw = self.forward_weights(batch);
        let chunk_len = plan.chunk_len::<T>(cfg, seq_len, batch);
        let ranges = chunks(seq_len, chunk_len, self.reverse);
        let drop_h = drops_h_prev(cfg, self.lengths.is_some());
        let bulk = !self.step_projection();
        // A full tape's gates start as the bias where the chunk's GEMM adds to them (which
        // spares a pass); the step projection adds the bias row itself.
        let biased = matches!(plan, DirPlan::Full) && bulk;
        let mut full = matches!(plan, DirPlan::Full)
            .then(|| {
                let bias = fw.bias.folded.as_ref().and_then(|b| b.as_slice());
                Steps::new(cfg, seq_len, batch, !drop_h, bias.filter(|_| biased))
            })
            .transpose()?;
        let h0 = (full.is_some() && drop_h)
            .then(|| copy(&state.h, "the tape"))
            .transpose()?;
        // Without a full tape nothing reads a step's gates after the step: one slab serves
        // every step, unless the chunk's projection runs before its steps.
        let mut gates_buf: Array3<T> = zeros(
            match (full.is_some(), bulk) {
                (true, _) => (0, 0, 0),
                (false, true) => (chunk_len, batch, cfg.gate_size()),
                (false, false) => (1, batch, cfg.gate_size()),
            },
            "the gates",
        )?;
        let ck_shape = (ranges.len(), batch, cfg.hidden_size);
        let checkpoints = |keep: bool| keep.then(|| zeros(ck_shape, "the tape")).transpose();
        let mut ck_h = checkpoints(matches!(plan, DirPlan::Checkpoints(_)))?;
        let mut ck_c = checkpoints(ck_h.is_some() && state.c.is_some())?;
        let mut scratch = Scratch::new(self, batch)?;
        for (i, r) in ranges.iter().enumerate() {
            self.ctl.check()?;
            if let Some(ck) = ck_h.as_mut() {
                ck.index_axis_mut(Axis(0), i).assign(&state.h);
            }
            if let (Some(ck), Some(c)) = (ck_c.as_mut(), state.c.as_ref()) {
                ck.index_axis_mut(Axis(0), i).assign(c);
            }
            let (gates, tape) = match full.as_mut() {
                Some(steps) => {
                    let (gates, states) = steps.view_mut(r.clone());
                    (gates, Some(states))
                }
                None if bulk => (gates_buf.slice_mut(s![..r.len(), .., ..]), None),
                None => (gates_buf.view_mut(), None),
            };
            let chunk = Chunk {
                input: input.slice(s![r.clone(), .., ..]),
                t0: r.start,
                gates,
                biased,
                tape,
                out: Some(out.slice_mut(s![r.clone(), .., ..])),
            };
            self.forward_chunk(&fw, chunk, state, &mut scratch);
        }
        Ok(match plan {
            DirPlan::Nothing => None,
            DirPlan::Full => full.map(|steps| DirTape::Full {
                steps: Box::new(steps),
                h0,
            }),
            DirPlan::Checkpoints(_) => ck_h.map(|h| DirTape::Checkpoints { h, c: ck_c }),
        })
    }

    /// Forward over one chunk's steps from `state`, which leaves as the state after them.
    pub(super) fn forward_chunk(
        &self,
        fw: &ForwardWeights<T>,
        mut chunk: Chunk<'_, T>,
        state: &mut StateSlot<T>,
        scratch: &mut Scratch<T>,
    ) {
        let (len, batch, in_size) = chunk.input.dim();
        let (hidden, gh, kind) = (self.cfg.hidden_size, self.cfg.gate_size(), self.cfg.kind);
        let input = chunk
            .input
            .as_slice()
            .expect("time-major input is contiguous");
        let one_slab = chunk.gates.dim().0 == 1 && len > 1;
        debug_assert!(one_slab || chunk.gates.dim().0 == len);
        let w_ih_t = fw.w_ih_t.as_ref();
        if w_ih_t.is_none() {
            let x2 = chunk
                .input
                .into_shape_with_order((len * batch, in_size))
                .expect("time-major input is contiguous");
            let mut g2 = chunk
                .gates
                .view_mut()
                .into_shape_with_order((len * batch, gh))
                .expect("gate buffer is contiguous");
            match fw.bias.folded.as_ref().and_then(|b| b.as_slice()) {
                _ if chunk.biased => {}
                Some(b) => g2
                    .as_slice_mut()
                    .expect("gate buffer is contiguous")
                    .chunks_exact_mut(gh)
                    .for_each(|row| row.copy_from_slice(b)),
                None => g2.fill(T::zero()),
            }
            gemm(
                T::one(),
                &x2,
                &self.w.w_ih.t(),
                T::one(),
                &mut g2,
                par(self.threads),
            );
        }

        let tiles = team::plan(self.threads, batch, hidden, gh);
        let tape = chunk.tape.as_mut();
        let (h_prev, c_prev, gh_n) = match tape {
            Some(tp) => (tp.h_prev.as_mut(), tp.c_prev.as_mut(), tp.gh_n.as_mut()),
            None => (None, None, None),
        };
        let sh = FwdShared {
            gates: Shared::new(chunk.gates.as_slice_mut().expect("contiguous gate buffer")),
            h: [
                Shared::new(state.h.as_slice_mut().expect("contiguous")),
                Shared::new(scratch.h_next.as_slice_mut().expect("contiguous")),
            ],
            c: Shared::new(
                state
                    .c
                    .as_mut()
                    .map_or(&mut [][..], |c| c.as_slice_mut().expect("contiguous")),
            ),
            rec: Shared::new(scratch.rec.as_slice_mut().expect("contiguous")),
            h_prev: shared_opt(h_prev),
            c_prev: shared_opt(c_prev),
            gh_n: shared_opt(gh_n),
            out: chunk.out.as_mut().map(shared_strided),
        };
        let cx = StepCtx {
            kind,
            hidden,
            batch,
            input,
            in_size,
            base: match fw.bias.folded.as_ref() {
                _ if chunk.biased || w_ih_t.is_none() => Base::Out,
                Some(b) => Base::Row(b.as_slice().expect("contiguous bias")),
                None => Base::Zero,
            },
            w_ih: w_ih_t,
            w: &fw.w_hh_t,
            b_hn: &fw.bias.b_hn,
            lengths: self.lengths,
        };
        let (sh, cx) = (&sh, &cx);
        team::run(&tiles, |member| {
            for i in 0..len {
                let local = if self.reverse { len - 1 - i } else { i };
                let at = StepAt {
                    cur: i % 2,
                    local,
                    t: chunk.t0 + local,
                    slab: if one_slab { 0 } else { local },
                };
                for tile in member.tiles() {
                    // SAFETY: every member reads the rows of `h[i % 2]` of its tiles and
                    // writes only its tile of `h[1 − i % 2]` and of the per-step buffers;
                    // the barrier at the end of the step (none needed when every member
                    // owns whole rows, see `Member::end_step`) separates the step that
                    // writes a buffer from the one that reads it.
                    unsafe { forward_tile(sh, cx, at, tile) };
                }
                if !member.end_step() {
                    return;
                }
            }
        });
        if len % 2 == 1 {
            std::mem::swap(&mut state.h, &mut scratch.h_next);
        }
    }
}

/// The buffers of one forward chunk, shared by the step team.
struct FwdShared<T> {
    /// `[S, B, G·H]`: the input projection, then the activated gates.
    gates: Shared<T>,
    /// The state `[B, H]`, double-buffered: step `i` reads `h[i % 2]`, writes the other.
    h: [Shared<T>; 2],
    /// LSTM cell `[B, H]` (empty otherwise), updated in place.
    c: Shared<T>,
    /// GRU: `h·W_hhᵀ` `[B, G·H]` (empty otherwise).
    rec: Shared<T>,
    /// The tape's per-step states `[S, B, H]` (empty when not kept).
    h_prev: Shared<T>,
    c_prev: Shared<T>,
    gh_n: Shared<T>,
    /// The outputs `[S, B, ·]` and their (step, row) strides.
    out: Option<(Shared<T>, [usize; 2])>,
}

/// What every step of a chunk needs besides the buffers.
struct StepCtx<'a, T: Float> {
    kind: CellKind,
    hidden: usize,
    batch: usize,
    /// The chunk's inputs `[S, B, I_l]`, time-major.
    input: &'a [T],
    in_size: usize,
    /// What the step's input projection adds its sums to: the folded bias, one row for
    /// every row of the gates (`Zero` without one), or what the gates hold (`Out`: the
    /// chunk's GEMM made the projection, or they hold the bias already).
    base: Base<'a, T>,
    /// `W_ihᵀ` packed by gate where the projection runs step by step
    /// ([`step_projection`]); `None` where the chunk's GEMM made it.
    w_ih: Option<&'a T::Recurrent>,
    /// `W_hhᵀ` packed by gate.
    w: &'a T::Recurrent,
    b_hn: &'a [T],
    lengths: Option<&'a [usize]>,
}

/// Where one step sits.
#[derive(Clone, Copy)]
struct StepAt {
    /// Which state buffer the step reads.
    cur: usize,
    /// The step's index in the chunk's buffers, and its time index.
    local: usize,
    t: usize,
    /// The step's slab of `gates`: `local`, or 0 where one slab serves every step.
    slab: usize,
}

impl StepAt {
    /// The order in which the step's products visit the weights' panels: opposite on
    /// consecutive steps (see [`Order`]).
    fn order(&self) -> Order {
        Order::of_step(self.local)
    }
}

fn shared_opt<T>(a: Option<&mut ArrayViewMut3<'_, T>>) -> Shared<T> {
    Shared::new(a.map_or(&mut [][..], |a| {
        a.as_slice_mut().expect("contiguous tape buffer")
    }))
}

/// Shares a `[S, B, H]` view whose rows are contiguous (a direction's block of `out`), to
/// be written as `T`.
fn shared_strided<T>(v: &mut ArrayViewMut3<'_, MaybeUninit<T>>) -> (Shared<T>, [usize; 2]) {
    let (steps, batch, hidden) = v.dim();
    // Axes of length 1 may carry any stride; they never move the pointer.
    let st: Vec<isize> = (0..3)
        .map(|a| if v.shape()[a] > 1 { v.strides()[a] } else { 0 })
        .collect();
    assert!(
        st[2] <= 1 && st[0] >= 0 && st[1] >= 0,
        "output rows are contiguous"
    );
    let (s0, s1) = (st[0] as usize, st[1] as usize);
    let len = if steps * batch * hidden == 0 {
        0
    } else {
        (steps - 1) * s0 + (batch - 1) * s1 + hidden
    };
    // SAFETY: the view covers these elements (its layout is checked above) and is
    // mutably borrowed for as long as the shared handle is used.
    // `MaybeUninit<T>` has the layout of `T`; the team only writes these elements.
    (
        unsafe { Shared::from_raw(v.as_mut_ptr().cast::<T>(), len) },
        [s0, s1],
    )
}

/// The GRU's input projection of one step for one tile (its recurrent product goes apart:
/// the reset gate scales a part of it): the tile's gates in slab `slab` receive
/// `base + x_t · W_ihᵀ`, `x_t` the inputs of the chunk's step `at.local` (see
/// [`StepCtx::base`]).
///
/// # Safety
/// The team's contract: the tile's elements of the slab are this member's.
unsafe fn project<T: Float>(
    sh: &FwdShared<T>,
    cx: &StepCtx<'_, T>,
    w_ih: &T::Recurrent,
    tile: &StateTile,
    at: StepAt,
) {
    let b_all = cx.batch;
    let gh = cx.kind.gates() * cx.hidden;
    let base = cx.base;
    // SAFETY: every element written is in the tile's rows and units of the slab, this
    // member's (the caller's contract); the inputs are only read.
    unsafe {
        w_ih.apply_tile(
            cx.input.as_ptr().add(at.local * b_all * cx.in_size),
            cx.in_size,
            sh.gates.ptr().add(at.slab * b_all * gh),
            gh,
            tile.rows.clone(),
            tile.units.clone(),
            base,
            at.order(),
        );
    }
}

/// One forward step for one tile: saves the entering state for the tape, adds the
/// tile's recurrent product, runs the fused cell and writes the outputs.
///
/// # Safety
/// The team's contract (see the call site): the tile's elements are this member's.
unsafe fn forward_tile<T: Float>(
    sh: &FwdShared<T>,
    cx: &StepCtx<'_, T>,
    at: StepAt,
    tile: &StateTile,
) {
    let (n, b_all) = (cx.hidden, cx.batch);
    let g = cx.kind.gates();
    let gh = g * n;
    let (cur, next) = (&sh.h[at.cur], &sh.h[1 - at.cur]);
    let u = tile.units.clone();
    let gru = cx.kind == CellKind::Gru;
    let order = at.order();
    let state = |b: usize| b * n + u.start..b * n + u.end;
    let at_step =
        |b: usize| (at.local * b_all + b) * n + u.start..(at.local * b_all + b) * n + u.end;
    // SAFETY: every element written through `sh` below is in this member's tile, and the
    // state read (`cur`) is not written during this step: the caller's contract.
    unsafe {
        for b in tile.rows.clone() {
            if !sh.h_prev.is_empty() {
                sh.h_prev
                    .part(at_step(b))
                    .copy_from_slice(cur.read(state(b)));
            }
            if !sh.c_prev.is_empty() {
                sh.c_prev
                    .part(at_step(b))
                    .copy_from_slice(sh.c.read(state(b)));
            }
        }
        let gates_t = sh.gates.ptr().add(at.slab * b_all * gh);
        match cx.w_ih {
            // `gates = b + x_t·W_ihᵀ + h·W_hhᵀ` in one pass: each element's sum runs over
            // the inputs, then on over the state.
            Some(w_ih) if !gru => w_ih.apply_tile_then(
                cx.input.as_ptr().add(at.local * b_all * cx.in_size),
                cx.in_size,
                (cx.w, cur.ptr(), n),
                gates_t,
                gh,
                tile.rows.clone(),
                u.clone(),
                cx.base,
                order,
            ),
            _ => {
                if let Some(w_ih) = cx.w_ih {
                    project(sh, cx, w_ih, tile, at);
                }
                let (dst, base) = if gru {
                    (sh.rec.ptr(), Base::Zero)
                } else {
                    (gates_t, Base::Out)
                };
                let rows = tile.rows.clone();
                cx.w.apply_tile(cur.ptr(), n, dst, gh, rows, u.clone(), base, order);
            }
        }
        for b in tile.rows.clone() {
            let masked = cx.lengths.is_some_and(|l| at.t >= l[b]);
            let h_row = next.part(state(b));
            if masked || gru {
                h_row.copy_from_slice(cur.read(state(b)));
            }
            if !masked {
                let row0 = (at.slab * b_all + b) * gh;
                let gate = |k: usize| {
                    if k < g {
                        sh.gates.part(row0 + k * n + u.start..row0 + k * n + u.end)
                    } else {
                        &mut [][..]
                    }
                };
                let rec = |k: usize| {
                    if gru {
                        sh.rec
                            .read(b * gh + k * n + u.start..b * gh + k * n + u.end)
                    } else {
                        &[][..]
                    }
                };
                step_forward(
                    cx.kind,
                    StepRow {
                        gates: [gate(0), gate(1), gate(2), gate(3)],
                        rec: [rec(0), rec(1), rec(2)],
                        b_hn: if gru { &cx.b_hn[u.clone()] } else { &[] },
                        h: &mut *h_row,
                        c: if sh.c.is_empty() {
                            &mut []
                        } else {
                            sh.c.part(state(b))
                        },
                        gh_n: if sh.gh_n.is_empty() {
                            &mut []
                        } else {
                            sh.gh_n.part(at_step(b))
                        },
                    },
                );
            }
            if let Some((out, [s0, s1])) = &sh.out {
                let o0 = at.local * s0 + b * s1;
                let o = out.part(o0 + u.start..o0 + u.end);
                if masked {
                    o.fill(T::zero());
                } else {
                    o.copy_from_slice(h_row);
                }
            }
        }
    }
}
