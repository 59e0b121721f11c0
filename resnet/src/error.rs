//! The ResNet crate's typed error.

/// Everything that can go wrong building, running, saving or loading a ResNet.
#[derive(Debug, thiserror::Error)]
pub enum ResNetError {
    /// The configuration is not a valid ResNet.
    #[error("invalid ResNet config: {0}")]
    Config(String),
    /// An input the model cannot take (wrong rank, channels, an empty batch, labels).
    #[error("invalid ResNet input: {0}")]
    Input(String),
    /// A recompute setting that does not parse or that the model does not run.
    #[error(transparent)]
    Recompute(#[from] checkpoint::RecomputeError),
    /// The engine refused an operation (shapes, memory, a budget no plan fits, ...).
    #[error(transparent)]
    Engine(#[from] tape::Error),
    /// A collective across the ranks of a data-parallel run failed.
    #[error(transparent)]
    Dist(#[from] dist::DistError),
    /// A weights file is unreadable, or lacks, mis-shapes or holds bad values for a tensor
    /// the model needs, or holds tensors it does not have.
    #[error(transparent)]
    State(#[from] tape::nn::StateError),
    /// A training step met a loss, gradient or parameter that is NaN or infinite (the run
    /// diverged); the step did not update the parameters.
    #[error(transparent)]
    NonFinite(#[from] trainer::anomaly::NonFinite),
}

/// Result type of the ResNet crate.
pub type Result<T> = std::result::Result<T, ResNetError>;

impl From<trainer::anomaly::GuardError> for ResNetError {
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
impl From<checkpoint::planner::Error> for ResNetError {
    fn from(e: checkpoint::planner::Error) -> Self {
        ResNetError::Engine(checkpoint::planner::engine_error(e))
    }
}
