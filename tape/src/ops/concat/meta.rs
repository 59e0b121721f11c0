//! Meta kernels of the channel concatenation: the CPU's allocations (a new output; a new
//! gradient piece per wanted input, or its existing gradient written in place), no values.

use super::ConcatKernels;
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl ConcatKernels for Meta {
    fn concat(
        &self,
        xs: &[&Tensor],
        _widths: &[usize],
        _outer: usize,
        shape: &[usize],
    ) -> Result<Tensor> {
        Tensor::meta(shape, xs[0].dtype(), xs[0].device())
    }

    fn concat_split(
        &self,
        g: &Tensor,
        _outer: usize,
        _widths: &[usize],
        shapes: &[&[usize]],
        wanted: &[bool],
        into: Vec<Option<Tensor>>,
    ) -> Result<Vec<Option<Tensor>>> {
        let pieces = shapes.iter().zip(wanted).zip(into);
        pieces
            .map(|((shape, &want), existing)| match (want, existing) {
                (false, _) => Ok(None),
                (true, Some(mut acc)) => {
                    acc.buffer_mut()?;
                    Ok(Some(acc))
                }
                (true, None) => Tensor::meta(shape, g.dtype(), g.device()).map(Some),
            })
            .collect()
    }
}
