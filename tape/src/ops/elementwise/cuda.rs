//! CUDA kernels of the element-wise ops (NVRTC, `kernels.cu`).

use super::ElementwiseKernels;
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{grid, launch, CudaElem, CudaScalar};
use crate::dtype::Scalar;
use crate::error::Result;
use crate::tensor::Tensor;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        Add = "add",
        Mul = "mul",
        Scale = "scale",
    }
}

impl ElementwiseKernels for CudaKernels {
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        dispatch_scalar!(a.dtype(), T => binary_t::<T>(K::Add, a, b))
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        dispatch_scalar!(a.dtype(), T => binary_t::<T>(K::Mul, a, b))
    }

    fn scale(&self, x: &Tensor, s: f64) -> Result<Tensor> {
        dispatch_float!(x.dtype(), T => scale_t::<T>(x, T::of(s)))
    }
}

/// `k(a, b)` element-wise (`add`, `mul`) into a new tensor shaped like `a` (any dtype: a 16-bit
/// result is the `f32` one rounded once).
fn binary_t<T: CudaScalar>(k: K, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let cu = a.device().cuda_handle("elementwise")?;
    let mut out = Tensor::cuda_uninit::<T>(a.shape(), a.device())?;
    let n = a.numel() as u64;
    if n > 0 {
        let (xa, xb) = (a.cuda_slice::<T>()?, b.cuda_slice::<T>()?);
        let o = out.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, k, T::DTYPE, grid(n as usize); o, xa, xb, &n)?;
    }
    Ok(out)
}

/// `s * x` with `s` already rounded to the dtype (as on the CPU).
fn scale_t<T: CudaElem>(x: &Tensor, s: T) -> Result<Tensor> {
    let cu = x.device().cuda_handle("scale")?;
    let mut out = Tensor::cuda_uninit::<T>(x.shape(), x.device())?;
    let n = x.numel() as u64;
    if n > 0 {
        let xs = x.cuda_slice::<T>()?;
        let o = out.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::Scale, T::DTYPE, grid(n as usize); o, xs, &s, &n)?;
    }
    Ok(out)
}
