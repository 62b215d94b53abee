//! The three recurrent cells: one time step for one batch row, forward and backward.
//!
//! Notation per row: `H` hidden units, `G` gates (`G·H` pre-activations), `xp` the input
//! projection `x·W_ihᵀ + b_ih` (`[G·H]`), `rec` the recurrent projection `h·W_hhᵀ`
//! (`[G·H]`). The driver sums everything but the GRU's `n`-gate recurrent term before the
//! step (see [`StepRow`]). Equations are PyTorch's:
//!
//! * RNN (G = 1): `h' = act(xp + rec + b_hh)`, `act = tanh | relu`.
//! * LSTM (G = 4, order i, f, g, o): `i, f, o = σ(·)`, `g = tanh(·)`,
//!   `c' = f·c + i·g`, `h' = o·tanh(c')`.
//! * GRU (G = 3, order r, z, n): `r = σ(xp_r + rec_r + b_hr)`, `z = σ(xp_z + rec_z + b_hz)`,
//!   `n = tanh(xp_n + r·(rec_n + b_hn))`, `h' = (1 − z)·n + z·h`.
//!
//! Forward overwrites `xp` with the activated gates (`[G·H]`: the tape keeps them);
//! the GRU also returns `rec_n + b_hn` (`[H]`), needed for `∂r`. Backward turns the
//! gradient `dh` arriving at `h'` (and `dc` at `c'`) into the pre-activation gradients of
//! the input side `dxp` and the recurrent side `drec` (different only for the GRU's n
//! gate, which the reset gate scales), the direct part of `dh` for `h` (the GRU's `z·dh`;
//! zero otherwise) and `dc` for `c`.

use crate::error::{Error, Result};
use crate::float::Float;
use crate::recurrent::UNIT_ALIGN;
use crate::simd::dispatch;

/// Which recurrent cell a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellKind {
    /// Elman RNN with `tanh`.
    RnnTanh,
    /// Elman RNN with `relu`.
    RnnRelu,
    /// Long short-term memory.
    Lstm,
    /// Gated recurrent unit.
    Gru,
}

impl CellKind {
    /// Number of gate blocks `G` of size `H` in `W_ih` / `W_hh`.
    pub fn gates(self) -> usize {
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// Whether the cell carries a memory cell `c` besides `h`.
    pub fn has_cell_state(self) -> bool {
        self == CellKind::Lstm
    }

    /// The name used by [`CellKind::parse`].
    pub fn name(self) -> &'static str {
        match self {
            CellKind::RnnTanh => "rnn_tanh",
            CellKind::RnnRelu => "rnn_relu",
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
        }
    }

    /// Parses `"rnn_tanh" | "rnn_relu" | "lstm" | "gru"`.
    ///
    /// # Errors
    /// [`Error::Value`] for any other name.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "rnn_tanh" => Ok(CellKind::RnnTanh),
            "rnn_relu" => Ok(CellKind::RnnRelu),
            "lstm" => Ok(CellKind::Lstm),
            "gru" => Ok(CellKind::Gru),
            other => Err(Error::value(
                "kind",
                format!("expected one of 'rnn_tanh', 'rnn_relu', 'lstm', 'gru', got {other:?}"),
            )),
        }
    }
}

