//! CUDA path of `conv2d`: cuDNN forward, backward-data and backward-filter convolutions with the
//! algorithm of each direction chosen once per shape (cuDNN's heuristics, or with
//! `CudaOptions::measure_conv_algorithms` cuDNN's `Find` run on the first call's buffers; within
//! the device's workspace limit; strict fp32 FMA math unless TF32 was allowed), the bias added
//! and its gradient taken by cuDNN. Each workspace is charged to the device while the call holds
//! it, or once for the device's lifetime with `CudaOptions::persistent_workspace`.
//!
//! 16-bit tensors (bf16, f16) go to cuDNN as they are: bf16 / f16 x, w and y descriptors with an
//! `f32` compute type (cuDNN's "pseudo half" configurations: products and sums in `f32`, each
//! output rounded once), tensor-core math allowed (it loses nothing more on 16-bit operands); the
//! weight and bias gradients come back in the operands' dtype. A combination cuDNN refuses
//! (bf16 before Ampere, say) is its status as an error. Their bias is added, and its gradient
//! summed, by NVRTC kernels (`kernels.cu`) rather than cuDNN's tensor ops.

use super::{Conv2dGrads, Conv2dKernels, Geometry, OP};
use crate::backend::CudaKernels;
use crate::device::cuda::{
    conv_workspace, cptr, cudnn_err, grid, launch, mptr, nvrtc_program, per_row, scratch, ConvKey,
    ConvPlan, CudaHandle, CudaScalar, Dnn, FindArgs, FindContext, TensorDesc, Workspace,
};
use crate::device::Device;
use crate::error::Result;
use crate::tensor::Tensor;
use cudarc::cudnn::sys;
use std::ffi::c_void;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu` (the bias of 16-bit convolutions).
    pub(crate) enum K from include_str!("kernels.cu") => {
        BiasAdd = "conv_bias_add",
        BiasGrad = "conv_bias_grad",
    }
}

fn void<T>(v: &T) -> *const c_void {
    v as *const T as *const c_void
}

fn key(cu: &CudaHandle, geo: &Geometry, dtype: crate::DType) -> ConvKey {
    ConvKey {
        dtype,
        x: [geo.n, geo.cin, geo.h, geo.w],
        w: [geo.cout, geo.cin, geo.kh, geo.kw],
        y: [geo.n, geo.cout, geo.hout, geo.wout],
        stride: geo.stride,
        padding: geo.padding,
        tf32: cu.options.tf32,
        workspace_limit: cu.options.workspace_limit_bytes,
    }
}

/// Measures a direction's algorithms with cuDNN's `Find` when the device asks for it
/// (`measure_conv_algorithms`), on the call's operands `a`, `b` and output `out`; `None`
/// otherwise (the plan's heuristic choice stands). A choice already made for the plan
/// (`cached`) comes back with nothing allocated; a search runs once per plan and direction, with
/// a workspace of the limit of its own, charged to the accounting while the search runs and
/// freed after it (never the persistent workspace, which would keep the limit for good).
/// `strict`: the plan's [`ConvPlan::strict`].
fn measured<C>(
    cu: &CudaHandle,
    dev: &Device,
    (handle, strict): (sys::cudnnHandle_t, bool),
    (a, b, out): (*const c_void, *const c_void, *mut c_void),
    cached: Option<C>,
    find: impl FnOnce(FindContext, &FindArgs) -> Result<C>,
) -> Result<Option<C>> {
    if !cu.options.measure_conv_algorithms {
        return Ok(None);
    }
    if cached.is_some() {
        return Ok(cached);
    }
    let limit = cu.options.workspace_limit_bytes;
    let mut ws = match limit {
        0 => Workspace::None,
        bytes => Workspace::Owned(scratch::<u8>(dev, bytes)?),
    };
    let (wsp, wss) = ws.ptr(&cu.backend);
    let cx = FindContext {
        handle,
        limit,
        strict,
    };
    let args = FindArgs {
        a,
        b,
        out,
        ws: wsp,
        ws_bytes: wss,
    };
    find(cx, &args).map(Some)
}

/// Whether cuDNN can take the shapes (it rejects empty dimensions).
fn degenerate(geo: &Geometry) -> bool {
    [geo.n, geo.cin, geo.h, geo.w, geo.cout, geo.hout, geo.wout].contains(&0)
}

impl Conv2dKernels for CudaKernels {
    fn conv2d_forward(
        &self,
        geo: &Geometry,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        dispatch_scalar!(x.dtype(), T => forward_t::<T>(geo, x, weight, bias))
    }

    /// Computed into a buffer of its own (allocated) and then copied into the storage's
    /// channels: writing cuDNN's output straight into them (a strided output descriptor) has to
    /// be checked on a GPU first.
    fn conv2d_forward_into(
        &self,
        geo: &Geometry,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        dst: &mut Tensor,
        c0: usize,
    ) -> Result<()> {
        let out = self.conv2d_forward(geo, x, weight, bias)?;
        use crate::block_storage::BlockStorageKernels;
        crate::backend::kernels(x.device())?.write_channels(dst, &out, c0)
    }

    /// The window is copied out first (one buffer of its own): reading it in place (a strided
    /// cuDNN descriptor) has to be checked on a GPU first.
    fn conv2d_backward_window(
        &self,
        geo: &Geometry,
        g: &Tensor,
        c0: usize,
        x: Option<&Tensor>,
        w: Option<&Tensor>,
        want_bias: bool,
    ) -> Result<Conv2dGrads> {
        use crate::block_storage::BlockStorageKernels;
        let packed = crate::backend::kernels(g.device())?.read_channels(g, c0, geo.cout)?;
        self.conv2d_backward(geo, &packed, x, w, want_bias)
    }

    fn conv2d_backward(
        &self,
        geo: &Geometry,
        g: &Tensor,
        x: Option<&Tensor>,
        w: Option<&Tensor>,
        want_bias: bool,
    ) -> Result<Conv2dGrads> {
        dispatch_scalar!(g.dtype(), T => backward_t::<T>(geo, g, x, w, want_bias))
    }
}

/// The convolution of `x` with `weight` plus `bias`.
fn forward_t<T: CudaScalar>(
    geo: &Geometry,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let dev = x.device();
    let cu = dev.cuda_handle(OP)?;
    let be = &cu.backend;
    let yshape = [geo.n, geo.cout, geo.hout, geo.wout];
    let (one, zero) = (T::scaling(1.0), T::scaling(0.0));
    if degenerate(geo) {
        // No products: the output is the bias (or zeros).
        let mut out = Tensor::zeros(&yshape, T::DTYPE, dev)?;
        if let (Some(b), true) = (bias, out.numel() > 0) {
            be.bind()?;
            let mut dnn = be.dnn();
            let yd = dnn.tensor(OP, T::DTYPE, yshape)?;
            let bd = dnn.tensor(OP, T::DTYPE, [1, geo.cout, 1, 1])?;
            add_bias::<T>(cu, &dnn, (&bd, &yd), b, &mut out)?;
        }
        return Ok(out);
    }
    let mut out = Tensor::cuda_uninit::<T>(&yshape, dev)?;
    be.bind()?;
    let mut dnn = be.dnn();
    let plan = dnn.conv(key(cu, geo, T::DTYPE))?;
    let (xp, wp) = (
        cptr(be, x.cuda_slice::<T>()?),
        cptr(be, weight.cuda_slice::<T>()?),
    );
    let yp = mptr(be, out.cuda_slice_mut::<T>()?);
    let cached = plan.found_fwd.get().copied();
    let choice = measured(
        cu,
        dev,
        (dnn.handle, plan.strict),
        (xp, wp, yp),
        cached,
        |cx, a| plan.find_fwd(cx, a),
    )?
    .unwrap_or(plan.fwd);
    let mut ws = conv_workspace(cu, dev, choice.workspace)?;
    let (wsp, wss) = ws.ptr(be);
    plan.set_math(choice.math)?;
    // SAFETY: the plan's descriptors were made from these shapes; the workspace has the size
    // the chosen algorithm asked for; the handle is locked; y is written with beta = 0.
    unsafe {
        sys::cudnnConvolutionForward(
            dnn.handle,
            void(&one),
            plan.x.0,
            xp,
            plan.w.0,
            wp,
            plan.conv.0,
            choice.algo,
            wsp,
            wss,
            void(&zero),
            plan.y.0,
            yp,
        )
    }
    .result()
    .map_err(|e| cudnn_err("cudnnConvolutionForward", e))?;
    if let Some(b) = bias {
        add_bias::<T>(cu, &dnn, (&plan.bias, &plan.y), b, &mut out)?;
    }
    Ok(out)
}

/// `y += bias` broadcast over the channels of `y` (`descs`: the bias's `[1, cout, 1, 1]` and y's
/// descriptors): cuDNN's `cudnnAddTensor` for `f32` / `f64`, the `conv_bias_add` kernel (the
/// sum in `f32`, rounded once) for 16-bit tensors. Call with the `Dnn` lock held.
fn add_bias<T: CudaScalar>(
    cu: &CudaHandle,
    dnn: &Dnn,
    (bd, yd): (&TensorDesc, &TensorDesc),
    b: &Tensor,
    y: &mut Tensor,
) -> Result<()> {
    let be = &cu.backend;
    if T::DTYPE.is_half() {
        let [n, c, h, w] = y.dims4(OP)?;
        let (cu64, hw, len) = ((c as u64), (h * w) as u64, (n * c * h * w) as u64);
        let bs = b.cuda_slice::<T>()?;
        let ys = y.cuda_slice_mut::<T>()?;
        return launch!(be, K::BiasAdd, T::DTYPE, grid(len as usize); ys, bs, &cu64, &hw, &len);
    }
    let one = T::scaling(1.0);
    let bp = cptr(be, b.cuda_slice::<T>()?);
    let yp = mptr(be, y.cuda_slice_mut::<T>()?);
    // SAFETY: `[1, cout, 1, 1]` broadcast over y, each buffer described by its descriptor; the
    // handle is locked by the caller.
    unsafe { sys::cudnnAddTensor(dnn.handle, void(&one), bd.0, bp, void(&one), yd.0, yp) }
        .result()
        .map_err(|e| cudnn_err("cudnnAddTensor", e))
}

/// Grad input (when the weight was saved), grad weight (when the input was saved) and grad bias
/// (when asked for) from the output gradient `g` (its shape checked by the caller).
fn backward_t<T: CudaScalar>(
    geo: &Geometry,
    g: &Tensor,
    x: Option<&Tensor>,
    w: Option<&Tensor>,
    want_bias: bool,
) -> Result<Conv2dGrads> {
    let dev = g.device();
    let cu = dev.cuda_handle(OP)?;
    let be = &cu.backend;
    let xshape = [geo.n, geo.cin, geo.h, geo.w];
    let wshape = [geo.cout, geo.cin, geo.kh, geo.kw];
    let gp = cptr(be, g.cuda_slice::<T>()?);
    be.bind()?;
    let mut dnn = be.dnn();
    let gb = match (want_bias, g.numel() > 0) {
        (false, _) => None,
        (true, false) => Some(Tensor::zeros(&[geo.cout], T::DTYPE, dev)?),
        (true, true) => Some(bias_grad::<T>(&mut dnn, cu, geo, gp, dev)?),
    };
    if degenerate(geo) {
        // No products: zero gradients for the input and the weight.
        let zeros = |s: &[usize]| Tensor::zeros(s, T::DTYPE, dev);
        let gx = w.map(|_| zeros(&xshape)).transpose()?;
        let gw = x.map(|_| zeros(&wshape)).transpose()?;
        return Ok((gx, gw, gb));
    }
    let plan = dnn.conv(key(cu, geo, T::DTYPE))?;
    let run = Backward {
        cu,
        dev,
        handle: dnn.handle,
        plan: &plan,
        g: gp,
    };
    let gx = w.map(|w| data_grad::<T>(&run, w, &xshape)).transpose()?;
    let gw = x.map(|x| filter_grad::<T>(&run, x, &wshape)).transpose()?;
    Ok((gx, gw, gb))
}

/// What both gradient directions of one backward call share: the GPU, the locked cuDNN
/// handle, the shape's plan and the output gradient's address.
struct Backward<'a> {
    cu: &'a CudaHandle,
    dev: &'a Device,
    handle: sys::cudnnHandle_t,
    plan: &'a ConvPlan,
    g: *const c_void,
}

/// The bias gradient `[cout]`: the output gradient summed over all but the channels.
fn bias_grad<T: CudaScalar>(
    dnn: &mut Dnn,
    cu: &CudaHandle,
    geo: &Geometry,
    gp: *const c_void,
    dev: &Device,
) -> Result<Tensor> {
    let be = &cu.backend;
    let (one, zero) = (T::scaling(1.0), T::scaling(0.0));
    let yd = dnn.tensor(OP, T::DTYPE, [geo.n, geo.cout, geo.hout, geo.wout])?;
    let bd = dnn.tensor(OP, T::DTYPE, [1, geo.cout, 1, 1])?;
    let mut gb = Tensor::cuda_uninit::<T>(&[geo.cout], dev)?;
    if T::DTYPE.is_half() {
        // The sum in double, in a fixed order, rounded once (no cuDNN tensor op on 16 bits).
        let (n, c, hw) = (geo.n as u64, geo.cout as u64, (geo.hout * geo.wout) as u64);
        let gs = gp as u64;
        let o = gb.cuda_slice_mut::<T>()?;
        launch!(be, K::BiasGrad, T::DTYPE, per_row(geo.cout); &gs, o, &n, &c, &hw)?;
        return Ok(gb);
    }
    let bp = mptr(be, gb.cuda_slice_mut::<T>()?);
    // SAFETY: dy is described by `yd`, db by `bd`; handle locked.
    unsafe {
        sys::cudnnConvolutionBackwardBias(dnn.handle, void(&one), yd.0, gp, void(&zero), bd.0, bp)
    }
    .result()
    .map_err(|e| cudnn_err("cudnnConvolutionBackwardBias", e))?;
    Ok(gb)
}

/// The input gradient `xshape` from the weight `w` (cuDNN's backward-data).
fn data_grad<T: CudaScalar>(r: &Backward<'_>, w: &Tensor, xshape: &[usize]) -> Result<Tensor> {
    let (be, plan) = (&r.cu.backend, r.plan);
    let (one, zero) = (T::scaling(1.0), T::scaling(0.0));
    let mut gx = Tensor::cuda_uninit::<T>(xshape, r.dev)?;
    let wp = cptr(be, w.cuda_slice::<T>()?);
    let dxp = mptr(be, gx.cuda_slice_mut::<T>()?);
    let cached = plan.found_bwd_data.get().copied();
    let choice = measured(
        r.cu,
        r.dev,
        (r.handle, plan.strict),
        (wp, r.g, dxp),
        cached,
        |cx, a| plan.find_bwd_data(cx, a),
    )?
    .unwrap_or(plan.bwd_data);
    let mut ws = conv_workspace(r.cu, r.dev, choice.workspace)?;
    let (wsp, wss) = ws.ptr(be);
    plan.set_math(choice.math)?;
    // SAFETY: as in `forward_t`; dx is written with beta = 0.
    unsafe {
        sys::cudnnConvolutionBackwardData(
            r.handle,
            void(&one),
            plan.w.0,
            wp,
            plan.y.0,
            r.g,
            plan.conv.0,
            choice.algo,
            wsp,
            wss,
            void(&zero),
            plan.x.0,
            dxp,
        )
    }
    .result()
    .map_err(|e| cudnn_err("cudnnConvolutionBackwardData", e))?;
    Ok(gx)
}

/// The weight gradient `wshape` from the input `x` (cuDNN's backward-filter).
fn filter_grad<T: CudaScalar>(r: &Backward<'_>, x: &Tensor, wshape: &[usize]) -> Result<Tensor> {
    let (be, plan) = (&r.cu.backend, r.plan);
    let (one, zero) = (T::scaling(1.0), T::scaling(0.0));
    let mut gw = Tensor::cuda_uninit::<T>(wshape, r.dev)?;
    let xp = cptr(be, x.cuda_slice::<T>()?);
    let dwp = mptr(be, gw.cuda_slice_mut::<T>()?);
    let cached = plan.found_bwd_filter.get().copied();
    let choice = measured(
        r.cu,
        r.dev,
        (r.handle, plan.strict),
        (xp, r.g, dwp),
        cached,
        |cx, a| plan.find_bwd_filter(cx, a),
    )?
    .unwrap_or(plan.bwd_filter);
    let mut ws = conv_workspace(r.cu, r.dev, choice.workspace)?;
    let (wsp, wss) = ws.ptr(be);
    plan.set_math(choice.math)?;
    // SAFETY: as in `forward_t`; dw is written with beta = 0.
    unsafe {
        sys::cudnnConvolutionBackwardFilter(
            r.handle,
            void(&one),
            plan.x.0,
            xp,
            plan.y.0,
            r.g,
            plan.conv.0,
            choice.algo,
            wsp,
            wss,
            void(&zero),
            plan.w.0,
            dwp,
        )
    }
    .result()
    .map_err(|e| cudnn_err("cudnnConvolutionBackwardFilter", e))?;
    Ok(gw)
}
