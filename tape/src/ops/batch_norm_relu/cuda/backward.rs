//! The backward pass of the fused op on CUDA, part by part: the ReLU-masked gradient of the
//! part's channels (packed into scratch, or straight into the input gradient in eval mode),
//! then cuDNN's batch-norm backward from the saved statistics (training, input gradient
//! wanted) or NVRTC kernels (eval mode; parameter gradients alone).

use super::super::{BnReluBackward, BnReluGrads, OP};
use super::K;
use super::{at, void, with_aligned_params, Layout, ParamSlice, MODE};
use crate::block_storage::BlockStorageKernels;
use crate::device::cuda::{cudnn_err, grid, launch, per_row, scratch, Backend, CudaScalar};
use crate::device::Device;
use crate::dtype::Scalar;
use crate::error::{Error, Result};
use crate::ops::batch_norm::cuda::K as BnK;
use crate::primitives::PrimitiveKernels;
use crate::tensor::Tensor;
use cudarc::cudnn::result::CudnnError;
use cudarc::cudnn::sys;
use std::ffi::c_void;

/// What the backward of every part shares: the arguments, the layout, the GPU and the device
/// addresses of the buffers all parts read or write (0 where a buffer is absent).
struct Shared<'a> {
    a: &'a BnReluBackward<'a>,
    l: &'a Layout,
    dev: &'a Device,
    be: &'a Backend,
    /// Weight and bias gradients (`[C]`).
    gw: u64,
    gb: u64,
    /// The part-sized scratch buffer of masked gradients.
    tmp: u64,
    /// Output gradient, output, saved mean, saved invstd, weight.
    g: u64,
    y: u64,
    mean: u64,
    invstd: u64,
    weight: u64,
}

impl Shared<'_> {
    /// Whether the weight or the bias wants a gradient.
    fn need_params(&self) -> bool {
        self.a.want_weight || self.a.want_bias
    }

    /// Whether cuDNN's backward runs for part `k` (training, input gradient wanted, non-empty):
    /// it always writes the weight and bias gradients too.
    fn cudnn(&self, k: usize) -> bool {
        self.a.training && self.a.want_parts[k] && self.l.part_len(k) > 0
    }

    /// Whether part `k`'s masked gradient goes to scratch (eval mode writes it into the input
    /// gradient; a channel prefix's input gradient is the storage's, strided, never a packed
    /// buffer to write it into).
    fn via_scratch(&self, k: usize) -> bool {
        if self.a.want_parts[k] {
            self.a.training || self.l.strided(k)
        } else {
            self.need_params()
        }
    }
}

/// The device address of a tensor's buffer, or 0 without one.
fn ptr_of<T: CudaScalar>(be: &Backend, t: Option<&mut Tensor>) -> Result<u64> {
    Ok(match t {
        Some(t) => be.ptr(&*t.cuda_slice_mut::<T>()?),
        None => 0,
    })
}

/// The gradients of the parts, weight and bias that want one, from the output gradient; a part's
/// existing gradient in `into` is added into (by cuDNN itself, `beta = 1`, in training; by an
/// add after the fact in eval mode).
pub(super) fn backward<T: CudaScalar>(
    a: &BnReluBackward<'_>,
    l: &Layout,
    mut into: Vec<Option<Tensor>>,
) -> Result<BnReluGrads> {
    let (want_w, want_b) = (a.want_weight, a.want_bias);
    let count = l.channels.len();
    let dev = a.g.device();
    let be: &Backend = &dev.cuda_handle(OP)?.backend;
    let any_cudnn = (0..count).any(|k| a.training && a.want_parts[k] && l.part_len(k) > 0);
    let new_c = |wanted: bool| -> Result<Option<Tensor>> {
        match wanted {
            true => Tensor::cuda_uninit::<T::Param>(&[l.c], dev).map(Some),
            false => Ok(None),
        }
    };
    let mut gw = new_c(want_w || any_cudnn)?;
    let mut gb = new_c(want_b || any_cudnn)?;
    let mut s = Shared {
        a,
        l,
        dev,
        be,
        gw: ptr_of::<T::Param>(be, gw.as_mut())?,
        gb: ptr_of::<T::Param>(be, gb.as_mut())?,
        tmp: 0,
        g: be.ptr(a.g.cuda_slice::<T>()?),
        y: be.ptr(a.out.cuda_slice::<T>()?),
        mean: be.ptr(a.stats.on_device()?.0.cuda_slice::<T::Param>()?),
        invstd: be.ptr(a.stats.on_device()?.1.cuda_slice::<T::Param>()?),
        weight: be.ptr(a.weight.cuda_slice::<T::Param>()?),
    };
    let scratch_len = (0..count)
        .filter(|&k| s.via_scratch(k))
        .map(|k| l.part_len(k))
        .max()
        .unwrap_or(0);
    let tmp = match scratch_len {
        0 => None,
        len => Some(scratch::<T>(dev, len)?),
    };
    s.tmp = tmp.as_ref().map(|t| be.ptr(&t.buf)).unwrap_or(0);
    be.bind()?;
    let mut gparts = Vec::with_capacity(count);
    for k in 0..count {
        let existing = into.get_mut(k).and_then(Option::take);
        gparts.push(part_backward::<T>(&s, k, existing)?);
    }
    drop(tmp);
    Ok((gparts, gw.filter(|_| want_w), gb.filter(|_| want_b)))
}

