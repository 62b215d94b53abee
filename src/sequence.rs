//! The sequence driver: the time loop over layers and directions, variable lengths, the
//! tape, memory-bounded BPTT, and the backward pass.
//!
//! Forward, per layer `l` and direction `d` (`T` steps, batch `B`, `G·H` gates), one
//! segment of steps at a time (the whole sequence when the full tape is kept):
//! 1. `gates[S·B, G·H] = X_l[S·B, I_l] · W_ihᵀ + b` — one GEMM for the segment's steps,
//!    `b = b_ih + b_hh` (the GRU keeps `b_hn` apart: the reset gate scales it);
//! 2. per step `t` (`t` ascending forward, descending reverse): `gates[t] += h · W_hhᵀ`
//!    (the GRU: `rec = h · W_hhᵀ`), then the fused cell step (`cell.rs`) overwrites
//!    `gates[t]` with the activated gates and updates `h` (and `c`) in place;
//! 3. `out[t, :, d·H..(d+1)·H] = h`.
//!
//! Variable lengths: row `b` is *masked* at every `t >= lengths[b]`: its state is carried
//! unchanged and its output is zero. The forward direction therefore ends at `b`'s last
//! step, and the reverse direction carries `h0` through the padding and starts at
//! `lengths[b] − 1`, exactly as if `b` had been run alone.
//!
//! The full tape keeps, per layer, its input `X_l [T, B, I_l]` (for layer 0 the caller's
//! `x` itself when it is time-major without `lengths`: no copy), and per direction the
//! activated gates `[T, B, G·H]`, the state entering each step `h_prev [T, B, H]` (and
//! `c_prev` for the LSTM), and for the GRU `rec_n + b_hn [T, B, H]`. Under a memory budget
//! it keeps, instead of the per-step arrays, the state at the start of every segment of
//! `k` steps (checkpoints), and backward recomputes one segment at a time from its
//! checkpoint with the same kernels, so the gradients are those of the full tape.
//!
//! Backward (BPTT), per layer from the top and per direction, segments in reverse
//! processing order, steps in reverse within each: the fused cell backward gives
//! `dxp[t], drec[t] [B, G·H]`, then `dh ← dh_direct + drec[t] · W_hh`. After each segment,
//! as GEMMs over all its steps: `dW_ih += dxpᵀ·X_l`, `dW_hh += drecᵀ·h_prev`,
//! `db_ih += Σ dxp`, `db_hh += Σ drec`, `dX_l = dxp·W_ih`; `dX_l` is the gradient arriving
//! at layer `l − 1`'s output.

use crate::cell::{lstm_output, step_backward, step_forward, CellKind, StepRow, StepRowGrad};
use crate::error::{fmt_shape, Error, Result};
use crate::float::Float;
use crate::linalg::{gemm, par};
use crate::model::{
    check_state, check_weights, Config, Grads, LayerGrads, LayerWeights, State, StateView,
};
use crate::recurrent::{RecurrentWeights, UNIT_ALIGN};
use crate::team::{self, Shared, Tile};
use ndarray::{
    s, Array1, Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut3, Axis, CowArray, Ix3,
};
use std::ops::Range;

/// Steps per segment for inference and for the full tape's backward pass: big enough
/// for efficient GEMMs, small enough that the buffers do not grow with `T`.
const SEGMENT: usize = 64;

/// What [`forward`] keeps for [`backward`].
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
    config: Config,
    seq_len: usize,
    batch: usize,
    lengths: Option<Vec<usize>>,
    /// `Some(k)`: per-step arrays were dropped for checkpoints every `k` steps.
    segment: Option<usize>,
    /// A digest of the caller's `x` when the tape does not copy it (see [`digest`]).
    x_digest: Option<u64>,
    layers: Vec<LayerTape<T>>,
}

#[derive(Debug, Clone)]
struct LayerTape<T> {
    /// `X_l [T, B, I_l]`, time-major; `None` for layer 0 when it is the caller's `x`.
    input: Option<Array3<T>>,
    dirs: Vec<DirTape<T>>,
}

#[derive(Debug, Clone)]
enum DirTape<T> {
    /// The per-step arrays, and `h0` when they leave `h_prev` out.
    Full {
        steps: Box<Steps<T>>,
        h0: Option<Array2<T>>,
    },
    /// The state entering each segment (in processing order): `[segments, B, H]`.
    Checkpoints { h: Array3<T>, c: Option<Array3<T>> },
}

/// Per-step arrays of one direction over `S` steps (time-major, index `t − t0`).
#[derive(Debug, Clone)]
struct Steps<T> {
    /// Activated gates `[S, B, G·H]`.
    gates: Array3<T>,
    /// State entering the step that processes `t`: `[S, B, H]`. Not kept by a full LSTM
    /// tape without lengths: backward rebuilds it as `o·tanh(c)` of the step before.
    h_prev: Option<Array3<T>>,
    /// LSTM: cell entering the step: `[S, B, H]`.
    c_prev: Option<Array3<T>>,
    /// GRU: `h_prev·W_hnᵀ + b_hn`: `[S, B, H]`.
    gh_n: Option<Array3<T>>,
}

