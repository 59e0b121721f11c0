//! CUDA path of the fused concat -> batch norm -> ReLU, with the CPU op's semantics and memory
//! behaviour: neither the concatenation nor the pre-activation is ever allocated.
//!
//! - Forward: one output buffer `[n, C, h, w]`. For each part (channels `off..off + c` of the
//!   output), cuDNN spatial batch norm over the part, its parameters and statistics addressed
//!   as the part's slice of the `[C]` buffers (pointer offsets). Training: batch statistics,
//!   running statistics updated in place in [`Phase::Forward`] only (null pointers otherwise,
//!   as in `batch_norm2d`), the batch mean and `invstd` saved into slices of two `[C]` buffers.
//!   Eval: the running statistics. cuDNN writes the part's result straight into its channel
//!   slice of the output through a strided descriptor (dims `[n, c, h, w]`, strides
//!   `[C*h*w, h*w, w, 1]`: packed within each plane, as cuDNN's batch norm prefers); should
//!   cuDNN reject that, the part goes through a part-sized scratch buffer and a copy kernel
//!   instead (from then on, for the process). Then ReLU in place over the whole output.
//! - Backward, part by part: the ReLU-masked gradient of the part's channels, packed into one
//!   part-sized scratch buffer (or straight into the part's input gradient in eval mode); then
//!   cuDNN's batch-norm backward from the saved statistics (training, input gradient wanted:
//!   input, weight and bias gradients in one pass, the latter two into slices of `[C]` buffers),
//!   or NVRTC kernels (eval mode: `g' * weight * invstd`; parameter gradients alone: per-channel
//!   sums). Only the gradients whose inputs want one are produced.
//! - Saved for backward: the parts (clones), the output (the ReLU mask), the per-channel mean
//!   and `invstd` (`[C]`, the input dtype) and the weight; nothing else.
//! - Fallbacks: a strided output rejected by cuDNN (any "bad parameter" or "not supported"
//!   sub-code) sends parts through the scratch buffer (`TAPE_BN_RELU_SCRATCH=1` forces that from
//!   the start); per-part parameter slices at odd channel offsets are only element-aligned, and
//!   should cuDNN answer "misaligned pointer" they are copied to an aligned scratch buffer for
//!   the call (and the ones it writes copied back).
//! - 16-bit parts (bf16, f16): the same calls with 16-bit data descriptors and `f32` weight,
//!   bias and statistics (the parameter type cuDNN derives for 16-bit data;
//!   [`CudaScalar::Param`]), the forward pass and the training backward of parts that all want
//!   their gradient; the other backward passes (eval mode, parameter gradients alone) run the
//!   `f32` path on `f32` copies ([`half`]), each result rounded once.

mod backward;
mod half;

use super::super::batch_norm::BnStats;
use super::{BatchNormReluKernels, BnReluBackward, BnReluForward, BnReluGrads, OP};
use crate::backend::CudaKernels;
use crate::block_storage::cuda::K as ChannelK;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{
    cudnn_err, grid, launch, scratch, Backend, CudaElem, CudaScalar, Dnn, PartList, Scratch,
    TensorDesc,
};
use crate::device::Device;
use crate::dtype::Scalar;
use crate::error::Result;
use crate::ops::batch_norm::cuda::K as BnK;
use crate::ops::relu::cuda::K as ReluK;
use crate::ops::{BatchNormOptions, RunningStats};
use crate::tensor::Tensor;
use cudarc::cudnn::result::CudnnError;
use cudarc::cudnn::sys;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("../kernels.cu") => {
        ReluMaskPart = "relu_mask_part",
    }
}

const MODE: sys::cudnnBatchNormMode_t = sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL;

/// Whether cuDNN writes each part's batch norm straight into the part's channel slice of the
/// output (a strided output descriptor). Cleared for the rest of the process the first time
/// cuDNN rejects such a descriptor while accepting the packed one, or from the start when the
/// environment variable [`FORCE_SCRATCH_ENV`] is `1`.
static STRIDED_Y: AtomicBool = AtomicBool::new(true);

