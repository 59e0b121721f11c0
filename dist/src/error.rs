//! [`DistError`]: what the process-group layer and the data-parallel reducer fail with.

/// A failed collective, a world that cannot be joined, or a reducer used against its contract.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The world cannot be joined (MPI already initialised, a feature not built in).
    #[error("cannot join the process group: {0}")]
    Join(String),
    /// The communication thread has stopped (it failed or the group was shut down).
    #[error("rank {rank}: the communication thread has stopped")]
    Stopped {
        /// This process's rank.
        rank: usize,
    },
    /// Buffers that do not match (dtype, length, a root beyond the world).
    #[error("{op}: {msg}")]
    Invalid {
        /// The call.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The reducer saw gradients it did not expect (the graph changed between steps, a
    /// gradient written after its bucket was reduced).
    #[error("data-parallel reducer: {0}")]
    Reducer(String),
    /// The engine failed (reading or writing a tensor).
    #[error(transparent)]
    Engine(#[from] tape::Error),
}

/// The result of the distributed layer.
pub type Result<T> = std::result::Result<T, DistError>;