/// Part `k`'s input gradient (when wanted; added into `existing` when given) and its share of
/// the weight and bias gradients.
fn part_backward<T: CudaScalar>(
    s: &Shared<'_>,
    k: usize,
    existing: Option<Tensor>,
) -> Result<Option<Tensor>> {
    let (a, l, be) = (s.a, s.l, s.be);
    let need_dx = a.want_parts[k];
    if !need_dx && !s.need_params() {
        return Ok(None);
    }
    let (ck, off, len) = (l.channels[k], l.offsets[k], l.part_len(k));
    // cuDNN adds into an existing gradient itself; the eval-mode kernels write a new one that
    // is added afterwards.
    let accumulate = s.cudnn(k) && existing.is_some();
    let (mut dx, add_after) = match (need_dx, existing) {
        (true, Some(t)) if accumulate => (Some(t), None),
        (true, existing) => (
            Some(Tensor::cuda_uninit::<T>(&l.part_dims(k), s.dev)?),
            existing,
        ),
        (false, _) => (None, None),
    };
    if ck > 0 {
        let dx_ptr = ptr_of::<T>(be, dx.as_mut())?;
        // g' = g where the output is positive, else 0: the part's channels, packed.
        let masked = if s.via_scratch(k) { s.tmp } else { dx_ptr };
        if len > 0 {
            let hw = l.hw();
            let (width, offset) = ((ck * hw) as u64, (off * hw) as u64);
            let (nu, totalu) = (l.n as u64, (l.c * hw) as u64);
            launch!(be, K::ReluMaskPart, T::DTYPE, grid(len);
                &masked, &s.g, &s.y, &nu, &width, &totalu, &offset)?;
        }
        let xp = be.ptr(a.parts[k].cuda_slice::<T>()?);
        if s.cudnn(k) {
            cudnn_backward::<T>(s, k, (xp, masked, dx_ptr), accumulate)?;
        } else {
            eval_backward::<T>(s, k, (xp, masked, dx_ptr))?;
        }
    }
    match (add_after, dx) {
        (Some(acc), Some(dx)) => add_into(s.dev, acc, &dx).map(Some),
        (_, dx) => Ok(dx),
    }
}

