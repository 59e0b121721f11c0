//! Tensors on a GPU as CUDA kernels see them: new uninitialised outputs and the device slices
//! of inputs and outputs.

use crate::device::cuda::{alloc_slice, CudaScalar};
use crate::device::storage::{Buffer, Storage};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use cudarc::driver::CudaSlice;

impl Tensor {
    /// A new tensor of `shape` on a CUDA device whose elements are not initialised: the caller's
    /// kernel must write every one of them.
    pub(crate) fn cuda_uninit<T: CudaScalar>(shape: &[usize], device: &Device) -> Result<Self> {
        let len = shape.iter().product();
        let buf = Buffer::charged(device, T::DTYPE, len, || {
            alloc_slice::<T>(device, len).map(|s| Storage::Cuda(T::wrap_cuda(s)))
        })?;
        Ok(Tensor::from_buffer(buf, shape))
    }

    /// The device slice of a CUDA tensor of `T` (at least one element long, whatever the shape).
    pub(crate) fn cuda_slice<T: CudaScalar>(&self) -> Result<&CudaSlice<T>> {
        match &self.buffer().data {
            Storage::Cuda(d) => T::cuda(d).ok_or(Error::DType {
                op: "cuda_slice",
                expected: T::DTYPE,
                got: self.dtype(),
            }),
            Storage::Meta(_) => Err(Error::NoValues {
                op: "cuda_slice",
                device: self.device().to_string(),
            }),
            Storage::Cpu(_) => Err(Error::Device {
                op: "cuda_slice",
                lhs: self.device().to_string(),
                rhs: "a CUDA device".into(),
            }),
        }
    }

    /// The mutable device slice of a CUDA tensor, copying the buffer first if it is shared (the
    /// id stays).
    pub(crate) fn cuda_slice_mut<T: CudaScalar>(&mut self) -> Result<&mut CudaSlice<T>> {
        let (dtype, device) = (self.dtype(), self.device().to_string());
        match &mut self.buffer_mut()?.data {
            Storage::Cuda(d) => T::cuda_mut(d).ok_or(Error::DType {
                op: "cuda_slice_mut",
                expected: T::DTYPE,
                got: dtype,
            }),
            Storage::Meta(_) => Err(Error::NoValues {
                op: "cuda_slice_mut",
                device,
            }),
            Storage::Cpu(_) => Err(Error::Device {
                op: "cuda_slice_mut",
                lhs: device,
                rhs: "a CUDA device".into(),
            }),
        }
    }
}