/// Set to `1` to make every part go through the scratch buffer (no strided descriptors), so a
/// rerun can switch paths without a rebuild.
pub(crate) const FORCE_SCRATCH_ENV: &str = "TAPE_BN_RELU_SCRATCH";

/// Whether the environment forces the scratch path (read once).
fn scratch_forced_by_env() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var(FORCE_SCRATCH_ENV).is_ok_and(|v| v == "1"))
}

/// Whether a cuDNN status is in the "bad parameter" (2000-2999) or "not supported"
/// (3000-3999) category: cuDNN 9 returns sub-codes of both (e.g. 2002, 3007) where older
/// versions returned the plain codes.
fn rejects_descriptor(status: sys::cudnnStatus_t) -> bool {
    (2000..4000).contains(&(status as u32))
}

/// cuDNN's answer to a pointer that is not aligned as it wants (`BAD_PARAM_MISALIGNED_POINTER`).
const MISALIGNED: u32 = 2003;

/// A part's slice of a `[C]` per-channel buffer (weight, bias, running or saved statistics, their
/// gradients) that a cuDNN call reads and/or writes: its address (0 for null) and direction.
#[derive(Clone, Copy, Debug)]
struct ParamSlice {
    ptr: u64,
    read: bool,
    write: bool,
}

impl ParamSlice {
    fn input(ptr: u64) -> Self {
        ParamSlice {
            ptr,
            read: true,
            write: false,
        }
    }

    fn output(ptr: u64) -> Self {
        ParamSlice {
            ptr,
            read: false,
            write: true,
        }
    }

    fn in_out(ptr: u64) -> Self {
        ParamSlice {
            ptr,
            read: true,
            write: true,
        }
    }
}

/// Elements between two aligned slices of the scratch copy (a multiple of 256 bytes for both
/// dtypes).
const ALIGNED_STRIDE_BYTES: usize = 256;

/// Runs the cuDNN call `call` with the part's per-channel slices (`len` elements of `T` each,
/// addressed `off` elements into their `[C]` buffers). A part that starts at an odd channel has
/// slices that are only element-aligned; should cuDNN answer "misaligned pointer", the slices are
/// copied into one aligned scratch buffer (those the call reads), the call runs on the copies,
/// and the slices it writes are copied back.
fn with_aligned_params<T: CudaElem>(
    be: &Backend,
    dev: &Device,
    len: usize,
    slices: &[ParamSlice],
    call: impl Fn(&[u64]) -> sys::cudnnStatus_t,
) -> std::result::Result<(), sys::cudnnStatus_t> {
    let direct: Vec<u64> = slices.iter().map(|s| s.ptr).collect();
    let status = call(&direct);
    if status as u32 != MISALIGNED || len == 0 {
        return status.result().map_err(|e| e.0);
    }
    let bytes = len * std::mem::size_of::<T>();
    let stride = bytes.div_ceil(ALIGNED_STRIDE_BYTES) * ALIGNED_STRIDE_BYTES;
    let Ok(tmp) = scratch::<u8>(dev, stride * slices.len()) else {
        return Err(status);
    };
    let base = be.ptr(&tmp.buf);
    let cu_stream = be.stream.cu_stream();
    let copy = |dst: u64, src: u64| {
        // SAFETY: both ranges are `bytes` long inside live device buffers (a `[C]` buffer from
        // the slice's channel on, or one aligned slot of `tmp`); the copy is queued on the stream
        // that every use of them is queued on.
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, cu_stream) }
    };
    let mut moved = Vec::with_capacity(slices.len());
    for (k, s) in slices.iter().enumerate() {
        let slot = base + (k * stride) as u64;
        if s.ptr == 0 {
            moved.push(0);
            continue;
        }
        if s.read && copy(slot, s.ptr).is_err() {
            return Err(status);
        }
        moved.push(slot);
    }
    call(&moved).result().map_err(|e| e.0)?;
    for (s, &slot) in slices.iter().zip(&moved) {
        if s.write && s.ptr != 0 && copy(s.ptr, slot).is_err() {
            return Err(status);
        }
    }
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// Tests: take the scratch-buffer path even where cuDNN accepts a strided output.
    static FORCE_SCRATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn strided_y() -> bool {
    #[cfg(test)]
    if FORCE_SCRATCH.with(|f| f.get()) {
        return false;
    }
    !scratch_forced_by_env() && STRIDED_Y.load(Ordering::Relaxed)
}

