//! [`RunDir`]: a training run's directory: the weights (`model.safetensors`, the model's state
//! dict names), the optimizer state (`optimizer.safetensors`, `<parameter>.<slot>` names) and
//! `state.json` ([`RunState`]), each written atomically; `state.json` is written last, so the
//! epoch it records is one whose weights are on disk.
//!
//! A task that trains with a loss scaler ([`tape::optim::LossScaler`]) has the scaler's
//! settings and state (scale, growth tracker) recorded in `state.json` too
//! ([`LossScalerRecord`]), so they are written atomically with the epoch they belong to;
//! [`RunDir::restore_loss_scaler`] puts them back on resume, and a missing or bad entry is a
//! [`ScalerStateError`].

use crate::eval::Eval;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tape::nn::{self, LoadOptions, Module, StateError, StateResult};
use tape::optim::{LossScaleError, LossScaler, LossScalerConfig, LossScalerState, Optimizer};
use tape::DType;

/// What `state.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Completed epochs.
    pub epoch: usize,
    /// Planned epochs.
    pub epochs: usize,
    /// Learning rate of the last completed epoch.
    pub lr: f64,
    /// Mean training loss of the last completed epoch.
    pub train_loss: f64,
    /// Training accuracy of the last completed epoch, where the task counts hits.
    pub train_accuracy: Option<f64>,
    /// Evaluation after the last completed epoch.
    pub eval: Option<Eval>,
    /// What the task says about itself (its model config): a resumed run must say the same.
    pub task: serde_json::Value,
    /// The task's loss scaler after the last completed epoch, where the task has one (absent
    /// from the file otherwise, and in files written before loss scaling existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<LossScalerRecord>,
}

/// A [`LossScaler`]'s settings and state as `state.json` records them (PyTorch's
/// `GradScaler.state_dict`: the scale, the growth tracker and the settings).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScalerRecord {
    /// The current scale.
    pub scale: f64,
    /// Clean steps in a row since the scale last changed or the last overflow.
    pub growth_tracker: u64,
    /// [`LossScalerConfig::init_scale`].
    pub init_scale: f64,
    /// [`LossScalerConfig::growth_factor`].
    pub growth_factor: f64,
    /// [`LossScalerConfig::backoff_factor`].
    pub backoff_factor: f64,
    /// [`LossScalerConfig::growth_interval`].
    pub growth_interval: u64,
    /// [`LossScalerConfig::enabled`].
    pub enabled: bool,
}

impl LossScalerRecord {
    /// The record of `scaler`.
    pub fn of(scaler: &LossScaler) -> Self {
        let c = scaler.config();
        let s = scaler.state();
        LossScalerRecord {
            scale: s.scale,
            growth_tracker: s.growth_tracker,
            init_scale: c.init_scale,
            growth_factor: c.growth_factor,
            backoff_factor: c.backoff_factor,
            growth_interval: c.growth_interval,
            enabled: c.enabled,
        }
    }

    /// The scaler it records, checked ([`LossScaler::new`], [`LossScaler::load_state`]).
    pub fn to_scaler(&self) -> Result<LossScaler, LossScaleError> {
        let mut scaler = LossScaler::new(LossScalerConfig {
            init_scale: self.init_scale,
            growth_factor: self.growth_factor,
            backoff_factor: self.backoff_factor,
            growth_interval: self.growth_interval,
            enabled: self.enabled,
        })?;
        scaler.load_state(LossScalerState {
            scale: self.scale,
            growth_tracker: self.growth_tracker,
        })?;
        Ok(scaler)
    }
}

/// Why a run directory's loss scaler entry cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum ScalerStateError {
    /// The task trains with an enabled loss scaler, but the run was saved without one (or with
    /// a disabled one).
    #[error(
        "cannot resume the loss scaler from {path}: it records no enabled loss scaler (the run \
         was saved without one, or with a disabled one), but this task trains with one"
    )]
    Missing {
        /// The state file.
        path: String,
    },
    /// The entry's settings or state are out of range (a corrupt or hand-edited file).
    #[error("cannot resume the loss scaler from {path}: bad entry: {source}")]
    Bad {
        /// The state file.
        path: String,
        /// What is wrong.
        #[source]
        source: LossScaleError,
    },
}

