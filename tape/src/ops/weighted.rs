//! What the weighted ops (`y = f(x, weight) + bias`: convolution, linear) record and how their
//! backward hands its gradients over.

use super::widen::narrow_opt;
use crate::dtype::DType;
use crate::error::Result;
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// What an op `y = f(x, weight) + bias` records: its inputs and grad keys, and what its
/// backward keeps: `x` only if the weight wants a gradient, the weight only if `x` does.
pub(crate) struct WeightedOp<'t> {
    pub(crate) inputs: Vec<&'t Tensor>,
    pub(crate) kx: GradKey,
    pub(crate) kw: GradKey,
    pub(crate) kb: Option<GradKey>,
    pub(crate) saved_x: Option<Tensor>,
    pub(crate) saved_w: Option<Tensor>,
}

impl<'t> WeightedOp<'t> {
    pub(crate) fn new(
        tape: &Tape,
        x: &'t Tensor,
        weight: &'t Tensor,
        bias: Option<&'t Tensor>,
    ) -> Self {
        let mut inputs = vec![x, weight];
        inputs.extend(bias);
        let record = tape.needs_grad(&inputs);
        WeightedOp {
            kx: GradKey::of(x),
            kw: GradKey::of(weight),
            kb: bias.map(GradKey::of),
            saved_x: (record && weight.requires_grad()).then(|| x.clone()),
            saved_w: (record && x.requires_grad()).then(|| weight.clone()),
            inputs,
        }
    }

    /// Whether the bias wants a gradient.
    pub(crate) fn wants_bias_grad(&self) -> bool {
        self.kb.as_ref().is_some_and(GradKey::requires_grad)
    }
}

/// The gradients a weighted op's backward produced, accumulated into `grads` under the op's
/// keys, in `dtype` (the op's: its kernels' `f32` results rounded once for a 16-bit op).
pub(crate) fn accumulate_weighted(
    grads: &mut crate::Gradients,
    (kx, kw, kb): (&GradKey, &GradKey, Option<&GradKey>),
    (gx, gw, gb): (Option<Tensor>, Option<Tensor>, Option<Tensor>),
    dtype: DType,
) -> Result<()> {
    let (gx, gw, gb) = (
        narrow_opt(gx, dtype)?,
        narrow_opt(gw, dtype)?,
        narrow_opt(gb, dtype)?,
    );
    if let Some(gx) = gx {
        grads.accumulate(kx, gx)?;
    }
    if let Some(gw) = gw {
        grads.accumulate(kw, gw)?;
    }
    if let (Some(kb), Some(gb)) = (kb, gb) {
        grads.accumulate(kb, gb)?;
    }
    Ok(())
}
