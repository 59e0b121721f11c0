//! Top-1 accuracy on the device: how many rows of class logits have their largest logit at
//! their label, as a one-element tensor, so a training step can count its hits without reading
//! the logits back (read the count when it is wanted).

use super::widen::wide;
use crate::backend::{kernel_trait, kernels};
use crate::error::{Error, Result};
use crate::labels::Labels;
use crate::profile::{self, Pass};
use crate::tensor::Tensor;

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

kernel_trait! {
    /// Device kernels of the accuracy count (labels checked by the caller).
    pub(crate) trait AccuracyKernels {
        /// The number of rows of `logits` (`[n, classes]`, `classes >= 1`) whose top-1 class is
        /// their label, as a `[1]` tensor of the logits' dtype.
        fn correct_count(&self, logits: &Tensor, labels: &Labels) -> Result<Tensor>;
    }
}

const OP: &str = "correct_count";

/// How many rows of `logits` (`[n, classes]`) have their top-1 class equal to their label, as
/// a `[1]` tensor of the logits' dtype on their device (exact up to 2^24 rows in `f32`). The
/// top-1 class of a row is its largest logit in [`f64::total_cmp`] order, the last one among
/// equals (as `Iterator::max_by` picks it; a NaN logit counts as the largest). Not
/// differentiable: it records nothing.
pub fn correct_count(logits: &Tensor, labels: &Labels) -> Result<Tensor> {
    let _profile = profile::scope(OP, Pass::Forward);
    let (n, classes) = match logits.shape() {
        &[n, c] => (n, c),
        s => {
            return Err(Error::shape(
                OP,
                format!("logits must have shape [n, classes], got {s:?}"),
            ))
        }
    };
    if classes == 0 {
        return Err(Error::invalid(OP, "the logits have no class"));
    }
    labels.check(OP, n, classes, logits.device())?;
    // 16-bit logits are compared in f32 (exact), and counted in f32 as well (a 16-bit count
    // would be exact only up to 256 or 2048 rows).
    kernels(logits.device())?.correct_count(&*wide(logits)?, labels)
}
