//! The anomaly check of a training step as one fused reduction: whether any element of a list
//! of tensors (the loss, every gradient, every parameter) is NaN or infinite, computed in one
//! kernel call over all of them into a one-element flag that stays on the device: the flag an
//! optimizer's [`crate::optim::Optimizer::step_if_finite`] reads on the device to skip its
//! update, and that the host reads when it wants to know: at once ([`flag_is_set`], one sync)
//! or asynchronously ([`PendingScalar`]: copied to the host while the device runs on, read
//! later with no wait when the copy is done).

use super::widen::wide;
use crate::backend::{kernel_trait, kernels};
use crate::error::{Error, Result};
use crate::profile::{self, Pass};
use crate::tensor::Tensor;

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;
mod pending;

pub use pending::PendingScalar;

kernel_trait! {
    /// Device kernels of the finiteness check (the inputs checked by the caller).
    pub(crate) trait FiniteKernels {
        /// A `[1]` tensor of the inputs' dtype: 1 if any element of any of `xs` (at least one
        /// tensor, all of one dtype, on this device) is NaN or infinite, else 0.
        fn non_finite(&self, xs: &[&Tensor]) -> Result<Tensor>;
    }
}

const OP: &str = "non_finite";

/// A one-element tensor (the inputs' dtype, on their device) holding 1 if any element of any of
/// `xs` is NaN or infinite, else 0: one kernel call over every tensor (a parallel pass on the
/// CPU, one launch on a GPU), nothing read back. `xs` must be non-empty, of one dtype and on one
/// device; the flag of 16-bit tensors is `f32` (they are checked through `f32` copies, which
/// keep every infinity and NaN). Not differentiable: it records nothing.
pub fn non_finite(xs: &[&Tensor]) -> Result<Tensor> {
    let _profile = profile::scope(OP, Pass::Optimizer);
    let first = xs
        .first()
        .ok_or_else(|| Error::invalid(OP, "no tensor to check"))?;
    for x in &xs[1..] {
        first.check_compatible(x, OP)?;
    }
    let k = kernels(first.device())?;
    if first.dtype().is_half() {
        let wides = xs.iter().map(|x| wide(x)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = wides.iter().map(|w| w.as_ref()).collect();
        return k.non_finite(&refs);
    }
    k.non_finite(xs)
}

/// Whether a flag of [`non_finite`] is set, read on the host now (one sync: the synchronous
/// check; [`PendingScalar`] reads it without stopping the host). A meta device holds no
/// values and nothing on it is ever non-finite: its flag reads as clear, without a read.
pub fn flag_is_set(flag: &Tensor) -> Result<bool> {
    if flag.device().is_meta() {
        return Ok(false);
    }
    Ok(flag.scalar()? != 0.0)
}