/// The shapes: `n` images of `h x w`, each part's channel count and first output channel.
#[derive(Clone, Debug)]
struct Layout {
    n: usize,
    h: usize,
    w: usize,
    channels: Vec<usize>,
    /// Channels per image in each part's buffer (more than its channels for a channel prefix
    /// of a block storage).
    widths: Vec<usize>,
    /// Channels per image of each part's existing input gradient (backward; its width, or a
    /// block storage's for a gathered copy of its channels).
    into_widths: Vec<usize>,
    offsets: Vec<usize>,
    /// Total channels.
    c: usize,
}

impl Layout {
    fn new(n: usize, (channels, widths): (Vec<usize>, Vec<usize>), h: usize, w: usize) -> Self {
        let offsets = channels
            .iter()
            .scan(0, |acc, &c| {
                let off = *acc;
                *acc += c;
                Some(off)
            })
            .collect();
        let c = channels.iter().sum();
        Layout {
            n,
            h,
            w,
            channels,
            into_widths: widths.clone(),
            widths,
            offsets,
            c,
        }
    }

    /// The layout with part `k`'s existing input gradient `into_widths[k]` channels per image.
    fn with_into_widths(self, into_widths: &[usize]) -> Self {
        Layout {
            into_widths: into_widths.to_vec(),
            ..self
        }
    }

    /// Whether part `k` is a channel prefix of a wider buffer.
    fn strided(&self, k: usize) -> bool {
        self.widths[k] != self.channels[k]
    }

    /// The descriptor of part `k` as it lies in its buffer: packed, or a channel prefix of a
    /// wider buffer (image stride `width * h * w`).
    fn part_desc(
        &self,
        dnn: &mut Dnn,
        k: usize,
        dtype: crate::DType,
    ) -> Result<std::sync::Arc<TensorDesc>> {
        self.desc_of_width(dnn, k, self.widths[k], dtype)
    }

    /// The descriptor of part `k`'s existing input gradient as it lies in its buffer.
    fn grad_desc(
        &self,
        dnn: &mut Dnn,
        k: usize,
        dtype: crate::DType,
    ) -> Result<std::sync::Arc<TensorDesc>> {
        self.desc_of_width(dnn, k, self.into_widths[k], dtype)
    }

    /// The descriptor of part `k`'s channels, the first of `width` per image.
    fn desc_of_width(
        &self,
        dnn: &mut Dnn,
        k: usize,
        width: usize,
        dtype: crate::DType,
    ) -> Result<std::sync::Arc<TensorDesc>> {
        let dims = self.part_dims(k);
        if width != self.channels[k] {
            let hw = self.hw();
            dnn.tensor_strided(OP, dtype, dims, [width * hw, hw, self.w, 1])
        } else {
            dnn.tensor(OP, dtype, dims)
        }
    }

    fn hw(&self) -> usize {
        self.h * self.w
    }

    fn out_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }

    /// Part `k` as a packed NCHW tensor.
    fn part_dims(&self, k: usize) -> [usize; 4] {
        [self.n, self.channels[k], self.h, self.w]
    }

    /// Elements of part `k`.
    fn part_len(&self, k: usize) -> usize {
        self.n * self.channels[k] * self.hw()
    }

    /// Element strides of a part's channel slice of the output.
    fn slice_strides(&self) -> [usize; 4] {
        [self.c * self.hw(), self.hw(), self.w, 1]
    }
}

