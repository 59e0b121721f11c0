//! Meta kernels of the element-wise ops: outputs shaped like their inputs, no values.

use super::ElementwiseKernels;
use crate::backend::Meta;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

impl ElementwiseKernels for Meta {
    fn full(&self, shape: &[usize], _value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::meta(shape, dtype, device)
    }

    fn add(&self, a: &Tensor, _b: &Tensor) -> Result<Tensor> {
        Tensor::meta(a.shape(), a.dtype(), a.device())
    }

    fn mul(&self, a: &Tensor, _b: &Tensor) -> Result<Tensor> {
        Tensor::meta(a.shape(), a.dtype(), a.device())
    }

    fn scale(&self, x: &Tensor, _s: f64) -> Result<Tensor> {
        Tensor::meta(x.shape(), x.dtype(), x.device())
    }

    /// In place, as on the CPU: a shared accumulator is copied first (and charged).
    fn add_assign(&self, acc: &mut Tensor, _g: &Tensor) -> Result<()> {
        acc.buffer_mut().map(|_| ())
    }
}
