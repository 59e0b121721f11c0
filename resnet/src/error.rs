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
    /// The engine refused an operation (shapes, memory, a budget no plan fits, ...).
    #[error(transparent)]
    Engine(#[from] tape::Error),
    /// A weights file is unreadable, or lacks, mis-shapes or holds bad values for a tensor
    /// the model needs, or holds tensors it does not have.
    #[error(transparent)]
    State(#[from] tape::nn::StateError),
    /// A training step met a loss, gradient or parameter that is NaN or infinite; the step did
    /// not update the parameters.
    #[error("training step {step}: {what} is not finite; the step did not update the parameters")]
    NonFinite {
        /// The step's index, as the caller numbers them.
        step: u64,
        /// What is not finite: `the loss`, `the gradient of '<name>'` or `the parameter '<name>'`.
        what: String,
    },
}

/// Result type of the ResNet crate.
pub type Result<T> = std::result::Result<T, ResNetError>;