/// The address `elems` elements of `T` past `base`; null stays null.
fn at<T>(base: u64, elems: usize) -> u64 {
    if base == 0 {
        0
    } else {
        base + (elems * std::mem::size_of::<T>()) as u64
    }
}

fn void<T>(v: &T) -> *const c_void {
    v as *const T as *const c_void
}

impl BatchNormReluKernels for CudaKernels {
    /// As batch norm's, a recompute's kept statistics (`a.given`) are not used yet on CUDA.
    fn bn_relu_forward(&self, a: &BnReluForward<'_>) -> Result<(Tensor, Option<BnStats>)> {
        let [n, _, h, w] = a.parts[0].dims4(OP)?;
        let dtype = a.parts[0].dtype();
        let l = Layout::new(n, (a.channels.to_vec(), a.widths.to_vec()), h, w);
        let args = Forward {
            parts: a.parts,
            weight: a.weight,
            bias: a.bias,
            running: a.running,
            opts: a.opts,
            l: &l,
            training: a.training,
            update_running: a.update_running,
            record: a.want_stats,
        };
        let (out, stats) = dispatch_scalar!(dtype, T => {
            // cuDNN reads and writes the running statistics in the parameters' type.
            a.running.check_cuda_dtype(
                <T as CudaScalar>::Param::DTYPE,
                "batch_norm_relu (CUDA: running statistics must be f32 for 16-bit inputs, else of the inputs' dtype)",
            )?;
            forward::<T>(&args)
        })?;
        Ok((
            out,
            stats.map(|(mean, invstd)| BnStats::Device { mean, invstd }),
        ))
    }

    fn bn_relu_backward(
        &self,
        a: &BnReluBackward<'_>,
        into: Vec<Option<Tensor>>,
    ) -> Result<BnReluGrads> {
        if a.g.dtype().is_half() && !half::native_backward(a) {
            return half::backward(self, a, into);
        }
        let [n, _, h, w] = a.g.dims4(OP)?;
        let l = Layout::new(n, (a.channels.to_vec(), a.widths.to_vec()), h, w)
            .with_into_widths(a.into_widths);
        dispatch_scalar!(a.g.dtype(), T => backward::backward::<T>(a, &l, into))
    }
}

/// The arguments of the forward pass.
struct Forward<'a> {
    parts: &'a [&'a Tensor],
    weight: &'a Tensor,
    bias: &'a Tensor,
    running: &'a RunningStats,
    opts: BatchNormOptions,
    l: &'a Layout,
    training: bool,
    update_running: bool,
    record: bool,
}

/// The per-channel statistics backward needs: mean and `invstd`.
type Stats = Option<(Tensor, Tensor)>;

/// Which statistics the per-part cuDNN calls use (device addresses; 0 is null).
#[derive(Clone, Copy, Debug)]
enum Norm {
    /// Batch statistics: running ones updated with `factor` when not null, batch mean and
    /// `invstd` saved when not null.
    Train {
        running_mean: u64,
        running_var: u64,
        factor: f64,
        save_mean: u64,
        save_invstd: u64,
    },
    /// The running statistics.
    Eval { mean: u64, var: u64 },
}

