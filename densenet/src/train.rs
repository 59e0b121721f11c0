//! One training step: forward, cross-entropy, backward, an anomaly check, optimizer update,
//! queued on the model's device without a host round-trip before the update.
//!
//! The labels are copied to the device once per step ([`tape::Labels`]) and serve the loss, its
//! gradient and the accuracy count. The loss and the correct count stay device tensors in
//! [`StepOutput`] until the caller reads them ([`StepOutput::loss`], [`StepOutput::correct`]).
//!
//! The anomaly check (on by default) is one fused reduction ([`non_finite_flag`]: one kernel
//! call over the loss, every gradient and every parameter) into a device flag. The optimizer's
//! update is conditional on that flag on the device (the fused update skips itself when the
//! flag is set, so nothing non-finite is spread and the optimizer state stays as it was). When
//! it is set, the step fails with a [`DenseNetError::NonFinite`](crate::DenseNetError::NonFinite)
//! naming the step and what diverged (found by reading the tensors back, on that failure path
//! only). Two ways to run it:
//!
//! - [`train_step_queued`], a training loop's step: the update is queued through the loop's
//!   [`AnomalyGuard`] ([`Optimizer::queue_if_finite`]: the flag copied to the host
//!   asynchronously), with no host sync; a non-finite step `n` is reported when step `n + 1`
//!   queues its update, or when the loop asks ([`AnomalyGuard::check_now`],
//!   [`AnomalyGuard::finish`]). Per steady-state step on any device: no host sync and, for SGD,
//!   one optimizer launch.
//! - [`train_step`] / [`train_step_with`], the synchronous check
//!   ([`Optimizer::step_if_finite`]): the flag read once, after the update is queued (one host
//!   sync per step), a non-finite step reported at once.
//!
//! The data-parallel step ([`train_step_ddp`]) keeps its sync: the flag is all-reduced on the
//! host before any rank queues its update.

use crate::error::Result;
use crate::model::DenseNet;
use dist::Ddp;
use std::sync::OnceLock;
use tape::optim::{LossScaler, Optimizer, SgdConfig};
use tape::{ops, Gradients, Labels, Tape, Tensor};
use trainer::anomaly::{self, AnomalyGuard};

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

/// What a forward + backward pass produced. The loss and the correct count are device tensors,
/// read (one host sync each, then kept) when asked for.
pub struct StepOutput {
    /// Logits `[n, classes]`.
    pub logits: Tensor,
    /// Gradients of every parameter (by tensor id).
    pub grads: Gradients,
    loss: Tensor,
    correct: Tensor,
    loss_value: OnceLock<f64>,
    correct_value: OnceLock<usize>,
}

impl StepOutput {
    /// The outputs of a step: its loss and correct count are device tensors of one element.
    pub fn new(loss: Tensor, logits: Tensor, grads: Gradients, correct: Tensor) -> Self {
        StepOutput {
            logits,
            grads,
            loss,
            correct,
            loss_value: OnceLock::new(),
            correct_value: OnceLock::new(),
        }
    }

    /// Mean cross-entropy of the batch: read from the device on the first call (one sync).
    pub fn loss(&self) -> Result<f64> {
        if let Some(&v) = self.loss_value.get() {
            return Ok(v);
        }
        let v = self.loss.scalar()?;
        Ok(*self.loss_value.get_or_init(|| v))
    }

    /// Correct top-1 predictions: read from the device on the first call (one sync).
    pub fn correct(&self) -> Result<usize> {
        if let Some(&v) = self.correct_value.get() {
            return Ok(v);
        }
        let v = self.correct.scalar()?;
        if !(v >= 0.0 && v.fract() == 0.0) {
            return Err(tape::Error::Backend(format!(
                "the correct count read back as {v}, not a count"
            ))
            .into());
        }
        Ok(*self.correct_value.get_or_init(|| v as usize))
    }

    /// The loss as the device tensor (`[1]`, the model's dtype), not read.
    pub fn loss_tensor(&self) -> &Tensor {
        &self.loss
    }

    /// The correct count as the device tensor (`[1]`, the model's dtype), not read.
    pub fn correct_tensor(&self) -> &Tensor {
        &self.correct
    }
}

