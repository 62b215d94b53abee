//! Configuration, parameters, states and gradients of a stack of recurrent layers.
//!
//! Parameters follow PyTorch: for layer `l` and direction `d` (`d = 1` is the reverse
//! direction, suffix `_reverse`), `W_ih: [G·H, I_l]`, `W_hh: [G·H, H]`, `b_ih, b_hh: [G·H]`,
//! with `I_0 = input_size` and `I_l = D·H` above, `D = 2` when bidirectional. An LSTM
//! with projections (`proj_size = P`) adds `W_hr: [P, H]`; then `W_hh: [G·H, P]`,
//! `I_l = D·P` above and `h` is `P` wide.
//! States are `[L·D, B, H]` (`h`: `[L·D, B, P]` with projections), indexed `l·D + d`.

use crate::cell::CellKind;
use crate::error::{fmt_shape, Error, Result};
use crate::float::Float;
use ndarray::{Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayView3};

/// The fixed shape of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Config {
    pub kind: CellKind,
    pub input_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub bidirectional: bool,
    pub bias: bool,
    /// `x`, `out`, `d_out` and `dx` are `[B, T, ·]` instead of `[T, B, ·]`.
    pub batch_first: bool,
    /// LSTM with projections (PyTorch's `proj_size`): `0` for none, else `P` in
    /// `(0, hidden_size)`; `h = W_hr·(o ⊙ tanh(c))` is `P` wide, `c` stays `H` wide.
    pub proj_size: usize,
}

