//! CUDA kernels of pooling: average and max pooling with cuDNN (forward and backward), global
//! average pooling with NVRTC kernels (per plane, summed in order like the CPU kernel). Every
//! dtype: bf16 / f16 tensors go to cuDNN and the kernels as they are (the global average summed
//! in `f32` and rounded once, as the CPU's `f32` kernel on their copies).

use super::{PoolKernels, PoolMode, Window};
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{cptr, cudnn_err, grid, launch, mptr, scratch, CudaScalar};
use crate::error::Result;
use crate::tensor::Tensor;
use cudarc::cudnn::sys;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        GapFwd = "gap_fwd",
        GapBwd = "gap_bwd",
    }
}

impl PoolKernels for CudaKernels {
    fn pool_forward(&self, mode: PoolMode, x: &Tensor, win: &Window) -> Result<Tensor> {
        dispatch_scalar!(x.dtype(), T => forward_t::<T>(mode.op(), mode, x, win))
    }

    fn pool_backward(
        &self,
        mode: PoolMode,
        saved: Option<(&Tensor, &Tensor)>,
        g: &Tensor,
        win: &Window,
        x_shape: &[usize],
    ) -> Result<Tensor> {
        dispatch_scalar!(g.dtype(), T => backward_t::<T>(mode.op(), mode, saved, g, win, x_shape))
    }

    fn global_avg_forward(&self, x: &Tensor, hw: usize) -> Result<Tensor> {
        let out_shape = [x.shape()[0], x.shape()[1]];
        dispatch_scalar!(x.dtype(), T => gap_t::<T>(K::GapFwd, x, hw, &out_shape))
    }

    fn global_avg_backward(&self, g: &Tensor, hw: usize, x_shape: &[usize]) -> Result<Tensor> {
        dispatch_scalar!(g.dtype(), T => gap_t::<T>(K::GapBwd, g, hw, x_shape))
    }
}

fn forward_t<T: CudaScalar>(
    op: &'static str,
    mode: PoolMode,
    x: &Tensor,
    win: &Window,
) -> Result<Tensor> {
    let [n, c, _, _] = x.dims4(op)?;
    let dev = x.device();
    let be = &dev.cuda_handle(op)?.backend;
    let yshape = [n, c, win.hout, win.wout];
    if x.numel() == 0 || yshape.contains(&0) {
        return Tensor::zeros(&yshape, T::DTYPE, dev);
    }
    let mut out = Tensor::cuda_uninit::<T>(&yshape, dev)?;
    be.bind()?;
    let mut dnn = be.dnn();
    let pd = dnn.pool(op, cudnn_mode(mode), win.kernel, win.stride, win.padding)?;
    let xd = dnn.tensor(op, T::DTYPE, [n, c, win.h, win.w])?;
    let yd = dnn.tensor(op, T::DTYPE, yshape)?;
    let (one, zero) = (T::scaling(1.0), T::scaling(0.0));
    let xp = cptr(be, x.cuda_slice::<T>()?);
    let yp = mptr(be, out.cuda_slice_mut::<T>()?);
    // SAFETY: descriptors describe the buffers (shapes from the checked window); the handle is
    // locked; alpha/beta point to cuDNN's scaling type of the data (double for double, else float).
    unsafe {
        sys::cudnnPoolingForward(
            dnn.handle,
            pd.0,
            &one as *const _ as *const std::ffi::c_void,
            xd.0,
            xp,
            &zero as *const _ as *const std::ffi::c_void,
            yd.0,
            yp,
        )
    }
    .result()
    .map_err(|e| cudnn_err("cudnnPoolingForward", e))?;
    Ok(out)
}

