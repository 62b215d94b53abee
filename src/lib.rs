//! bptt: forward pass and full backpropagation through time (BPTT) for vanilla RNNs
//! (tanh, ReLU), LSTMs and GRUs, multi-layer and bidirectional, `f32` and `f64`.
//!
//! The core (everything but `python`) knows nothing of Python: [`sequence::forward`] runs a
//! stack of layers over a sequence and can keep a [`sequence::Tape`] (whole, or
//! checkpointed within a memory budget); [`sequence::backward`] turns the tape and
//! `∂L/∂out` into every gradient. `cell` holds the per-step kernels, `simd` the fast
//! activations and the run-time choice of instruction set, `linalg` the one GEMM entry
//! point, `recurrent` the per-step recurrent product, `team` the step team that runs a
//! time loop on several threads, `parallel` the thread pool and the threading policy, `readout` the linear readout, embedding
//! gradient and losses, `optim` the optimizers' update steps. The optional `python` feature compiles the PyO3
//! bindings (`python/`), the only code that names Python.

pub mod buffer;
pub mod cell;
pub mod error;
pub mod float;
pub(crate) mod linalg;
#[cfg(target_arch = "x86_64")]
pub(crate) mod lstm_avx2;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod readout;
pub(crate) mod readout_kernels;
pub(crate) mod recurrent;
pub mod sequence;
pub mod simd;
pub(crate) mod team;

#[cfg(feature = "python")]
mod python;

pub use buffer::Control;
pub use cell::CellKind;
pub use error::{Error, Result};
pub use float::Float;
pub use model::{Config, Grads, LayerGrads, LayerWeights, State, StateView};
pub use sequence::{
    backward, budget_range, forward, forward_with, Dropout, ForwardOptions, Keep, Tape,
};
