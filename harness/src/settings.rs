//! [`Setting`]: one entry of a benchmark's `--recompute` list.

use checkpoint::{Recompute, RecomputeError};
use std::str::FromStr;

/// One entry of a benchmark's `--recompute` list: a [`Recompute`] setting in its usual spelling,
/// or `budget:auto`, a budget the benchmark derives from the peaks it measured (or predicted)
/// before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// A fixed setting.
    Fixed(Recompute),
    /// `budget:auto`: the benchmark's own budget.
    AutoBudget,
}

impl FromStr for Setting {
    type Err = RecomputeError;

    fn from_str(s: &str) -> Result<Self, RecomputeError> {
        match s {
            "budget:auto" => Ok(Setting::AutoBudget),
            s => s.parse().map(Setting::Fixed),
        }
    }
}
