//! Softmax cross-entropy over class logits, averaged over the batch. Numerically stable
//! (log-sum-exp); backward saves the logits (no new buffer) and the labels.

use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

const OP: &str = "cross_entropy";

/// `mean_i(-log softmax(logits[i])[labels[i]])` for logits of shape `[n, classes]` (`n >= 1`),
/// as a tensor of shape `[1]`. One label per row, each `< classes`.
pub fn cross_entropy(tape: &mut Tape, logits: &Tensor, labels: &[usize]) -> Result<Tensor> {
    let (n, classes) = match logits.shape() {
        &[n, c] => (n, c),
        s => {
            return Err(Error::shape(
                OP,
                format!("logits must have shape [n, classes], got {s:?}"),
            ))
        }
    };
    if n == 0 {
        return Err(Error::invalid(OP, "the batch is empty"));
    }
    if labels.len() != n {
        return Err(Error::shape(
            OP,
            format!("{} labels for {n} rows of logits", labels.len()),
        ));
    }
    if let Some((i, &y)) = labels.iter().enumerate().find(|(_, &y)| y >= classes) {
        return Err(Error::invalid(
            OP,
            format!("label {y} (row {i}) is out of range for {classes} classes"),
        ));
    }
    #[cfg(feature = "cuda")]
    if logits.device().is_cuda() {
        return cuda::cross_entropy(tape, logits, labels, n, classes);
    }
    let total = dispatch_float!(logits.dtype(), T => cpu::total_loss::<T>(logits.as_slice::<T>()?, classes, labels));
    let out = Tensor::full(&[1], total / n as f64, logits.dtype(), logits.device())?;
    let key = GradKey::of(logits);
    let saved = tape
        .needs_grad(&[logits])
        .then(|| (logits.clone(), labels.to_vec()));
    Ok(tape.record(&[logits], out, move |g, grads| {
        let (logits, labels) =
            saved.ok_or_else(|| Error::Backward("cross_entropy saved nothing".into()))?;
        let factor = g.scalar()? / n as f64;
        let gx = dispatch_float!(logits.dtype(), T => Tensor::from_vec(cpu::grad::<T>(logits.as_slice::<T>()?, classes, &labels, factor), logits.shape(), logits.device()))?;
        grads.accumulate(&key, gx)
    }))
}
