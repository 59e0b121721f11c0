//! [`RunDir`]: a training run's directory: the weights (`model.safetensors`, the model's state
//! dict names), the optimizer state (`optimizer.safetensors`, `<parameter>.<slot>` names) and
//! `state.json` ([`RunState`]), each written atomically; `state.json` is written last, so the
//! epoch it records is one whose weights are on disk.

use crate::eval::Eval;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tape::nn::{self, LoadOptions, Module, StateError, StateResult};
use tape::optim::Optimizer;
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
