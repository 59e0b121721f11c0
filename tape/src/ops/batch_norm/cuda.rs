//! CUDA path of batch normalisation: cuDNN spatial batch norm for the forward pass (training:
//! batch statistics with the biased variance, running statistics updated in place with the
//! unbiased variance and `momentum` as cuDNN's exponential average factor, in
//! [`Phase::Forward`] only (null running-stat pointers otherwise); eval: the running statistics)
//! and for the training backward pass; NVRTC kernels for the eval-mode backward and for the
//! parameter gradients when the input needs none.
//!
//! 16-bit data (bf16, f16) goes to cuDNN as it is: bf16 / f16 x and y descriptors, and the
//! scale, bias and statistics `f32` (the parameter descriptor cuDNN derives for 16-bit data is
//! float; [`CudaScalar::Param`]), which is the policy's dtype of the parameters and running
//! statistics anyway. The two NVRTC paths (eval-mode input gradient, parameter gradients alone)
//! run on `f32` copies of a 16-bit g and x and round the input gradient once, as the CPU does.

use super::{
    BatchNormKernels, BatchNormOptions, BnBackward, BnForward, BnGrads, BnStats, RunningStats, OP,
};
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{cptr, cudnn_err, grid, launch, mptr, per_row, CudaElem, CudaScalar};
use crate::dtype::Scalar;
use crate::error::{Error, Result};
use crate::ops::widen::{narrow_opt, wide, wide_opt};
use crate::tensor::Tensor;
use cudarc::cudnn::sys;
use std::ffi::c_void;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        BnSums = "bn_sums",
        BnScaleGrad = "bn_scale_grad",
        BnInvstd = "bn_invstd",
    }
}

const MODE: sys::cudnnBatchNormMode_t = sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL;

fn void<T>(v: &T) -> *const c_void {
    v as *const T as *const c_void
}

impl BatchNormKernels for CudaKernels {
    /// A recompute's kept statistics (`a.given`) are not used yet: cuDNN's training forward
    /// computes them again (its output is the first pass's, bit for bit); normalising from them
    /// in one element-wise kernel waits for a GPU to check it against cuDNN's output.
    fn batch_norm_forward(&self, a: &BnForward<'_>) -> Result<(Tensor, Option<BnStats>)> {
        let (out, stats) = dispatch_scalar!(a.x.dtype(), T => {
            // cuDNN reads and writes the running statistics in the parameters' type.
            a.running.check_cuda_dtype(
                <T as CudaScalar>::Param::DTYPE,
                "batch_norm2d (CUDA: running statistics must be f32 for 16-bit inputs, else of the input's dtype)",
            )?;
            if a.training {
                forward_train::<T>(a.x, a.weight, a.bias, a.running, a.opts, a.update_running, a.want_stats)
            } else {
                forward_eval::<T>(a.x, a.weight, a.bias, a.running, a.opts, a.want_stats)
            }
        })?;
        Ok((
            out,
            stats.map(|(mean, invstd)| BnStats::Device { mean, invstd }),
        ))
    }

    fn batch_norm_backward(&self, a: &BnBackward<'_>) -> Result<BnGrads> {
        if a.g.dtype().is_half() && !(a.training && a.want[0]) {
            return backward_widened(a);
        }
        dispatch_scalar!(a.g.dtype(), T => backward::<T>(a))
    }
}

type Stats = Option<(Tensor, Tensor)>;

/// The NVRTC paths of the backward pass (eval-mode input gradient, parameter gradients alone)
/// for a 16-bit g: on `f32` copies of g and x, the input gradient rounded once to g's dtype.
fn backward_widened(a: &BnBackward<'_>) -> Result<BnGrads> {
    let (g, x) = (wide(a.g)?, wide_opt(a.x)?);
    let (gx, gw, gb) = backward::<f32>(&BnBackward {
        g: &g,
        x: x.as_deref(),
        ..*a
    })?;
    Ok((narrow_opt(gx, a.g.dtype())?, gw, gb))
}

