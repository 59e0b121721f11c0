//! ReLU. Backward uses the saved output: the gradient passes where the output is positive.

use super::{map_binary, map_unary};
use crate::error::Result;
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

#[cfg(feature = "cuda")]
mod cuda;

/// `max(x, 0)`.
pub fn relu(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return cuda::relu(tape, x);
    }
    let out =
        dispatch_float!(x.dtype(), T => map_unary::<T>(x, |v| if v > 0.0 { v } else { 0.0 }))?;
    let kx = GradKey::of(x);
    let saved = tape.needs_grad(&[x]).then(|| out.clone());
    Ok(tape.record(&[x], out, move |g, grads| {
        let y = saved.ok_or_else(|| crate::Error::Backward("relu: output not saved".into()))?;
        let gx = dispatch_float!(g.dtype(), T => map_binary::<T>(g, &y, |g, y| if y > 0.0 { g } else { 0.0 }))?;
        grads.accumulate(&kx, gx)
    }))
}
