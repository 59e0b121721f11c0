//! ReLU. NaN propagates as in PyTorch (`max(NaN, 0)` is NaN). Backward uses the saved output:
//! the gradient passes where the output is positive.

use super::checks::check_grad;
use super::widen::via_f32_for;
use crate::backend::{kernel_trait, kernels};
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

const OP: &str = "relu";

kernel_trait! {
    /// Device kernels of ReLU.
    pub(crate) trait ReluKernels {
        /// `y = x > 0 ? x : (x is NaN ? NaN : 0)`.
        fn relu_forward(&self, x: &Tensor) -> Result<Tensor>;
        /// `gx = y > 0 ? g : 0` from the saved output `y`.
        fn relu_backward(&self, g: &Tensor, y: &Tensor) -> Result<Tensor>;
    }
}

/// `max(x, 0)`, propagating NaN.
pub fn relu(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    let _profile = tape.profile_op(OP);
    let k = kernels(x.device())?;
    let out = match tape.take_known_output(x.shape(), x) {
        Some(known) => known,
        None => via_f32_for(&k, [x], x.dtype(), |[x]| k.relu_forward(x))?,
    };
    let kx = GradKey::of(x);
    let saved = tape.needs_grad(&[x]).then(|| out.clone());
    Ok(tape.record(OP, &[x], out, move |g, grads| {
        let y = saved.ok_or_else(|| Error::Backward("relu: output not saved".into()))?;
        check_grad(OP, g, y.shape(), Some(&y))?;
        let gx = via_f32_for(&k, [g, &y], y.dtype(), |[g, y]| k.relu_backward(g, y))?;
        grads.accumulate(&kx, gx)
    }))
}