/// Inputs and outputs of one forward step of one batch row, for a range of its hidden
/// units (all of them, or one member's tile of the step team).
pub(crate) struct StepRow<'a, T> {
    /// In: the pre-activations of these units in each gate block (the first `G` used):
    /// `x·W_ihᵀ + b_ih + b_hh` plus, for the RNN and LSTM, `h·W_hhᵀ`; for the GRU only the
    /// `r, z` blocks hold `b_hh` and nothing of `h`. Out: the activated gates.
    pub gates: [&'a mut [T]; 4],
    /// GRU: `h·W_hhᵀ` of these units in the `r, z, n` blocks, without bias; empty otherwise.
    pub rec: [&'a [T]; 3],
    /// GRU: `b_hn` of these units (zeros without biases); empty otherwise.
    pub b_hn: &'a [T],
    /// In: `h`; out: `h'`.
    pub h: &'a mut [T],
    /// In: `c`; out: `c'` (LSTM; empty otherwise).
    pub c: &'a mut [T],
    /// Out: `rec_n + b_hn` (GRU when kept; empty otherwise).
    pub gh_n: &'a mut [T],
}

/// One forward step of one row's units, in place (see the module docs for the equations).
/// Each cell's loop is its own function (`dispatch!`), compiled per instruction set.
#[inline(always)]
pub(crate) fn step_forward<T: Float>(kind: CellKind, row: StepRow<'_, T>) {
    let StepRow {
        gates: [gi, gf, gg, go],
        rec: [rr, rz, rn],
        b_hn,
        h,
        c,
        gh_n,
    } = row;
    let n = h.len();
    match kind {
        CellKind::RnnTanh => rnn_forward(&mut gi[..n], h, true),
        CellKind::RnnRelu => rnn_forward(&mut gi[..n], h, false),
        CellKind::Lstm => T::lstm_forward(gi, gf, gg, go, &mut c[..n], h),
        CellKind::Gru => {
            gru_forward(gi, gf, gg, rr, rz, rn, &b_hn[..n], h);
            if !gh_n.is_empty() {
                // Kept for backward: the recurrent n-term the reset gate scaled.
                for ((g, &r), &b) in gh_n[..n].iter_mut().zip(rn).zip(&b_hn[..n]) {
                    *g = r + b;
                }
            }
        }
    }
}

dispatch!(fn rnn_forward<T: Float>(g: &mut [T], h: &mut [T], tanh: bool) = rnn_forward_kernel);

#[inline(always)]
fn rnn_forward_kernel<T: Float>(g: &mut [T], h: &mut [T], tanh: bool) {
    for (g, h) in g.iter_mut().zip(h.iter_mut()) {
        let a = if tanh { g.act_tanh() } else { g.relu() };
        *g = a;
        *h = a;
    }
}

dispatch!(pub(crate) fn lstm_forward<T: Float>(
    gi: &mut [T],
    gf: &mut [T],
    gg: &mut [T],
    go: &mut [T],
    c: &mut [T],
    h: &mut [T],
) = lstm_forward_kernel);

#[inline(always)]
fn lstm_forward_kernel<T: Float>(
    gi: &mut [T],
    gf: &mut [T],
    gg: &mut [T],
    go: &mut [T],
    c: &mut [T],
    h: &mut [T],
) {
    let gates = gi
        .iter_mut()
        .zip(gf.iter_mut())
        .zip(gg.iter_mut())
        .zip(go.iter_mut());
    for ((((pi, pf), pg), po), (c, h)) in gates.zip(c.iter_mut().zip(h.iter_mut())) {
        let i = pi.sigmoid();
        let f = pf.sigmoid();
        let g = pg.act_tanh();
        let o = po.sigmoid();
        (*pi, *pf, *pg, *po) = (i, f, g, o);
        let c_new = lstm_cell(f, *c, i, g);
        *c = c_new;
        *h = lstm_h(o, c_new);
    }
}

dispatch!(fn gru_forward<T: Float>(
    gr: &mut [T],
    gz: &mut [T],
    gn: &mut [T],
    rr: &[T],
    rz: &[T],
    rn: &[T],
    b_hn: &[T],
    h: &mut [T],
) = gru_forward_kernel);

#[inline(always)]
#[allow(clippy::too_many_arguments)] // one slice per gate: the compiler may assume they do not alias
fn gru_forward_kernel<T: Float>(
    gr: &mut [T],
    gz: &mut [T],
    gn: &mut [T],
    rr: &[T],
    rz: &[T],
    rn: &[T],
    b_hn: &[T],
    h: &mut [T],
) {
    let n = h.len();
    let (gr, gz, gn, rr, rz, rn, b_hn) = (
        &mut gr[..n],
        &mut gz[..n],
        &mut gn[..n],
        &rr[..n],
        &rz[..n],
        &rn[..n],
        &b_hn[..n],
    );
    for j in 0..n {
        let r = (gr[j] + rr[j]).sigmoid();
        let z = (gz[j] + rz[j]).sigmoid();
        let nn = (gn[j] + r * (rn[j] + b_hn[j])).act_tanh();
        gr[j] = r;
        gz[j] = z;
        gn[j] = nn;
        h[j] = (T::one() - z) * nn + z * h[j];
    }
}

/// Flushes gradients too small to matter to zero: magnitudes below `MIN_POSITIVE / EPSILON`
/// (about 1e-31 in f32, 1e-292 in f64). Backward applies it to every gradient it writes:
/// vanishing gradients otherwise decay into subnormal numbers, and every product with
/// them too, which the CPU processes 10–100× slower, exactly in the long-sequence runs
/// that show vanishing. The margin of `1 / EPSILON` above the subnormal range keeps the
/// products with weights of ordinary size normal as well. NaN passes through.
#[inline(always)]
pub(crate) fn ftz<T: Float>(v: T) -> T {
    if v.abs() < T::min_positive_value() / T::epsilon() {
        T::zero()
    } else {
        v
    }
}

/// `h' = o·tanh(c')`, written once so forward and the rebuilt `h_prev` agree bitwise.
#[inline(always)]
fn lstm_h<T: Float>(o: T, c: T) -> T {
    o * c.act_tanh()
}

dispatch!(pub(crate) fn lstm_output<T: Float>(o: &[T], c: &[T], h: &mut [T]) = lstm_output_kernel);

/// `h = o·tanh(c)` over a row: rebuilds the LSTM state a tape left out.
#[inline(always)]
fn lstm_output_kernel<T: Float>(o: &[T], c: &[T], h: &mut [T]) {
    for ((h, &o), &c) in h.iter_mut().zip(o).zip(c) {
        *h = lstm_h(o, c);
    }
}

/// `c' = f·c + i·g`, written once so forward and the backward recomputation agree bitwise.
#[inline(always)]
pub(crate) fn lstm_cell<T: Float>(f: T, c: T, i: T, g: T) -> T {
    f * c + i * g
}

/// Inputs and outputs of one backward step of one batch row, for a range of its hidden
/// units starting at a multiple of [`UNIT_ALIGN`].
pub(crate) struct StepRowGrad<'a, T> {
    /// The activated gates kept by forward, these units of each block (first `G` used).
    pub gates: [&'a [T]; 4],
    /// `h` entering the step (GRU uses it).
    pub h_prev: &'a [T],
    /// `c` entering the step (LSTM; empty otherwise).
    pub c_prev: &'a [T],
    /// `rec_n + b_hn` (GRU; empty otherwise).
    pub gh_n: &'a [T],
    /// Gradient from above for `h'` (the layer output).
    pub dy: &'a [T],
    /// In: the gradient carried to `h'` from the next step. Out: the direct part of
    /// `∂L/∂h` (GRU `z·dh`, zero otherwise); the caller adds `drec·W_hh`.
    pub dh: &'a mut [T],
    /// In: `∂L/∂c'`; out: `∂L/∂c` (LSTM; empty otherwise).
    pub dc: &'a mut [T],
    /// Out: pre-activation gradient of the input side, these units of each block.
    pub dxp: [&'a mut [T]; 4],
    /// Out: pre-activation gradient of the recurrent side (GRU only; empty otherwise,
    /// where it equals `dxp`).
    pub drec: [&'a mut [T]; 3],
    /// Out: `Σ (∂L/∂h')²` over each block of [`UNIT_ALIGN`] units.
    pub sumsq: &'a mut [T],
}

/// One backward step of one row's units.
#[inline(always)]
pub(crate) fn step_backward<T: Float>(kind: CellKind, row: StepRowGrad<'_, T>) {
    let StepRowGrad {
        gates: [gi, gf, gg, go],
        h_prev,
        c_prev,
        gh_n,
        dy,
        dh,
        dc,
        dxp: [di, df, dg, d_o],
        drec: [rr, rz, rn],
        sumsq,
    } = row;
    let n = dh.len();
    for ((s, dh), dy) in sumsq
        .iter_mut()
        .zip(dh.chunks_mut(UNIT_ALIGN))
        .zip(dy[..n].chunks(UNIT_ALIGN))
    {
        *s = add_sumsq(dy, dh);
    }
    match kind {
        CellKind::RnnTanh | CellKind::RnnRelu => {
            rnn_backward(&gi[..n], dh, &mut di[..n], kind == CellKind::RnnTanh)
        }
        CellKind::Lstm => T::lstm_backward(
            gi,
            gf,
            gg,
            go,
            &c_prev[..n],
            dh,
            &mut dc[..n],
            di,
            df,
            dg,
            d_o,
        ),
        CellKind::Gru => gru_backward(
            gi,
            gf,
            gg,
            &h_prev[..n],
            &gh_n[..n],
            dh,
            di,
            df,
            dg,
            rr,
            rz,
            rn,
        ),
    }
}

/// Lanes of the norm accumulator: a fixed split, so the sum (and `dh_norm`) is the same
/// bits at every instruction-set level.
const LANES: usize = 16;

dispatch!(fn add_sumsq<T: Float>(dy: &[T], dh: &mut [T]) -> T = add_sumsq_kernel);

/// `dh ← dy + dh` (subnormals flushed); returns `Σ dh²`.
#[inline(always)]
fn add_sumsq_kernel<T: Float>(dy: &[T], dh: &mut [T]) -> T {
    let mut acc = [T::zero(); LANES];
    let mut dh_chunks = dh.chunks_exact_mut(LANES);
    let mut dy_chunks = dy.chunks_exact(LANES);
    for (h, y) in (&mut dh_chunks).zip(&mut dy_chunks) {
        for k in 0..LANES {
            h[k] = ftz(h[k] + y[k]);
            acc[k] += h[k] * h[k];
        }
    }
    let mut tail = T::zero();
    for (h, &y) in dh_chunks
        .into_remainder()
        .iter_mut()
        .zip(dy_chunks.remainder())
    {
        *h = ftz(*h + y);
        tail += *h * *h;
    }
    acc.iter().fold(T::zero(), |s, &a| s + a) + tail
}

dispatch!(fn rnn_backward<T: Float>(
    a: &[T],
    dh: &mut [T],
    dxp: &mut [T],
    tanh: bool,
) = rnn_backward_kernel);

#[inline(always)]
fn rnn_backward_kernel<T: Float>(a: &[T], dh: &mut [T], dxp: &mut [T], tanh: bool) {
    let (one, n) = (T::one(), dh.len());
    let (a, dxp) = (&a[..n], &mut dxp[..n]);
    for j in 0..n {
        let d = dh[j];
        let da = if tanh {
            one - a[j] * a[j]
        } else if a[j] > T::zero() {
            one
        } else {
            T::zero()
        };
        dxp[j] = ftz(d * da);
        dh[j] = T::zero();
    }
}

dispatch!(pub(crate) fn lstm_backward<T: Float>(
    gi: &[T],
    gf: &[T],
    gg: &[T],
    go: &[T],
    c_prev: &[T],
    dh: &mut [T],
    dc: &mut [T],
    di: &mut [T],
    df: &mut [T],
    dg: &mut [T],
    d_o: &mut [T],
) = lstm_backward_kernel);

#[inline(always)]
#[allow(clippy::too_many_arguments)] // one slice per gate: the compiler may assume they do not alias
fn lstm_backward_kernel<T: Float>(
    gi: &[T],
    gf: &[T],
    gg: &[T],
    go: &[T],
    c_prev: &[T],
    dh: &mut [T],
    dc: &mut [T],
    di: &mut [T],
    df: &mut [T],
    dg: &mut [T],
    d_o: &mut [T],
) {
    let (one, n) = (T::one(), dh.len());
    let (gi, gf, gg, go) = (&gi[..n], &gf[..n], &gg[..n], &go[..n]);
    let (c_prev, dc) = (&c_prev[..n], &mut dc[..n]);
    let (di, df, dg, d_o) = (&mut di[..n], &mut df[..n], &mut dg[..n], &mut d_o[..n]);
    for j in 0..n {
        let d = dh[j];
        let (i, f, g, o) = (gi[j], gf[j], gg[j], go[j]);
        let tc = lstm_cell(f, c_prev[j], i, g).act_tanh();
        let dct = dc[j] + d * o * (one - tc * tc);
        di[j] = ftz(dct * g * i * (one - i));
        df[j] = ftz(dct * c_prev[j] * f * (one - f));
        dg[j] = ftz(dct * i * (one - g * g));
        d_o[j] = ftz(d * tc * o * (one - o));
        dc[j] = ftz(dct * f);
        dh[j] = T::zero();
    }
}

dispatch!(fn gru_backward<T: Float>(
    gr: &[T],
    gz: &[T],
    gn: &[T],
    h_prev: &[T],
    gh_n: &[T],
    dh: &mut [T],
    dr: &mut [T],
    dz: &mut [T],
    dn: &mut [T],
    rr: &mut [T],
    rz: &mut [T],
    rn: &mut [T],
) = gru_backward_kernel);

#[inline(always)]
#[allow(clippy::too_many_arguments)] // one slice per gate: the compiler may assume they do not alias
fn gru_backward_kernel<T: Float>(
    gr: &[T],
    gz: &[T],
    gn: &[T],
    h_prev: &[T],
    gh_n: &[T],
    dh: &mut [T],
    dr: &mut [T],
    dz: &mut [T],
    dn: &mut [T],
    rr: &mut [T],
    rz: &mut [T],
    rn: &mut [T],
) {
    let (one, n) = (T::one(), dh.len());
    let (gr, gz, gn) = (&gr[..n], &gz[..n], &gn[..n]);
    let (h_prev, gh_n) = (&h_prev[..n], &gh_n[..n]);
    let (dr, dz, dn) = (&mut dr[..n], &mut dz[..n], &mut dn[..n]);
    let (rr, rz, rn) = (&mut rr[..n], &mut rz[..n], &mut rn[..n]);
    for j in 0..n {
        let d = dh[j];
        let (r, z, nn) = (gr[j], gz[j], gn[j]);
        let dn_pre = d * (one - z) * (one - nn * nn);
        let dz_pre = d * (h_prev[j] - nn) * z * (one - z);
        let dr_pre = dn_pre * gh_n[j] * r * (one - r);
        let (dr_pre, dz_pre, dn_pre) = (ftz(dr_pre), ftz(dz_pre), ftz(dn_pre));
        dr[j] = dr_pre;
        dz[j] = dz_pre;
        dn[j] = dn_pre;
        rr[j] = dr_pre;
        rz[j] = dz_pre;
        rn[j] = ftz(dn_pre * r);
        dh[j] = ftz(d * z);
    }
}
