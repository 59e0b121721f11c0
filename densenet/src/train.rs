//! One training step: forward, cross-entropy, backward, an anomaly check, optimizer update.
//!
//! The anomaly check ([`check_finite`], on by default) stops a diverging run at the step where
//! the loss, a gradient or a parameter stops being finite, with a [`DenseNetError::NonFinite`]
//! naming the step and what diverged, before the optimizer spreads NaN or infinity through the
//! parameters.

use crate::error::{DenseNetError, Result};
use crate::model::DenseNet;
use tape::optim::{Optimizer, SgdConfig};
use tape::{ops, Gradients, Tape, Tensor};

/// The seed project's optimizer: SGD, lr 0.1, Nesterov momentum 0.9, weight decay 1e-4.
pub fn seed_sgd_config() -> SgdConfig {
    SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.0,
        nesterov: true,
        weight_decay: 1e-4,
    }
}

/// What a forward + backward pass produced.
pub struct StepOutput {
    /// Mean cross-entropy of the batch.
    pub loss: f64,
    /// Logits `[n, classes]`.
    pub logits: Tensor,
    /// Gradients of every parameter (by tensor id).
    pub grads: Gradients,
    /// Correct top-1 predictions.
    pub correct: usize,
}

/// Top-1 hits of `logits` against `labels`.
pub fn count_correct(logits: &Tensor, labels: &[usize]) -> usize {
    let classes = logits.shape().last().copied().unwrap_or(1).max(1);
    logits
        .to_f64_vec()
        .chunks(classes)
        .zip(labels)
        .filter(|(row, &label)| {
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i);
            best == Some(label)
        })
        .count()
}

/// Forward and backward of one batch in training mode; `seed` drives dropout.
pub fn forward_backward(
    model: &DenseNet,
    x: &Tensor,
    labels: &[usize],
    seed: u64,
) -> Result<StepOutput> {
    let mut tape = Tape::recording().with_seed(seed);
    let logits = model.forward(&mut tape, x)?;
    let loss = ops::cross_entropy(&mut tape, &logits, labels)?;
    let grads = tape.backward(&loss)?;
    let correct = count_correct(&logits, labels);
    Ok(StepOutput {
        loss: loss.scalar()?,
        logits,
        grads,
        correct,
    })
}

/// How [`train_step_with`] runs one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepOptions {
    /// Seed of the step's dropout masks.
    pub seed: u64,
    /// The step's index in the run (named by a [`DenseNetError::NonFinite`] error).
    pub step: u64,
    /// Run [`check_finite`] before the optimizer update (on in [`StepOptions::new`]).
    pub check_finite: bool,
}

impl StepOptions {
    /// Step `step` with dropout seed `seed`, anomaly check on.
    pub fn new(step: u64, seed: u64) -> Self {
        StepOptions {
            seed,
            step,
            check_finite: true,
        }
    }
}

/// Fails with [`DenseNetError::NonFinite`] naming `step` if the loss, the gradient of any of
/// `model`'s parameters or a parameter itself holds a NaN or an infinity (the first such tensor
/// in [`DenseNet::parameters`] order is named, its gradient before its value). Parameters are
/// checked too because a NaN weight does not always reach the loss (a ReLU maps a NaN batch-norm
/// output to 0) and an update with a finite but huge gradient can overflow a weight.
///
/// Cheap enough to run every step: the loss is already on the host, and gradients and
/// parameters are checked through their sums (NaN and infinities propagate into a sum): one pass
/// over each tensor on its device and a single number brought back; only when that number is not
/// finite are the sums read one by one to name the culprit. A sum that overflows the dtype counts
/// as non-finite too (values that large are themselves a divergence).
pub fn check_finite(model: &DenseNet, out: &StepOutput, step: u64) -> Result<()> {
    if !out.loss.is_finite() {
        return Err(DenseNetError::NonFinite {
            step,
            what: "the loss".into(),
            value: out.loss,
        });
    }
    let mut tape = Tape::no_grad();
    let params = model.parameters();
    // (parameter index, whether it is the gradient, the sum).
    let mut sums = Vec::with_capacity(2 * params.len());
    let mut total: Option<Tensor> = None;
    for (i, p) in params.iter().enumerate() {
        let grad = out.grads.get(p.tensor()).map(|g| (true, g));
        for (is_grad, t) in grad.into_iter().chain([(false, p.tensor())]) {
            let s = ops::sum(&mut tape, t)?;
            total = Some(match total {
                Some(acc) => ops::add(&mut tape, &acc, &s)?,
                None => s.clone(),
            });
            sums.push((i, is_grad, s));
        }
    }
    let total = match total {
        Some(t) => t.scalar()?,
        None => return Ok(()),
    };
    if total.is_finite() {
        return Ok(());
    }
    for (i, is_grad, s) in sums {
        let value = s.scalar()?;
        if !value.is_finite() {
            let name = params[i].name();
            let what = if is_grad {
                format!("the gradient of '{name}'")
            } else {
                format!("the parameter '{name}'")
            };
            return Err(DenseNetError::NonFinite { step, what, value });
        }
    }
    Err(DenseNetError::NonFinite {
        step,
        what: "the sum of all gradients and parameters".into(),
        value: total,
    })
}

/// One SGD (or other optimizer) step on a batch; returns the loss and logits. `seed` drives
/// dropout and is also the step index a [`DenseNetError::NonFinite`] error names (a loop that
/// numbers its steps otherwise calls [`train_step_with`]). The anomaly check is on.
pub fn train_step(
    model: &mut DenseNet,
    optimizer: &mut dyn Optimizer,
    x: &Tensor,
    labels: &[usize],
    seed: u64,
) -> Result<StepOutput> {
    train_step_with(model, optimizer, x, labels, StepOptions::new(seed, seed))
}

/// One optimizer step on a batch as `options` say. With the anomaly check on, a non-finite loss,
/// gradient or parameter fails with [`DenseNetError::NonFinite`] before the update: the
/// parameters keep their values (the batch norm running statistics have already seen the batch
/// in forward).
pub fn train_step_with(
    model: &mut DenseNet,
    optimizer: &mut dyn Optimizer,
    x: &Tensor,
    labels: &[usize],
    options: StepOptions,
) -> Result<StepOutput> {
    let out = forward_backward(model, x, labels, options.seed)?;
    if options.check_finite {
        check_finite(model, &out, options.step)?;
    }
    let mut params = model.parameters_mut();
    optimizer.step(&mut params, &out.grads)?;
    Ok(out)
}

/// Logits in eval mode without recording (running statistics, no dropout).
pub fn predict(model: &DenseNet, x: &Tensor) -> Result<Tensor> {
    let mut tape = Tape::no_grad();
    model.forward(&mut tape, x)
}
