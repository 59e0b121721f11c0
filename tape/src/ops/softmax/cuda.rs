//! CUDA kernels of softmax and log-softmax (NVRTC, `kernels.cu`): one block per row, row sums
//! and maxima in `f64`, the same formulas as the CPU kernel.
//!
//! Not yet run on a GPU: the kernels compile with NVRTC, nothing more is known.

use super::{Rows, SoftmaxKernels};
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{launch, per_row, CudaElem};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        SoftmaxFwd = "softmax_fwd",
        SoftmaxBwd = "softmax_bwd",
    }
}

/// Fails unless one block per row fits a grid.
fn check_rows(rows: &Rows) -> Result<()> {
    if rows.rows > i32::MAX as usize {
        return Err(Error::invalid(
            "softmax",
            format!("{} rows exceed a CUDA grid", rows.rows),
        ));
    }
    Ok(())
}

impl SoftmaxKernels for CudaKernels {
    fn softmax_forward(&self, x: &Tensor, rows: Rows) -> Result<Tensor> {
        check_rows(&rows)?;
        dispatch_float!(x.dtype(), T => forward::<T>(x, rows))
    }

    fn softmax_backward(&self, g: &Tensor, y: &Tensor, rows: Rows) -> Result<Tensor> {
        check_rows(&rows)?;
        dispatch_float!(g.dtype(), T => backward::<T>(g, y, rows))
    }
}

fn forward<T: CudaElem>(x: &Tensor, rows: Rows) -> Result<Tensor> {
    let cu = x.device().cuda_handle("softmax")?;
    let mut out = Tensor::cuda_uninit::<T>(x.shape(), x.device())?;
    if rows.rows * rows.d > 0 {
        let (d, causal, lg) = (rows.d as u64, rows.causal as u64, i32::from(rows.log));
        let xs = x.cuda_slice::<T>()?;
        let o = out.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::SoftmaxFwd, T::DTYPE, per_row(rows.rows); xs, o, &d, &causal, &lg)?;
    }
    Ok(out)
}

fn backward<T: CudaElem>(g: &Tensor, y: &Tensor, rows: Rows) -> Result<Tensor> {
    let cu = g.device().cuda_handle("softmax")?;
    let mut gx = Tensor::cuda_uninit::<T>(g.shape(), g.device())?;
    if rows.rows * rows.d > 0 {
        let (d, causal, lg) = (rows.d as u64, rows.causal as u64, i32::from(rows.log));
        let (gs, ys) = (g.cuda_slice::<T>()?, y.cuda_slice::<T>()?);
        let o = gx.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::SoftmaxBwd, T::DTYPE, per_row(rows.rows); gs, ys, o, &d, &causal, &lg)?;
    }
    Ok(gx)
}
