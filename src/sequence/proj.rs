//! The LSTM with projections (PyTorch's `proj_size = P`): one layer-direction's time loop,
//! forward and backward.
//!
//! Per step: `gates[t] += h · W_hhᵀ` (`h` is `P` wide, one GEMM over the batch), the
//! fused LSTM cell (`cell.rs`) gives `c'` and `r = o ⊙ tanh(c')` (`H` wide), then the
//! projection `h' = r · W_hrᵀ` is one more GEMM. Backward, per step: `∂L/∂h'` (the carried
//! part plus the layer's output gradient), `∂L/∂r = ∂L/∂h' · W_hr` (GEMM), the fused cell
//! backward, and `∂L/∂h = dgates · W_hh` (GEMM). After each chunk the weight gradients
//! (`dW_hr += Σ ∂L/∂h'ᵀ · r`) and `dX_l` are GEMMs over all its steps, as for the plain
//! cells. Checkpoints keep `h` (`P` wide) and `c` (`H` wide).

use super::layer::{Direction, LayerInput, StateSlot};
use super::plan::{chunks, DirPlan, CHUNK_STEPS};
use super::tape::DirTape;
use crate::buffer::{copy, zeros};
use crate::cell::{step_backward, step_forward, CellKind, StepRow, StepRowGrad};
use crate::error::Result;
use crate::float::Float;
use crate::linalg::{gemm, par};
use crate::model::LayerGrads;
use crate::recurrent::UNIT_ALIGN;
use ndarray::{s, Array1, Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut3, Axis};
use std::mem::MaybeUninit;
use std::ops::Range;

/// Per-step arrays of one projected direction over `S` steps (time-major, `t − t0`).
#[derive(Debug, Clone)]
pub(super) struct ProjSteps<T> {
    /// Activated gates `[S, B, 4H]`.
    gates: Array3<T>,
    /// Cell entering the step `[S, B, H]`.
    c_prev: Array3<T>,
    /// State entering the step `[S, B, P]`.
    h_prev: Array3<T>,
    /// `r = o ⊙ tanh(c')` `[S, B, H]` (zero at padded steps).
    raw: Array3<T>,
}

impl<T: Float> ProjSteps<T> {
    pub(super) fn new(d: &Direction<'_, '_, T>, len: usize, batch: usize) -> Result<Self> {
        let (h, p) = (d.cfg.hidden_size, d.cfg.proj_size);
        Ok(ProjSteps {
            gates: zeros((len, batch, d.cfg.gate_size()), "the tape")?,
            c_prev: zeros((len, batch, h), "the tape")?,
            h_prev: zeros((len, batch, p), "the tape")?,
            raw: zeros((len, batch, h), "the tape")?,
        })
    }

    /// Elements held.
    pub(super) fn len(&self) -> usize {
        self.gates.len() + self.c_prev.len() + self.h_prev.len() + self.raw.len()
    }

    pub(super) fn view_mut(&mut self, r: Range<usize>) -> ProjStepsMut<'_, T> {
        ProjStepsMut {
            gates: self.gates.slice_mut(s![r.clone(), .., ..]),
            c_prev: self.c_prev.slice_mut(s![r.clone(), .., ..]),
            h_prev: self.h_prev.slice_mut(s![r.clone(), .., ..]),
            raw: self.raw.slice_mut(s![r, .., ..]),
        }
    }
}

pub(super) struct ProjStepsMut<'a, T> {
    gates: ArrayViewMut3<'a, T>,
    c_prev: ArrayViewMut3<'a, T>,
    h_prev: ArrayViewMut3<'a, T>,
    raw: ArrayViewMut3<'a, T>,
}

/// A contiguous `[S, B, C]` view as `[S·B, C]`.
fn flat<'a, T>(a: ArrayView3<'a, T>) -> ArrayView2<'a, T> {
    let (s, b, c) = a.dim();
    a.into_shape_with_order((s * b, c))
        .expect("contiguous [S, B, ·] buffer")
}