/// The forward pass of data `T` (any dtype), its parameters and statistics `T::Param`.
fn forward<T: CudaScalar>(a: &Forward<'_>) -> Result<(Tensor, Stats)> {
    let l = a.l;
    let dev = a.parts[0].device();
    let be: &Backend = &dev.cuda_handle(OP)?.backend;
    let mut out = Tensor::cuda_uninit::<T>(&l.out_dims(), dev)?;
    let out_ptr = be.ptr(&*out.cuda_slice_mut::<T>()?);
    let xs = a
        .parts
        .iter()
        .map(|p| Ok(be.ptr(p.cuda_slice::<T>()?)))
        .collect::<Result<Vec<u64>>>()?;
    let ptrs = Ptrs {
        xs,
        out: out_ptr,
        weight: be.ptr(a.weight.cuda_slice::<T::Param>()?),
        bias: be.ptr(a.bias.cuda_slice::<T::Param>()?),
    };
    be.bind()?;
    let stats = if a.training {
        let mut stats = if a.record {
            Some((
                Tensor::cuda_uninit::<T::Param>(&[l.c], dev)?,
                Tensor::cuda_uninit::<T::Param>(&[l.c], dev)?,
            ))
        } else {
            None
        };
        let (save_mean, save_invstd) = match stats.as_mut() {
            Some((m, i)) => (
                be.ptr(&*m.cuda_slice_mut::<T::Param>()?),
                be.ptr(&*i.cuda_slice_mut::<T::Param>()?),
            ),
            None => (0, 0),
        };
        let train = |running_mean: u64, running_var: u64, factor: f64| {
            let norm = Norm::Train {
                running_mean,
                running_var,
                factor,
                save_mean,
                save_invstd,
            };
            normalize_parts::<T>(be, dev, l, &ptrs, norm, a.opts.eps)
        };
        if a.update_running {
            a.running
                .update_on_device::<T::Param>(|rm, rv| train(rm, rv, a.opts.momentum))?;
        } else {
            train(0, 0, 0.0)?;
        }
        stats
    } else {
        let (mean, var) = (a.running.mean(), a.running.var());
        let norm = Norm::Eval {
            mean: be.ptr(mean.cuda_slice::<T::Param>()?),
            var: be.ptr(var.cuda_slice::<T::Param>()?),
        };
        normalize_parts::<T>(be, dev, l, &ptrs, norm, a.opts.eps)?;
        if a.record {
            let mut invstd = Tensor::cuda_uninit::<T::Param>(&[l.c], dev)?;
            if l.c > 0 {
                let cu = l.c as u64;
                let vs = var.cuda_slice::<T::Param>()?;
                let is = invstd.cuda_slice_mut::<T::Param>()?;
                launch!(be, BnK::BnInvstd, T::Param::DTYPE, grid(l.c); vs, &a.opts.eps, &cu, is)?;
            }
            Some((mean, invstd))
        } else {
            None
        }
    };
    let total = out.numel();
    if total > 0 {
        // In place: the kernel reads and writes element i in the same thread.
        let nu = total as u64;
        launch!(be, ReluK::ReluFwd, T::DTYPE, grid(total); &out_ptr, &out_ptr, &nu)?;
    }
    Ok((out, stats))
}

/// Device addresses of a forward pass: each part, the output, weight and bias.
struct Ptrs {
    xs: Vec<u64>,
    out: u64,
    weight: u64,
    bias: u64,
}

