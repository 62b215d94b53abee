//! The one error type of the core.
//!
//! Every variant names the argument at fault and says what was expected and what was
//! given, so the bindings can pass the message through unchanged. The bindings map
//! [`Error::Shape`] and [`Error::Value`] to `ValueError`, [`Error::Memory`] to
//! `MemoryError` and [`Error::Interrupted`] to the pending signal's exception.

use thiserror::Error;

/// Errors returned by the core. The core never panics on bad input; it returns one of these.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// An array has the wrong rank or shape.
    #[error("{arg}: expected shape {expected}, got {got}")]
    Shape {
        arg: String,
        expected: String,
        got: String,
    },
    /// A configuration or argument value is out of its domain.
    #[error("{arg}: {message}")]
    Value { arg: String, message: String },
    /// A buffer the machine could not give (`bytes` beyond `usize` when its size
    /// overflows).
    #[error("cannot allocate {bytes} bytes for {what}")]
    Memory { what: String, bytes: u128 },
    /// The caller asked the call to stop (see `Control`); nothing was returned.
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub(crate) fn shape(
        arg: impl Into<String>,
        expected: impl Into<String>,
        got: &[usize],
    ) -> Self {
        Error::Shape {
            arg: arg.into(),
            expected: expected.into(),
            got: fmt_shape(got),
        }
    }

    pub(crate) fn value(arg: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Value {
            arg: arg.into(),
            message: message.into(),
        }
    }
}

/// Formats a shape the way NumPy prints it: `(3,)`, `(2, 4)`.
pub(crate) fn fmt_shape(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    }
}

/// Shorthand for results of the core.
pub type Result<T> = std::result::Result<T, Error>;
