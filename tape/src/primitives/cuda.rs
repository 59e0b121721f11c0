//! CUDA kernels of the tensor primitives (NVRTC, `kernels.cu`).

use super::PrimitiveKernels;
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{grid, launch, CudaScalar};
use crate::device::Device;
use crate::dtype::{DType, Scalar};
use crate::error::Result;
use crate::tensor::Tensor;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        Fill = "fill",
        AddAssign = "add_assign",
    }
}

impl PrimitiveKernels for CudaKernels {
    /// A fill kernel (no host copy).
    fn full(&self, shape: &[usize], value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        dispatch_scalar!(dtype, T => full_t::<T>(shape, T::of(value), device))
    }

    fn add_assign(&self, acc: &mut Tensor, g: &Tensor) -> Result<()> {
        dispatch_scalar!(g.dtype(), T => add_assign_t::<T>(acc, g))
    }
}

fn full_t<T: CudaScalar>(shape: &[usize], value: T, device: &Device) -> Result<Tensor> {
    let cu = device.cuda_handle("full")?;
    let mut out = Tensor::cuda_uninit::<T>(shape, device)?;
    let n = out.numel() as u64;
    if n > 0 {
        let o = out.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::Fill, T::DTYPE, grid(n as usize); o, &value, &n)?;
    }
    Ok(out)
}

/// `acc += g` in place (copy-on-write if `acc`'s buffer is shared).
fn add_assign_t<T: CudaScalar>(acc: &mut Tensor, g: &Tensor) -> Result<()> {
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
