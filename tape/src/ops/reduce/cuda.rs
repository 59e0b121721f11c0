//! CUDA kernels of the full reductions: a deterministic two-stage sum accumulated in `f64`
//! (per-block partial sums, then one block), and the scalar-times-constant gradient fill.

use super::ReduceKernels;
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{grid, launch, per_row, scratch, CudaElem, RBLOCK, SUM_BLOCKS};
use crate::error::Result;
use crate::tensor::Tensor;
use cudarc::driver::LaunchConfig;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        FillScalar = "fill_scalar",
        SumPartial = "sum_partial",
        SumFinal = "sum_final",
    }
}

impl ReduceKernels for CudaKernels {
    fn sum_all(&self, x: &Tensor, factor: f64) -> Result<Tensor> {
        dispatch_float!(x.dtype(), T => total::<T>(x, factor, 1.0))
    }

    /// Computed on the device: no synchronisation.
    fn fill_scaled(&self, shape: &[usize], g: &Tensor, factor: f64) -> Result<Tensor> {
        dispatch_float!(g.dtype(), T => fill_scalar::<T>(shape, g, factor, 1.0))
    }
}

/// `sum(x) * mul / div` (in `f64`, rounded once) as a `[1]` tensor.
fn total<T: CudaElem>(x: &Tensor, mul: f64, div: f64) -> Result<Tensor> {
    let dev = x.device();
    let cu = dev.cuda_handle("sum")?;
    let n = x.numel() as u64;
    let blocks = (x.numel().div_ceil(RBLOCK as usize)).clamp(1, SUM_BLOCKS);
    let mut partials = scratch::<f64>(dev, blocks)?;
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (RBLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let xs = x.cuda_slice::<T>()?;
    launch!(&cu.backend, K::SumPartial, T::DTYPE, cfg; xs, &n, &mut partials.buf)?;
    let mut out = Tensor::cuda_uninit::<T>(&[1], dev)?;
    let count = blocks as u64;
    let o = out.cuda_slice_mut::<T>()?;
    launch!(&cu.backend, K::SumFinal, T::DTYPE, per_row(1); &partials.buf, &count, &mul, &div, o)?;
    Ok(out)
}

/// A tensor of `shape` filled with `g[0] * mul / div` (computed on the device: no sync).
fn fill_scalar<T: CudaElem>(shape: &[usize], g: &Tensor, mul: f64, div: f64) -> Result<Tensor> {
    let dev = g.device();
    let cu = dev.cuda_handle("fill")?;
    let mut out = Tensor::cuda_uninit::<T>(shape, dev)?;
    let n = out.numel() as u64;
    if n > 0 {
        let gs = g.cuda_slice::<T>()?;
        let o = out.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::FillScalar, T::DTYPE, grid(n as usize); o, gs, &mul, &div, &n)?;
    }
    Ok(out)
}
