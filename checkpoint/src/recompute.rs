//! [`Recompute`]: the one setting of how much a model recomputes in backward instead of keeping,
//! shared by every model of the workspace (DenseNet, ResNet, GPT), with one spelling on every
//! command line and in every benchmark row ([`std::str::FromStr`] and [`std::fmt::Display`]).
//!
//! A model holds the setting (`model.set_recompute(..)` / `model.with_recompute(..)`; the
//! table of spellings and models is on [`Recompute`]), checks
//! it against the settings it runs ([`Recompute::check`]: a setting it does not run is a
//! [`RecomputeError::Unsupported`] naming the ones it does) and keeps its budget plans in a
//! [`crate::PlanCache`].
//!
//! ("Memory" names the engine's accounting, `tape::memory`; this is what a model does with it.)

use crate::selective::SelectivePolicy;
use std::fmt;
use std::str::FromStr;

/// How much of a training step's activations a model recomputes in backward instead of keeping
/// (a run setting: never part of a saved config or the weights; every setting computes the same
/// loss and gradients). Its spellings, and which model runs what:
///
/// | spelling | setting | DenseNet | ResNet | GPT |
/// |---|---|---|---|---|
/// | `naive` | [`Recompute::Naive`] | yes | yes | yes |
/// | `per-block` | [`Recompute::PerBlock`] | | yes | yes |
/// | `selective` | [`Recompute::Selective`]`(`[`Selective::ComputeBound`]`)` | | | yes |
/// | `selective-linear` | [`Recompute::Selective`]`(`[`Selective::Linear`]`)` | | | yes |
/// | `bottleneck` (`efficient`) | [`Recompute::Selective`]`(`[`Selective::Bottleneck`]`)` | yes | | |
/// | `layer` | [`Recompute::Selective`]`(`[`Selective::Layer`]`)` | yes | | |
/// | `budget:SIZE` | [`Recompute::Budget`] | yes | yes | yes |
/// | `plan` | [`Recompute::Plan`] | yes | yes | yes |
///
/// `SIZE` is what [`parse_bytes`] reads: `480000000`, `480MB`, `16GB`, `1.5GiB`; a budget prints
/// as its whole number of bytes (`budget:480000000`), which reads back the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Recompute {
    /// `naive`: every activation recorded, nothing recomputed.
    #[default]
    Naive,
    /// `per-block`: each block (a residual block, a decoder block) a checkpointed segment: only
    /// the blocks' inputs are kept, each block runs again in backward.
    PerBlock,
    /// Each block keeps some of its activations and recomputes the rest, at the granularity
    /// [`Selective`] names.
    Selective(Selective),
    /// `budget:SIZE`: the checkpoint planner's cheapest plan whose predicted peak fits this many
    /// bytes (device bytes in all, what the device holds as the step starts included), planned
    /// per batch shape and bytes held ([`crate::PlanCache`]).
    Budget(u64),
    /// `plan`: an explicit plan handed to the model with its `with_plan` (a plan made elsewhere
    /// or replayed): per dense layer for DenseNet, a [`crate::planner::Plan`] over the chain of
    /// blocks for ResNet and GPT.
    Plan,
}

/// What a [`Recompute::Selective`] block keeps. `ComputeBound` and `Linear` are per-op policies
/// ([`Selective::policy`], run by [`crate::checkpoint_selective`]); `Bottleneck` and `Layer`
/// are DenseNet's units, run by DenseNet's own shared-storage layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Selective {
    /// `selective`: each block under [`SelectivePolicy::compute_bound`]: the outputs of its
    /// linear layers and matmuls are kept, layer norms, softmax, GELU, reshapes and copies are
    /// recomputed.
    ComputeBound,
    /// `selective-linear`: each block keeps only its linear layers' outputs; attention's
    /// matmuls (`q k^T`, `[batch, heads, T, T]`), softmax and the rest are recomputed (less
    /// memory than `selective` at long sequences, more recompute).
    Linear,
    /// `bottleneck` (alias `efficient`, the seed project's mode): each dense layer recomputes
    /// its concatenation's batch norm, ReLU and 1x1 convolution in backward and keeps the
    /// bottleneck's batch norm input and the layer output.
    Bottleneck,
    /// `layer`: each dense layer recomputed whole (transitions and the head's batch norm + ReLU
    /// too): only each layer's `growth_rate` new channels are kept.
    Layer,
}

impl Selective {
    /// The per-op policy of this granularity, for [`crate::checkpoint_selective`]; `None` for
    /// DenseNet's units, which its layers run themselves.
    pub fn policy(self) -> Option<SelectivePolicy> {
        match self {
            Selective::ComputeBound => Some(SelectivePolicy::compute_bound()),
            Selective::Linear => Some(SelectivePolicy::keep(&["linear"])),
            Selective::Bottleneck | Selective::Layer => None,
        }
    }
}