/// The training forward pass of data `T` (parameters and statistics `T::Param`).
fn forward_train<T: CudaScalar>(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: &RunningStats,
    opts: BatchNormOptions,
    update_running: bool,
    record: bool,
) -> Result<(Tensor, Stats)> {
    let dims = x.dims4(OP)?;
    let c = dims[1];
    let dev = x.device();
    let be = &dev.cuda_handle(OP)?.backend;
    let mut out = Tensor::cuda_uninit::<T>(x.shape(), dev)?;
    let mut stats = if record {
        Some((
            Tensor::cuda_uninit::<T::Param>(&[c], dev)?,
            Tensor::cuda_uninit::<T::Param>(&[c], dev)?,
        ))
    } else {
        None
    };
    be.bind()?;
    let mut guard = running.lock();
    let st = &mut *guard;
    let (rm, rv, factor) = if update_running {
        (
            mptr(be, st.mean.cuda_slice_mut::<T::Param>()?),
            mptr(be, st.var.cuda_slice_mut::<T::Param>()?),
            opts.momentum,
        )
    } else {
        (std::ptr::null_mut(), std::ptr::null_mut(), 0.0)
    };
    let (sm, si) = match stats.as_mut() {
        Some((m, i)) => (
            mptr(be, m.cuda_slice_mut::<T::Param>()?),
            mptr(be, i.cuda_slice_mut::<T::Param>()?),
        ),
        None => (std::ptr::null_mut(), std::ptr::null_mut()),
    };
    let mut dnn = be.dnn();
    let xd = dnn.tensor(OP, T::DTYPE, dims)?;
    let bnd = dnn.bn_param(OP, T::DTYPE, dims)?;
    let (one, zero) = (T::scaling(1.0), T::scaling(0.0));
    let (xp, wp, bp) = (
        cptr(be, x.cuda_slice::<T>()?),
        cptr(be, weight.cuda_slice::<T::Param>()?),
        cptr(be, bias.cuda_slice::<T::Param>()?),
    );
    let yp = mptr(be, out.cuda_slice_mut::<T>()?);
    // SAFETY: x and y are NCHW buffers described by `xd`; weight, bias, the running statistics
    // and the saved statistics are `[C]` buffers of the parameter type described by `bnd` (the
    // descriptor cuDNN derives from `xd`); the running pointers are both null or both valid, and
    // so are the saved ones; the handle is locked; alpha/beta point to cuDNN's scaling type.
    unsafe {
        sys::cudnnBatchNormalizationForwardTraining(
            dnn.handle,
            MODE,
            void(&one),
            void(&zero),
            xd.0,
            xp,
            xd.0,
            yp,
            bnd.0,
            wp,
            bp,
            factor,
            rm,
            rv,
            opts.eps,
            sm,
            si,
        )
    }
    .result()
    .map_err(|e| cudnn_err("cudnnBatchNormalizationForwardTraining", e))?;
    if update_running {
        st.num_batches_tracked += 1;
    }
    Ok((out, stats))
}

/// The eval-mode forward pass of data `T` (parameters and statistics `T::Param`).
fn forward_eval<T: CudaScalar>(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: &RunningStats,
    opts: BatchNormOptions,
    record: bool,
) -> Result<(Tensor, Stats)> {
    let dims = x.dims4(OP)?;
    let c = dims[1];
    let dev = x.device();
    let be = &dev.cuda_handle(OP)?.backend;
    let (mean, var) = (running.mean(), running.var());
    let mut out = Tensor::cuda_uninit::<T>(x.shape(), dev)?;
    be.bind()?;
    {
        let mut dnn = be.dnn();
        let xd = dnn.tensor(OP, T::DTYPE, dims)?;
        let bnd = dnn.bn_param(OP, T::DTYPE, dims)?;
        let (one, zero) = (T::scaling(1.0), T::scaling(0.0));
        let (xp, wp, bp) = (
            cptr(be, x.cuda_slice::<T>()?),
            cptr(be, weight.cuda_slice::<T::Param>()?),
            cptr(be, bias.cuda_slice::<T::Param>()?),
        );
        let (mp, vp) = (
            cptr(be, mean.cuda_slice::<T::Param>()?),
            cptr(be, var.cuda_slice::<T::Param>()?),
        );
        let yp = mptr(be, out.cuda_slice_mut::<T>()?);
        // SAFETY: as in `forward_train`; the running statistics are read only.
        unsafe {
            sys::cudnnBatchNormalizationForwardInference(
                dnn.handle,
                MODE,
                void(&one),
                void(&zero),
                xd.0,
                xp,
                xd.0,
                yp,
                bnd.0,
                wp,
                bp,
                mp,
                vp,
                opts.eps,
            )
        }
        .result()
        .map_err(|e| cudnn_err("cudnnBatchNormalizationForwardInference", e))?;
    }
    if !record {
        return Ok((out, None));
    }
    let mut invstd = Tensor::cuda_uninit::<T::Param>(&[c], dev)?;
    let cu = c as u64;
    if c > 0 {
        let vs = var.cuda_slice::<T::Param>()?;
        let is = invstd.cuda_slice_mut::<T::Param>()?;
        launch!(be, K::BnInvstd, T::Param::DTYPE, grid(c); vs, &opts.eps, &cu, is)?;
    }
    Ok((out, Some((mean, invstd))))
}