/// `[a, b, c, d]`: the four gate blocks of one row of `4H` values.
fn split4<T>(row: &mut [T], n: usize) -> [&mut [T]; 4] {
    let (a, rest) = row.split_at_mut(n);
    let (b, rest) = rest.split_at_mut(n);
    let (c, d) = rest.split_at_mut(n);
    [a, b, c, d]
}

impl<T: Float> Direction<'_, '_, T> {
    fn masked(&self, t: usize, b: usize) -> bool {
        self.lengths.is_some_and(|l| t >= l[b])
    }

    fn w_hr(&self) -> ArrayView2<'_, T> {
        self.w
            .w_hr
            .as_ref()
            .map(|w| w.view())
            .expect("a projected LSTM has W_hr (checked)")
    }

    /// [`Direction::forward`] of an LSTM with projections.
    pub(super) fn forward_projected(
        &self,
        input: ArrayView3<'_, T>,
        state: &mut StateSlot<T>,
        mut out: ArrayViewMut3<'_, MaybeUninit<T>>,
        plan: DirPlan,
    ) -> Result<Option<DirTape<T>>> {
        let (seq_len, batch, _) = input.dim();
        let chunk_len = plan.chunk_len::<T>(self.cfg, seq_len, batch);
        let ranges = chunks(seq_len, chunk_len, self.reverse);
        let full = matches!(plan, DirPlan::Full);
        let mut steps = ProjSteps::new(self, if full { seq_len } else { chunk_len }, batch)?;
        let ck = matches!(plan, DirPlan::Checkpoints(_));
        let n_ck = if ck { ranges.len() } else { 0 };
        let mut ck_h = zeros((n_ck, batch, self.cfg.proj_size), "the tape")?;
        let mut ck_c = zeros((n_ck, batch, self.cfg.hidden_size), "the tape")?;
        let mut next = zeros((batch, self.cfg.proj_size), "the state")?;
        for (i, r) in ranges.iter().enumerate() {
            self.ctl.check()?;
            if ck {
                ck_h.index_axis_mut(Axis(0), i).assign(&state.h);
                if let Some(c) = &state.c {
                    ck_c.index_axis_mut(Axis(0), i).assign(c);
                }
            }
            let buf = if full {
                steps.view_mut(r.clone())
            } else {
                steps.view_mut(0..r.len())
            };
            let input = input.slice(s![r.clone(), .., ..]);
            let out = Some(out.slice_mut(s![r.clone(), .., ..]));
            self.forward_projected_chunk(input, r.start, buf, out, state, &mut next);
        }
        Ok(match plan {
            DirPlan::Nothing => None,
            DirPlan::Full => Some(DirTape::Projected {
                steps: Box::new(steps),
            }),
            DirPlan::Checkpoints(_) => Some(DirTape::Checkpoints {
                h: ck_h,
                c: Some(ck_c),
            }),
        })
    }

    /// Forward over one chunk's steps (`input [S, B, I_l]` from time `t0`) from `state`,
    /// which leaves as the state after them; `buf` receives the per-step arrays.
    pub(super) fn forward_projected_chunk(
        &self,
        input: ArrayView3<'_, T>,
        t0: usize,
        mut buf: ProjStepsMut<'_, T>,
        mut out: Option<ArrayViewMut3<'_, MaybeUninit<T>>>,
        state: &mut StateSlot<T>,
        next: &mut Array2<T>,
    ) {
        let (len, batch, _) = input.dim();
        let (n, gh) = (self.cfg.hidden_size, self.cfg.gate_size());
        let all = par(self.threads);
        {
            let mut g2 = buf
                .gates
                .view_mut()
                .into_shape_with_order((len * batch, gh))
                .expect("contiguous gate buffer");
            match (&self.w.b_ih, &self.w.b_hh) {
                (Some(bi), Some(bh)) => {
                    let b = bi + bh;
                    g2.rows_mut().into_iter().for_each(|mut row| row.assign(&b));
                }
                _ => g2.fill(T::zero()),
            }
            gemm(
                T::one(),
                &flat(input),
                &self.w.w_ih.t(),
                T::one(),
                &mut g2,
                all,
            );
        }
        let w_hr = self.w_hr();
        let c = state
            .c
            .as_mut()
            .expect("the LSTM has a cell state (checked)");
        for i in 0..len {
            let local = if self.reverse { len - 1 - i } else { i };
            let t = t0 + local;
            buf.h_prev.index_axis_mut(Axis(0), local).assign(&state.h);
            buf.c_prev.index_axis_mut(Axis(0), local).assign(c);
            let mut gates = buf.gates.index_axis_mut(Axis(0), local);
            gemm(
                T::one(),
                &state.h.view(),
                &self.w.w_hh.t(),
                T::one(),
                &mut gates,
                all,
            );
            let mut raw = buf.raw.index_axis_mut(Axis(0), local);
            for b in 0..batch {
                let mut r = raw.row_mut(b);
                let r = r.as_slice_mut().expect("contiguous row");
                if self.masked(t, b) {
                    r.fill(T::zero());
                    continue;
                }
                let mut g = gates.row_mut(b);
                let mut c_row = c.row_mut(b);
                step_forward(
                    CellKind::Lstm,
                    StepRow {
                        gates: split4(g.as_slice_mut().expect("contiguous row"), n),
                        rec: [&[], &[], &[]],
                        b_hn: &[],
                        h: r,
                        c: c_row.as_slice_mut().expect("contiguous row"),
                        gh_n: &mut [],
                    },
                );
            }
            gemm(
                T::one(),
                &raw.view(),
                &w_hr.t(),
                T::zero(),
                &mut next.view_mut(),
                all,
            );
            let mut o = out.as_mut().map(|o| o.index_axis_mut(Axis(0), local));
            for b in 0..batch {
                let masked = self.masked(t, b);
                if !masked {
                    state.h.row_mut(b).assign(&next.row(b));
                }
                if let Some(o) = o.as_mut() {
                    for (dst, &v) in o.row_mut(b).iter_mut().zip(state.h.row(b)) {
                        *dst = MaybeUninit::new(if masked { T::zero() } else { v });
                    }
                }
            }
        }
    }

    /// [`Direction::backward`] of an LSTM with projections.
    pub(super) fn backward_projected(
        &self,
        tape: &DirTape<T>,
        segment: Option<usize>,
        (input, d_y): (&LayerInput<'_, T>, ArrayView3<'_, T>),
        grad: &mut StateSlot<T>,
        dh_norm: &mut [T],
    ) -> Result<(LayerGrads<T>, Array3<T>)> {
        let cfg = self.cfg;
        let (seq_len, batch, in_size) = input.dim();
        let (n, p, gh) = (cfg.hidden_size, cfg.proj_size, cfg.gate_size());
        let chunk_len = segment.unwrap_or(CHUNK_STEPS).min(seq_len);
        let bias = || cfg.bias.then(|| zeros(gh, "the gradients")).transpose();
        let mut bufs = ProjGrads {
            dxp: zeros((chunk_len, batch, gh), "the gate gradients")?,
            dhp: zeros((chunk_len, batch, p), "the gate gradients")?,
            draw: zeros((batch, n), "the gate gradients")?,
            dh_new: zeros((batch, p), "the gate gradients")?,
            grads: LayerGrads {
                w_ih: zeros((gh, in_size), "the gradients")?,
                w_hh: zeros((gh, p), "the gradients")?,
                b_ih: bias()?,
                b_hh: bias()?,
                w_hr: Some(zeros((p, n), "the gradients")?),
            },
            d_x: zeros((seq_len, batch, in_size), "dx")?,
        };
        let order = chunks(seq_len, chunk_len, self.reverse);
        match tape {
            DirTape::Projected { steps } => {
                for r in order.into_iter().rev() {
                    self.ctl.check()?;
                    let view = StepsRef {
                        gates: steps.gates.slice(s![r.clone(), .., ..]),
                        c_prev: steps.c_prev.slice(s![r.clone(), .., ..]),
                        h_prev: steps.h_prev.slice(s![r.clone(), .., ..]),
                        raw: steps.raw.slice(s![r.clone(), .., ..]),
                    };
                    let x = input.segment(r.clone(), self.threads)?;
                    let io = (x.view(), d_y);
                    self.backward_projected_chunk(view, r, io, grad, &mut bufs, dh_norm);
                }
            }
            DirTape::Checkpoints { h: ck_h, c: ck_c } => {
                let mut steps = ProjSteps::new(self, chunk_len, batch)?;
                let mut next = zeros((batch, p), "the state")?;
                for (i, r) in order.into_iter().enumerate().rev() {
                    self.ctl.check()?;
                    let checkpoint = |a: &Array3<T>| copy(&a.index_axis(Axis(0), i), "the state");
                    let mut state = StateSlot {
                        h: checkpoint(ck_h)?,
                        c: ck_c.as_ref().map(checkpoint).transpose()?,
                    };
                    let buf = steps.view_mut(0..r.len());
                    let x = input.segment(r.clone(), self.threads)?;
                    self.forward_projected_chunk(
                        x.view(),
                        r.start,
                        buf,
                        None,
                        &mut state,
                        &mut next,
                    );
                    let k = r.len();
                    let view = StepsRef {
                        gates: steps.gates.slice(s![..k, .., ..]),
                        c_prev: steps.c_prev.slice(s![..k, .., ..]),
                        h_prev: steps.h_prev.slice(s![..k, .., ..]),
                        raw: steps.raw.slice(s![..k, .., ..]),
                    };
                    let io = (x.view(), d_y);
                    self.backward_projected_chunk(view, r, io, grad, &mut bufs, dh_norm);
                }
            }
            DirTape::Full { .. } => {
                return Err(crate::error::Error::value(
                    "tape",
                    "holds a plain LSTM's steps, not a projected one's",
                ))
            }
        }
        Ok((bufs.grads, bufs.d_x))
    }

    /// Backward through the steps `r` (tape `st` and the chunk's input, local index
    /// `t − r.start`; `d_y` whole), then the chunk's share of the weight gradients and its
    /// rows of `d_x`, as GEMMs.
    fn backward_projected_chunk(
        &self,
        st: StepsRef<'_, T>,
        r: Range<usize>,
        (input, d_y): (ArrayView3<'_, T>, ArrayView3<'_, T>),
        grad: &mut StateSlot<T>,
        bufs: &mut ProjGrads<T>,
        dh_norm: &mut [T],
    ) {
        let len = r.len();
        let batch = grad.h.nrows();
        let (n, p) = (self.cfg.hidden_size, self.cfg.proj_size);
        let all = par(self.threads);
        let w_hr = self.w_hr();
        let dc = grad
            .c
            .as_mut()
            .expect("the LSTM has a cell state (checked)");
        let mut dh_direct = vec![T::zero(); n];
        let mut sumsq = vec![T::zero(); n.div_ceil(UNIT_ALIGN)];
        let y0 = self.dir * p;
        for i in 0..len {
            let local = if self.reverse { i } else { len - 1 - i };
            let t = r.start + local;
            let dy = d_y.index_axis(Axis(0), t);
            let mut dhp = bufs.dhp.index_axis_mut(Axis(0), local);
            let mut norm = T::zero();
            for b in 0..batch {
                let mut row = dhp.row_mut(b);
                if self.masked(t, b) {
                    row.fill(T::zero());
                    norm += grad.h.row(b).iter().fold(T::zero(), |s, &v| s + v * v);
                    continue;
                }
                let dy_b = dy.slice(s![b, y0..y0 + p]);
                for ((d, &carried), &direct) in row.iter_mut().zip(grad.h.row(b)).zip(dy_b) {
                    *d = carried + direct;
                    norm += *d * *d;
                }
            }
            dh_norm[t] = norm.sqrt();
            gemm(
                T::one(),
                &dhp.view(),
                &w_hr,
                T::zero(),
                &mut bufs.draw.view_mut(),
                all,
            );
            let mut dxp = bufs.dxp.index_axis_mut(Axis(0), local);
            let gates = st.gates.index_axis(Axis(0), local);
            let c_prev = st.c_prev.index_axis(Axis(0), local);
            for b in 0..batch {
                let mut dxp_b = dxp.row_mut(b);
                let dxp_b = dxp_b.as_slice_mut().expect("contiguous row");
                if self.masked(t, b) {
                    dxp_b.fill(T::zero());
                    continue;
                }
                let g = gates.row(b);
                let g = g.as_slice().expect("contiguous row");
                dh_direct.fill(T::zero());
                let mut dc_b = dc.row_mut(b);
                let draw_b = bufs.draw.row(b);
                step_backward(
                    CellKind::Lstm,
                    StepRowGrad {
                        gates: [&g[..n], &g[n..2 * n], &g[2 * n..3 * n], &g[3 * n..]],
                        h_prev: &[],
                        c_prev: c_prev.row(b).to_slice().expect("contiguous row"),
                        gh_n: &[],
                        dy: draw_b.to_slice().expect("contiguous row"),
                        dh: &mut dh_direct,
                        dc: dc_b.as_slice_mut().expect("contiguous row"),
                        dxp: split4(dxp_b, n),
                        drec: [&mut [], &mut [], &mut []],
                        sumsq: &mut sumsq,
                    },
                );
            }
            gemm(
                T::one(),
                &dxp.view(),
                &self.w.w_hh,
                T::zero(),
                &mut bufs.dh_new.view_mut(),
                all,
            );
            for b in 0..batch {
                if !self.masked(t, b) {
                    grad.h.row_mut(b).assign(&bufs.dh_new.row(b));
                }
            }
        }

        let dxp2 = flat(bufs.dxp.slice(s![..len, .., ..]));
        let g = &mut bufs.grads;
        let x2 = flat(input);
        gemm(
            T::one(),
            &dxp2.t(),
            &x2,
            T::one(),
            &mut g.w_ih.view_mut(),
            all,
        );
        let h2 = flat(st.h_prev);
        gemm(
            T::one(),
            &dxp2.t(),
            &h2,
            T::one(),
            &mut g.w_hh.view_mut(),
            all,
        );
        if let Some(w_hr) = g.w_hr.as_mut() {
            let dhp2 = flat(bufs.dhp.slice(s![..len, .., ..]));
            let raw2 = flat(st.raw);
            gemm(
                T::one(),
                &dhp2.t(),
                &raw2,
                T::one(),
                &mut w_hr.view_mut(),
                all,
            );
        }
        if let (Some(bi), Some(bh)) = (g.b_ih.as_mut(), g.b_hh.as_mut()) {
            let sums: Array1<T> = dxp2.sum_axis(Axis(0));
            *bi += &sums;
            *bh += &sums;
        }
        let mut dx2 = bufs
            .d_x
            .slice_mut(s![r, .., ..])
            .into_shape_with_order((len * batch, input.shape()[2]))
            .expect("contiguous [T, B, I] buffer");
        gemm(T::one(), &dxp2, &self.w.w_ih, T::zero(), &mut dx2, all);
    }
}

/// Read-only per-step arrays of one chunk.
struct StepsRef<'a, T> {
    gates: ArrayView3<'a, T>,
    c_prev: ArrayView3<'a, T>,
    h_prev: ArrayView3<'a, T>,
    raw: ArrayView3<'a, T>,
}

/// The gradients one projected direction accumulates, and its per-chunk buffers.
struct ProjGrads<T> {
    /// `[S, B, 4H]` pre-activation gradients.
    dxp: Array3<T>,
    /// `[S, B, P]` total `∂L/∂h'` per step (zero at padded steps).
    dhp: Array3<T>,
    /// `∂L/∂r` `[B, H]` and the carried `∂L/∂h` `[B, P]` of one step.
    draw: Array2<T>,
    dh_new: Array2<T>,
    grads: LayerGrads<T>,
    d_x: Array3<T>,
}
