//! 16-bit parts of the fused batch norm + ReLU on CUDA: the `f32` path on `f32` copies (made
//! and rounded back by the cast kernel), so every value is the `f32` result rounded once, as on
//! the CPU. The statistics stay `f32` (the policy's running statistics and parameters).

use super::super::{BatchNormReluKernels, BnReluBackward, BnReluForward, BnReluGrads};
use crate::backend::CudaKernels;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::batch_norm::BnStats;
use crate::ops::cast::cast_values;
use crate::ops::widen::{narrow, narrow_opt, wide};
use crate::tensor::Tensor;
use std::borrow::Cow;

/// `f32` copies of `ts`.
fn wides<'a>(ts: &[&'a Tensor]) -> Result<Vec<Cow<'a, Tensor>>> {
    ts.iter().map(|t| wide(t)).collect()
}

/// The forward pass of 16-bit parts: the `f32` pass on copies, its output rounded once.
pub(super) fn forward(k: &CudaKernels, a: &BnReluForward<'_>) -> Result<(Tensor, Option<BnStats>)> {
    let dtype = a.parts[0].dtype();
    let parts = wides(a.parts)?;
    let refs: Vec<&Tensor> = parts.iter().map(|p| p.as_ref()).collect();
    let (weight, bias) = (wide(a.weight)?, wide(a.bias)?);
    let (out, stats) = k.bn_relu_forward(&BnReluForward {
        parts: &refs,
        weight: &weight,
        bias: &bias,
        ..*a
    })?;
    Ok((narrow(out, dtype)?, stats))
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
