//! Meta kernels of batch norm: the CPU's allocations in the CPU's order (the output, the
//! running statistics written in place, the saved statistics; the gradients), no values.

use super::{BatchNormKernels, BnBackward, BnForward, BnGrads, BnStats, RunningStats};
use crate::backend::Meta;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The output `out_shape` of a batch-norm forward over `c` channels, then what the CPU's
/// shared forward does after it: the running statistics written in place (`update_running`)
/// and the saved statistics (`want_stats`; the `given` ones, when a recompute has them).
pub(crate) fn forward(
    like: &Tensor,
    out_shape: &[usize],
    c: usize,
    running: &RunningStats,
    (update_running, want_stats): (bool, bool),
    given: Option<&BnStats>,
) -> Result<(Tensor, Option<BnStats>)> {
    let (dtype, dev) = (like.dtype(), like.device());
    let out = Tensor::meta(out_shape, dtype, dev)?;
    if let Some(given) = given {
        return Ok((out, want_stats.then(|| given.clone())));
    }
    if update_running {
        running.touch()?;
    }
    // The CPU keeps the statistics in f64, whatever the dtype.
    let stats = match want_stats {
        true => Some(BnStats::Host(Tensor::meta(&[2, c], DType::F64, dev)?)),
        false => None,
    };
    Ok((out, stats))
}

impl BatchNormKernels for Meta {
    fn batch_norm_forward(&self, a: &BnForward<'_>) -> Result<(Tensor, Option<BnStats>)> {
        let [_, c, _, _] = a.x.dims4(super::OP)?;
        let step = (a.update_running, a.want_stats);
        forward(a.x, a.x.shape(), c, a.running, step, a.given)
    }

    fn batch_norm_backward(&self, a: &BnBackward<'_>) -> Result<BnGrads> {
        let g = a.g;
        let [_, c, _, _] = g.dims4(super::OP)?;
        let [want_x, want_w, want_b] = a.want;
        let missing =
            || Error::Backward("batch_norm2d: the input gradient needs the weight".into());
        if want_x && (a.weight.is_none() || (a.training && a.x.is_none())) {
            return Err(missing());
        }
        let new = |shape: &[usize]| Tensor::meta(shape, g.dtype(), g.device());
        let gx = want_x.then(|| new(g.shape())).transpose()?;
        let gw = want_w.then(|| new(&[c])).transpose()?;
        let gb = want_b.then(|| new(&[c])).transpose()?;
        Ok((gx, gw, gb))
    }
}
