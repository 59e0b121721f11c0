//! One training step's forward and backward from files, for parity checks against PyTorch.
//!
//! [`prepare`] builds a [`DenseNet`] on a fresh CPU device from a [`DenseNetConfig`], loads a
//! weights file (torchvision names, see [`densenet::weights`]) and a batch file (safetensors with
//! `input` `[n, c, h, w]` and `labels` `[n]`, int64 or float); [`Prepared::run`] runs one
//! training-mode forward + backward ([`densenet::train::forward_backward`]) and returns, by name:
//!
//! - `logits` `[n, num_classes]` and `loss` `[1]` (mean cross-entropy);
//! - `grad.<parameter name>` for every parameter of [`DenseNet::parameters`];
//! - `<bn>.running_mean` and `<bn>.running_var` of every batch norm after the step.
//!
//! [`one_step`] does both; [`one_step_to_file`] also writes the result with
//! [`densenet::weights::save_tensors`] (atomic). Weights load strictly (a tensor the model does not
//! have is an error); [`prepare_with`] can load them leniently. Nothing is updated by an
//! optimizer: the parameters after the call are the loaded ones.

use densenet::train::forward_backward;
use densenet::weights::{load_tensors, save_tensors, LoadOptions, Stored};
use densenet::{DenseLayerMode, DenseNet, DenseNetConfig, DenseNetError, Recompute, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tape::{DType, Device, Tensor};

/// Dropout seed of the step (dropout masks are not PyTorch's, so parity cases use
/// `drop_rate = 0`).
pub const DROPOUT_SEED: u64 = 0;

/// A model with its weights loaded and a batch, ready for one step.
pub struct Prepared {
    /// The model (on its own CPU device) with the file's weights and running statistics.
    pub model: DenseNet,
    /// The batch's input `[n, c, h, w]` in the model's dtype, on the model's device.
    pub input: Tensor,
    /// Class index of each sample.
    pub labels: Vec<usize>,
}

/// What one step produced.
pub struct OneStepOutput {
    /// Mean cross-entropy of the batch.
    pub loss: f64,
    /// Mode each dense layer ran in (per block, per layer): the fixed mode, or the planner's
    /// choice under [`Recompute::Budget`].
    pub layer_modes: Vec<Vec<DenseLayerMode>>,
    /// Named results: `logits`, `loss`, `grad.<param>`, `<bn>.running_mean`, `<bn>.running_var`.
    pub tensors: Vec<(String, Tensor)>,
}

impl OneStepOutput {
    /// The result tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Writes every result tensor to `path` as safetensors (atomic).
    pub fn save(&self, path: &Path) -> Result<()> {
        Ok(save_tensors(path, &self.tensors)?)
    }
}

fn batch_err(path: &Path, msg: impl std::fmt::Display) -> DenseNetError {
    DenseNetError::Data(format!("batch file {}: {msg}", path.display()))
}

fn batch_tensor<'s>(
    stored: &'s BTreeMap<String, Stored>,
    name: &str,
    path: &Path,
) -> Result<&'s Stored> {
    stored
        .get(name)
        .ok_or_else(|| batch_err(path, format_args!("has no tensor named '{name}'")))
}

