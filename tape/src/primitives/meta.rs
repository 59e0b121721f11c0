//! Meta kernels of the tensor primitives: shapes and charges, no values.

use super::PrimitiveKernels;
use crate::backend::Meta;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

impl PrimitiveKernels for Meta {
    fn full(&self, shape: &[usize], _value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::meta(shape, dtype, device)
    }

    /// In place, as on the CPU: a shared accumulator is copied first (and charged).
    fn add_assign(&self, acc: &mut Tensor, _g: &Tensor) -> Result<()> {
        acc.buffer_mut().map(|_| ())
    }
}
