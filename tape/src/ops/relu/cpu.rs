//! CPU kernels of ReLU.

use super::ReluKernels;
use crate::backend::cpu::map::{map_binary, map_unary};
use crate::backend::Cpu;
use crate::error::Result;
use crate::tensor::Tensor;

impl ReluKernels for Cpu {
    fn relu_forward(&self, x: &Tensor) -> Result<Tensor> {
        // `v <= 0` is false for NaN, which therefore passes through.
        dispatch_float!(x.dtype(), T => map_unary::<T>(x, |v| if v <= 0.0 { 0.0 } else { v }))
    }

    fn relu_backward(&self, g: &Tensor, y: &Tensor) -> Result<Tensor> {
        dispatch_float!(g.dtype(), T => map_binary::<T>(g, y, |g, y| if y > 0.0 { g } else { 0.0 }))
    }
}
