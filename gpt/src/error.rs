//! The GPT crate's typed error.

/// Everything that can go wrong building, running, training, saving or loading a GPT.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// The configuration is not a valid GPT.
    #[error("invalid GPT config: {0}")]
    Config(String),
    /// A batch does not fit the model: empty, longer than the context, ragged, or holding a
    /// token id outside the vocabulary.
    #[error("invalid batch: {0}")]
    Batch(String),
    /// A recompute setting that does not parse or that the model does not run.
    #[error(transparent)]
    Recompute(#[from] checkpoint::RecomputeError),
    /// The engine refused an operation (shapes, memory, ...).
    #[error(transparent)]
    Engine(#[from] tape::Error),
    /// A collective across the ranks of a data-parallel run failed.
    #[error(transparent)]
    Dist(#[from] dist::DistError),
    /// A weights file is unreadable, or lacks, mis-shapes or holds bad values for a tensor the
    /// model needs, or holds tensors it does not have.
    #[error(transparent)]
    State(#[from] tape::nn::StateError),
    /// A training step met a loss, gradient or parameter that is NaN or infinite (the run
    /// diverged); the step did not update the parameters.
    #[error(transparent)]
    NonFinite(#[from] trainer::anomaly::NonFinite),
    /// The text cannot be tokenized or the dataset built.
    #[error("dataset: {0}")]
    Data(String),
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Result type of the GPT crate.
pub type Result<T> = std::result::Result<T, GptError>;

impl From<trainer::anomaly::GuardError> for GptError {
    fn from(e: trainer::anomaly::GuardError) -> Self {
        match e {
            trainer::anomaly::GuardError::NonFinite(n) => n.into(),
            trainer::anomaly::GuardError::Engine(e) => e.into(),
            trainer::anomaly::GuardError::Dist(e) => e.into(),
        }
    }
}

/// The checkpoint planner's refusals (a budget nothing fits, a bad plan) are the engine's
/// invalid arguments.
impl From<checkpoint::planner::Error> for GptError {
    fn from(e: checkpoint::planner::Error) -> Self {
        GptError::Engine(checkpoint::planner::engine_error(e))
    }
}
