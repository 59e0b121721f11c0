//! Meta kernels of the linear layer: the CPU's outputs and gradients, no values.

use super::{Dims, LinearKernels};
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl LinearKernels for Meta {
    fn linear_forward(
        &self,
        x: &Tensor,
        _w: &Tensor,
        _bias: Option<&Tensor>,
        dims: Dims,
    ) -> Result<Tensor> {
        Tensor::meta(&[dims.0, dims.2], x.dtype(), x.device())
    }

    fn linear_grad_input(&self, g: &Tensor, _w: &Tensor, dims: Dims) -> Result<Tensor> {
        Tensor::meta(&[dims.0, dims.1], g.dtype(), g.device())
    }

    fn linear_grad_weight(&self, g: &Tensor, _x: &Tensor, dims: Dims) -> Result<Tensor> {
        Tensor::meta(&[dims.2, dims.1], g.dtype(), g.device())
    }

    fn linear_grad_bias(&self, g: &Tensor, dims: Dims) -> Result<Tensor> {
        Tensor::meta(&[dims.2], g.dtype(), g.device())
    }
}