/// Reads a batch file: `input` (4-d, `in_channels` channels) and `labels` (`[n]`, integral
/// values in `0..num_classes`, stored as int64 or float).
pub fn load_batch(
    path: &Path,
    config: &DenseNetConfig,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Vec<usize>)> {
    let stored = load_tensors(path)?;
    let input = batch_tensor(&stored, "input", path)?;
    let labels = batch_tensor(&stored, "labels", path)?;
    let [n, c, h, w] = match input.shape[..] {
        [n, c, h, w] => [n, c, h, w],
        _ => {
            return Err(batch_err(
                path,
                format_args!("'input' must be [n, c, h, w], got shape {:?}", input.shape),
            ))
        }
    };
    if n == 0 {
        return Err(batch_err(path, "'input' holds no sample"));
    }
    if c != config.in_channels {
        return Err(batch_err(
            path,
            format_args!(
                "'input' has {c} channels, the config has in_channels = {}",
                config.in_channels
            ),
        ));
    }
    config.validate_image(h, w)?;
    if let Some(i) = input.values.iter().position(|v| !v.is_finite()) {
        return Err(batch_err(
            path,
            format_args!("'input' element {i} is not finite"),
        ));
    }
    if labels.shape != [n] {
        return Err(batch_err(
            path,
            format_args!(
                "'labels' must have shape [{n}] (one per sample), got {:?}",
                labels.shape
            ),
        ));
    }
    let labels = labels
        .values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v.fract() == 0.0 && v >= 0.0 && v < config.num_classes as f64 {
                Ok(v as usize)
            } else {
                Err(batch_err(
                    path,
                    format_args!(
                        "label {i} is {v}, not a class index in 0..{}",
                        config.num_classes
                    ),
                ))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((input.to_tensor(dtype, device)?, labels))
}

/// Builds the model of `config` under the recompute setting `memory` with parameters of `dtype` on a new CPU
/// device, loads `weights` into it (strictly: a tensor the model does not have is an error) and
/// reads `batch`.
pub fn prepare(
    config: &DenseNetConfig,
    weights: &Path,
    batch: &Path,
    memory: Recompute,
    dtype: DType,
) -> Result<Prepared> {
    prepare_with(
        config,
        weights,
        batch,
        memory,
        dtype,
        LoadOptions::default(),
    )
}

/// [`prepare`], loading the weights with `load` (e.g. leniently, ignoring extra tensors).
pub fn prepare_with(
    config: &DenseNetConfig,
    weights: &Path,
    batch: &Path,
    memory: Recompute,
    dtype: DType,
    load: LoadOptions,
) -> Result<Prepared> {
    let device = Device::cpu();
    let mut model = DenseNet::new(config.clone(), dtype, &device, 0)?.with_recompute(memory)?;
    densenet::weights::load_with(&mut model, weights, load)?;
    let (input, labels) = load_batch(batch, config, dtype, &device)?;
    Ok(Prepared {
        model,
        input,
        labels,
    })
}

impl Prepared {
    /// The step under `precision` (the model's policy: `f32`, or 16-bit activations with the
    /// weights as loaded).
    pub fn with_precision(mut self, precision: tape::Precision) -> Self {
        self.model.set_precision(precision);
        self
    }

    /// One training-mode forward + backward; the model's running statistics advance by one
    /// batch, its parameters stay.
    pub fn run(&self) -> Result<OneStepOutput> {
        let model = &self.model;
        let [n, c, h, w] = self.input.dims4("one_step")?;
        // Planned before the step, with what the device holds when forward starts.
        let layer_modes = model.layer_modes([n, c, h, w])?;
        let out = forward_backward(model, &self.input, &self.labels, DROPOUT_SEED)?;
        let mut tensors = vec![
            ("logits".to_string(), out.logits.clone()),
            ("loss".to_string(), out.loss_tensor().clone()),
        ];
        for p in model.parameters() {
            let g = out.grads.get(p.tensor()).ok_or_else(|| {
                DenseNetError::Config(format!("the step produced no gradient for '{}'", p.name()))
            })?;
            tensors.push((format!("grad.{}", p.name()), g.clone()));
        }
        for (name, rs) in model.running_stats() {
            tensors.push((format!("{name}.running_mean"), rs.mean()));
            tensors.push((format!("{name}.running_var"), rs.var()));
        }
        Ok(OneStepOutput {
            loss: out.loss()?,
            layer_modes,
            tensors,
        })
    }
}

/// [`prepare`] then [`Prepared::run`].
pub fn one_step(
    config: &DenseNetConfig,
    weights: &Path,
    batch: &Path,
    memory: Recompute,
    dtype: DType,
) -> Result<OneStepOutput> {
    prepare(config, weights, batch, memory, dtype)?.run()
}

/// [`one_step`], then writes its tensors to `out` (atomic); returns the output too.
pub fn one_step_to_file(
    config: &DenseNetConfig,
    weights: &Path,
    batch: &Path,
    memory: Recompute,
    dtype: DType,
    out: &Path,
) -> Result<OneStepOutput> {
    let result = one_step(config, weights, batch, memory, dtype)?;
    result.save(out)?;
    Ok(result)
}
