//! GELU, element-wise, as PyTorch defines it: exactly `x Phi(x) = x (1 + erf(x / sqrt 2)) / 2`
//! by default, or with [`GeluApproximation::Tanh`] the tanh form `x (1 + tanh(sqrt(2 / pi) (x +
//! 0.044715 x^3))) / 2`. Computed in `f64` and rounded once. Backward keeps the input (the output
//! is not enough to invert GELU).

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

const OP: &str = "gelu";

/// Which form of GELU to compute (PyTorch's `approximate` argument).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GeluApproximation {
    /// The exact form with the error function (PyTorch's `approximate='none'`).
    #[default]
    None,
    /// The tanh approximation (PyTorch's `approximate='tanh'`).
    Tanh,
}

kernel_trait! {
    /// Device kernels of GELU.
    pub(crate) trait GeluKernels {
        /// `gelu(x)` in the given form.
        fn gelu_forward(&self, x: &Tensor, approx: GeluApproximation) -> Result<Tensor>;
        /// `g * gelu'(x)` from the saved input `x`.
        fn gelu_backward(&self, g: &Tensor, x: &Tensor, approx: GeluApproximation) -> Result<Tensor>;
    }
}

/// `x Phi(x)` element-wise, `Phi` the standard normal distribution function (the exact GELU).
pub fn gelu(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    gelu_with(tape, x, GeluApproximation::None)
}

/// GELU in the form `approx` names: [`GeluApproximation::None`] is [`gelu`].
pub fn gelu_with(tape: &mut Tape, x: &Tensor, approx: GeluApproximation) -> Result<Tensor> {
    let _profile = tape.profile_op(OP);
    let k = kernels(x.device())?;
    let out = match tape.take_known_output(x.shape(), x) {
        Some(known) => known,
        None => via_f32_for(&k, [x], x.dtype(), |[x]| k.gelu_forward(x, approx))?,
    };
    let kx = GradKey::of(x);
    let saved = tape.needs_grad(&[x]).then(|| x.clone());
    Ok(tape.record(OP, &[x], out, move |g, grads| {
        let x = saved.ok_or_else(|| Error::Backward("gelu: input not saved".into()))?;
        check_grad(OP, g, x.shape(), Some(&x))?;
        let gx = via_f32_for(&k, [g, &x], x.dtype(), |[g, x]| {
            k.gelu_backward(g, x, approx)
        })?;
        grads.accumulate(&kx, gx)
    }))
}
