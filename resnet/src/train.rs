//! One training step (forward, cross-entropy, backward, anomaly check, optimizer update) and
//! prediction in eval mode.
//!
//! The anomaly check is the shared one ([`trainer::anomaly`]): one fused reduction over the loss,
//! every gradient and every parameter into a device flag; the update is conditional on it on the
//! device, so a diverged step changes neither the parameters nor the optimizer state, and fails
//! with [`ResNetError::NonFinite`] naming the first culprit. [`train_step_queued`] checks through
//! a training loop's [`AnomalyGuard`] with no host sync per step (a non-finite step is reported
//! when the next one queues its update, or when the loop asks); [`train_step`] is the
//! synchronous check (one host sync per step).

use crate::error::{ResNetError, Result};
use crate::model::ResNet;
use dist::Ddp;
use tape::optim::{LossScaler, Optimizer, SgdConfig};
use tape::{ops, Gradients, Labels, Tape, Tensor};
use trainer::anomaly::AnomalyGuard;

/// The usual CIFAR ResNet recipe's optimizer: SGD, lr 0.1, momentum 0.9, weight decay 5e-4.
pub fn sgd_config() -> SgdConfig {
    SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 5e-4,
    }
}

/// What a forward + backward pass produced.
pub struct StepOutput {
    /// Logits `[n, classes]`.
    pub logits: Tensor,
    /// Gradients of every parameter (by tensor id).
    pub grads: Gradients,
    /// Mean cross-entropy of the batch (`[1]`, on the device).
    pub loss: Tensor,
}

impl StepOutput {
    /// The loss, read from the device (one sync).
    pub fn loss(&self) -> Result<f64> {
        Ok(self.loss.scalar()?)
    }
}

/// Forward and backward of one batch in training mode under the model's recompute setting: mean cross-entropy of
/// `labels` (one per image, each below `num_classes`).
pub fn forward_backward(model: &ResNet, x: &Tensor, labels: &[usize]) -> Result<StepOutput> {
    run_forward_backward(model, x, labels, Backward::Local)
}

/// [`forward_backward`] on this rank's shard of a data-parallel batch: the gradients come back
/// averaged over `ddp`'s ranks (buckets reduced while backward runs); the loss stays this
/// rank's.
pub fn forward_backward_ddp(
    model: &ResNet,
    x: &Tensor,
    labels: &[usize],
    ddp: &Ddp,
) -> Result<StepOutput> {
    run_forward_backward(model, x, labels, Backward::Ddp(ddp))
}

