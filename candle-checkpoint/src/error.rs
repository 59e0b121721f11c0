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
    /// A [fused step](crate::fused) was misused or a parameter's gradients did not add up.
    #[error(transparent)]
    Fused(#[from] FusedError),
}

/// What can go wrong in a [fused step](crate::fused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FusedError {
    /// [`crate::fused::FusedUpdate::begin`] was called while a step was active on this thread.
    #[error("fused update: a step is already active on this thread")]
    StepActive,
    /// A parameter received more gradients than the uses counted in the step's forward (a
    /// segment whose forward ran before the step began): with them it may already have been
    /// updated from part of its gradient.
    #[error(
        "fused update: parameter {param:?} received gradient {arrived} of {uses} counted uses; \
         begin the step before its forward"
    )]
    UncountedUse {
        /// The parameter's tensor id.
        param: candle_core::TensorId,
        /// Uses counted in the step's forward.
        uses: usize,
        /// Gradients received, this one included.
        arrived: usize,
    },
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
