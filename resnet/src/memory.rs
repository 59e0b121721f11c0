//! [`Memory`]: how much of a training step's activations a ResNet keeps, a run setting chosen
//! per forward pass (never saved with the weights).

use crate::error::ResNetError;
use std::fmt;
use std::str::FromStr;

/// What a forward pass keeps for backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Memory {
    /// Everything recorded (the textbook step).
    Naive,
    /// Every residual block checkpointed: only block inputs are kept, each block runs again in
    /// backward.
    PerBlock,
    /// The network as a chain (stem, every block, head) run under the checkpoint planner's
    /// cheapest plan whose predicted peak fits this many bytes (device bytes in all, what the
    /// device holds when the step starts included).
    Budget(u64),
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Memory::Naive => f.write_str("naive"),
            Memory::PerBlock => f.write_str("per-block"),
            Memory::Budget(b) => write!(f, "budget:{b}"),
        }
    }
}

impl FromStr for Memory {
    type Err = ResNetError;

    /// `naive`, `per-block` or `budget:BYTES`.
    fn from_str(s: &str) -> Result<Self, ResNetError> {
        match s {
            "naive" => Ok(Memory::Naive),
            "per-block" => Ok(Memory::PerBlock),
            _ => s
                .strip_prefix("budget:")
                .and_then(|b| b.parse::<u64>().ok())
                .map(Memory::Budget)
                .ok_or_else(|| {
                    ResNetError::Config(format!(
                        "unknown memory mode '{s}': use naive, per-block or budget:BYTES"
                    ))
                }),
        }
    }
}
