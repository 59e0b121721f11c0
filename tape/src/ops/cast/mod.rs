//! Cast: a tensor's values in another dtype, rounded to nearest (ties to even); the gradient is
//! cast back to the input's dtype. Mixed precision is built on it: a 16-bit activation is an
//! f32 result cast down once, and an f32 master weight reaches a 16-bit op through a cast whose
//! backward hands the parameter an f32 gradient (see [`crate::precision::Precision`]).

use super::checks::check_grad;
use crate::backend::{kernel_trait, kernels};
use crate::dtype::DType;
use crate::error::Result;
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod meta;

const OP: &str = "cast";

kernel_trait! {
    /// Device kernels of the cast.
    pub(crate) trait CastKernels {
        /// `x`'s values in `dtype`, rounded to nearest (ties to even); a new buffer.
        fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor>;
    }
}

/// `x` in `dtype` (`x` itself, shared, when it has that dtype already). Backward casts the
/// gradient to `x`'s dtype: an f32 leaf cast to bf16 gets an f32 gradient.
pub fn cast(tape: &mut Tape, x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    let _profile = tape.profile_op(OP);
    let k = kernels(x.device())?;
    let out = k.cast(x, dtype)?;
    let (kx, x_dtype, shape) = (GradKey::of(x), x.dtype(), x.shape().to_vec());
    Ok(tape.record(OP, &[x], out, move |g, grads| {
        check_grad(OP, g, &shape, None)?;
        grads.accumulate(&kx, k.cast(g, x_dtype)?)
    }))
}

/// `x` in `dtype` with no tape (`x` itself when it has that dtype already): the kernel behind
/// [`cast`], for tensors no gradient flows through (a 16-bit copy of running statistics, say).
pub(crate) fn cast_values(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    kernels(x.device())?.cast(x, dtype)
}
