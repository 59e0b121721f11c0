//! Meta kernel of the cast: an output of the new dtype, no values.

use super::{check_range, CastKernels};
use crate::backend::Meta;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::{numel_of, Tensor};

impl CastKernels for Meta {
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        Tensor::meta(x.shape(), dtype, x.device())
    }

    fn cast_range(
        &self,
        x: &Tensor,
        start: usize,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        check_range(start, numel_of(shape), x.numel())?;
        Tensor::meta(shape, dtype, x.device())
    }

    fn cast_into(&self, dst: &mut Tensor, start: usize, src: &Tensor) -> Result<()> {
        check_range(start, src.numel(), dst.numel())
    }
}
