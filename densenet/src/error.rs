//! The DenseNet crate's typed error.

/// Everything that can go wrong building, running, saving or loading a DenseNet.
#[derive(Debug, thiserror::Error)]
pub enum DenseNetError {
    /// The configuration is not a valid DenseNet.
    #[error("invalid DenseNet config: {0}")]
    Config(String),
    /// A recompute setting that does not parse or that the model does not run.
    #[error(transparent)]
    Recompute(#[from] checkpoint::RecomputeError),
    /// The engine refused an operation (shapes, memory, ...).
    #[error(transparent)]
    Engine(#[from] tape::Error),
    /// A collective across the ranks of a data-parallel run failed.
    #[error(transparent)]
    Dist(#[from] dist::DistError),
    /// A weights file is unreadable, or lacks, mis-shapes or holds bad values for a tensor
    /// the model needs, or holds tensors it does not have (each error names the tensor).
    #[error(transparent)]
    State(#[from] tape::nn::StateError),
    /// A training step met a loss, gradient or parameter that is NaN or infinite (the run
    /// diverged); the step did not update the parameters.
    #[error(
        "training step {step}: {what} is not finite ({value}); the run diverged (try a lower \
         learning rate) and this step did not update the parameters"
    )]
    NonFinite {
        /// The step's index, as the training loop counts them.
        step: u64,
        /// What is not finite: `the loss`, `the gradient of '<parameter>'` or
        /// `the parameter '<parameter>'`.
        what: String,
        /// The offending value: the loss, or the first non-finite element of the gradient or
        /// parameter.
        value: f64,
    },
    /// A dataset file is missing, truncated or malformed.
    #[error("dataset: {0}")]
    Data(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Result type of the DenseNet crate.
pub type Result<T> = std::result::Result<T, DenseNetError>;

/// Wraps an I/O error with the path it concerns.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DenseNetError + '_ {
    move |source| DenseNetError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl From<trainer::anomaly::GuardError> for DenseNetError {
    fn from(e: trainer::anomaly::GuardError) -> Self {
        match e {
            trainer::anomaly::GuardError::NonFinite(n) => DenseNetError::NonFinite {
                step: n.step,
                what: n.what,
                value: n.value,
            },
            trainer::anomaly::GuardError::Engine(e) => e.into(),
            trainer::anomaly::GuardError::Dist(e) => e.into(),
        }
    }
}

/// The checkpoint planner's refusals (a budget nothing fits, a bad plan) are the engine's
/// invalid arguments.
impl From<checkpoint::planner::Error> for DenseNetError {
    fn from(e: checkpoint::planner::Error) -> Self {
        DenseNetError::Engine(checkpoint::planner::engine_error(e))
    }
}
