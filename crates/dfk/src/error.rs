//! The one error type of the `dfk` library. The functions that return a `Result` do not
//! panic on user input: every invalid shape, value or file comes back as one of these
//! variants, naming what was wrong. The few unchecked ones (`OneVsRest::scores`,
//! `Pipeline::scores`, the E-step kernel `EmStats::accumulate`, …) say when they panic under
//! `# Panics` and name their checked form.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the library, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two sizes that must agree do not.
    #[error("dimension mismatch in {what}: expected {expected}, got {got}")]
    DimMismatch {
        what: String,
        expected: usize,
        got: usize,
    },
    /// A value is NaN or infinite where a finite number is required.
    #[error("non-finite value in {what} at index {index}")]
    NonFinite { what: String, index: usize },
    /// An input that must not be empty is empty (an image without descriptors, an empty data set).
    #[error("{what} is empty")]
    Empty { what: String },
    /// A parameter is outside its valid range; `expected` says what would be valid.
    #[error("invalid parameter {name} = {value}: expected {expected}")]
    InvalidParameter {
        name: String,
        value: String,
        expected: String,
    },
    /// A data-dependent failure (e.g. all labels of one class, a degenerate GMM).
    #[error("{0}")]
    Invalid(String),
    /// A file could not be read or written. (The OS error is part of the message, not a
    /// separate `source`, so that printing the error chain does not repeat it.)
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A file was read but its contents are malformed or do not match what was expected.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

impl Error {
    /// Shorthand for [`Error::InvalidParameter`].
    pub fn param(name: &str, value: impl ToString, expected: impl ToString) -> Self {
        Error::InvalidParameter {
            name: name.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }

    /// Shorthand for [`Error::DimMismatch`].
    pub fn dim(what: impl ToString, expected: usize, got: usize) -> Self {
        Error::DimMismatch {
            what: what.to_string(),
            expected,
            got,
        }
    }

    /// Shorthand for [`Error::Format`].
    pub fn format(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        Error::Format {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }
}

/// Whether every value is finite. An all-ones exponent is ±∞ or NaN; the OR of that test
/// vectorises at any SIMD level, unlike a search, so callers search only when it fails.
pub(crate) fn all_finite(x: &[f32]) -> bool {
    !x.iter()
        .fold(false, |a, v| a | (v.to_bits() & 0x7f80_0000 == 0x7f80_0000))
}

/// Returns an error naming the first non-finite value of `values`.
pub fn check_finite(what: &str, values: &[f32]) -> Result<()> {
    if all_finite(values) {
        return Ok(());
    }
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite {
            what: what.to_string(),
            index,
        }),
        None => Ok(()),
    }
}
