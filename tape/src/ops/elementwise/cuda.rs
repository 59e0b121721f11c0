//! CUDA kernels of the element-wise ops and of fills (NVRTC, `kernels.cu`).

use super::ElementwiseKernels;
use crate::backend::cuda::{grid, launch, CudaElem, CudaKernels, K};
use crate::device::Device;
use crate::dtype::{DType, Elem};
use crate::error::Result;
use crate::tensor::Tensor;

impl ElementwiseKernels for CudaKernels {
    /// A fill kernel (no host copy).
    fn full(&self, shape: &[usize], value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        dispatch_float!(dtype, T => full_t::<T>(shape, T::of(value), device))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        dispatch_float!(a.dtype(), T => binary_t::<T>(K::Add, a, b))
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        dispatch_float!(a.dtype(), T => binary_t::<T>(K::Mul, a, b))
    }

    fn scale(&self, x: &Tensor, s: f64) -> Result<Tensor> {
        dispatch_float!(x.dtype(), T => scale_t::<T>(x, T::of(s)))
    }

    fn add_assign(&self, acc: &mut Tensor, g: &Tensor) -> Result<()> {
        dispatch_float!(g.dtype(), T => add_assign_t::<T>(acc, g))
    }
}

fn full_t<T: CudaElem>(shape: &[usize], value: T, device: &Device) -> Result<Tensor> {
    let cu = device.cuda_handle("full")?;
    let mut out = Tensor::cuda_uninit::<T>(shape, device)?;
    let n = out.numel() as u64;
    if n > 0 {
        let o = out.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::Fill, T::DTYPE, grid(n as usize); o, &value, &n)?;
    }
    Ok(out)
}

/// `k(a, b)` element-wise (`add`, `mul`) into a new tensor shaped like `a`.
fn binary_t<T: CudaElem>(k: K, a: &Tensor, b: &Tensor) -> Result<Tensor> {
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

/// `acc += g` in place (copy-on-write if `acc`'s buffer is shared).
fn add_assign_t<T: CudaElem>(acc: &mut Tensor, g: &Tensor) -> Result<()> {
    let device = acc.device().clone();
    let cu = device.cuda_handle("accumulate")?;
    let n = g.numel() as u64;
    if n == 0 {
        return Ok(());
    }
    let gs = g.cuda_slice::<T>()?;
    let a = acc.cuda_slice_mut::<T>()?;
    launch!(&cu.backend, K::AddAssign, T::DTYPE, grid(n as usize); a, gs, &n)
}
