//! Softmax cross-entropy over class logits, averaged over the batch. Numerically stable
//! (log-sum-exp); backward saves the logits (no new buffer) and the labels.

use super::checks::check_grad;
use crate::backend::kernels;
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

/// Device kernels of softmax cross-entropy (labels checked by the caller).
pub(crate) trait CrossEntropyKernels {
    /// The mean over rows of `-log softmax(logits)[label]`, as a `[1]` tensor.
    fn cross_entropy_forward(&self, logits: &Tensor, labels: &[usize]) -> Result<Tensor>;
    /// `g[0] / n * (softmax(logits) - onehot(labels))`.
    fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        labels: &[usize],
        g: &Tensor,
    ) -> Result<Tensor>;
}

const OP: &str = "cross_entropy";

/// `mean_i(-log softmax(logits[i])[labels[i]])` for logits of shape `[n, classes]` (`n >= 1`),
/// as a tensor of shape `[1]`. One label per row, each `< classes`.
pub fn cross_entropy(tape: &mut Tape, logits: &Tensor, labels: &[usize]) -> Result<Tensor> {
    let _profile = tape.profile_op(OP);
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
    let k = kernels(logits.device())?;
    let out = k.cross_entropy_forward(logits, labels)?;
    let key = GradKey::of(logits);
    let saved = tape
        .needs_grad(&[logits])
        .then(|| (logits.clone(), labels.to_vec()));
    Ok(tape.record(OP, &[logits], out, move |g, grads| {
        let (logits, labels) =
            saved.ok_or_else(|| Error::Backward("cross_entropy saved nothing".into()))?;
        check_grad(OP, g, &[1], Some(&logits))?;
        grads.accumulate(&key, k.cross_entropy_backward(&logits, &labels, g)?)
    }))
}