/// Grad input of pooling (cuDNN). Max pooling passes the saved input `x` and output `y`.
/// Average pooling reads neither, but cuDNN's API takes both: `y` is stood in for by the output
/// gradient (same shape, read only) and `x` by a separate scratch buffer of `x`'s shape (never
/// by `dx`, which cuDNN writes).
fn backward_t<T: CudaScalar>(
    op: &'static str,
    mode: PoolMode,
    saved: Option<(&Tensor, &Tensor)>,
    g: &Tensor,
    win: &Window,
    xshape: &[usize],
) -> Result<Tensor> {
    let dev = g.device();
    let be = &dev.cuda_handle(op)?.backend;
    let [n, c] = [xshape[0], xshape[1]];
    let expected = [n, c, win.hout, win.wout];
    if g.shape() != expected {
        return Err(crate::Error::Backward(format!(
            "{op}: gradient of shape {:?}, expected {expected:?}",
            g.shape()
        )));
    }
    if g.numel() == 0 {
        return Tensor::zeros(xshape, T::DTYPE, dev);
    }
    let mut gx = Tensor::cuda_uninit::<T>(xshape, dev)?;
    be.bind()?;
    let mut dnn = be.dnn();
    let pd = dnn.pool(op, cudnn_mode(mode), win.kernel, win.stride, win.padding)?;
    let xd = dnn.tensor(op, T::DTYPE, [n, c, win.h, win.w])?;
    let yd = dnn.tensor(op, T::DTYPE, expected)?;
    let (one, zero) = (T::scaling(1.0), T::scaling(0.0));
    let gp = cptr(be, g.cuda_slice::<T>()?);
    let gxp = mptr(be, gx.cuda_slice_mut::<T>()?);
    let stand_in;
    let (xp, yp) = match saved {
        Some((x, y)) => (
            cptr(be, x.cuda_slice::<T>()?),
            cptr(be, y.cuda_slice::<T>()?),
        ),
        None => {
            stand_in = scratch::<T>(dev, gx.numel())?;
            (cptr(be, &stand_in.buf), gp)
        }
    };
    // SAFETY: as in `forward_t`; `dx` is written with beta = 0 and aliases no input. For
    // average pooling `x` and `y` only satisfy the signature (their values do not enter the
    // result).
    unsafe {
        sys::cudnnPoolingBackward(
            dnn.handle,
            pd.0,
            &one as *const _ as *const std::ffi::c_void,
            yd.0,
            yp,
            yd.0,
            gp,
            xd.0,
            xp,
            &zero as *const _ as *const std::ffi::c_void,
            xd.0,
            gxp,
        )
    }
    .result()
    .map_err(|e| cudnn_err("cudnnPoolingBackward", e))?;
    Ok(gx)
}

/// The plane means (`GapFwd`) or their gradient (`GapBwd`) of `src`, as `out_shape`.
fn gap_t<T: CudaScalar>(k: K, src: &Tensor, hw: usize, out_shape: &[usize]) -> Result<Tensor> {
    let dev = src.device();
    let be = &dev.cuda_handle("global_avg_pool")?.backend;
    let mut out = Tensor::cuda_uninit::<T>(out_shape, dev)?;
    let planes = out_shape[0] * out_shape[1];
    let (planes_u, hw_u) = (planes as u64, hw as u64);
    let n = if k == K::GapFwd { planes } else { planes * hw };
    if n == 0 {
        return Ok(out);
    }
    let s = src.cuda_slice::<T>()?;
    let o = out.cuda_slice_mut::<T>()?;
    launch!(be, k, T::DTYPE, grid(n); s, o, &planes_u, &hw_u)?;
    Ok(out)
}

/// cuDNN's pooling mode for `mode` (average counts the padding in, as the CPU does).
fn cudnn_mode(mode: PoolMode) -> cudarc::cudnn::sys::cudnnPoolingMode_t {
    use cudarc::cudnn::sys::cudnnPoolingMode_t as M;
    match mode {
        PoolMode::Avg => M::CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING,
        PoolMode::Max => M::CUDNN_POOLING_MAX_DETERMINISTIC,
    }
}
