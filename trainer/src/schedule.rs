//! [`Schedule`]: the learning rate of each epoch.

use serde::{Deserialize, Serialize};

/// The learning rate of each epoch, as a factor of the base rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiplied by `gamma` at each milestone, given as a fraction of the epochs (the DenseNet
    /// recipe: `/10` at 50% and 75%).
    StepDecay {
        /// Fractions of the run in `(0, 1)` at which the rate drops.
        milestones: Vec<f64>,
        /// The factor of each drop.
        gamma: f64,
    },
    /// Linear warm-up over `warmup` epochs from `base / warmup`, then a cosine decay to
    /// `min_factor * base` at the last epoch.
    Cosine {
        /// Epochs of linear warm-up.
        warmup: usize,
        /// The final rate as a fraction of the base.
        min_factor: f64,
    },
}

impl Schedule {
    /// The DenseNet paper's schedule: the base rate divided by 10 at 50% and at 75% of the run.
    pub fn densenet() -> Self {
        Schedule::StepDecay {
            milestones: vec![0.5, 0.75],
            gamma: 0.1,
        }
    }

    /// The rate of 0-based `epoch` of `epochs` for a base rate `base`.
    pub fn lr_at(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::StepDecay { milestones, gamma } => {
                let drops = milestones
                    .iter()
                    .filter(|&&m| epoch as f64 >= m * epochs as f64)
                    .count();
                base * gamma.powi(drops as i32)
            }
            Schedule::Cosine { warmup, min_factor } => {
                if epoch < *warmup {
                    return base * (epoch + 1) as f64 / *warmup as f64;
                }
                let span = epochs.saturating_sub(*warmup).saturating_sub(1).max(1) as f64;
                let t = ((epoch - warmup) as f64 / span).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                base * (min_factor + (1.0 - min_factor) * cos)
            }
        }
    }

    /// A short description for a run's header, e.g. `/10 at the start of epochs 3 and 4`.
    pub fn describe(&self, epochs: usize) -> String {
        match self {
            Schedule::Constant => "constant".into(),
            Schedule::StepDecay { gamma, .. } => {
                let drops: Vec<String> = (1..epochs)
                    .filter(|&e| self.lr_at(1.0, e, epochs) < self.lr_at(1.0, e - 1, epochs))
                    .map(|e| (e + 1).to_string())
                    .collect();
                if drops.is_empty() {
                    "constant".into()
                } else {
                    format!(
                        "x{gamma} at the start of epoch{} {}",
                        if drops.len() > 1 { "s" } else { "" },
                        drops.join(" and ")
                    )
                }
            }
            Schedule::Cosine { warmup, min_factor } => {
                format!("{warmup} warm-up epochs, cosine decay to x{min_factor}")
            }
        }
    }
}