/// Top-1 hits of `logits` against `labels` ([`ops::correct_count`] on the logits' device, then
/// one read).
pub fn count_correct(logits: &Tensor, labels: &[usize]) -> Result<usize> {
    let labels = Labels::new(labels, logits.device())?;
    Ok(ops::correct_count(logits, &labels)?.scalar()? as usize)
}

/// Forward and backward of one batch in training mode; `seed` drives dropout. The labels are
/// copied to the model's device once; nothing is read back.
pub fn forward_backward(
    model: &DenseNet,
    x: &Tensor,
    labels: &[usize],
    seed: u64,
) -> Result<StepOutput> {
    run_forward_backward(model, x, labels, seed, Backward::Local)
}

/// [`forward_backward`] on this rank's shard of a data-parallel batch: the gradients come back
/// averaged over `ddp`'s ranks (buckets reduced while backward runs); the loss and the correct
/// count stay this rank's.
pub fn forward_backward_ddp(
    model: &DenseNet,
    x: &Tensor,
    labels: &[usize],
    seed: u64,
    ddp: &Ddp,
) -> Result<StepOutput> {
    run_forward_backward(model, x, labels, seed, Backward::Ddp(ddp))
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
    model: &DenseNet,
    x: &Tensor,
    labels: &[usize],
    seed: u64,
    backward: Backward<'_>,
) -> Result<StepOutput> {
    let labels = Labels::new(labels, x.device())?;
    let mut tape = Tape::recording()
        .with_seed(seed)
        .with_precision(model.precision());
    let logits = model.forward(&mut tape, x)?;
    let loss = ops::cross_entropy_labels(&mut tape, &logits, &labels)?;
    let grads = match backward {
        Backward::Local => tape.backward(&loss)?,
        Backward::Ddp(ddp) => ddp.backward(tape, &loss)?,
        Backward::Scaled(scaler) => scaler.backward(tape, &loss)?,
    };
    let correct = ops::correct_count(&logits, &labels)?;
    Ok(StepOutput::new(loss, logits, grads, correct))
}

/// How [`train_step_with`] runs one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepOptions {
    /// Seed of the step's dropout masks.
    pub seed: u64,
    /// The step's index in the run (named by a [`DenseNetError::NonFinite`](crate::DenseNetError::NonFinite) error).
    pub step: u64,
    /// Run the anomaly check: the update is conditional on [`non_finite_flag`] (on in
    /// [`StepOptions::new`]).
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

/// The anomaly check's device flag ([`trainer::anomaly::non_finite_flag`]): a one-element
/// tensor holding 1 if the loss, the gradient of any of `model`'s parameters or a parameter
/// itself holds a NaN or an infinity, else 0. One fused kernel call; nothing is read back.
pub fn non_finite_flag(model: &DenseNet, out: &StepOutput) -> Result<Tensor> {
    Ok(anomaly::non_finite_flag(model, &out.loss, &out.grads)?)
}

/// Fails with [`DenseNetError::NonFinite`](crate::DenseNetError::NonFinite) naming `step` if the loss, the gradient of any of
/// `model`'s parameters or a parameter itself holds a NaN or an infinity
/// ([`trainer::anomaly::check_finite`]: the flag read once; the culprit named only when it is
/// set).
pub fn check_finite(model: &DenseNet, out: &StepOutput, step: u64) -> Result<()> {
    Ok(anomaly::check_finite(model, &out.loss, &out.grads, step)?)
}

/// One SGD (or other optimizer) step on a batch; returns the loss and logits. `seed` drives
/// dropout and is also the step index a [`DenseNetError::NonFinite`](crate::DenseNetError::NonFinite) error names (a loop that
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

