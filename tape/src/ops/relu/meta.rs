//! Meta kernels of ReLU: outputs shaped like their inputs, no values.

use super::ReluKernels;
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl ReluKernels for Meta {
    fn relu_forward(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::meta(x.shape(), x.dtype(), x.device())
    }

    fn relu_backward(&self, g: &Tensor, _y: &Tensor) -> Result<Tensor> {
        Tensor::meta(g.shape(), g.dtype(), g.device())
    }
}
