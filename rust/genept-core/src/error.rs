//! The one error type of the kernels. Every message names the argument, cell or gene at fault,
//! so that the Python exception built from it tells the user what to fix.

use thiserror::Error;

/// Everything a kernel can reject. Kernels never panic on user input; they return one of these.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum GeneptError {
    /// Two arguments disagree on a dimension (for example X's genes and the embedding rows).
    #[error("shape mismatch: {0}")]
    Shape(String),

    /// The CSR arrays do not describe a valid matrix.
    #[error("malformed CSR matrix: {0}")]
    MalformedCsr(String),

    /// A NaN or an infinity in an input, with where it was found.
    #[error("{what} contains {kind} at {location}")]
    NonFinite {
        what: &'static str,
        kind: &'static str,
        location: String,
    },

    /// A scalar argument out of its range (`n < 1`, a bad thread count, a bad gene map).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A result that does not fit its type (a float32 overflow in a weighted sum).
    #[error("overflow: {0}")]
    Overflow(String),

    /// The thread pool could not be built.
    #[error("thread pool: {0}")]
    ThreadPool(String),
}

pub type Result<T> = std::result::Result<T, GeneptError>;

/// Describes a non-finite float: "NaN", "+inf" or "-inf".
pub(crate) fn non_finite_kind(x: f64) -> &'static str {
    if x.is_nan() {
        "NaN"
    } else if x > 0.0 {
        "+inf"
    } else {
        "-inf"
    }
}