/// Batch norm of every part into its channel slice of the output (before the ReLU).
fn normalize_parts<T: CudaScalar>(
    be: &Backend,
    dev: &Device,
    l: &Layout,
    p: &Ptrs,
    norm: Norm,
    eps: f64,
) -> Result<()> {
    if l.n * l.hw() == 0 {
        return Ok(());
    }
    let mut tmp: Option<Scratch<T>> = None;
    let (one, zero) = (T::scaling(1.0), T::scaling(0.0));
    for k in 0..l.channels.len() {
        if l.channels[k] == 0 {
            continue;
        }
        let off = l.offsets[k];
        let dims = l.part_dims(k);
        let mut dnn = be.dnn();
        let xd = l.part_desc(&mut dnn, k, T::DTYPE)?;
        let bnd = dnn.bn_param(OP, T::DTYPE, dims)?;
        let x = p.xs[k] as *const c_void;
        let (w, b) = (at::<T::Param>(p.weight, off), at::<T::Param>(p.bias, off));
        match norm {
            Norm::Train {
                running_mean,
                running_var,
                factor,
                save_mean,
                save_invstd,
            } => {
                let params = [
                    ParamSlice::input(w),
                    ParamSlice::input(b),
                    ParamSlice::in_out(at::<T::Param>(running_mean, off)),
                    ParamSlice::in_out(at::<T::Param>(running_var, off)),
                    ParamSlice::output(at::<T::Param>(save_mean, off)),
                    ParamSlice::output(at::<T::Param>(save_invstd, off)),
                ];
                into_slice::<T, _>(
                    be,
                    &mut dnn,
                    dev,
                    l,
                    k,
                    p.out,
                    &mut tmp,
                    "cudnnBatchNormalizationForwardTraining",
                    &params,
                    // SAFETY: x is the part (a packed NCHW buffer described by `xd`); y is the
                    // buffer `yd` describes (see `into_slice`); `p` holds weight, bias and the
                    // running and saved statistics, each `off` elements into its `[C]` buffer of
                    // the parameter type or an aligned copy of that slice, so each covers the part's
                    // `c` channels as `bnd` describes; the running
                    // pointers are both null or both valid, and so are the saved ones; the
                    // handle is locked; alpha/beta point to cuDNN's scaling type.
                    |h, yd, y, p| unsafe {
                        sys::cudnnBatchNormalizationForwardTraining(
                            h,
                            MODE,
                            void(&one),
                            void(&zero),
                            xd.0,
                            x,
                            yd,
                            y,
                            bnd.0,
                            p[0] as *const c_void,
                            p[1] as *const c_void,
                            factor,
                            p[2] as *mut c_void,
                            p[3] as *mut c_void,
                            eps,
                            p[4] as *mut c_void,
                            p[5] as *mut c_void,
                        )
                    },
                )?;
            }
            Norm::Eval { mean, var } => {
                let params = [
                    ParamSlice::input(w),
                    ParamSlice::input(b),
                    ParamSlice::input(at::<T::Param>(mean, off)),
                    ParamSlice::input(at::<T::Param>(var, off)),
                ];
                into_slice::<T, _>(
                    be,
                    &mut dnn,
                    dev,
                    l,
                    k,
                    p.out,
                    &mut tmp,
                    "cudnnBatchNormalizationForwardInference",
                    &params,
                    // SAFETY: as for training; the running statistics are read only.
                    |h, yd, y, p| unsafe {
                        sys::cudnnBatchNormalizationForwardInference(
                            h,
                            MODE,
                            void(&one),
                            void(&zero),
                            xd.0,
                            x,
                            yd,
                            y,
                            bnd.0,
                            p[0] as *const c_void,
                            p[1] as *const c_void,
                            p[2] as *const c_void,
                            p[3] as *const c_void,
                            eps,
                        )
                    },
                )?;
            }
        }
    }
    Ok(())
}

