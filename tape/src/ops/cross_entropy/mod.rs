//! Softmax cross-entropy over class logits, averaged over the batch. Numerically stable
//! (log-sum-exp); backward saves the logits (no new buffer) and the labels, which live on the
//! logits' device ([`Labels`]).

use super::autocast::to_f32;
use super::checks::check_grad;
use super::widen::via_f32;
use crate::backend::{kernel_trait, kernels};
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::labels::Labels;
use crate::tape::Tape;
use crate::tensor::Tensor;

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

kernel_trait! {
    /// Device kernels of softmax cross-entropy (labels checked by the caller).
    pub(crate) trait CrossEntropyKernels {
        /// The mean over rows of `-log softmax(logits)[label]`, as a `[1]` tensor.
        fn cross_entropy_forward(&self, logits: &Tensor, labels: &Labels) -> Result<Tensor>;
        /// `g[0] / n * (softmax(logits) - onehot(labels))`.
        fn cross_entropy_backward(
            &self,
            logits: &Tensor,
            labels: &Labels,
            g: &Tensor,
        ) -> Result<Tensor>;
    }
}

const OP: &str = "cross_entropy";

/// `mean_i(-log softmax(logits[i])[labels[i]])` for logits of shape `[n, classes]` (`n >= 1`),
/// as a tensor of shape `[1]`. One label per row, each `< classes`; they are copied to the
/// logits' device for this call (see [`cross_entropy_labels`] to copy them once and reuse them).
pub fn cross_entropy(tape: &mut Tape, logits: &Tensor, labels: &[usize]) -> Result<Tensor> {
    rows_and_classes(logits)?;
    let labels = Labels::new(labels, logits.device())?;
    cross_entropy_labels(tape, logits, &labels)
}

/// [`cross_entropy`] with labels already on the logits' device: no host-to-device copy.
/// Under a 16-bit precision policy 16-bit logits are cast to `f32` first (an `f32` op).
pub fn cross_entropy_labels(tape: &mut Tape, logits: &Tensor, labels: &Labels) -> Result<Tensor> {
    let logits = &*to_f32(tape, logits)?;
    let _profile = tape.profile_op(OP);
    let (n, classes) = rows_and_classes(logits)?;
    labels.check(OP, n, classes, logits.device())?;
    let k = kernels(logits.device())?;
    let out = via_f32([logits], logits.dtype(), |[l]| {
        k.cross_entropy_forward(l, labels)
    })?;
    let key = GradKey::of(logits);
    let saved = tape
        .needs_grad(&[logits])
        .then(|| (logits.clone(), labels.clone()));
    Ok(tape.record(OP, &[logits], out, move |g, grads| {
        let (logits, labels) =
            saved.ok_or_else(|| Error::Backward("cross_entropy saved nothing".into()))?;
        check_grad(OP, g, &[1], Some(&logits))?;
        let gx = via_f32([&logits, g], logits.dtype(), |[l, g]| {
            k.cross_entropy_backward(l, &labels, g)
        })?;
        grads.accumulate(&key, gx)
    }))
}

/// `(n, classes)` of logits of shape `[n, classes]` with `n >= 1`.
fn rows_and_classes(logits: &Tensor) -> Result<(usize, usize)> {
    match logits.shape() {
        &[0, _] => Err(Error::invalid(OP, "the batch is empty")),
        &[n, c] => Ok((n, c)),
        s => Err(Error::shape(
            OP,
            format!("logits must have shape [n, classes], got {s:?}"),
        )),
    }
}
