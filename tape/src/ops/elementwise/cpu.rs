//! CPU kernels of the element-wise ops.

use super::ElementwiseKernels;
use crate::backend::cpu::map::{map_binary, map_unary};
use crate::backend::Cpu;
use crate::dtype::Scalar;
use crate::error::Result;
use crate::tensor::Tensor;

impl ElementwiseKernels for Cpu {
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        dispatch_float!(a.dtype(), T => map_binary::<T>(a, b, |x, y| x + y))
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        dispatch_float!(a.dtype(), T => map_binary::<T>(a, b, |x, y| x * y))
    }

    fn scale(&self, x: &Tensor, s: f64) -> Result<Tensor> {
        dispatch_float!(x.dtype(), T => { let s = T::of(s); map_unary::<T>(x, |v| v * s) })
    }
}
