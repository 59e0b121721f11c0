//! CUDA kernel of the cast between `f32` and `f64`, through host memory (the CUDA backend has no
//! 16-bit buffers yet: a cast to one fails there with [`crate::Error::UnsupportedDType`]).

use super::CastKernels;
use crate::backend::CudaKernels;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

impl CastKernels for CudaKernels {
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        x.to_dtype(dtype)
    }
}
