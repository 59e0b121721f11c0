//! CUDA kernels of ReLU (NVRTC, `kernels.cu`): the same comparisons as the CPU kernel
//! (NaN passes through the forward pass), for every dtype.

use super::ReluKernels;
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{grid, launch, CudaScalar};
use crate::error::Result;
use crate::tensor::Tensor;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        ReluFwd = "relu_fwd",
        ReluBwd = "relu_bwd",
    }
}

impl ReluKernels for CudaKernels {
    fn relu_forward(&self, x: &Tensor) -> Result<Tensor> {
        dispatch_scalar!(x.dtype(), T => forward::<T>(x))
    }

    fn relu_backward(&self, g: &Tensor, y: &Tensor) -> Result<Tensor> {
        dispatch_scalar!(g.dtype(), T => backward::<T>(g, y))
    }
}

fn forward<T: CudaScalar>(x: &Tensor) -> Result<Tensor> {
    let cu = x.device().cuda_handle("relu")?;
    let mut out = Tensor::cuda_uninit::<T>(x.shape(), x.device())?;
    let n = x.numel() as u64;
    if n > 0 {
        let xs = x.cuda_slice::<T>()?;
        let o = out.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::ReluFwd, T::DTYPE, grid(n as usize); o, xs, &n)?;
    }
    Ok(out)
}

fn backward<T: CudaScalar>(g: &Tensor, y: &Tensor) -> Result<Tensor> {
    let cu = g.device().cuda_handle("relu")?;
    let mut gx = Tensor::cuda_uninit::<T>(g.shape(), g.device())?;
    let n = g.numel() as u64;
    if n > 0 {
        let (gs, ys) = (g.cuda_slice::<T>()?, y.cuda_slice::<T>()?);
        let o = gx.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::ReluBwd, T::DTYPE, grid(n as usize); o, gs, ys, &n)?;
    }
    Ok(gx)
}
