//! CUDA kernels of GELU (NVRTC, `kernels.cu`): the CPU's formulas in `f64` (CUDA's `erf` and
//! `tanh`, within a few ulps of the CPU's).
//!
//! Not yet run on a GPU: the kernels compile with NVRTC, nothing more is known.

use super::{GeluApproximation, GeluKernels};
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{grid, launch, CudaScalar};
use crate::error::Result;
use crate::tensor::Tensor;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        GeluFwd = "gelu_fwd",
        GeluBwd = "gelu_bwd",
    }
}

impl GeluKernels for CudaKernels {
    fn gelu_forward(&self, x: &Tensor, approx: GeluApproximation) -> Result<Tensor> {
        dispatch_scalar!(x.dtype(), T => forward::<T>(x, approx))
    }

    fn gelu_backward(&self, g: &Tensor, x: &Tensor, approx: GeluApproximation) -> Result<Tensor> {
        dispatch_scalar!(g.dtype(), T => backward::<T>(g, x, approx))
    }
}

fn tanh_flag(approx: GeluApproximation) -> i32 {
    i32::from(approx == GeluApproximation::Tanh)
}

fn forward<T: CudaScalar>(x: &Tensor, approx: GeluApproximation) -> Result<Tensor> {
    let cu = x.device().cuda_handle("gelu")?;
    let mut out = Tensor::cuda_uninit::<T>(x.shape(), x.device())?;
    let n = x.numel() as u64;
    if n > 0 {
        let th = tanh_flag(approx);
        let xs = x.cuda_slice::<T>()?;
        let o = out.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::GeluFwd, T::DTYPE, grid(n as usize); o, xs, &n, &th)?;
    }
    Ok(out)
}

fn backward<T: CudaScalar>(g: &Tensor, x: &Tensor, approx: GeluApproximation) -> Result<Tensor> {
    let cu = g.device().cuda_handle("gelu")?;
    let mut gx = Tensor::cuda_uninit::<T>(g.shape(), g.device())?;
    let n = g.numel() as u64;
    if n > 0 {
        let th = tanh_flag(approx);
        let (gs, xs) = (g.cuda_slice::<T>()?, x.cuda_slice::<T>()?);
        let o = gx.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::GeluBwd, T::DTYPE, grid(n as usize); o, gs, xs, &n, &th)?;
    }
    Ok(gx)
}
