//! The planner's error type: every failure is a bad argument (an empty chain, a plan that does
//! not cover it, a cost that cannot be summed, a budget nothing fits), found before any work.

/// A planner error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An argument outside what the planner accepts; `op` names the entry point ("plan",
    /// "planner", "plan_choices", ...) and `msg` says what was wrong.
    #[error("invalid argument to {op}: {msg}")]
    InvalidArgument {
        /// The entry point that was called.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
}

impl Error {
    /// An [`Error::InvalidArgument`] from `op`.
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }
}

/// Result type of the planner.
pub type Result<T> = std::result::Result<T, Error>;
