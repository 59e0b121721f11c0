//! [`Memory`]: how much a DenseNet recomputes in backward to save memory. A run option, set on
//! the model ([`crate::DenseNet::with_memory`]), not part of the architecture: the same weights
//! train in any mode, and a saved config does not carry it.

use crate::error::{DenseNetError, Result};

/// How much a DenseNet recomputes in backward to save memory. Spelled `naive`, `bottleneck`,
/// `layer` and `budget:BYTES` on command lines and in benchmark rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Memory {
    /// Record everything: concat, BN and ReLU outputs of every layer are kept (quadratic memory).
    #[default]
    Naive,
    /// Recompute BN + ReLU + 1x1 conv of each dense layer (the seed project's "efficient" mode):
    /// keeps the bottleneck and the layer output.
    RecomputeBottleneck,
    /// Recompute the whole dense layer (and transitions and the head's BN-ReLU): keeps only each
    /// layer's `growth_rate` output channels.
    RecomputeLayer,
    /// Let the checkpoint planner pick a mode per dense layer so the predicted peak stays under
    /// this many bytes at the least recompute cost.
    Budget(u64),
    /// Run the per-layer modes given with [`crate::DenseNet::with_plan`] (a plan made elsewhere
    /// or replayed), transitions and head recomputed, as a budget's plan runs.
    Plan,
}

impl std::str::FromStr for Memory {
    type Err = DenseNetError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "naive" => Ok(Memory::Naive),
            "bottleneck" | "efficient" => Ok(Memory::RecomputeBottleneck),
            "layer" => Ok(Memory::RecomputeLayer),
            other => match other.strip_prefix("budget:").map(str::parse::<u64>) {
                Some(Ok(bytes)) => Ok(Memory::Budget(bytes)),
                _ => Err(DenseNetError::Config(format!(
                    "unknown memory mode '{s}' (naive, bottleneck, layer, budget:BYTES)"
                ))),
            },
        }
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Memory::Naive => write!(f, "naive"),
            Memory::RecomputeBottleneck => write!(f, "bottleneck"),
            Memory::RecomputeLayer => write!(f, "layer"),
            Memory::Budget(b) => write!(f, "budget:{b}"),
            Memory::Plan => write!(f, "plan"),
        }
    }
}