/// A [`Recompute`] that does not parse, or that a model does not run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecomputeError {
    /// Not a spelling of any setting.
    #[error(
        "unknown recompute setting '{0}' (naive, per-block, selective, selective-linear, \
         bottleneck, layer, budget:SIZE, plan)"
    )]
    Unknown(String),
    /// `budget:` followed by something that is not a size.
    #[error("recompute setting '{given}': {reason}")]
    Size {
        /// The whole setting as given.
        given: String,
        /// Why the size does not read ([`parse_bytes`]'s message).
        reason: String,
    },
    /// A setting the model does not run.
    #[error("{model} does not run the recompute setting '{setting}': it runs {}", .supported.join(", "))]
    Unsupported {
        /// The model (`DenseNet`, `ResNet`, `GPT`).
        model: &'static str,
        /// The setting asked for.
        setting: Recompute,
        /// The spellings of the settings it runs (`budget:SIZE` for any budget).
        supported: Vec<String>,
    },
}

impl Recompute {
    /// The spelling of this kind of setting, a budget as `budget:SIZE`.
    pub fn kind_name(self) -> String {
        match self {
            Recompute::Budget(_) => "budget:SIZE".into(),
            other => other.to_string(),
        }
    }

    /// `self` if it is one of `supported` (any budget matches [`Recompute::Budget`]), else
    /// [`RecomputeError::Unsupported`] naming `model` and the settings it runs.
    pub fn check(
        self,
        model: &'static str,
        supported: &[Recompute],
    ) -> Result<Self, RecomputeError> {
        let same = |s: &Recompute| match (s, self) {
            (Recompute::Budget(_), Recompute::Budget(_)) => true,
            (s, r) => *s == r,
        };
        if supported.iter().any(same) {
            Ok(self)
        } else {
            Err(self.unsupported(model, supported))
        }
    }

    /// The [`RecomputeError::Unsupported`] of `model`, which runs `supported`, asked for `self`.
    pub fn unsupported(self, model: &'static str, supported: &[Recompute]) -> RecomputeError {
        RecomputeError::Unsupported {
            model,
            setting: self,
            supported: supported.iter().map(|s| s.kind_name()).collect(),
        }
    }

    /// The budget in bytes, for [`Recompute::Budget`].
    pub fn budget(self) -> Option<u64> {
        match self {
            Recompute::Budget(b) => Some(b),
            _ => None,
        }
    }
}

impl fmt::Display for Recompute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recompute::Naive => f.write_str("naive"),
            Recompute::PerBlock => f.write_str("per-block"),
            Recompute::Selective(Selective::ComputeBound) => f.write_str("selective"),
            Recompute::Selective(Selective::Linear) => f.write_str("selective-linear"),
            Recompute::Selective(Selective::Bottleneck) => f.write_str("bottleneck"),
            Recompute::Selective(Selective::Layer) => f.write_str("layer"),
            Recompute::Budget(b) => write!(f, "budget:{b}"),
            Recompute::Plan => f.write_str("plan"),
        }
    }
}

impl FromStr for Recompute {
    type Err = RecomputeError;

    /// The spellings of [`Recompute`]; a budget's size as [`parse_bytes`] reads it.
    fn from_str(s: &str) -> Result<Self, RecomputeError> {
        Ok(match s {
            "naive" => Recompute::Naive,
            "per-block" => Recompute::PerBlock,
            "selective" => Recompute::Selective(Selective::ComputeBound),
            "selective-linear" => Recompute::Selective(Selective::Linear),
            "bottleneck" | "efficient" => Recompute::Selective(Selective::Bottleneck),
            "layer" => Recompute::Selective(Selective::Layer),
            "plan" => Recompute::Plan,
            _ => match s.strip_prefix("budget:") {
                Some(size) => {
                    Recompute::Budget(parse_bytes(size).map_err(|reason| RecomputeError::Size {
                        given: s.to_string(),
                        reason,
                    })?)
                }
                None => return Err(RecomputeError::Unknown(s.to_string())),
            },
        })
    }
}

/// Bytes from a command line: a whole number of bytes, or one with a unit (`kB`, `MB`, `GB`,
/// `TB` in powers of 1000, `KiB`, `MiB`, `GiB`, `TiB` in powers of 1024; a fraction allowed
/// before a unit, e.g. `1.5GB`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        u => {
            return Err(format!(
                "'{s}': unknown unit '{u}' (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 480000000, 480MB or 16GB)"))?;
    Ok((value * scale).round() as u64)
}
