//! Meta kernels of the reductions: a one-element sum, a filled gradient.

use super::ReduceKernels;
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl ReduceKernels for Meta {
    fn sum_all(&self, x: &Tensor, _factor: f64) -> Result<Tensor> {
        Tensor::meta(&[1], x.dtype(), x.device())
    }

    fn fill_scaled(&self, shape: &[usize], g: &Tensor, _factor: f64) -> Result<Tensor> {
        Tensor::meta(shape, g.dtype(), g.device())
    }
}