impl<T: Float> Steps<T> {
    fn new(cfg: &Config, len: usize, batch: usize, with_h_prev: bool) -> Self {
        let h = (len, batch, cfg.hidden_size);
        Steps {
            gates: Array3::zeros((len, batch, cfg.gate_size())),
            h_prev: with_h_prev.then(|| Array3::zeros(h)),
            c_prev: (cfg.kind == CellKind::Lstm).then(|| Array3::zeros(h)),
            gh_n: (cfg.kind == CellKind::Gru).then(|| Array3::zeros(h)),
        }
    }

    fn len(&self) -> usize {
        self.gates.len()
            + self.h_prev.as_ref().map_or(0, |a| a.len())
            + self.c_prev.as_ref().map_or(0, |a| a.len())
            + self.gh_n.as_ref().map_or(0, |a| a.len())
    }

    /// The gates and the per-step states of the steps `r`.
    fn view_mut(&mut self, r: Range<usize>) -> (ArrayViewMut3<'_, T>, StatesMut<'_, T>) {
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
}

/// Where forward writes the per-step states of a segment for the tape.
struct StatesMut<'a, T> {
    h_prev: Option<ArrayViewMut3<'a, T>>,
    c_prev: Option<ArrayViewMut3<'a, T>>,
    gh_n: Option<ArrayViewMut3<'a, T>>,
}

/// Elements per time step of each layer-direction's full tape and checkpoint, and of
/// the gradient buffers backward adds per segment step.
/// Whether a full tape leaves `h_prev` out (rebuilt from `o` and `c` in backward): for the
/// LSTM without lengths, where the state entering a step is the previous step's output.
fn drops_h_prev(cfg: &Config, has_lengths: bool) -> bool {
    cfg.kind == CellKind::Lstm && !has_lengths
}

fn step_sizes(cfg: &Config, batch: usize) -> (usize, usize, usize) {
    let (h, gh) = (cfg.hidden_size, cfg.gate_size());
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

    /// Whether [`backward`] needs the `x` given to forward again (the tape did not copy it).
    pub fn needs_x(&self) -> bool {
        self.x_digest.is_some()
    }
}

/// Whether a forward or backward pass over `seq_len × batch` gains from more than one
/// thread: a bidirectional layer (directions run concurrently), a step big enough for the
/// step team, or batched products big enough for several threads each (see `linalg`; on
/// 16 cores, smaller ones ran slower split than on one thread).
pub fn uses_threads(cfg: &Config, seq_len: usize, batch: usize) -> bool {
    let (h, gh) = (cfg.hidden_size, cfg.gate_size());
    let widest_input = cfg.input_size.max(cfg.num_directions() * h);
    cfg.bidirectional
        || batch * h * gh >= crate::team::TEAM_MIN_WORK
        || seq_len.min(SEGMENT) * batch * widest_input * gh >= 8 * crate::linalg::WORK_PER_THREAD
}

/// Output of [`forward`]: `out` in the layout of `x`, the final state, and the tape when
/// one was asked for.
pub type ForwardOutput<T> = (Array3<T>, State<T>, Option<Tape<T>>);