/// Runs one part's cuDNN batch norm `bn(handle, y descriptor, y)` so that its result lands in
/// part `k`'s channel slice of the output at `out`: straight through a strided descriptor or,
/// where cuDNN rejects that, into `tmp` (a scratch buffer of the largest part, made on first
/// use and reused) and then copied into the slice.
#[allow(clippy::too_many_arguments)]
fn into_slice<T: CudaScalar, F>(
    be: &Backend,
    dnn: &mut Dnn,
    dev: &Device,
    l: &Layout,
    k: usize,
    out: u64,
    tmp: &mut Option<Scratch<T>>,
    call: &'static str,
    params: &[ParamSlice],
    bn: F,
) -> Result<()>
where
    F: Fn(
        sys::cudnnHandle_t,
        sys::cudnnTensorDescriptor_t,
        *mut c_void,
        &[u64],
    ) -> sys::cudnnStatus_t,
{
    let dims = l.part_dims(k);
    let h = dnn.handle;
    let run = |yd: sys::cudnnTensorDescriptor_t, y: *mut c_void| {
        with_aligned_params::<T::Param>(be, dev, l.channels[k], params, |p| bn(h, yd, y, p))
    };
    let mut rejected = None;
    if strided_y() {
        let yd = dnn.tensor_strided(OP, T::DTYPE, dims, l.slice_strides())?;
        let y = at::<T>(out, l.offsets[k] * l.hw()) as *mut c_void;
        match run(yd.0, y) {
            Ok(()) => return Ok(()),
            Err(status) if rejects_descriptor(status) => {
                rejected = Some(status);
            }
            Err(status) => return Err(cudnn_err(call, CudnnError(status))),
        }
    }
    if tmp.is_none() {
        let longest = (0..l.channels.len())
            .map(|j| l.part_len(j))
            .max()
            .unwrap_or(0);
        *tmp = Some(scratch::<T>(dev, longest)?);
    }
    let t = tmp.as_ref().map(|t| be.ptr(&t.buf)).unwrap_or(0);
    let yd = dnn.tensor(OP, T::DTYPE, dims)?;
    run(yd.0, t as *mut c_void).map_err(|status| cudnn_err(call, CudnnError(status)))?;
    if let Some(status) = rejected {
        // Rejected strided while accepting packed: stop trying strided.
        if STRIDED_Y.swap(false, Ordering::Relaxed) {
            eprintln!(
                "tape: note: {call} rejected a strided output descriptor ({status:?}); \
                 batch_norm_relu writes each part through a scratch buffer from now on"
            );
        }
    }
    // Copy the packed part into its channel slice: rows of c*h*w elements at offset off*h*w in
    // rows of C*h*w.
    let hw = l.hw();
    let width = l.channels[k] * hw;
    let mut list = PartList::default();
    list.ptr[0] = t;
    list.width[0] = width as u64;
    list.offset[0] = (l.offsets[k] * hw) as u64;
    let (outer, total) = (l.n as u64, (l.c * hw) as u64);
    launch!(be, ChannelK::Concat, T::DTYPE, grid(l.n * width); &out, &list, &outer, &total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Tape};

    /// The scratch-buffer path (taken where cuDNN rejects a strided output) gives the strided
    /// path's output and running statistics; skipped without a usable GPU.
    #[test]
    fn scratch_path_matches_strided_path() {
        let Some(dev) = crate::testing::gpu() else {
            return;
        };
        for dtype in [DType::F32, DType::F64] {
            for training in [true, false] {
                let run = |force: bool| -> (Vec<f64>, Vec<f64>, Vec<f64>) {
                    FORCE_SCRATCH.with(|f| f.set(force));
                    let parts: Vec<Tensor> = [3usize, 1, 5]
                        .iter()
                        .enumerate()
                        .map(|(i, &c)| Tensor::randn(&[2, c, 3, 5], dtype, &dev, i as u64).unwrap())
                        .collect();
                    let refs: Vec<&Tensor> = parts.iter().collect();
                    let w = Tensor::randn(&[9], dtype, &dev, 10).unwrap();
                    let b = Tensor::randn(&[9], dtype, &dev, 11).unwrap();
                    let rs = RunningStats::new(9, dtype, &dev).unwrap();
                    let mut tape = Tape::recording().training(training);
                    let y = super::super::batch_norm_relu(
                        &mut tape,
                        &refs,
                        &w,
                        &b,
                        &rs,
                        BatchNormOptions::default(),
                    )
                    .unwrap();
                    FORCE_SCRATCH.with(|f| f.set(false));
                    (
                        y.try_to_f64_vec().unwrap(),
                        rs.mean().try_to_f64_vec().unwrap(),
                        rs.var().try_to_f64_vec().unwrap(),
                    )
                };
                let (a, b) = (run(false), run(true));
                let tol = match dtype {
                    DType::F32 => 1e-6,
                    _ => 1e-13,
                };
                for (x, y) in [(&a.0, &b.0), (&a.1, &b.1), (&a.2, &b.2)] {
                    let d = x
                        .iter()
                        .zip(y)
                        .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
                    assert!(d <= tol, "{dtype:?} training {training}: differs by {d:e}");
                }
                assert!(a.0.iter().any(|&v| v > 0.0));
                assert_eq!(a.0.len(), 2 * 9 * 15);
            }
        }
    }
}
