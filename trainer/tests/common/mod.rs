//! What the `fit` tests' tiny tasks share: their error type and their fixed data (3 batches of
//! 5 random 4-feature rows, labels cycling over the classes).

use tape::{DType, Device, Tensor};

/// A task's error: any engine or guard error, as text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TaskError(pub String);

impl From<tape::Error> for TaskError {
    fn from(e: tape::Error) -> Self {
        TaskError(e.to_string())
    }
}

impl From<trainer::anomaly::GuardError> for TaskError {
    fn from(e: trainer::anomaly::GuardError) -> Self {
        TaskError(e.to_string())
    }
}

/// Three batches of 5 rows of 4 random features in `dtype`, and their labels: row `i` of batch
/// `b` is class `(i + b) % classes`.
pub fn batches(dtype: DType, dev: &Device, classes: usize) -> (Vec<Tensor>, Vec<Vec<usize>>) {
    let x = (0..3)
        .map(|b| Tensor::randn(&[5, 4], dtype, dev, 100 + b).unwrap())
        .collect();
    let y = (0..3)
        .map(|b| (0..5).map(|i| (i + b as usize) % classes).collect())
        .collect();
    (x, y)
}
