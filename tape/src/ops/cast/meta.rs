//! Meta kernel of the cast: an output of the new dtype, no values.

use super::CastKernels;
use crate::backend::Meta;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

impl CastKernels for Meta {
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        Tensor::meta(x.shape(), dtype, x.device())
    }
}
