//! [`Eval`]: what an evaluation measured (the run directory keeps the best).

use serde::{Deserialize, Serialize};

/// An evaluation's results.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy in `[0, 1]`, where the task measures one.
    pub accuracy: Option<f64>,
}
