//! Full reductions to a one-element tensor: `sum` and `mean`.

use crate::dtype::Elem;
use crate::error::Result;
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

#[cfg(feature = "cuda")]
mod cuda;

/// The sum of all elements, as a tensor of shape `[1]`.
pub fn sum(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    reduce(tape, x, 1.0)
}

/// The mean of all elements, as a tensor of shape `[1]`.
pub fn mean(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    reduce(tape, x, 1.0 / x.numel().max(1) as f64)
}

fn reduce(tape: &mut Tape, x: &Tensor, factor: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return cuda::reduce(tape, x, factor);
    }
    let total: f64 =
        dispatch_float!(x.dtype(), T => x.as_slice::<T>()?.iter().map(|v| v.f64()).sum());
    let out = Tensor::full(&[1], total * factor, x.dtype(), x.device())?;
    let kx = GradKey::of(x);
    Ok(tape.record(&[x], out, move |g, grads| {
        let gx = Tensor::full(kx.shape(), g.scalar()? * factor, g.dtype(), g.device())?;
        grads.accumulate(&kx, gx)
    }))
}