/// cuDNN's batch-norm backward of part `k` from the saved statistics: input gradient (added
/// into the existing one with `beta = 1` when `accumulate`), weight and bias gradients, in one
/// pass. `x`, `dy` (the masked gradient) and `dx` are device addresses.
fn cudnn_backward<T: CudaScalar>(
    s: &Shared<'_>,
    k: usize,
    (x, dy, dx): (u64, u64, u64),
    accumulate: bool,
) -> Result<()> {
    let (l, be) = (s.l, s.be);
    let (ck, off) = (l.channels[k], l.offsets[k]);
    let dims = l.part_dims(k);
    if l.strided(k) && !accumulate {
        return Err(Error::Backward(
            "batch_norm_relu: a channel prefix's gradient must be added into its storage's \
             gradient (engine bug)"
                .into(),
        ));
    }
    let mut dnn = be.dnn();
    // x and dx as they lie in their buffers (a channel prefix of a block storage and of its
    // gradient, or packed parts; an existing dx may be wider than x: a block storage's
    // gradient for a gathered copy of its channels); dy is the packed masked gradient.
    let xd = l.part_desc(&mut dnn, k, T::DTYPE)?;
    let dxd = match accumulate {
        true => l.grad_desc(&mut dnn, k, T::DTYPE)?,
        false => dnn.tensor(OP, T::DTYPE, dims)?,
    };
    let dyd = dnn.tensor(OP, T::DTYPE, dims)?;
    let bnd = dnn.bn_param(OP, T::DTYPE, dims)?;
    let (one, zero) = (T::scaling(1.0), T::scaling(0.0));
    let beta_dx = T::scaling(if accumulate { 1.0 } else { 0.0 });
    let params = [
        ParamSlice::input(at::<T::Param>(s.weight, off)),
        ParamSlice::output(at::<T::Param>(s.gw, off)),
        ParamSlice::output(at::<T::Param>(s.gb, off)),
        ParamSlice::input(at::<T::Param>(s.mean, off)),
        ParamSlice::input(at::<T::Param>(s.invstd, off)),
    ];
    let (h, eps) = (dnn.handle, s.a.eps);
    // SAFETY: x (the saved part) and dx (the input gradient: new and packed, or the existing one
    // added into) are NCHW buffers laid out as `xd` and `dxd` describe (packed, or the first
    // channels of a wider buffer), dy (the masked gradient in scratch) is packed as `dyd`
    // describes; `p` holds the weight, the weight and bias gradients and the saved mean and
    // invstd (from the forward pass, unchanged since), each `ck` elements of the parameter type
    // (`off` elements into its `[C]` buffer, or an aligned copy), covering the part's channels
    // as `bnd` describes; the outputs are distinct from every input; the handle is locked.
    with_aligned_params::<T::Param>(be, s.dev, ck, &params, |p| unsafe {
        sys::cudnnBatchNormalizationBackward(
            h,
            MODE,
            void(&one),
            void(&beta_dx),
            void(&one),
            void(&zero),
            xd.0,
            x as *const c_void,
            dyd.0,
            dy as *const c_void,
            dxd.0,
            dx as *mut c_void,
            bnd.0,
            p[0] as *const c_void,
            p[1] as *mut c_void,
            p[2] as *mut c_void,
            eps,
            p[3] as *const c_void,
            p[4] as *const c_void,
        )
    })
    .map_err(|status| cudnn_err("cudnnBatchNormalizationBackward", CudnnError(status)))
}

/// Part `k`'s backward by NVRTC kernels: the per-channel sums of `g'` and `g' * xhat` for the
/// wanted parameter gradients, and in eval mode `dx = g' * weight * invstd` in place. The
/// kernels take one dtype: data of the parameters' dtype only (16-bit data takes the `f32`
/// copies of `half` for this path).
fn eval_backward<T: CudaScalar>(
    s: &Shared<'_>,
    k: usize,
    (x, masked, dx): (u64, u64, u64),
) -> Result<()> {
    if T::DTYPE != T::Param::DTYPE {
        return Err(Error::UnsupportedDType {
            op: "batch_norm_relu (CUDA: a 16-bit part outside cuDNN's backward; engine bug)",
            dtype: T::DTYPE,
        });
    }
    let (a, l, be) = (s.a, s.l, s.be);
    let (ck, off, len) = (l.channels[k], l.offsets[k], l.part_len(k));
    let (nu, hwu, cu) = (l.n as u64, l.hw() as u64, ck as u64);
    let invstd = at::<T>(s.invstd, off);
    if s.need_params() {
        // sum g' and sum g' * xhat per channel (xhat only for the weight).
        let x = if a.want_weight { x } else { 0 };
        let sum_g = if a.want_bias { at::<T>(s.gb, off) } else { 0 };
        let sum_gx = if a.want_weight { at::<T>(s.gw, off) } else { 0 };
        let mean = at::<T>(s.mean, off);
        launch!(be, BnK::BnSums, T::DTYPE, per_row(ck);
            &masked, &x, &mean, &invstd, &nu, &cu, &hwu, &sum_g, &sum_gx)?;
    }
    if a.want_parts[k] && len > 0 {
        let (lu, wk) = (len as u64, at::<T>(s.weight, off));
        launch!(be, BnK::BnScaleGrad, T::DTYPE, grid(len);
            &dx, &dx, &wk, &invstd, &cu, &hwu, &lu)?;
    }
    Ok(())
}

/// `acc + dx`, in place: the whole of `acc`, or its first channels where `acc` is a block
/// storage's gradient.
fn add_into(dev: &Device, mut acc: Tensor, dx: &Tensor) -> Result<Tensor> {
    acc.check_compatible(dx, OP)?;
    let k = crate::backend::kernels(dev)?;
    match acc.shape() == dx.shape() {
        true => k.add_assign(&mut acc, dx)?,
        false => k.add_channels(&mut acc, dx, 0)?,
    }
    Ok(acc)
}