impl Config {
    /// Checks the sizes.
    ///
    /// # Errors
    /// [`Error::Value`] when a size is zero.
    pub fn validate(&self) -> Result<()> {
        for (arg, v) in [
            ("input_size", self.input_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
        ] {
            if v == 0 {
                return Err(Error::value(arg, "expected a positive integer, got 0"));
            }
        }
        if self.proj_size > 0 {
            if self.kind != CellKind::Lstm {
                return Err(Error::value(
                    "proj_size",
                    format!(
                        "only the LSTM has projections, got proj_size={} for {}",
                        self.proj_size,
                        self.kind.name()
                    ),
                ));
            }
            if self.proj_size >= self.hidden_size {
                return Err(Error::value(
                    "proj_size",
                    format!(
                        "expected 0 (no projection) or 0 < proj_size < hidden_size = {}, got {}",
                        self.hidden_size, self.proj_size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Number of directions `D`.
    pub fn num_directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// Rows of `W_ih` and `W_hh`: `G·H`.
    pub fn gate_size(&self) -> usize {
        self.kind.gates() * self.hidden_size
    }

    /// Width of `h` (each direction's output): `P` with projections, else `H`.
    pub fn real_hidden_size(&self) -> usize {
        if self.proj_size > 0 {
            self.proj_size
        } else {
            self.hidden_size
        }
    }

    /// Input width of layer `l`.
    pub fn layer_input_size(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.output_size()
        }
    }

    /// Width of the output: `D·H` (`D·P` with projections).
    pub fn output_size(&self) -> usize {
        self.num_directions() * self.real_hidden_size()
    }

    /// Number of layer-directions `L·D`.
    pub fn num_stacks(&self) -> usize {
        self.num_layers * self.num_directions()
    }

    /// PyTorch's name suffix of layer-direction `k = l·D + d`: `l0`, `l0_reverse`, ...
    pub fn suffix(&self, k: usize) -> String {
        let d = self.num_directions();
        let rev = if k % d == 1 { "_reverse" } else { "" };
        format!("l{}{}", k / d, rev)
    }

    /// Parameter arrays per layer-direction: `W_ih, W_hh`, with bias `b_ih, b_hh`, and
    /// with projections `W_hr`.
    pub fn params_per_stack(&self) -> usize {
        let base = if self.bias { 4 } else { 2 };
        base + usize::from(self.proj_size > 0)
    }

    /// PyTorch's name and shape of every parameter, in `state_dict()` order, which is also
    /// the order of the bindings' flat weight list: for each layer-direction `k = l·D + d`,
    /// `weight_ih_{sfx}: [G·H, I_l]`, `weight_hh_{sfx}: [G·H, H]` and, with bias,
    /// `bias_ih_{sfx}`, `bias_hh_{sfx}: [G·H]` and, with projections, `weight_hr_{sfx}:
    /// [P, H]` (then `weight_hh` is `[G·H, P]`), `sfx` = [`Config::suffix`]`(k)`.
    ///
    /// ```
    /// use bptt::{CellKind, Config};
    /// let cfg = Config {
    ///     kind: CellKind::Lstm,
    ///     input_size: 3,
    ///     hidden_size: 2,
    ///     num_layers: 2,
    ///     bidirectional: true,
    ///     bias: false,
    ///     batch_first: false,
    ///     proj_size: 0,
    /// };
    /// let layout = cfg.param_layout();
    /// assert_eq!(layout.len(), cfg.num_stacks() * cfg.params_per_stack());
    /// assert_eq!(layout[0], ("weight_ih_l0".to_string(), vec![8, 3]));
    /// assert_eq!(layout[3], ("weight_hh_l0_reverse".to_string(), vec![8, 2]));
    /// assert_eq!(layout[6], ("weight_ih_l1_reverse".to_string(), vec![8, 4]));
    /// ```
    pub fn param_layout(&self) -> Vec<(String, Vec<usize>)> {
        let gh = self.gate_size();
        let mut out = Vec::with_capacity(self.num_stacks() * self.params_per_stack());
        for k in 0..self.num_stacks() {
            let sfx = self.suffix(k);
            let li = self.layer_input_size(k / self.num_directions());
            out.push((format!("weight_ih_{sfx}"), vec![gh, li]));
            out.push((
                format!("weight_hh_{sfx}"),
                vec![gh, self.real_hidden_size()],
            ));
            if self.bias {
                out.push((format!("bias_ih_{sfx}"), vec![gh]));
                out.push((format!("bias_hh_{sfx}"), vec![gh]));
            }
            if self.proj_size > 0 {
                out.push((
                    format!("weight_hr_{sfx}"),
                    vec![self.proj_size, self.hidden_size],
                ));
            }
        }
        out
    }

    /// The number of parameter values and of parameter arrays that
    /// [`Config::param_layout`] lays out, counted without building it and in saturating
    /// 128-bit arithmetic, so that a size no machine can hold is still counted (the
    /// bindings refuse it before anything is allocated).
    ///
    /// ```
    /// use bptt::{CellKind, Config};
    /// let cfg = Config {
    ///     kind: CellKind::Gru,
    ///     input_size: 3,
    ///     hidden_size: 2,
    ///     num_layers: 2,
    ///     bidirectional: true,
    ///     bias: true,
    ///     batch_first: false,
    ///     proj_size: 0,
    /// };
    /// let layout = cfg.param_layout();
    /// let values: usize = layout.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    /// assert_eq!(cfg.param_count(), (values as u128, layout.len() as u128));
    /// ```
    pub fn param_count(&self) -> (u128, u128) {
        let n = |v: usize| v as u128;
        let gh = n(self.kind.gates()).saturating_mul(n(self.hidden_size));
        let (d, l, h, p) = (
            n(self.num_directions()),
            n(self.num_layers),
            n(self.hidden_size),
            n(self.real_hidden_size()),
        );
        let first = gh.saturating_mul(n(self.input_size).saturating_add(p));
        let rest = gh.saturating_mul(d.saturating_mul(p).saturating_add(p));
        let proj = if self.proj_size > 0 {
            p.saturating_mul(h)
        } else {
            0
        };
        let weights = d.saturating_mul(
            first
                .saturating_add((l - 1).saturating_mul(rest))
                .saturating_add(l.saturating_mul(proj)),
        );
        let biases = if self.bias {
            l.saturating_mul(d).saturating_mul(2).saturating_mul(gh)
        } else {
            0
        };
        let arrays = l
            .saturating_mul(d)
            .saturating_mul(n(self.params_per_stack()));
        (weights.saturating_add(biases), arrays)
    }

    /// The expected shape of `h`: `[L·D, B, H]` (`[L·D, B, P]` with projections).
    pub fn state_shape(&self, batch: usize) -> [usize; 3] {
        [self.num_stacks(), batch, self.real_hidden_size()]
    }

    /// The expected shape of the LSTM's `c`: `[L·D, B, H]`.
    pub fn cell_state_shape(&self, batch: usize) -> [usize; 3] {
        [self.num_stacks(), batch, self.hidden_size]
    }

    /// The shape of a sequence tensor of width `width` in the user's layout, symbolic in
    /// `T` and `B` (for messages).
    pub(crate) fn seq_shape_text(&self, width: usize) -> String {
        if self.batch_first {
            format!("(B, T, {width})")
        } else {
            format!("(T, B, {width})")
        }
    }

    /// `(T, B)` of a sequence tensor in the user's layout.
    pub(crate) fn seq_dims(&self, shape: &[usize]) -> (usize, usize) {
        if self.batch_first {
            (shape[1], shape[0])
        } else {
            (shape[0], shape[1])
        }
    }
}

/// Borrowed parameters of one layer-direction.
#[derive(Debug, Clone)]
pub struct LayerWeights<'a, T> {
    pub w_ih: ArrayView2<'a, T>,
    pub w_hh: ArrayView2<'a, T>,
    pub b_ih: Option<ArrayView1<'a, T>>,
    pub b_hh: Option<ArrayView1<'a, T>>,
    /// The projection `W_hr: [P, H]` (LSTM with `proj_size`).
    pub w_hr: Option<ArrayView2<'a, T>>,
}

/// Checks that `weights` holds `L·D` layer-directions of the shapes `cfg` implies.
///
/// # Errors
/// [`Error::Shape`] / [`Error::Value`] naming the PyTorch key at fault.
pub fn check_weights<T>(cfg: &Config, weights: &[LayerWeights<'_, T>]) -> Result<()> {
    if weights.len() != cfg.num_stacks() {
        return Err(Error::value(
            "weights",
            format!(
                "expected {} layer-directions, got {}",
                cfg.num_stacks(),
                weights.len()
            ),
        ));
    }
    let gh = cfg.gate_size();
    for (k, w) in weights.iter().enumerate() {
        let sfx = cfg.suffix(k);
        let li = cfg.layer_input_size(k / cfg.num_directions());
        let expect2 = |name: &str, a: &ArrayView2<'_, T>, rows: usize, cols: usize| {
            if a.dim() != (rows, cols) {
                Err(Error::shape(
                    format!("{name}_{sfx}"),
                    fmt_shape(&[rows, cols]),
                    a.shape(),
                ))
            } else {
                Ok(())
            }
        };
        expect2("weight_ih", &w.w_ih, gh, li)?;
        expect2("weight_hh", &w.w_hh, gh, cfg.real_hidden_size())?;
        match (&w.w_hr, cfg.proj_size) {
            (Some(a), p) if p > 0 => expect2("weight_hr", a, p, cfg.hidden_size)?,
            (None, 0) => {}
            (None, _) => {
                return Err(Error::value(
                    format!("weight_hr_{sfx}"),
                    "missing (model has proj_size > 0)",
                ))
            }
            (Some(_), _) => {
                return Err(Error::value(
                    format!("weight_hr_{sfx}"),
                    "unexpected (model has proj_size=0)",
                ))
            }
        }
        for (name, b) in [("bias_ih", &w.b_ih), ("bias_hh", &w.b_hh)] {
            match (cfg.bias, b) {
                (true, Some(b)) if b.len() == gh => {}
                (true, Some(b)) => {
                    return Err(Error::shape(
                        format!("{name}_{sfx}"),
                        fmt_shape(&[gh]),
                        b.shape(),
                    ))
                }
                (true, None) => {
                    return Err(Error::value(
                        format!("{name}_{sfx}"),
                        "missing (model has bias=True)",
                    ))
                }
                (false, Some(_)) => {
                    return Err(Error::value(
                        format!("{name}_{sfx}"),
                        "unexpected (model has bias=False)",
                    ))
                }
                (false, None) => {}
            }
        }
    }
    Ok(())
}

/// Borrowed recurrent state: `h: [L·D, B, H]`, and `c` of the same shape for the LSTM.
#[derive(Debug, Clone)]
pub struct StateView<'a, T> {
    pub h: ArrayView3<'a, T>,
    pub c: Option<ArrayView3<'a, T>>,
}

/// Owned recurrent state: `h: [L·D, B, H]`, and `c` of the same shape for the LSTM.
#[derive(Debug, Clone, PartialEq)]
pub struct State<T> {
    pub h: Array3<T>,
    pub c: Option<Array3<T>>,
}

impl<T: Float> State<T> {
    pub(crate) fn zeros(cfg: &Config, batch: usize) -> Result<Self> {
        Ok(State {
            h: crate::buffer::zeros(cfg.state_shape(batch), "state")?,
            c: match cfg.kind.has_cell_state() {
                true => Some(crate::buffer::zeros(cfg.cell_state_shape(batch), "state")?),
                false => None,
            },
        })
    }
}

/// Checks a state against `cfg` and the batch size; `arg` is `"state"` or `"d_state"`.
pub(crate) fn check_state<T>(
    cfg: &Config,
    batch: usize,
    state: &StateView<'_, T>,
    arg: &str,
) -> Result<()> {
    let shape = cfg.state_shape(batch);
    let lstm = cfg.kind.has_cell_state();
    let name = |i: usize| {
        if lstm {
            format!("{arg}[{i}]")
        } else {
            arg.to_string()
        }
    };
    if state.h.shape() != shape {
        return Err(Error::shape(name(0), fmt_shape(&shape), state.h.shape()));
    }
    match (&state.c, lstm) {
        (Some(c), true) if c.shape() != cfg.cell_state_shape(batch) => Err(Error::shape(
            name(1),
            fmt_shape(&cfg.cell_state_shape(batch)),
            c.shape(),
        )),
        (Some(_), true) => Ok(()),
        (None, true) => Err(Error::value(
            arg,
            "expected a tuple (h, c) for an LSTM, got no c",
        )),
        (Some(_), false) => Err(Error::value(
            arg,
            format!(
                "expected a single array h for {}, got (h, c)",
                cfg.kind.name()
            ),
        )),
        (None, false) => Ok(()),
    }
}

/// Gradients of one layer-direction's parameters (same shapes as [`LayerWeights`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerGrads<T> {
    pub w_ih: Array2<T>,
    pub w_hh: Array2<T>,
    pub b_ih: Option<Array1<T>>,
    pub b_hh: Option<Array1<T>>,
    /// `∂L/∂W_hr` (LSTM with `proj_size`).
    pub w_hr: Option<Array2<T>>,
}

/// Everything backward returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Grads<T> {
    /// `∂L/∂x`, in the layout of `x`.
    pub dx: Array3<T>,
    /// `∂L/∂h0` (and `∂L/∂c0`).
    pub dstate: State<T>,
    /// Parameter gradients per layer-direction `l·D + d`.
    pub params: Vec<LayerGrads<T>>,
    /// `[L·D, T]`: the L2 norm over batch and hidden units of the total `∂L/∂h_t` of each
    /// layer-direction at each time index `t`.
    pub dh_norm: Array2<T>,
}

/// Checks `lengths` (one per sequence, each in `[1, T]`).
pub(crate) fn check_lengths(lengths: Option<&[usize]>, seq_len: usize, batch: usize) -> Result<()> {
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
pub(crate) fn check_sequence<T>(
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
