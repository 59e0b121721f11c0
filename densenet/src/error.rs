//! The DenseNet crate's typed error.

/// Everything that can go wrong building, running, saving or loading a DenseNet.
#[derive(Debug, thiserror::Error)]
pub enum DenseNetError {
    /// The configuration is not a valid DenseNet.
    #[error("invalid DenseNet config: {0}")]
    Config(String),
    /// The engine refused an operation (shapes, memory, ...).
    #[error(transparent)]
    Engine(#[from] tape::Error),
    /// A weights file lacks a tensor the model needs.
    #[error("weights file has no tensor named '{0}'")]
    MissingTensor(String),
    /// A weights file has a tensor of the wrong shape.
    #[error("tensor '{name}' has shape {got:?} in the weights file, the model needs {expected:?}")]
    TensorShape {
        /// Tensor name.
        name: String,
        /// The model's shape.
        expected: Vec<usize>,
        /// The file's shape.
        got: Vec<usize>,
    },
    /// A weights file is not valid safetensors, or holds an unsupported dtype.
    #[error("bad weights file {path}: {msg}")]
    Weights {
        /// The file.
        path: String,
        /// What is wrong.
        msg: String,
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
