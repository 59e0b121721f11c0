//! CPU kernels of the full reductions.

use super::ReduceKernels;
use crate::backend::Cpu;
use crate::dtype::Scalar;
use crate::error::Result;
use crate::tensor::Tensor;

impl ReduceKernels for Cpu {
    fn sum_all(&self, x: &Tensor, factor: f64) -> Result<Tensor> {
        let total: f64 =
            dispatch_float!(x.dtype(), T => x.as_slice::<T>()?.iter().map(|v| v.f64()).sum());
        Tensor::full(&[1], total * factor, x.dtype(), x.device())
    }

    fn fill_scaled(&self, shape: &[usize], g: &Tensor, factor: f64) -> Result<Tensor> {
        Tensor::full(shape, g.scalar()? * factor, g.dtype(), g.device())
    }
}
