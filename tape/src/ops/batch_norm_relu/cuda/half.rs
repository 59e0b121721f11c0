//! 16-bit parts of the fused batch norm + ReLU on CUDA. The forward pass and the training
//! backward of parts that all want their gradient run natively (cuDNN with 16-bit data and
//! `f32` parameters and statistics); the other backward passes (eval mode, parameter gradients
//! alone), whose NVRTC kernels take one dtype, run the `f32` path on `f32` copies made and
//! rounded back by the cast kernel, so every value is the `f32` result rounded once, as on the
//! CPU.

use super::super::{BatchNormReluKernels, BnReluBackward, BnReluGrads};
use crate::backend::CudaKernels;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::cast::cast_values;
use crate::ops::widen::{narrow_opt, wide};
use crate::tensor::Tensor;
use std::borrow::Cow;

/// `f32` copies of `ts`.
fn wides<'a>(ts: &[&'a Tensor]) -> Result<Vec<Cow<'a, Tensor>>> {
    ts.iter().map(|t| wide(t)).collect()
}

/// Whether the native backward serves `a`: training, and every part with channels wants its
/// gradient (cuDNN's backward then runs for each part; no NVRTC path is needed).
pub(super) fn native_backward(a: &BnReluBackward<'_>) -> bool {
    a.training
        && a.want_parts
            .iter()
            .zip(a.channels)
            .all(|(&want, &c)| want || c == 0)
}

/// The backward pass of 16-bit parts: the `f32` pass on copies (the gradients to add into
/// included), each gradient rounded once to its tensor's dtype.
pub(super) fn backward(
    k: &CudaKernels,
    a: &BnReluBackward<'_>,
    into: Vec<Option<Tensor>>,
) -> Result<BnReluGrads> {
    let dtype = a.g.dtype();
    let parts = wides(a.parts)?;
    let refs: Vec<&Tensor> = parts.iter().map(|p| p.as_ref()).collect();
    let (g, out, weight) = (wide(a.g)?, wide(a.out)?, wide(a.weight)?);
    let into = into
        .into_iter()
        .map(|t| t.map(|t| cast_values(&t, DType::F32)).transpose())
        .collect::<Result<Vec<_>>>()?;
    let (gparts, gw, gb) = k.bn_relu_backward(
        &BnReluBackward {
            g: &g,
            parts: &refs,
            out: &out,
            weight: &weight,
            ..*a
        },
        into,
    )?;
    let gparts = gparts
        .into_iter()
        .map(|t| narrow_opt(t, dtype))
        .collect::<Result<Vec<_>>>()?;
    let wdtype = a.weight.dtype();
    Ok((gparts, narrow_opt(gw, wdtype)?, narrow_opt(gb, wdtype)?))
}