/// The gradients of `x`, `weight` and `bias` from the output gradient `g` of data `T`
/// (parameters and statistics `T::Param`); the NVRTC paths take `T == T::Param` only (a 16-bit
/// g goes through [`backward_widened`] there).
fn backward<T: CudaScalar>(a: &BnBackward<'_>) -> Result<BnGrads> {
    let g = a.g;
    let dims = g.dims4(OP)?;
    let [n, c, h, w] = dims;
    let [want_x, want_w, want_b] = a.want;
    let training = a.training;
    let dev = g.device();
    let be = &dev.cuda_handle(OP)?.backend;
    let missing =
        || Error::Backward("batch_norm2d did not save what the input gradient needs".into());
    if training && want_x {
        // cuDNN: all three gradients in one pass from the saved batch statistics.
        let x = a.x.ok_or_else(missing)?;
        let weight = a.weight.ok_or_else(missing)?;
        let mut gx = Tensor::cuda_uninit::<T>(g.shape(), dev)?;
        let mut gw = Tensor::cuda_uninit::<T::Param>(&[c], dev)?;
        let mut gb = Tensor::cuda_uninit::<T::Param>(&[c], dev)?;
        be.bind()?;
        {
            let mut dnn = be.dnn();
            let xd = dnn.tensor(OP, T::DTYPE, dims)?;
            let bnd = dnn.bn_param(OP, T::DTYPE, dims)?;
            let (one, zero) = (T::scaling(1.0), T::scaling(0.0));
            let (xp, gp, wp) = (
                cptr(be, x.cuda_slice::<T>()?),
                cptr(be, g.cuda_slice::<T>()?),
                cptr(be, weight.cuda_slice::<T::Param>()?),
            );
            let (mp, ip) = (
                cptr(be, a.stats.on_device()?.0.cuda_slice::<T::Param>()?),
                cptr(be, a.stats.on_device()?.1.cuda_slice::<T::Param>()?),
            );
            let gxp = mptr(be, gx.cuda_slice_mut::<T>()?);
            let gwp = mptr(be, gw.cuda_slice_mut::<T::Param>()?);
            let gbp = mptr(be, gb.cuda_slice_mut::<T::Param>()?);
            // SAFETY: as in `forward_train`; x, weight and the saved statistics are those of
            // the forward pass (unchanged since); every output is a distinct new buffer.
            unsafe {
                sys::cudnnBatchNormalizationBackward(
                    dnn.handle,
                    MODE,
                    void(&one),
                    void(&zero),
                    void(&one),
                    void(&zero),
                    xd.0,
                    xp,
                    xd.0,
                    gp,
                    xd.0,
                    gxp,
                    bnd.0,
                    wp,
                    gwp,
                    gbp,
                    a.eps,
                    mp,
                    ip,
                )
            }
            .result()
            .map_err(|e| cudnn_err("cudnnBatchNormalizationBackward", e))?;
        }
        return Ok((Some(gx), want_w.then_some(gw), want_b.then_some(gb)));
    }
    if T::DTYPE != T::Param::DTYPE {
        return Err(Error::UnsupportedDType {
            op: "batch_norm2d (CUDA: a 16-bit gradient outside cuDNN's backward; engine bug)",
            dtype: T::DTYPE,
        });
    }
    // Parameter gradients from per-channel sums: sum g, and sum g * xhat when x was kept.
    let (mut gw, mut gb) = (None, None);
    if want_w || want_b {
        gw = match a.x {
            Some(_) if want_w => Some(Tensor::cuda_uninit::<T>(&[c], dev)?),
            _ => None,
        };
        if want_w && gw.is_none() {
            return Err(missing());
        }
        gb = match want_b {
            true => Some(Tensor::cuda_uninit::<T>(&[c], dev)?),
            false => None,
        };
        if c > 0 {
            let null = 0u64;
            let (nu, cu, hwu) = (n as u64, c as u64, (h * w) as u64);
            let gs = g.cuda_slice::<T>()?;
            let (ms, is) = (
                a.stats.on_device()?.0.cuda_slice::<T>()?,
                a.stats.on_device()?.1.cuda_slice::<T>()?,
            );
            let xp = match a.x {
                Some(x) => be.ptr(x.cuda_slice::<T>()?),
                None => null,
            };
            let gbp = match gb.as_mut() {
                Some(t) => be.ptr(&*t.cuda_slice_mut::<T>()?),
                None => null,
            };
            let gwp = match gw.as_mut() {
                Some(t) => be.ptr(&*t.cuda_slice_mut::<T>()?),
                None => null,
            };
            launch!(be, K::BnSums, T::DTYPE, per_row(c);
                gs, &xp, ms, is, &nu, &cu, &hwu, &gbp, &gwp)?;
        }
    }
    if !want_x {
        return Ok((None, gw, gb));
    }
    // Eval mode: gx = g * weight * invstd (the running statistics are constants).
    let weight = a.weight.ok_or_else(missing)?;
    let mut gx = Tensor::cuda_uninit::<T>(g.shape(), dev)?;
    let total = g.numel();
    if total > 0 {
        let (cu, hwu, nu) = (c as u64, (h * w) as u64, total as u64);
        let (gs, ws, is) = (
            g.cuda_slice::<T>()?,
            weight.cuda_slice::<T>()?,
            a.stats.on_device()?.1.cuda_slice::<T>()?,
        );
        let o = gx.cuda_slice_mut::<T>()?;
        launch!(be, K::BnScaleGrad, T::DTYPE, grid(total); o, gs, ws, is, &cu, &hwu, &nu)?;
    }
    Ok((Some(gx), gw, gb))
}

