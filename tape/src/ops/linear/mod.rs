//! Fully connected layer: `y = x w^T + b` with PyTorch's weight layout (`[out, in]`), the
//! classifier head of a CNN.

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

use super::autocast::{to_low, to_low_opt};
use super::checks::check_grad;
use super::weighted::{accumulate_weighted, WeightedOp};
use super::widen::{narrow, wide_for, wide_opt_for};
use crate::backend::{kernel_trait, kernels};
use crate::error::{Error, Result};
use crate::tape::Tape;
use crate::tensor::Tensor;

const OP: &str = "linear";

/// `(n, in, out)`: rows, input features, output features.
pub(crate) type Dims = (usize, usize, usize);

kernel_trait! {
    /// Device kernels of `linear` (shapes checked by the caller).
    pub(crate) trait LinearKernels {
        /// `x w^T + bias` for `x` `[n, in]` and `w` `[out, in]`.
        fn linear_forward(
            &self,
            x: &Tensor,
            w: &Tensor,
            bias: Option<&Tensor>,
            dims: Dims,
        ) -> Result<Tensor>;
        /// `g w`: the input gradient `[n, in]`.
        fn linear_grad_input(&self, g: &Tensor, w: &Tensor, dims: Dims) -> Result<Tensor>;
        /// `g^T x`: the weight gradient `[out, in]`.
        fn linear_grad_weight(&self, g: &Tensor, x: &Tensor, dims: Dims) -> Result<Tensor>;
        /// The bias gradient `[out]`: column sums of `g`, in row order.
        fn linear_grad_bias(&self, g: &Tensor, dims: Dims) -> Result<Tensor>;
    }
}

/// `x w^T + bias`: `x` is `[n, in]`, `weight` `[out, in]`, `bias` `[out]`; gives `[n, out]`.
/// Backward keeps `x` only if the weight wants a gradient and the weight only if `x` does.
/// Under a 16-bit precision policy the `f32` operands are cast down first (see
/// [`crate::precision`]).
pub fn linear(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (x, weight) = (to_low(tape, x)?, to_low(tape, weight)?);
    let bias = to_low_opt(tape, bias)?;
    let (x, weight, bias) = (x.as_ref(), weight.as_ref(), bias.as_deref());
    let _profile = tape.profile_op(OP);
    let dims = check(x, weight, bias)?;
    let (n, _, o) = dims;
    let k = kernels(x.device())?;
    let out = match tape.take_known_output(&[n, o], x) {
        Some(known) => known,
        None => {
            let (wx, ww, wb) = (
                wide_for(&k, x)?,
                wide_for(&k, weight)?,
                wide_opt_for(&k, bias)?,
            );
            narrow(k.linear_forward(&wx, &ww, wb.as_deref(), dims)?, x.dtype())?
        }
    };
    let dtype = x.dtype();
    let op = WeightedOp::new(tape, x, weight, bias);
    let want_bias = op.wants_bias_grad();
    let WeightedOp {
        inputs,
        kx,
        kw,
        kb,
        saved_x,
        saved_w,
    } = op;
    Ok(tape.record(OP, &inputs, out, move |g, grads| {
        check_grad(OP, g, &[n, o], saved_x.as_ref().or(saved_w.as_ref()))?;
        let g = &*wide_for(&k, g)?;
        let gx = match saved_w {
            Some(w) => Some(k.linear_grad_input(g, &*wide_for(&k, &w)?, dims)?),
            None => None,
        };
        let gw = match saved_x {
            Some(x) => Some(k.linear_grad_weight(g, &*wide_for(&k, &x)?, dims)?),
            None => None,
        };
        let gb = want_bias.then(|| k.linear_grad_bias(g, dims)).transpose()?;
        accumulate_weighted(grads, (&kx, &kw, kb.as_ref()), (gx, gw, gb), dtype)
    }))
}

fn check(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    x.check_compatible(weight, OP)?;
    let (n, i) = match x.shape() {
        &[n, i] => (n, i),
        s => return Err(Error::shape(OP, format!("x must be [n, in], got {s:?}"))),
    };
    let o = match weight.shape() {
        &[o, wi] if wi == i => o,
        s => {
            return Err(Error::shape(
                OP,
                format!(
                    "weight must be [out, {i}] for x of shape {:?}, got {s:?}",
                    x.shape()
                ),
            ))
        }
    };
    if let Some(b) = bias {
        super::checks::check_vector(OP, "bias", x, b, o)?;
    }
    Ok((n, i, o))
}
