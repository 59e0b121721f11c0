//! CUDA kernels of `layer_norm` (NVRTC, `kernels.cu`): the forward pass and the input gradient
//! one block per row (row sums in `f64`), the weight and bias gradients one thread per column
//! summing the rows in order, like the CPU kernel (no atomics: deterministic, but only `d`
//! threads, which is slow for narrow rows and many of them).
//!
//! Not yet run on a GPU: the kernels compile with NVRTC, nothing more is known.

use super::{LayerNormKernels, LnDims, RowStats};
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{grid, launch, per_row, CudaElem};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        LnFwd = "ln_fwd",
        LnBwdInput = "ln_bwd_input",
        LnBwdAffine = "ln_bwd_affine",
    }
}

/// Fails unless one block per row fits a grid.
fn check_rows(dims: &LnDims) -> Result<()> {
    if dims.rows > i32::MAX as usize {
        return Err(Error::invalid(
            "layer_norm",
            format!("{} rows exceed a CUDA grid", dims.rows),
        ));
    }
    Ok(())
}

impl LayerNormKernels for CudaKernels {
    fn layer_norm_forward(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        dims: LnDims,
    ) -> Result<(Tensor, RowStats)> {
        check_rows(&dims)?;
        dispatch_float!(x.dtype(), T => forward::<T>(x, weight, bias, dims))
    }

    fn layer_norm_grad_input(
        &self,
        g: &Tensor,
        x: &Tensor,
        stats: &RowStats,
        weight: Option<&Tensor>,
        dims: LnDims,
    ) -> Result<Tensor> {
        check_rows(&dims)?;
        dispatch_float!(g.dtype(), T => grad_input::<T>(g, x, stats, weight, dims))
    }

    fn layer_norm_grad_affine(
        &self,
        g: &Tensor,
        x: Option<(&Tensor, &RowStats)>,
        want_bias: bool,
        dims: LnDims,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        dispatch_float!(g.dtype(), T => grad_affine::<T>(g, x, want_bias, dims))
    }
}

fn forward<T: CudaElem>(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    LnDims { rows, d, eps }: LnDims,
) -> Result<(Tensor, RowStats)> {
    let dev = x.device();
    let be = &dev.cuda_handle("layer_norm")?.backend;
    let mut y = Tensor::cuda_uninit::<T>(x.shape(), dev)?;
    let mut mean = Tensor::cuda_uninit::<T>(&[rows], dev)?;
    let mut invstd = Tensor::cuda_uninit::<T>(&[rows], dev)?;
    if rows * d > 0 {
        let du = d as u64;
        let xs = x.cuda_slice::<T>()?;
        let wp = weight
            .map(|w| w.cuda_slice::<T>().map(|s| be.ptr(s)))
            .transpose()?
            .unwrap_or(0);
        let bp = bias
            .map(|b| b.cuda_slice::<T>().map(|s| be.ptr(s)))
            .transpose()?
            .unwrap_or(0);
        let ys = y.cuda_slice_mut::<T>()?;
        let ms = mean.cuda_slice_mut::<T>()?;
        let is = invstd.cuda_slice_mut::<T>()?;
        launch!(be, K::LnFwd, T::DTYPE, per_row(rows); xs, &wp, &bp, ys, ms, is, &du, &eps)?;
    }
    Ok((y, RowStats { mean, invstd }))
}

fn grad_input<T: CudaElem>(
    g: &Tensor,
    x: &Tensor,
    stats: &RowStats,
    weight: Option<&Tensor>,
    LnDims { rows, d, .. }: LnDims,
) -> Result<Tensor> {
    let dev = g.device();
    let be = &dev.cuda_handle("layer_norm")?.backend;
    let mut gx = Tensor::cuda_uninit::<T>(g.shape(), dev)?;
    if rows * d > 0 {
        let du = d as u64;
        let (gs, xs) = (g.cuda_slice::<T>()?, x.cuda_slice::<T>()?);
        let (ms, is) = (
            stats.mean.cuda_slice::<T>()?,
            stats.invstd.cuda_slice::<T>()?,
        );
        let wp = weight
            .map(|w| w.cuda_slice::<T>().map(|s| be.ptr(s)))
            .transpose()?
            .unwrap_or(0);
        let o = gx.cuda_slice_mut::<T>()?;
        launch!(be, K::LnBwdInput, T::DTYPE, per_row(rows); gs, xs, ms, is, &wp, o, &du)?;
    }
    Ok(gx)
}

fn grad_affine<T: CudaElem>(
    g: &Tensor,
    x: Option<(&Tensor, &RowStats)>,
    want_bias: bool,
    LnDims { rows, d, .. }: LnDims,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dev = g.device();
    let be = &dev.cuda_handle("layer_norm")?.backend;
    let mut gw = x.map(|_| Tensor::cuda_uninit::<T>(&[d], dev)).transpose()?;
    let mut gb = want_bias
        .then(|| Tensor::cuda_uninit::<T>(&[d], dev))
        .transpose()?;
    if d > 0 {
        let (ru, du) = (rows as u64, d as u64);
        let gs = g.cuda_slice::<T>()?;
        let (xp, mp, ip) = match x {
            Some((x, s)) => (
                be.ptr(x.cuda_slice::<T>()?),
                be.ptr(s.mean.cuda_slice::<T>()?),
                be.ptr(s.invstd.cuda_slice::<T>()?),
            ),
            None => (0, 0, 0),
        };
        let gwp = match gw.as_mut() {
            Some(t) => be.ptr(&*t.cuda_slice_mut::<T>()?),
            None => 0,
        };
        let gbp = match gb.as_mut() {
            Some(t) => be.ptr(&*t.cuda_slice_mut::<T>()?),
            None => 0,
        };
        launch!(be, K::LnBwdAffine, T::DTYPE, grid(d); gs, &xp, &mp, &ip, &gwp, &gbp, &ru, &du)?;
    }
    Ok((gw, gb))
}
