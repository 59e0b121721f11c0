//! Full reductions to a one-element tensor: `sum` and `mean` (the usual way to make a scalar loss
//! in tests and examples). Sums are taken in `f64`.

use super::autocast::to_f32;
use super::widen::via_f32;
use crate::backend::{kernel_trait, kernels};
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

kernel_trait! {
    /// Device kernels of the full reductions.
    pub(crate) trait ReduceKernels {
        /// `sum(x) * factor` (summed in `f64`, rounded once) as a `[1]` tensor.
        fn sum_all(&self, x: &Tensor, factor: f64) -> Result<Tensor>;
        /// A tensor of `shape` filled with `g[0] * factor` (`g` has one element; no host round-trip
        /// where the device can avoid it).
        fn fill_scaled(&self, shape: &[usize], g: &Tensor, factor: f64) -> Result<Tensor>;
    }
}

/// The sum of all elements, as a `[1]` tensor.
pub fn sum(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    reduce(tape, "sum", x, 1.0)
}

/// The mean of all elements, as a `[1]` tensor.
pub fn mean(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    reduce(tape, "mean", x, 1.0 / x.numel().max(1) as f64)
}

/// The scaled sum (in `f32` under a 16-bit precision policy: an `f32` op).
fn reduce(tape: &mut Tape, op: &'static str, x: &Tensor, factor: f64) -> Result<Tensor> {
    let x = &*to_f32(tape, x)?;
    let _profile = tape.profile_op(op);
    let k = kernels(x.device())?;
    let out = via_f32([x], x.dtype(), |[x]| k.sum_all(x, factor))?;
    let dtype = x.dtype();
    let kx = GradKey::of(x);
    Ok(tape.record(op, &[x], out, move |g, grads| {
        if g.numel() != 1 {
            return Err(Error::Backward(format!(
                "sum/mean: gradient of shape {:?} for a one-element output",
                g.shape()
            )));
        }
        let gx = via_f32([g], dtype, |[g]| k.fill_scaled(kx.shape(), g, factor))?;
        grads.accumulate(&kx, gx)
    }))
}
