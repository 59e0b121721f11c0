//! CUDA path of the fused concat -> batch norm -> ReLU: for now the composition of the three
//! CUDA ops (same values and gradients; it materialises the concatenation and the
//! pre-activation, so the fused op's memory saving is CPU-only until a fused kernel lands).

use crate::error::Result;
use crate::ops::{batch_norm2d, concat, relu, BatchNormOptions, RunningStats};
use crate::tape::Tape;
use crate::tensor::Tensor;

/// `relu(batch_norm2d(concat(parts)))` with the CUDA ops.
pub(super) fn batch_norm_relu(
    tape: &mut Tape,
    parts: &[&Tensor],
    weight: &Tensor,
    bias: &Tensor,
    running: &RunningStats,
    opts: BatchNormOptions,
) -> Result<Tensor> {
    let x = match parts {
        [x] => (*x).clone(),
        _ => concat(tape, parts)?,
    };
    let h = batch_norm2d(tape, &x, weight, bias, running, opts)?;
    relu(tape, &h)
}