/// How a step's backward runs: on this process, data-parallel, or seeded with a loss scaler's
/// scale.
#[derive(Clone, Copy)]
enum Backward<'a> {
    Local,
    Ddp(&'a Ddp),
    Scaled(&'a LossScaler),
}

fn run_forward_backward(
    model: &ResNet,
    x: &Tensor,
    labels: &[usize],
    backward: Backward<'_>,
) -> Result<StepOutput> {
    let [n, ..] = model.check_input(x)?;
    if labels.len() != n {
        return Err(ResNetError::Input(format!(
            "{} labels for a batch of {n}",
            labels.len()
        )));
    }
    let classes = model.config().num_classes;
    if let Some(l) = labels.iter().find(|&&l| l >= classes) {
        return Err(ResNetError::Input(format!(
            "label {l} out of range for {classes} classes"
        )));
    }
    let runner = model.runner();
    let mut tape = Tape::recording().with_precision(model.precision());
    // The labels are made after the forward, so that a budget plan is made for what the device
    // holds as the step starts (the model, its optimizer state, the batch).
    let logits = runner.forward(&mut tape, x)?;
    let labels = Labels::new(labels, x.device())?;
    let loss = ops::cross_entropy_labels(&mut tape, &logits, &labels)?;
    let grads = match backward {
        Backward::Local => tape.backward(&loss)?,
        Backward::Ddp(ddp) => ddp.backward(tape, &loss)?,
        Backward::Scaled(scaler) => scaler.backward(tape, &loss)?,
    };
    Ok(StepOutput {
        logits,
        grads,
        loss,
    })
}

/// One optimizer step on a batch under the model's recompute setting: forward, backward, the anomaly check, and the
/// update, which the device skips if anything is not finite (the step then fails with
/// [`ResNetError::NonFinite`] naming `step`; the batch norms' running statistics have already
/// seen the batch).
pub fn train_step(
    model: &mut ResNet,
    optimizer: &mut dyn Optimizer,
    x: &Tensor,
    labels: &[usize],
    step: u64,
) -> Result<StepOutput> {
    let out = forward_backward(model, x, labels)?;
    trainer::anomaly::step_if_finite(model, optimizer, &out.loss, &out.grads, step)?;
    Ok(out)
}

/// [`train_step`] with the queued anomaly check of `guard` ([`AnomalyGuard::step`]): no host
/// sync. Step `step - 1`, if it was not finite, fails here as [`ResNetError::NonFinite`] naming
/// it, with this step's update not queued; the last step is checked by
/// [`AnomalyGuard::check_now`] or [`AnomalyGuard::finish`].
pub fn train_step_queued(
    model: &mut ResNet,
    optimizer: &mut dyn Optimizer,
    guard: &mut AnomalyGuard,
    x: &Tensor,
    labels: &[usize],
    step: u64,
) -> Result<StepOutput> {
    let out = forward_backward(model, x, labels)?;
    guard.step(model, optimizer, &out.loss, &out.grads, step)?;
    Ok(out)
}

/// [`train_step`] with dynamic loss scaling (for f16 training; PyTorch's `GradScaler`): backward
/// seeded with `scaler`'s scale, then [`LossScaler::step`]: the gradients unscaled, the update
/// skipped on the device when an unscaled gradient is inf or NaN (an overflow, not an error:
/// the scale backs off) and the scale updated, one host sync per step. Returns the step's
/// output (its gradients unscaled) and whether the update was applied. The anomaly check of
/// [`train_step`] does not run: overflows are the scaler's to handle. Not for data-parallel steps.
pub fn train_step_scaled(
    model: &mut ResNet,
    optimizer: &mut dyn Optimizer,
    scaler: &mut LossScaler,
    x: &Tensor,
    labels: &[usize],
) -> Result<(StepOutput, bool)> {
    let mut out = run_forward_backward(model, x, labels, Backward::Scaled(scaler))?;
    let applied = scaler.step(optimizer, &mut model.parameters_mut(), &mut out.grads)?;
    Ok((out, applied))
}

/// [`train_step`] on this rank's shard of a data-parallel batch: the batch norms' running
/// statistics first taken from rank 0 (as PyTorch's DDP broadcasts buffers), gradients
/// averaged over `ddp`'s ranks, and the anomaly check global
/// ([`trainer::anomaly::step_if_finite_global`]: a non-finite value on any rank skips the
/// update on every rank).
pub fn train_step_ddp(
    model: &mut ResNet,
    optimizer: &mut dyn Optimizer,
    x: &Tensor,
    labels: &[usize],
    step: u64,
    ddp: &Ddp,
) -> Result<StepOutput> {
    dist::broadcast_buffers(ddp.group(), model, 0)?;
    let out = forward_backward_ddp(model, x, labels, ddp)?;
    let group = ddp.group();
    trainer::anomaly::step_if_finite_global(group, model, optimizer, &out.loss, &out.grads, step)?;
    Ok(out)
}

/// Logits in eval mode (running statistics), recording nothing.
pub fn predict(model: &ResNet, x: &Tensor) -> Result<Tensor> {
    // A tape that does not record runs every setting as the plain forward.
    let runner = model.runner();
    let mut tape = Tape::no_grad();
    runner.forward(&mut tape, x)
}