/// A training run's directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// The run directory at `path` (created when first saved to).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The weights file.
    pub fn model_file(&self) -> PathBuf {
        self.path.join("model.safetensors")
    }

    /// The optimizer state file.
    pub fn optimizer_file(&self) -> PathBuf {
        self.path.join("optimizer.safetensors")
    }

    /// The state file.
    pub fn state_file(&self) -> PathBuf {
        self.path.join("state.json")
    }

    /// Saves the model's state dict, the optimizer's state and `state`, each atomically.
    pub fn save<M: Module + ?Sized>(
        &self,
        model: &M,
        optimizer: &dyn Optimizer,
        state: &RunState,
    ) -> StateResult<()> {
        std::fs::create_dir_all(&self.path).map_err(|source| StateError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        nn::save(model, &self.model_file())?;
        let opt_state = optimizer.state_dict(&nn::parameters(model));
        nn::save_tensors(&self.optimizer_file(), &opt_state)?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| StateError::File {
            path: self.state_file().display().to_string(),
            msg: e.to_string(),
        })?;
        nn::write_atomic(&self.state_file(), &json)
    }

    /// Restores `scaler` from the entry of `state` (read from this directory's `state.json`),
    /// settings included, as PyTorch's `GradScaler.load_state_dict` does; a disabled `scaler`
    /// is left alone (as PyTorch's). Fails with [`ScalerStateError`], leaving `scaler` as it
    /// was, when the entry is missing, records a disabled scaler, or is out of range.
    pub fn restore_loss_scaler(
        &self,
        state: &RunState,
        scaler: &mut LossScaler,
    ) -> Result<(), ScalerStateError> {
        if !scaler.is_enabled() {
            return Ok(());
        }
        let path = self.state_file().display().to_string();
        let record = match &state.loss_scaler {
            Some(r) if r.enabled => r,
            _ => return Err(ScalerStateError::Missing { path }),
        };
        *scaler = record
            .to_scaler()
            .map_err(|source| ScalerStateError::Bad { path, source })?;
        Ok(())
    }

    /// Reads `state.json`.
    pub fn read_state(&self) -> StateResult<RunState> {
        let path = self.state_file();
        let bytes = std::fs::read(&path).map_err(|source| StateError::Io {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| StateError::File {
            path: path.display().to_string(),
            msg: format!("not a run state file: {e}"),
        })
    }

    /// Restores the model (checked: [`nn::load_state_dict`]; `options.lenient` ignores tensors
    /// the model does not have) and the optimizer's state, and returns `state.json`. On an error
    /// reading the weights the model is untouched.
    pub fn restore<M: Module + ?Sized>(
        &self,
        model: &mut M,
        optimizer: &mut dyn Optimizer,
        options: LoadOptions,
    ) -> StateResult<RunState> {
        let state = self.read_state()?;
        self.restore_weights(model, optimizer, options)?;
        Ok(state)
    }

    /// [`RunDir::restore`] without reading `state.json` (for a caller that has read it).
    pub fn restore_weights<M: Module + ?Sized>(
        &self,
        model: &mut M,
        optimizer: &mut dyn Optimizer,
        options: LoadOptions,
    ) -> StateResult<()> {
        nn::load_with(model, &self.model_file(), options)?;
        let stored = nn::load_tensors(&self.optimizer_file())?;
        let params = nn::parameters(model);
        if let Some(device) = params.first().map(|p| p.tensor().device().clone()) {
            let tensors = stored
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.to_tensor(DType::F64, &device)?)))
                .collect::<tape::Result<Vec<_>>>()?;
            optimizer.load_state_dict(&params, &tensors)?;
        }
        Ok(())
    }
}
