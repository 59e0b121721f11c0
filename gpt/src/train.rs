//! A training step: forward under the model's recompute setting, mean cross-entropy over the next
//! tokens, backward, a non-finite check over the loss, every gradient and every parameter (one
//! fused reduction into a device flag), and an optimizer update the device skips when the flag
//! is set ([`Optimizer::step_if_finite`]).
//!
//! [`train_step_queued`] is the step of a training loop: the update is queued through the
//! loop's [`AnomalyGuard`] with no host sync (a non-finite step is reported when the next step
//! queues its update, or when the loop asks); [`train_step`] is the synchronous check (one host
//! sync per step, a non-finite step reported at once).

use crate::error::Result;
use crate::model::{Gpt, TokenBatch};
use dist::Ddp;
use tape::optim::{Adam, AdamConfig, LossScaler, Optimizer};
use tape::{ops, Gradients, Tape, Tensor};
use trainer::anomaly::AnomalyGuard;

/// What a forward + backward pass produced.
pub struct StepOutput {
    /// Mean cross-entropy, a one-element device tensor.
    pub loss: Tensor,
    /// Logits `[batch, seq, vocab]`.
    pub logits: Tensor,
    /// Gradients of every parameter (by tensor id).
    pub grads: Gradients,
}

impl StepOutput {
    /// The loss, read from the device.
    pub fn loss_value(&self) -> Result<f64> {
        Ok(self.loss.scalar()?)
    }
}

/// Adam with nanoGPT's character-level defaults apart from the learning rate: betas (0.9,
/// 0.99), eps 1e-8, no weight decay.
pub fn adam(lr: f64) -> Result<Adam> {
    Ok(Adam::new(AdamConfig {
        lr,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.0,
    })?)
}

/// Forward and backward of one batch in training mode under the model's recompute setting; `seed`
/// drives dropout.
pub fn forward_backward(model: &Gpt, batch: &TokenBatch, seed: u64) -> Result<StepOutput> {
    run_forward_backward(model, batch, seed, Backward::Local)
}

/// [`forward_backward`] on this rank's share of a data-parallel batch: the gradients come back
/// averaged over `ddp`'s ranks (buckets reduced while backward runs); the loss stays this
/// rank's.
pub fn forward_backward_ddp(
    model: &Gpt,
    batch: &TokenBatch,
    seed: u64,
    ddp: &Ddp,
) -> Result<StepOutput> {
    run_forward_backward(model, batch, seed, Backward::Ddp(ddp))
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
    model: &Gpt,
    batch: &TokenBatch,
    seed: u64,
    backward: Backward<'_>,
) -> Result<StepOutput> {
    model.check_tokens(&batch.targets, batch.batch, batch.seq)?;
    let layers = model.block_layers();
    let mut tape = Tape::recording()
        .with_seed(seed)
        .with_precision(model.precision());
    let logits = model.forward(&mut tape, &layers, &batch.inputs, batch.batch, batch.seq)?;
    let v = model.config().vocab_size;
    let flat = ops::reshape(&mut tape, &logits, &[batch.batch * batch.seq, v])?;
    let loss = ops::cross_entropy(&mut tape, &flat, &batch.targets)?;
    drop(flat);
    let grads = match backward {
        Backward::Local => tape.backward(&loss)?,
        Backward::Ddp(ddp) => ddp.backward(tape, &loss)?,
        Backward::Scaled(scaler) => scaler.backward(tape, &loss)?,
    };
    Ok(StepOutput {
        loss,
        logits,
        grads,
    })
}

/// One optimizer step on `batch` (dropout seed and step index `step`): the update is skipped
/// on the device, and the step fails with [`GptError::NonFinite`](crate::GptError::NonFinite), when the loss, a gradient
/// or a parameter is NaN or infinite.
pub fn train_step(
    model: &mut Gpt,
    optimizer: &mut dyn Optimizer,
    batch: &TokenBatch,
    step: u64,
) -> Result<StepOutput> {
    let out = forward_backward(model, batch, step)?;
    trainer::anomaly::step_if_finite(model, optimizer, &out.loss, &out.grads, step)?;
    Ok(out)
}

/// [`train_step`] with the queued anomaly check of `guard` ([`AnomalyGuard::step`]): no host
/// sync. Step `step - 1`, if it was not finite, fails here as
/// [`GptError::NonFinite`](crate::GptError::NonFinite) naming it, with this step's update not
/// queued; the last step is checked by [`AnomalyGuard::check_now`] or [`AnomalyGuard::finish`].
pub fn train_step_queued(
    model: &mut Gpt,
    optimizer: &mut dyn Optimizer,
    guard: &mut AnomalyGuard,
    batch: &TokenBatch,
    step: u64,
) -> Result<StepOutput> {
    let out = forward_backward(model, batch, step)?;
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
    model: &mut Gpt,
    optimizer: &mut dyn Optimizer,
    scaler: &mut LossScaler,
    batch: &TokenBatch,
    step: u64,
) -> Result<(StepOutput, bool)> {
    let mut out = run_forward_backward(model, batch, step, Backward::Scaled(scaler))?;
    let params = &mut tape::nn::parameters_mut(model);
    let applied = scaler.step(optimizer, params, &mut out.grads)?;
    Ok((out, applied))
}

/// [`train_step`] on this rank's share of a data-parallel batch: gradients averaged over
/// `ddp`'s ranks and the anomaly check global ([`trainer::anomaly::step_if_finite_global`]: a
/// non-finite value on any rank skips the update on every rank).
pub fn train_step_ddp(
    model: &mut Gpt,
    optimizer: &mut dyn Optimizer,
    batch: &TokenBatch,
    step: u64,
    ddp: &Ddp,
) -> Result<StepOutput> {
    let out = forward_backward_ddp(model, batch, step, ddp)?;
    let group = ddp.group();
    trainer::anomaly::step_if_finite_global(group, model, optimizer, &out.loss, &out.grads, step)?;
    Ok(out)
}
