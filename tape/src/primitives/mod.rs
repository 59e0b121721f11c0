//! Tensor primitives: the kernels that tensors and gradients need and that record nothing on a
//! tape: filled tensors (`Tensor::full`, `zeros`, `ones`) and the in-place accumulation of a
//! gradient. Below every op (the ops and [`crate::gradients`] use them).

use crate::backend::{kernel_trait, kernels};
use crate::device::Device;
use crate::dtype::{DType, Scalar};
use crate::error::Result;
use crate::tensor::{numel_of, Tensor};

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

kernel_trait! {
    /// Device kernels of the tensor primitives.
    pub(crate) trait PrimitiveKernels {
        /// A new tensor of `shape` filled with `value` (rounded to `dtype`).
        fn full(&self, shape: &[usize], value: f64, dtype: DType, device: &Device) -> Result<Tensor>;
        /// `acc += g` in place (copy-on-write if `acc`'s buffer is shared); same shapes.
        fn add_assign(&self, acc: &mut Tensor, g: &Tensor) -> Result<()>;
    }
}

impl Tensor {
    /// A tensor filled with `value`.
    pub fn full(shape: &[usize], value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        kernels(device)?.full(shape, value, dtype, device)
    }

    /// A tensor of zeros in a host buffer backed by huge pages where the OS allows (see
    /// [`crate::host_cache`]); on a GPU a plain [`Tensor::zeros`].
    pub(crate) fn zeros_large(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        if device.is_meta() {
            return Tensor::meta(shape, dtype, device);
        }
        if device.is_cuda() {
            return Tensor::zeros(shape, dtype, device);
        }
        let n = numel_of(shape);
        dispatch_scalar!(dtype, T => {
            let mut v: Vec<T> = Vec::with_capacity(n);
            crate::host_cache::advise_huge_pages(v.spare_capacity_mut());
            v.resize(n, T::of(0.0));
            Tensor::from_vec(v, shape, device)
        })
    }

    /// A large tensor for a caller that writes every element before reading it (a block
    /// storage's features): on a GPU left unfilled (no memset); in host memory zeros, as
    /// [`Tensor::zeros_large`] makes them (a host slice must hold initialised values).
    pub(crate) fn unfilled_large(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if device.is_cuda() {
            return dispatch_scalar!(dtype, T => Tensor::cuda_uninit::<T>(shape, device));
        }
        Tensor::zeros_large(shape, dtype, device)
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(shape, 0.0, dtype, device)
    }

    /// A tensor of ones.
    pub fn ones(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(shape, 1.0, dtype, device)
    }
}
