//! Meta kernels of GELU: outputs shaped like their inputs, no values.

use super::{GeluApproximation, GeluKernels};
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl GeluKernels for Meta {
    fn gelu_forward(&self, x: &Tensor, _approx: GeluApproximation) -> Result<Tensor> {
        Tensor::meta(x.shape(), x.dtype(), x.device())
    }

    fn gelu_backward(&self, g: &Tensor, _x: &Tensor, _approx: GeluApproximation) -> Result<Tensor> {
        Tensor::meta(g.shape(), g.dtype(), g.device())
    }
}