/// One optimizer step on a batch as `options` say, queued with no host read before the update.
/// With the anomaly check on, the update is conditional on the device flag of
/// [`non_finite_flag`] ([`Optimizer::step_if_finite`]), which the host reads once, after the
/// update is queued: a non-finite loss, gradient or parameter fails with
/// [`DenseNetError::NonFinite`](crate::DenseNetError::NonFinite), and the device has skipped the update, so the parameters and
/// the optimizer state keep their values (the batch norm running statistics have already seen
/// the batch in forward).
pub fn train_step_with(
    model: &mut DenseNet,
    optimizer: &mut dyn Optimizer,
    x: &Tensor,
    labels: &[usize],
    options: StepOptions,
) -> Result<StepOutput> {
    let out = forward_backward(model, x, labels, options.seed)?;
    if !options.check_finite {
        optimizer.step(&mut model.parameters_mut(), &out.grads)?;
        return Ok(out);
    }
    anomaly::step_if_finite(model, optimizer, &out.loss, &out.grads, options.step)?;
    Ok(out)
}

/// [`train_step_with`] with the queued anomaly check of `guard` ([`AnomalyGuard::step`]): no
/// host sync. The previous step, if it was not finite, fails here as
/// [`DenseNetError::NonFinite`](crate::DenseNetError::NonFinite) naming it, with this step's
/// update not queued (the parameters and the optimizer state are those from before that step);
/// the last step is checked by [`AnomalyGuard::check_now`] or [`AnomalyGuard::finish`]. With
/// `options.check_finite` off, the update is unconditional and `guard` is not used.
pub fn train_step_queued(
    model: &mut DenseNet,
    optimizer: &mut dyn Optimizer,
    guard: &mut AnomalyGuard,
    x: &Tensor,
    labels: &[usize],
    options: StepOptions,
) -> Result<StepOutput> {
    let out = forward_backward(model, x, labels, options.seed)?;
    if !options.check_finite {
        optimizer.step(&mut model.parameters_mut(), &out.grads)?;
        return Ok(out);
    }
    guard.step(model, optimizer, &out.loss, &out.grads, options.step)?;
    Ok(out)
}

/// [`train_step`] with dynamic loss scaling (for f16 training; PyTorch's `GradScaler`): backward
/// seeded with `scaler`'s scale, then [`LossScaler::step`]: the gradients unscaled, the update
/// skipped on the device when an unscaled gradient is inf or NaN (an overflow, not an error:
/// the scale backs off) and the scale updated, one host sync per step; `seed` drives dropout. Returns the step's
/// output (its gradients unscaled) and whether the update was applied. The anomaly check of
/// [`train_step`] does not run: overflows are the scaler's to handle. Not for data-parallel steps.
pub fn train_step_scaled(
    model: &mut DenseNet,
    optimizer: &mut dyn Optimizer,
    scaler: &mut LossScaler,
    x: &Tensor,
    labels: &[usize],
    seed: u64,
) -> Result<(StepOutput, bool)> {
    let mut out = run_forward_backward(model, x, labels, seed, Backward::Scaled(scaler))?;
    let applied = scaler.step(optimizer, &mut model.parameters_mut(), &mut out.grads)?;
    Ok((out, applied))
}

/// [`train_step_with`] on this rank's shard of a data-parallel batch: the batch norm running
/// statistics first taken from rank 0 (as PyTorch's DDP broadcasts buffers before each
/// forward), gradients averaged over `ddp`'s ranks ([`forward_backward_ddp`]) and the anomaly check global
/// ([`anomaly::step_if_finite_global`]: a non-finite value on any rank skips the update on
/// every rank, and every rank fails with [`DenseNetError::NonFinite`](crate::DenseNetError::NonFinite)).
pub fn train_step_ddp(
    model: &mut DenseNet,
    optimizer: &mut dyn Optimizer,
    x: &Tensor,
    labels: &[usize],
    options: StepOptions,
    ddp: &Ddp,
) -> Result<StepOutput> {
    dist::broadcast_buffers(ddp.group(), model, 0)?;
    let out = forward_backward_ddp(model, x, labels, options.seed, ddp)?;
    if !options.check_finite {
        optimizer.step(&mut model.parameters_mut(), &out.grads)?;
        return Ok(out);
    }
    let group = ddp.group();
    anomaly::step_if_finite_global(group, model, optimizer, &out.loss, &out.grads, options.step)?;
    Ok(out)
}

/// Logits in eval mode without recording (running statistics, no dropout).
pub fn predict(model: &DenseNet, x: &Tensor) -> Result<Tensor> {
    let mut tape = Tape::no_grad().with_precision(model.precision());
    model.forward(&mut tape, x)
}