/// Device access to the running statistics for other CUDA ops that normalise with them (the
/// fused concat -> batch norm -> ReLU).
impl RunningStats {
    /// Fails with [`Error::DType`] (naming `op`) unless the running statistics have `dtype`:
    /// cuDNN reads and writes them in the data's type.
    pub(crate) fn check_cuda_dtype(&self, dtype: crate::DType, op: &'static str) -> Result<()> {
        let st = self.lock();
        for t in [&st.mean, &st.var] {
            if t.dtype() != dtype {
                return Err(Error::DType {
                    op,
                    expected: dtype,
                    got: t.dtype(),
                });
            }
        }
        Ok(())
    }

    /// With the statistics locked, calls `update` with the device addresses of the running mean
    /// and variance (each made unique first, so snapshots taken with [`RunningStats::mean`] and
    /// [`RunningStats::var`] keep their values), which it may update in place; counts one batch
    /// when `update` succeeds.
    pub(crate) fn update_on_device<T: CudaElem>(
        &self,
        update: impl FnOnce(u64, u64) -> Result<()>,
    ) -> Result<()> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let be = st.mean.device().cuda_handle(OP)?.backend.clone();
        let mean = be.ptr(&*st.mean.cuda_slice_mut::<T>()?);
        let var = be.ptr(&*st.var.cuda_slice_mut::<T>()?);
        update(mean, var)?;
        st.num_batches_tracked += 1;
        Ok(())
    }
}
