//! The adapter's error type: candle's own errors, the planner's, and bad arguments found before
//! anything runs.

/// An error of the candle adapter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A candle operation failed (inside the segment, the recompute or the adapter's own ops).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The planner refused a model, a plan or a budget.
    #[error(transparent)]
    Planner(#[from] recompute_planner::Error),
    /// An argument the adapter cannot work with: the planner's [`recompute_planner::Error`]
    /// type, whose `op` names the adapter's entry point that was called.
    #[error(transparent)]
    InvalidArgument(recompute_planner::Error),
}

impl Error {
    /// An [`Error::InvalidArgument`] from `op`.
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument(recompute_planner::Error::invalid(op, msg))
    }
}

/// The adapter's errors travel through candle code (a checkpoint inside a segment, a custom
/// op's backward) as candle errors: a candle error comes back as itself, others wrapped.
impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        }
    }
}

/// Result type of the adapter.
pub type Result<T> = std::result::Result<T, Error>;
