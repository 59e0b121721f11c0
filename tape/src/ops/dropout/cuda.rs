//! CUDA kernel of dropout: the same counter-based hash as `crate::rng` (a bit-exact port of
//! `mix64` / `uniform` in `kernels.cu`), so a GPU mask equals the CPU mask element for element.

use super::DropoutKernels;
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{grid, launch, CudaElem};
use crate::error::Result;
use crate::tensor::Tensor;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        Dropout = "dropout",
    }
}

impl DropoutKernels for CudaKernels {
    fn dropout_mask(&self, x: &Tensor, seed: u64, counter: u64, p: f64) -> Result<Tensor> {
        dispatch_float!(x.dtype(), T => apply::<T>(x, seed, counter, p))
    }
}

fn apply<T: CudaElem>(x: &Tensor, seed: u64, counter: u64, p: f64) -> Result<Tensor> {
    let cu = x.device().cuda_handle("dropout")?;
    let mut out = Tensor::cuda_uninit::<T>(x.shape(), x.device())?;
    let n = x.numel() as u64;
    let scale = T::of(1.0 / (1.0 - p));
    if n > 0 {
        let xs = x.cuda_slice::<T>()?;
        let o = out.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::Dropout, T::DTYPE, grid(n as usize);
            o, xs, &n, &seed, &counter, &p, &scale)?;
    }
    Ok(out)
}
