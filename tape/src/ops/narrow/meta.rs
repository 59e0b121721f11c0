//! Meta kernels of the narrow: the slice's shape, and the gradient in the input's shape.

use super::{NarrowKernels, Slice};
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl NarrowKernels for Meta {
    fn narrow_forward(&self, x: &Tensor, _slice: Slice, shape: &[usize]) -> Result<Tensor> {
        Tensor::meta(shape, x.dtype(), x.device())
    }

    fn narrow_backward(&self, g: &Tensor, _slice: Slice, shape: &[usize]) -> Result<Tensor> {
        Tensor::meta(shape, g.dtype(), g.device())
    }
}
