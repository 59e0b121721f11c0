//! Meta kernels of the fused concat -> batch norm -> ReLU: the CPU's allocations in the CPU's
//! order (forward as batch norm's; backward: the given part gradients written in place, the
//! weight and bias gradients, then a new gradient for each wanted part that came without one).

use super::super::batch_norm::BnStats;
use super::{BatchNormReluKernels, BnReluBackward, BnReluForward, BnReluGrads, OP};
use crate::backend::Meta;
use crate::error::Result;
use crate::ops::batch_norm::meta::forward;
use crate::tensor::Tensor;

impl BatchNormReluKernels for Meta {
    fn bn_relu_forward(&self, a: &BnReluForward<'_>) -> Result<(Tensor, Option<BnStats>)> {
        let x0 = a.parts[0];
        let [n, _, h, w] = x0.dims4(OP)?;
        let c = a.channels.iter().sum::<usize>();
        let step = (a.update_running, a.want_stats);
        forward(x0, &[n, c, h, w], c, a.running, step, a.given)
    }

    fn bn_relu_backward(
        &self,
        a: &BnReluBackward<'_>,
        mut into: Vec<Option<Tensor>>,
    ) -> Result<BnReluGrads> {
        let g = a.g;
        let [_, c, _, _] = g.dims4(OP)?;
        for t in into.iter_mut().flatten() {
            t.buffer_mut()?;
        }
        let vector = || Tensor::meta(&[c], a.weight.dtype(), g.device());
        let gw = a.want_weight.then(vector).transpose()?;
        let gb = a.want_bias.then(vector).transpose()?;
        let parts = a.parts.iter().zip(a.want_parts).zip(into);
        let gparts = parts
            .map(|((part, &want), added)| match (want, added) {
                (true, None) => Tensor::meta(part.shape(), g.dtype(), g.device()).map(Some),
                (_, added) => Ok(added),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((gparts, gw, gb))
    }
}
