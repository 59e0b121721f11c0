//! CUDA kernel of the cast between `f32` and `f64`, through host memory (the CUDA backend has no
//! 16-bit buffers yet: a cast to one fails there with [`crate::Error::UnsupportedDType`]).

use super::CastKernels;
use crate::backend::CudaKernels;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl CastKernels for CudaKernels {
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        x.to_dtype(dtype)
    }

    fn cast_range(&self, x: &Tensor, _: usize, _: &[usize], dtype: DType) -> Result<Tensor> {
        Err(no_half(if x.dtype().is_half() {
            x.dtype()
        } else {
            dtype
        }))
    }

    fn cast_into(&self, dst: &mut Tensor, _: usize, _: &Tensor) -> Result<()> {
        Err(no_half(dst.dtype()))
    }
}

/// The error of the 16-bit chunk casts, which only 16-bit tensors (host-only so far) need.
fn no_half(dtype: DType) -> Error {
    Error::UnsupportedDType {
        op: "cast (a range of elements)",
        dtype,
    }
}
