//! The three recurrent cells: one time step for one batch row, forward and backward.
//!
//! Notation per row: `H` hidden units, `G` gates (`G·H` pre-activations), `xp` the input
//! projection `x·W_ihᵀ + b_ih` (`[G·H]`), `rec` the recurrent projection `h·W_hhᵀ`
//! (`[G·H]`, without `b_hh`, which is added here). Equations are PyTorch's:
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

/// Inputs and outputs of one forward step of one batch row.
pub(crate) struct StepRow<'a, T> {
    /// In: `x·W_ihᵀ + b_ih` `[G·H]`. Out: the activated gates.
    pub gates: &'a mut [T],
    /// `h·W_hhᵀ` `[G·H]`.
    pub rec: &'a [T],
    /// `b_hh` `[G·H]`, if the model has biases.
    pub b_hh: Option<&'a [T]>,
    /// In: `h`; out: `h'` `[H]`.
    pub h: &'a mut [T],
    /// In: `c`; out: `c'` `[H]` (LSTM; empty otherwise).
    pub c: &'a mut [T],
    /// Out: `rec_n + b_hn` `[H]` (GRU with a tape; empty otherwise).
    pub gh_n: &'a mut [T],
}

#[inline]
fn bias<T: Float>(b: Option<&[T]>, k: usize) -> T {
    match b {
        Some(b) => b[k],
        None => T::zero(),
    }
}

/// One forward step of one row, in place (see the module docs for the equations).
#[inline]
pub(crate) fn step_forward<T: Float>(kind: CellKind, hidden: usize, row: StepRow<'_, T>) {
    let StepRow {
        gates,
        rec,
        b_hh,
        h,
        c,
        gh_n,
    } = row;
    let n = hidden;
    match kind {
        CellKind::RnnTanh | CellKind::RnnRelu => {
            for j in 0..n {
                let pre = gates[j] + rec[j] + bias(b_hh, j);
                let a = if kind == CellKind::RnnTanh {
                    pre.tanh()
                } else {
                    pre.relu()
                };
                gates[j] = a;
                h[j] = a;
            }
        }
        CellKind::Lstm => {
            for j in 0..n {
                let i = (gates[j] + rec[j] + bias(b_hh, j)).sigmoid();
                let f = (gates[n + j] + rec[n + j] + bias(b_hh, n + j)).sigmoid();
                let g = (gates[2 * n + j] + rec[2 * n + j] + bias(b_hh, 2 * n + j)).tanh();
                let o = (gates[3 * n + j] + rec[3 * n + j] + bias(b_hh, 3 * n + j)).sigmoid();
                gates[j] = i;
                gates[n + j] = f;
                gates[2 * n + j] = g;
                gates[3 * n + j] = o;
                let c_new = lstm_cell(f, c[j], i, g);
                c[j] = c_new;
                h[j] = o * c_new.tanh();
            }
        }
        CellKind::Gru => {
            for j in 0..n {
                let r = (gates[j] + rec[j] + bias(b_hh, j)).sigmoid();
                let z = (gates[n + j] + rec[n + j] + bias(b_hh, n + j)).sigmoid();
                let hn = rec[2 * n + j] + bias(b_hh, 2 * n + j);
                let nn = (gates[2 * n + j] + r * hn).tanh();
                gates[j] = r;
                gates[n + j] = z;
                gates[2 * n + j] = nn;
                if !gh_n.is_empty() {
                    gh_n[j] = hn;
                }
                h[j] = (T::one() - z) * nn + z * h[j];
            }
        }
    }
}

/// `c' = f·c + i·g`, written once so forward and the backward recomputation agree bitwise.
#[inline]
pub(crate) fn lstm_cell<T: Float>(f: T, c: T, i: T, g: T) -> T {
    f * c + i * g
}

/// Inputs and outputs of one backward step of one batch row.
pub(crate) struct StepRowGrad<'a, T> {
    /// The activated gates kept by forward `[G·H]`.
    pub gates: &'a [T],
    /// `h` entering the step `[H]` (GRU uses it).
    pub h_prev: &'a [T],
    /// `c` entering the step `[H]` (LSTM; empty otherwise).
    pub c_prev: &'a [T],
    /// `rec_n + b_hn` `[H]` (GRU; empty otherwise).
    pub gh_n: &'a [T],
    /// Gradient from above for `h'` (the layer output) `[H]`.
    pub dy: &'a [T],
    /// In: the gradient carried to `h'` from the next step. Out: the direct part of
    /// `∂L/∂h` (GRU `z·dh`, zero otherwise); the caller adds `drec·W_hh`.
    pub dh: &'a mut [T],
    /// In: `∂L/∂c'`; out: `∂L/∂c` (LSTM; empty otherwise).
    pub dc: &'a mut [T],
    /// Out: pre-activation gradient of the input side `[G·H]`.
    pub dxp: &'a mut [T],
    /// Out: pre-activation gradient of the recurrent side `[G·H]` (GRU only; empty
    /// otherwise, where it equals `dxp`).
    pub drec: &'a mut [T],
}

/// One backward step of one row. Returns the squared L2 norm of the total `∂L/∂h'`.
#[inline]
pub(crate) fn step_backward<T: Float>(kind: CellKind, hidden: usize, row: StepRowGrad<'_, T>) -> T {
    let StepRowGrad {
        gates,
        h_prev,
        c_prev,
        gh_n,
        dy,
        dh,
        dc,
        dxp,
        drec,
    } = row;
    let n = hidden;
    let one = T::one();
    let mut sumsq = T::zero();
    match kind {
        CellKind::RnnTanh | CellKind::RnnRelu => {
            for j in 0..n {
                let d = dy[j] + dh[j];
                sumsq += d * d;
                let a = gates[j];
                let da = if kind == CellKind::RnnTanh {
                    one - a * a
                } else if a > T::zero() {
                    one
                } else {
                    T::zero()
                };
                dxp[j] = d * da;
                dh[j] = T::zero();
            }
        }
        CellKind::Lstm => {
            for j in 0..n {
                let d = dy[j] + dh[j];
                sumsq += d * d;
                let (i, f, g, o) = (gates[j], gates[n + j], gates[2 * n + j], gates[3 * n + j]);
                let tc = lstm_cell(f, c_prev[j], i, g).tanh();
                let dct = dc[j] + d * o * (one - tc * tc);
                dxp[j] = dct * g * i * (one - i);
                dxp[n + j] = dct * c_prev[j] * f * (one - f);
                dxp[2 * n + j] = dct * i * (one - g * g);
                dxp[3 * n + j] = d * tc * o * (one - o);
                dc[j] = dct * f;
                dh[j] = T::zero();
            }
        }
        CellKind::Gru => {
            for j in 0..n {
                let d = dy[j] + dh[j];
                sumsq += d * d;
                let (r, z, nn) = (gates[j], gates[n + j], gates[2 * n + j]);
                let dn_pre = d * (one - z) * (one - nn * nn);
                let dz_pre = d * (h_prev[j] - nn) * z * (one - z);
                let dr_pre = dn_pre * gh_n[j] * r * (one - r);
                dxp[j] = dr_pre;
                dxp[n + j] = dz_pre;
                dxp[2 * n + j] = dn_pre;
                drec[j] = dr_pre;
                drec[n + j] = dz_pre;
                drec[2 * n + j] = dn_pre * r;
                dh[j] = d * z;
            }
        }
    }
    sumsq
}
