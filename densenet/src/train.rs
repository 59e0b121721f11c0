//! One training step: forward, cross-entropy, backward, optimizer update.

use crate::error::Result;
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

/// One SGD (or other optimizer) step on a batch; returns the loss and logits.
pub fn train_step(
    model: &mut DenseNet,
    optimizer: &mut dyn Optimizer,
    x: &Tensor,
    labels: &[usize],
    seed: u64,
) -> Result<StepOutput> {
    let out = forward_backward(model, x, labels, seed)?;
    let mut params = model.parameters_mut();
    optimizer.step(&mut params, &out.grads)?;
    Ok(out)
}

/// Logits in eval mode without recording (running statistics, no dropout).
pub fn predict(model: &DenseNet, x: &Tensor) -> Result<Tensor> {
    let mut tape = Tape::no_grad();
    model.forward(&mut tape, x)
}
