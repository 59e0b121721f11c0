//! Reshape: the same buffer under a new shape; the gradient is reshaped back.

use crate::error::Result;
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// `x` viewed with `shape` (same element count); shares the buffer.
pub fn reshape(tape: &mut Tape, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let _profile = tape.profile_op("reshape");
    let out = x.view_as(shape)?;
    let kx = GradKey::of(x);
    Ok(tape.record("reshape", &[x], out, move |g, grads| {
        let gx = g.view_as(kx.shape())?;
        grads.accumulate(&kx, gx)
    }))
}