/// A 64-bit digest of every element's bits, so backward can tell whether the caller's `x`
/// changed since forward (a check, not a cryptographic hash).
pub fn digest<T: Float>(x: &ArrayView3<'_, T>) -> u64 {
    const LANES: usize = 8;
    let mix = |h: u64, v: &T| {
        let bits = v.to_f64().map_or(0, f64::to_bits);
        (h ^ bits)
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(17)
    };
    let seed = 0xcbf2_9ce4_8422_2325u64;
    // Eight independent chains over interleaved elements (in logical order), then
    // combined: every element counts, without one long dependency chain.
    let x = x.as_standard_layout();
    let s = x.as_slice().expect("standard layout");
    let mut lanes: [u64; LANES] = std::array::from_fn(|k| seed.wrapping_add(k as u64));
    let mut chunks = s.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = mix(*l, v);
        }
    }
    let tail = chunks.remainder().iter().fold(seed, mix);
    lanes.iter().fold(tail, |h, &l| {
        (h ^ l).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(17)
    })
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
    fn new<T: Float>(
        cfg: &Config,
        seq_len: usize,
        batch: usize,
        copies_x: bool,
        has_lengths: bool,
    ) -> Self {
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
        let fixed = (x_elems + (cfg.num_layers - 1) * seq_len * batch * cfg.output_size()) * sz;
        MemoryModel {
            seq_len,
            fixed,
            per_checkpoint: stacks * ck_step * sz,
            per_segment_step: cfg.num_directions() * (full_step + grad_step) * sz,
            full: fixed + stacks * (seq_len * (full_step - dropped) + dropped) * sz,
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
    let m = MemoryModel::new::<T>(cfg, seq_len, batch, copies_x, has_lengths);
    (m.minimum(), m.full)
}

/// How forward keeps the tape under `keep`: `None` for the full tape, `Some(k)` for
/// checkpoints every `k` steps (the largest `k` that fits the budget).
///
/// # Errors
/// [`Error::Value`] naming `memory_budget` and the minimum when no `k` fits.
fn plan<T: Float>(
    cfg: &Config,
    seq_len: usize,
    batch: usize,
    copies_x: bool,
    has_lengths: bool,
    keep: Keep,
) -> Result<Option<usize>> {
    let Keep::Budget(budget) = keep else {
        return Ok(None);
    };
    let m = MemoryModel::new::<T>(cfg, seq_len, batch, copies_x, has_lengths);
    if budget >= m.full {
        return Ok(None);
    }
    if let Some(k) = (1..=seq_len).rev().find(|&k| m.cost(k) <= budget) {
        return Ok(Some(k));
    }
    Err(Error::value(
        "memory_budget",
        format!(
            "expected at least {} bytes for this model and input (checkpoints plus one \
             recomputed segment; the full tape takes {}), got {budget}",
            m.minimum(),
            m.full
        ),
    ))
}

/// The time ranges of the segments of `k` steps, in processing order.
fn segments(seq_len: usize, k: usize, reverse: bool) -> Vec<Range<usize>> {
    let fwd = (0..seq_len)
        .step_by(k.max(1))
        .map(|t0| t0..(t0 + k).min(seq_len));
    if reverse {
        fwd.map(|r| seq_len - r.end..seq_len - r.start).collect()
    } else {
        fwd.collect()
    }
}

/// `b_ih + b_hh` folded (the GRU's `n` block only `b_in`), and the GRU's `b_hn`.
struct Bias<T> {
    folded: Option<Array1<T>>,
    b_hn: Vec<T>,
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
/// sequence (all `T` when `None`); `keep` what to keep for [`backward`]. When the returned
/// tape's [`Tape::needs_x`] is true, backward must be given the same `x` again.
///
/// # Errors
/// [`Error::Shape`] / [`Error::Value`] naming `x`, `state`, `lengths`, `memory_budget` or
/// a weight.
pub fn forward<T: Float>(
    cfg: &Config,
    weights: &[LayerWeights<'_, T>],
    x: ArrayView3<'_, T>,
    state: Option<StateView<'_, T>>,
    lengths: Option<&[usize]>,
    keep: Keep,
) -> Result<ForwardOutput<T>> {
    cfg.validate()?;
    check_weights(cfg, weights)?;
    let (seq_len, batch) = check_sequence(cfg, &x, "x", cfg.input_size)?;
    if let Some(st) = &state {
        check_state(cfg, batch, st, "state")?;
    }
    check_lengths(lengths, seq_len, batch)?;
    // The caller's x serves as layer 0's input (and is referenced, not copied, by the
    // tape) when it is already time-major and no padding must be hidden.
    let borrow_x = !cfg.batch_first && lengths.is_none() && x.is_standard_layout();
    let segment = plan::<T>(cfg, seq_len, batch, !borrow_x, lengths.is_some(), keep)?;

    let dirs = cfg.num_directions();
    let hidden = cfg.hidden_size;
    let mut final_state = State::zeros(cfg, batch);
    let mut input: CowArray<'_, T, Ix3> = if borrow_x {
        CowArray::from(x.view())
    } else {
        let mut owned = to_time_major(cfg, &x);
        if let Some(lengths) = lengths {
            // Padding never reaches the arithmetic, so even NaN padding cannot leak into
            // the weight gradients (0 · NaN would).
            for (b, &len) in lengths.iter().enumerate() {
                owned.slice_mut(s![len.., b, ..]).fill(T::zero());
            }
        }
        CowArray::from(owned)
    };
    let dir_keep = match (keep, segment) {
        (Keep::Nothing, _) => DirKeep::Nothing,
        (_, None) => DirKeep::Full,
        (_, Some(k)) => DirKeep::Checkpoints(k),
    };
    let threads = crate::parallel::current_threads();
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
        let layer_input = input.view();
        let results = per_direction(blocks, threads, |(d, block, mut h, mut c), threads| {
            let w = &weights[layer * dirs + d];
            let tape = run_direction(
                cfg,
                w,
                layer_input.view(),
                d == 1,
                lengths,
                &mut h,
                c.as_mut(),
                block,
                dir_keep,
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
        let next = std::mem::replace(&mut input, CowArray::from(out));
        if keep != Keep::Nothing {
            layers.push(LayerTape {
                input: if next.is_view() {
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
        layers,
    });
    Ok((from_time_major(cfg, input.into_owned()), final_state, tape))
}

#[derive(Debug, Clone, Copy)]
enum DirKeep {
    Nothing,
    Full,
    Checkpoints(usize),
}

/// One direction of one layer over all steps, segment by segment; see the module docs.
#[allow(clippy::too_many_arguments)]
fn run_direction<T: Float>(
    cfg: &Config,
    w: &LayerWeights<'_, T>,
    input: ArrayView3<'_, T>,
    reverse: bool,
    lengths: Option<&[usize]>,
    h: &mut Array2<T>,
    mut c: Option<&mut Array2<T>>,
    mut out: ArrayViewMut3<'_, T>,
    keep: DirKeep,
    threads: usize,
) -> Option<DirTape<T>> {
    let (seq_len, batch, _) = input.dim();
    let bias = Bias::new(cfg, w);
    let w_hh_t = T::Recurrent::prepare(&w.w_hh.t(), cfg.kind.gates());
    let seg_len = match keep {
        DirKeep::Full => seq_len,
        DirKeep::Nothing => SEGMENT.min(seq_len),
        DirKeep::Checkpoints(k) => k,
    };
    let ranges = segments(seq_len, seg_len, reverse);
    let drop_h = drops_h_prev(cfg, lengths.is_some());
    let mut full = matches!(keep, DirKeep::Full).then(|| Steps::new(cfg, seq_len, batch, !drop_h));
    let h0 = (full.is_some() && drop_h).then(|| h.clone());
    let mut gates_buf = Array3::<T>::zeros(if full.is_some() {
        (0, 0, 0)
    } else {
        (seg_len, batch, cfg.gate_size())
    });
    let state_shape = (ranges.len(), batch, cfg.hidden_size);
    let mut ck_h = matches!(keep, DirKeep::Checkpoints(_)).then(|| Array3::<T>::zeros(state_shape));
    let mut ck_c = (ck_h.is_some() && c.is_some()).then(|| Array3::<T>::zeros(state_shape));
    let mut rec = Array2::<T>::zeros(if cfg.kind == CellKind::Gru {
        (batch, cfg.gate_size())
    } else {
        (0, 0)
    });
    for (i, r) in ranges.iter().enumerate() {
        if let Some(ck) = ck_h.as_mut() {
            ck.index_axis_mut(Axis(0), i).assign(h);
        }
        if let (Some(ck), Some(c)) = (ck_c.as_mut(), c.as_deref()) {
            ck.index_axis_mut(Axis(0), i).assign(c);
        }
        let (gates, tape) = match full.as_mut() {
            Some(steps) => {
                let (gates, states) = steps.view_mut(r.clone());
                (gates, Some(states))
            }
            None => (gates_buf.slice_mut(s![..r.len(), .., ..]), None),
        };
        run_segment(
            cfg,
            w,
            &bias,
            &w_hh_t,
            input.slice(s![r.clone(), .., ..]),
            r.start,
            reverse,
            lengths,
            h,
            c.as_deref_mut(),
            gates,
            tape,
            Some(out.slice_mut(s![r.clone(), .., ..])),
            &mut rec,
            threads,
        );
    }
    match keep {
        DirKeep::Nothing => None,
        DirKeep::Full => full.map(|steps| DirTape::Full {
            steps: Box::new(steps),
            h0,
        }),
        DirKeep::Checkpoints(_) => Some(DirTape::Checkpoints {
            h: ck_h.expect("made for checkpoints"),
            c: ck_c,
        }),
    }
}

/// Forward over the steps `t0..t0 + S` from state `(h, c)`: `gates [S, B, G·H]` receives
/// the projection, then the activated gates; `tape` the per-step states; `out [S, B, H]`
/// the outputs.
#[allow(clippy::too_many_arguments)]
fn run_segment<T: Float>(
    cfg: &Config,
    w: &LayerWeights<'_, T>,
    bias: &Bias<T>,
    w_hh_t: &T::Recurrent,
    input: ArrayView3<'_, T>,
    t0: usize,
    reverse: bool,
    lengths: Option<&[usize]>,
    h: &mut Array2<T>,
    c: Option<&mut Array2<T>>,
    mut gates: ArrayViewMut3<'_, T>,
    mut tape: Option<StatesMut<'_, T>>,
    mut out: Option<ArrayViewMut3<'_, T>>,
    rec: &mut Array2<T>,
    threads: usize,
) {
    let (len, batch, in_size) = input.dim();
    let (hidden, gh, kind) = (cfg.hidden_size, cfg.gate_size(), cfg.kind);
    {
        let x2 = input
            .into_shape_with_order((len * batch, in_size))
            .expect("time-major input is contiguous");
        let mut g2 = gates
            .view_mut()
            .into_shape_with_order((len * batch, gh))
            .expect("gate buffer is contiguous");
        match bias.folded.as_ref().and_then(|b| b.as_slice()) {
            Some(b) => g2
                .as_slice_mut()
                .expect("gate buffer is contiguous")
                .chunks_exact_mut(gh)
                .for_each(|row| row.copy_from_slice(b)),
            None => g2.fill(T::zero()),
        }
        gemm(T::one(), &x2, &w.w_ih.t(), T::one(), &mut g2, par(threads));
    }

    let work = batch * hidden * gh;
    let tiles = team::plan(threads, batch, hidden, work);
    let mut h_next = Array2::<T>::zeros((batch, hidden));
    {
        let g_all = gates.as_slice_mut().expect("contiguous gate buffer");
        let sh = FwdShared {
            gates: Shared::new(g_all),
            h: [
                Shared::new(h.as_slice_mut().expect("contiguous")),
                Shared::new(h_next.as_slice_mut().expect("contiguous")),
            ],
            c: Shared::new(c.map_or(&mut [][..], |c| c.as_slice_mut().expect("contiguous"))),
            rec: Shared::new(rec.as_slice_mut().expect("contiguous")),
            h_prev: shared_opt(tape.as_mut().and_then(|tp| tp.h_prev.as_mut())),
            c_prev: shared_opt(tape.as_mut().and_then(|tp| tp.c_prev.as_mut())),
            gh_n: shared_opt(tape.as_mut().and_then(|tp| tp.gh_n.as_mut())),
            out: out.as_mut().map(shared_strided),
        };
        let sh = &sh;
        team::run(&tiles, |mine, barrier| {
            for i in 0..len {
                let local = if reverse { len - 1 - i } else { i };
                let t = t0 + local;
                for tile in mine {
                    // SAFETY: every member reads all of `h[i % 2]` and writes only its tile
                    // of `h[1 − i % 2]` and of the per-step buffers; the barrier at the end
                    // of the step separates the step that writes a buffer from the one that
                    // reads it.
                    unsafe {
                        forward_tile(
                            sh,
                            StepCtx {
                                kind,
                                hidden,
                                batch,
                                w: w_hh_t,
                                b_hn: &bias.b_hn,
                                cur: i % 2,
                                local,
                                t,
                                lengths,
                            },
                            tile,
                        )
                    };
                }
                barrier.wait();
            }
        });
    }
    if len % 2 == 1 {
        std::mem::swap(h, &mut h_next);
    }
}

/// The buffers of one forward segment, shared by the step team.
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

/// What one step of a segment needs besides the buffers.
struct StepCtx<'a, T: Float> {
    kind: CellKind,
    hidden: usize,
    batch: usize,
    w: &'a T::Recurrent,
    b_hn: &'a [T],
    /// Which state buffer the step reads.
    cur: usize,
    /// The step's index in the segment's buffers, and its time index.
    local: usize,
    t: usize,
    lengths: Option<&'a [usize]>,
}

fn shared_opt<T>(a: Option<&mut ArrayViewMut3<'_, T>>) -> Shared<T> {
    Shared::new(a.map_or(&mut [][..], |a| {
        a.as_slice_mut().expect("contiguous tape buffer")
    }))
}

/// Shares a `[S, B, H]` view whose rows are contiguous (a direction's block of `out`).
fn shared_strided<T>(v: &mut ArrayViewMut3<'_, T>) -> (Shared<T>, [usize; 2]) {
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
    (unsafe { Shared::from_raw(v.as_mut_ptr(), len) }, [s0, s1])
}

/// One forward step for one tile: saves the entering state for the tape, adds the
/// tile's recurrent product, runs the fused cell and writes the outputs.
///
/// # Safety
/// The team's contract (see the call site): the tile's elements are this member's.
unsafe fn forward_tile<T: Float>(sh: &FwdShared<T>, cx: StepCtx<'_, T>, tile: &Tile) {
    let (n, b_all) = (cx.hidden, cx.batch);
    let g = cx.kind.gates();
    let gh = g * n;
    let (cur, next) = (&sh.h[cx.cur], &sh.h[1 - cx.cur]);
    let u = tile.units.clone();
    let gru = cx.kind == CellKind::Gru;
    let state = |b: usize| b * n + u.start..b * n + u.end;
    let at_step =
        |b: usize| (cx.local * b_all + b) * n + u.start..(cx.local * b_all + b) * n + u.end;
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
        let gates_t = sh.gates.ptr().add(cx.local * b_all * gh);
        if gru {
            cx.w.apply_tile(
                cur.ptr(),
                n,
                sh.rec.ptr(),
                gh,
                tile.rows.clone(),
                u.clone(),
                false,
            );
        } else {
            cx.w.apply_tile(
                cur.ptr(),
                n,
                gates_t,
                gh,
                tile.rows.clone(),
                u.clone(),
                true,
            );
        }
        for b in tile.rows.clone() {
            let masked = cx.lengths.is_some_and(|l| cx.t >= l[b]);
            let h_row = next.part(state(b));
            if masked || gru {
                h_row.copy_from_slice(cur.read(state(b)));
            }
            if !masked {
                let row0 = (cx.local * b_all + b) * gh;
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
                let o0 = cx.local * s0 + b * s1;
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

/// Full backpropagation through time over the whole sequence.
///
/// `d_out` is `∂L/∂out` (layout of `x`), `d_state` is `∂L/∂` final state (zeros when
/// `None`). `x` must be the `x` given to forward when [`Tape::needs_x`] (it is checked
/// against a digest), and is ignored otherwise. Uses the current `weights`, which must be
/// those the tape was made with.
///
/// # Errors
/// [`Error::Value`] when the tape comes from another configuration or `x` is missing or
/// changed; [`Error::Shape`] when `d_out` or `d_state` do not match the forward pass.
pub fn backward<T: Float>(
    cfg: &Config,
    weights: &[LayerWeights<'_, T>],
    tape: &Tape<T>,
    x: Option<ArrayView3<'_, T>>,
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
    let hidden = cfg.hidden_size;
    let lengths = tape.lengths.as_deref();
    let mut dstate = State::zeros(cfg, batch);
    let mut dh_norm = Array2::<T>::zeros((cfg.num_stacks(), seq_len));
    let mut params: Vec<Option<LayerGrads<T>>> = vec![None; cfg.num_stacks()];
    let mut d_y: CowArray<'_, T, Ix3> = if cfg.batch_first || !d_out.is_standard_layout() {
        CowArray::from(to_time_major(cfg, &d_out))
    } else {
        CowArray::from(d_out)
    };
    let threads = crate::parallel::current_threads();
    for layer in (0..cfg.num_layers).rev() {
        let lt = &tape.layers[layer];
        let input = match (&lt.input, x0) {
            (Some(a), _) => a.view(),
            (None, Some(x)) => x,
            (None, None) => unreachable!("layer 0 without input implies an x digest"),
        };
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
        let d_y_view = d_y.view();
        let results = per_direction(jobs, threads, |(d, mut dh, mut dc), threads| {
            let mut norm = vec![T::zero(); seq_len];
            let (grads, d_x) = backward_direction(
                cfg,
                &weights[layer * dirs + d],
                &lt.dirs[d],
                tape.segment,
                input,
                d_y_view.view(),
                d,
                lengths,
                &mut dh,
                dc.as_mut(),
                &mut norm,
                threads,
            );
            (grads, d_x, dh, dc, norm)
        });
        let mut d_x: Option<Array3<T>> = None;
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
        d_y = CowArray::from(d_x.expect("at least one direction"));
    }
    Ok(Grads {
        dx: from_time_major(cfg, d_y.into_owned()),
        dstate,
        params: params
            .into_iter()
            .map(|p| p.expect("every layer-direction visited"))
            .collect(),
        dh_norm,
    })
}

/// BPTT through one direction of one layer, segment by segment (recomputing each from
/// its checkpoint when the tape kept checkpoints). Returns the parameter gradients and
/// `dX_l [T, B, I_l]`; `dh`/`dc` enter as `∂L/∂` final state and leave as `∂L/∂h0`.
#[allow(clippy::too_many_arguments)]
fn backward_direction<T: Float>(
    cfg: &Config,
    w: &LayerWeights<'_, T>,
    tape: &DirTape<T>,
    segment: Option<usize>,
    input: ArrayView3<'_, T>,
    d_y: ArrayView3<'_, T>,
    dir: usize,
    lengths: Option<&[usize]>,
    dh: &mut Array2<T>,
    mut dc: Option<&mut Array2<T>>,
    dh_norm: &mut [T],
    threads: usize,
) -> (LayerGrads<T>, Array3<T>) {
    let (seq_len, batch, in_size) = input.dim();
    let (hidden, gh) = (cfg.hidden_size, cfg.gate_size());
    let reverse = dir == 1;
    let seg_len = segment.unwrap_or(SEGMENT).min(seq_len);
    let mut grads = LayerGrads {
        w_ih: Array2::zeros((gh, in_size)),
        w_hh: Array2::zeros((gh, hidden)),
        b_ih: cfg.bias.then(|| Array1::zeros(gh)),
        b_hh: cfg.bias.then(|| Array1::zeros(gh)),
    };
    let mut d_x = Array3::<T>::zeros((seq_len, batch, in_size));
    let mut dxp = Array3::<T>::zeros((seq_len.min(seg_len), batch, gh));
    let split_rec = cfg.kind == CellKind::Gru;
    let mut drec = Array3::<T>::zeros(if split_rec { dxp.dim() } else { (0, 0, 0) });
    let w_hh = T::Recurrent::prepare(&w.w_hh, 1);
    let ctx = SegmentGrad {
        cfg,
        w,
        w_hh: &w_hh,
        reverse,
        dir,
        lengths,
        threads,
    };
    // Backward through one segment's steps, given their tape (kept or recomputed).
    let mut backward_segment = |view: StepsView<'_, T>, r: Range<usize>| {
        ctx.run(
            view,
            input,
            d_y,
            r,
            dh,
            dc.as_deref_mut(),
            &mut dxp,
            &mut drec,
            &mut grads,
            &mut d_x,
            dh_norm,
        )
    };
    match tape {
        DirTape::Full { steps, h0 } => {
            let mut rebuilt = Array3::<T>::zeros(if h0.is_some() {
                (seg_len, batch, hidden)
            } else {
                (0, 0, 0)
            });
            for r in segments(seq_len, seg_len, reverse).into_iter().rev() {
                let mut view = StepsView::of(steps, r.clone());
                if let Some(h0) = h0 {
                    let mut buf = rebuilt.slice_mut(s![..r.len(), .., ..]);
                    rebuild_lstm_h_prev(steps, h0, r.clone(), reverse, &mut buf, threads);
                    view.h_prev = rebuilt.slice(s![..r.len(), .., ..]);
                }
                backward_segment(view, r);
            }
        }
        DirTape::Checkpoints { h: ck_h, c: ck_c } => {
            let bias = Bias::new(cfg, w);
            let w_hh_t = T::Recurrent::prepare(&w.w_hh.t(), cfg.kind.gates());
            let mut steps = Steps::new(cfg, seg_len, batch, true);
            let mut rec = Array2::<T>::zeros(if split_rec { (batch, gh) } else { (0, 0) });
            for (i, r) in segments(seq_len, seg_len, reverse)
                .into_iter()
                .enumerate()
                .rev()
            {
                let mut h = ck_h.index_axis(Axis(0), i).to_owned();
                let mut c = ck_c.as_ref().map(|c| c.index_axis(Axis(0), i).to_owned());
                let (gates, states) = steps.view_mut(0..r.len());
                run_segment(
                    cfg,
                    w,
                    &bias,
                    &w_hh_t,
                    input.slice(s![r.clone(), .., ..]),
                    r.start,
                    reverse,
                    lengths,
                    &mut h,
                    c.as_mut(),
                    gates,
                    Some(states),
                    None,
                    &mut rec,
                    threads,
                );
                let view = StepsView::of(&steps, 0..r.len());
                backward_segment(view, r);
            }
        }
    }
    (grads, d_x)
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
    // Steps are independent: they run in parallel on the pool.
    let one_step = |(dst, t): (&mut [T], usize)| {
        let before = if reverse { t + 1 } else { t.wrapping_sub(1) };
        if before >= seq_len {
            dst.copy_from_slice(h0.as_slice().expect("contiguous"));
            return;
        }
        for (b, row) in dst.chunks_exact_mut(hidden).enumerate() {
            let o = steps.gates.slice(s![before, b, 3 * hidden..]);
            let c = c_prev.slice(s![t, b, ..]);
            lstm_output(
                o.as_slice().expect("contiguous"),
                c.as_slice().expect("contiguous"),
                row,
            );
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

/// `acc[j] += Σ_r m[r, j]`, rows summed in order (the same bits for any thread count);
/// column blocks run in parallel.
fn add_column_sums<T: Float>(acc: &mut Array1<T>, m: &ArrayView2<'_, T>, threads: usize) {
    use rayon::prelude::*;
    const COLS: usize = 64;
    let m = m.as_standard_layout();
    let cols = m.ncols();
    let rows = m.as_slice().expect("standard layout");
    let acc = acc.as_slice_mut().expect("contiguous");
    let sum_block = |j: usize, a: &mut [T]| {
        let mut s = vec![T::zero(); a.len()];
        for row in rows.chunks_exact(cols) {
            for (s, &v) in s.iter_mut().zip(&row[j * COLS..j * COLS + a.len()]) {
                *s += v;
            }
        }
        for (a, s) in a.iter_mut().zip(s) {
            *a += s;
        }
    };
    if threads < 2 || rows.len() < 1 << 16 {
        acc.chunks_mut(COLS)
            .enumerate()
            .for_each(|(j, a)| sum_block(j, a));
    } else {
        acc.par_chunks_mut(COLS)
            .enumerate()
            .for_each(|(j, a)| sum_block(j, a));
    }
}

/// Read-only views of [`Steps`] over a segment.
struct StepsView<'a, T> {
    gates: ArrayView3<'a, T>,
    h_prev: ArrayView3<'a, T>,
    c_prev: Option<ArrayView3<'a, T>>,
    gh_n: Option<ArrayView3<'a, T>>,
}

impl<'a, T: Float> StepsView<'a, T> {
    /// The steps `r`; `h_prev` is empty when the tape left it out.
    fn of(steps: &'a Steps<T>, r: Range<usize>) -> Self {
        StepsView {
            gates: steps.gates.slice(s![r.clone(), .., ..]),
            h_prev: match &steps.h_prev {
                Some(a) => a.slice(s![r.clone(), .., ..]),
                None => ArrayView3::from_shape((0, 0, 0), &[]).expect("empty view"),
            },
            c_prev: steps
                .c_prev
                .as_ref()
                .map(|a| a.slice(s![r.clone(), .., ..])),
            gh_n: steps.gh_n.as_ref().map(|a| a.slice(s![r, .., ..])),
        }
    }
}

/// What stays fixed while backward walks the segments of one direction.
struct SegmentGrad<'a, 'w, T: Float> {
    cfg: &'a Config,
    w: &'a LayerWeights<'w, T>,
    /// `W_hh [G·H, H]` prepared for the per-step `dh += drec · W_hh`.
    w_hh: &'a T::Recurrent,
    reverse: bool,
    dir: usize,
    lengths: Option<&'a [usize]>,
    threads: usize,
}

impl<T: Float> SegmentGrad<'_, '_, T> {
    /// Backward through the steps `r` (tape `steps`, local index `t − r.start`), then the
    /// segment's share of the weight gradients and its rows of `d_x`, as GEMMs.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        steps: StepsView<'_, T>,
        input: ArrayView3<'_, T>,
        d_y: ArrayView3<'_, T>,
        r: Range<usize>,
        dh: &mut Array2<T>,
        dc: Option<&mut Array2<T>>,
        dxp: &mut Array3<T>,
        drec: &mut Array3<T>,
        grads: &mut LayerGrads<T>,
        d_x: &mut Array3<T>,
        dh_norm: &mut [T],
    ) {
        let cfg = self.cfg;
        let (len, batch) = (r.len(), dh.nrows());
        let (hidden, gh, kind) = (cfg.hidden_size, cfg.gate_size(), cfg.kind);
        let split_rec = kind == CellKind::Gru;
        let dy_stride = d_y.shape()[2];
        let blocks = hidden.div_ceil(UNIT_ALIGN);
        // `Σ (∂L/∂h')²` per step, row and block of units, summed below in a fixed order
        // so that `dh_norm` does not depend on the tiling.
        let mut sumsq = vec![T::zero(); len * batch * blocks];
        let tiles = team::plan(self.threads, batch, hidden, batch * hidden * gh);
        {
            let sh = BwdShared {
                dh: Shared::new(dh.as_slice_mut().expect("contiguous")),
                dc: Shared::new(
                    dc.map_or(&mut [][..], |dc| dc.as_slice_mut().expect("contiguous")),
                ),
                dxp: Shared::new(dxp.as_slice_mut().expect("contiguous")),
                drec: Shared::new(drec.as_slice_mut().expect("contiguous")),
                sumsq: Shared::new(&mut sumsq),
            };
            let (sh, steps, d_y) = (&sh, &steps, &d_y);
            let dy_offset = self.dir * hidden;
            team::run(&tiles, |mine, barrier| {
                for i in 0..len {
                    let local = if self.reverse { i } else { len - 1 - i };
                    let t = r.start + local;
                    let tape = StepTape {
                        gates: at_step(&steps.gates, local),
                        h_prev: if steps.h_prev.is_empty() {
                            &[]
                        } else {
                            at_step(&steps.h_prev, local)
                        },
                        c_prev: steps.c_prev.as_ref().map_or(&[][..], |a| at_step(a, local)),
                        gh_n: steps.gh_n.as_ref().map_or(&[][..], |a| at_step(a, local)),
                        dy: at_step(d_y, t),
                        dy_stride,
                        dy_offset,
                    };
                    // SAFETY: members write only their tiles of `dh`, `dc`, this step's
                    // `dxp`/`drec` and `sumsq`; the barrier separates the cell updates
                    // from the product, which reads the tile's rows of this step's
                    // `drec` written by the members sharing them.
                    for tile in mine {
                        unsafe {
                            backward_cells(
                                sh,
                                &tape,
                                kind,
                                hidden,
                                batch,
                                i,
                                local,
                                t,
                                self.lengths,
                                tile,
                            );
                        }
                    }
                    barrier.wait();
                    // SAFETY: as above; this step's `drec` is no longer written.
                    unsafe {
                        let drec_t = if split_rec {
                            sh.drec.ptr()
                        } else {
                            sh.dxp.ptr()
                        }
                        .add(local * batch * gh);
                        for tile in mine {
                            self.w_hh.apply_tile(
                                drec_t,
                                gh,
                                sh.dh.ptr(),
                                hidden,
                                tile.rows.clone(),
                                tile.units.clone(),
                                true,
                            );
                        }
                    }
                }
            });
        }
        for (i, per_step) in sumsq.chunks_exact(batch * blocks).enumerate() {
            let local = if self.reverse { i } else { len - 1 - i };
            dh_norm[r.start + local] = per_step.iter().fold(T::zero(), |acc, &v| acc + v).sqrt();
        }

        let rows = len * batch;
        let all = par(self.threads);
        let in_size = input.shape()[2];
        let dxp2 = flat(dxp.slice(s![..len, .., ..]), rows, gh);
        let drec2 = if split_rec {
            flat(drec.slice(s![..len, .., ..]), rows, gh)
        } else {
            dxp2
        };
        let x2 = flat(input.slice(s![r.clone(), .., ..]), rows, in_size);
        gemm(
            T::one(),
            &dxp2.t(),
            &x2,
            T::one(),
            &mut grads.w_ih.view_mut(),
            all,
        );
        gemm(
            T::one(),
            &drec2.t(),
            &flat(steps.h_prev, rows, hidden),
            T::one(),
            &mut grads.w_hh.view_mut(),
            all,
        );
        if let (Some(bi), Some(bh)) = (grads.b_ih.as_mut(), grads.b_hh.as_mut()) {
            add_column_sums(bi, &dxp2, self.threads);
            add_column_sums(bh, &drec2, self.threads);
        }
        let mut dx2 = d_x
            .slice_mut(s![r, .., ..])
            .into_shape_with_order((rows, in_size))
            .expect("contiguous [T, B, I] buffer");
        gemm(T::one(), &dxp2, &self.w.w_ih, T::zero(), &mut dx2, all);
    }
}

/// The buffers of one backward segment, shared by the step team.
struct BwdShared<T> {
    /// `∂L/∂h` `[B, H]`: in, from the step after; out, to the step before.
    dh: Shared<T>,
    /// LSTM `∂L/∂c` `[B, H]` (empty otherwise).
    dc: Shared<T>,
    /// `[S, B, G·H]` pre-activation gradients (input side; the recurrent side too except
    /// for the GRU) and the GRU's recurrent side (empty otherwise).
    dxp: Shared<T>,
    drec: Shared<T>,
    /// `[S, B, blocks]`.
    sumsq: Shared<T>,
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

/// The fused cell backward of one step for one tile (`i`: the step's position in the
/// segment's processing order, for `sumsq`; `local`: its buffer index).
///
/// # Safety
/// The team's contract (see the call site): the tile's elements are this member's.
#[allow(clippy::too_many_arguments)]
unsafe fn backward_cells<T: Float>(
    sh: &BwdShared<T>,
    tp: &StepTape<'_, T>,
    kind: CellKind,
    n: usize,
    batch: usize,
    i: usize,
    local: usize,
    t: usize,
    lengths: Option<&[usize]>,
    tile: &Tile,
) {
    let g = kind.gates();
    let gh = g * n;
    let blocks = n.div_ceil(UNIT_ALIGN);
    let u = tile.units.clone();
    let (blk0, blk1) = (u.start / UNIT_ALIGN, u.end.div_ceil(UNIT_ALIGN));
    let state = |b: usize| b * n + u.start..b * n + u.end;
    let gru = kind == CellKind::Gru;
    unsafe {
        for b in tile.rows.clone() {
            let row0 = (local * batch + b) * gh;
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
            let s0 = (i * batch + b) * blocks;
            let sumsq = sh.sumsq.part(s0 + blk0..s0 + blk1);
            let dh = sh.dh.part(state(b));
            if lengths.is_some_and(|l| t >= l[b]) {
                // The carried state passes through a padded step unchanged; the buffers
                // are reused across segments, so the row's gate gradients are cleared.
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

#[cfg(test)]
#[path = "sequence_tests.rs"]
mod tests;
