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
    /// A weights file holds a value the model cannot take: not finite (NaN or infinite), beyond
    /// the range of the model's dtype, a negative running variance, or a `num_batches_tracked`
    /// that is not a non-negative integer.
    #[error("tensor '{name}' in the weights: {msg}")]
    BadValue {
        /// Tensor name.
        name: String,
        /// What is wrong, with the element's index and value.
        msg: String,
    },
    /// A weights file holds tensors the model does not have (a strict load refuses them, so a
    /// file for another architecture or with misspelled names is not half-loaded; see
    /// [`crate::weights::LoadOptions::lenient`]).
    #[error(
        "weights file has {} tensor(s) the model does not: {} (a lenient load ignores them)",
        .0.len(),
        crate::error::name_list(.0)
    )]
    UnexpectedTensors(Vec<String>),
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

/// Up to five quoted names, then how many more.
pub(crate) fn name_list(names: &[String]) -> String {
    let mut s: Vec<String> = names.iter().take(5).map(|n| format!("'{n}'")).collect();
    if names.len() > 5 {
        s.push(format!("and {} more", names.len() - 5));
    }
    s.join(", ")
}

/// Wraps an I/O error with the path it concerns.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DenseNetError + '_ {
    move |source| DenseNetError::Io {
        path: path.display().to_string(),
        source,
    }
}
