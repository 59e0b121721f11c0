//! 2-D convolution (cross-correlation, as in PyTorch) over NCHW images. On the CPU: pointwise
//! convs as one GEMM per image, larger kernels as im2col + GEMM (`cpu`); 3x3 stride-1 `f32`
//! convs with few output channels as a direct kernel (`direct`), with many channels on both
//! sides through Winograd's F(2x2, 3x3) (`winograd`); bf16 stride-1 same-padding convs on AMX
//! tiles (`tiles`). Kernel workspaces are charged to the device while they live, and backward
//! keeps only the tensors the requested gradients need.

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod direct;
mod meta;
mod tiles;
mod winograd;

use super::autocast::{to_low, to_low_opt};
use super::cast::CastKernels;
use super::checks::check_grad;
use super::weighted::{accumulate_weighted, WeightedOp};
use super::widen::{wide, wide_opt};
use crate::backend::{kernel_trait, kernels, Kernels};
use crate::block_storage::{BlockStorage, BlockStorageKernels};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::primitives::PrimitiveKernels;
use crate::tape::Tape;
use crate::tensor::Tensor;

const OP: &str = "conv2d";

/// The gradients of a convolution's input, weight and bias (each when asked for).
pub(crate) type Conv2dGrads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

kernel_trait! {
    /// Device kernels of `conv2d` (shapes checked by the caller). Kernel workspaces are charged to
    /// the device while they live.
    pub(crate) trait Conv2dKernels {
        /// The convolution of `x` with `weight`, plus `bias`: `[n, cout, hout, wout]`.
        fn conv2d_forward(
            &self,
            geo: &Geometry,
            x: &Tensor,
            weight: &Tensor,
            bias: Option<&Tensor>,
        ) -> Result<Tensor>;
        /// The same convolution written into channels `c0 .. c0 + cout` of `dst`
        /// (`[n, C, hout, wout]`, checked by the caller) in place: no output buffer.
        fn conv2d_forward_into(
            &self,
            geo: &Geometry,
            x: &Tensor,
            weight: &Tensor,
            bias: Option<&Tensor>,
            dst: &mut Tensor,
            c0: usize,
        ) -> Result<()>;
        /// From the output gradient `g`: the input gradient when `w` (the weight) is given, the
        /// weight gradient when `x` (the input) is given, the bias gradient when `want_bias`.
        fn conv2d_backward(
            &self,
            geo: &Geometry,
            g: &Tensor,
            x: Option<&Tensor>,
            w: Option<&Tensor>,
            want_bias: bool,
        ) -> Result<Conv2dGrads>;
        /// [`Conv2dKernels::conv2d_backward`] from the output gradient in channels
        /// `c0 .. c0 + cout` of a wider `g` (`[n, C, hout, wout]`, checked by the caller), read
        /// in place: a block storage's gradient.
        fn conv2d_backward_window(
            &self,
            geo: &Geometry,
            g: &Tensor,
            c0: usize,
            x: Option<&Tensor>,
            w: Option<&Tensor>,
            want_bias: bool,
        ) -> Result<Conv2dGrads>;
    }
}

/// Stride and zero padding of a [`conv2d`], the same along height and width.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conv2dOptions {
    /// Step between neighbouring windows (at least 1).
    pub stride: usize,
    /// Zeros added on each side of both spatial dimensions.
    pub padding: usize,
}

impl Default for Conv2dOptions {
    /// Stride 1, no padding.
    fn default() -> Self {
        Conv2dOptions {
            stride: 1,
            padding: 0,
        }
    }
}

/// The sizes of one convolution, checked against each other.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub(crate) n: usize,
    pub(crate) cin: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) cout: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) stride: usize,
    pub(crate) padding: usize,
    pub(crate) hout: usize,
    pub(crate) wout: usize,
    /// The operands are `f32` copies of bf16 tensors (a 16-bit convolution's chunks), so that
    /// the CPU's products may run on its bf16 matrix units.
    pub(crate) bf16_values: bool,
}

impl Geometry {
    fn new(
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: Conv2dOptions,
    ) -> Result<Self> {
        x.check_compatible(weight, OP)?;
        let geo = Self::of_shapes(x.dims4(OP)?, weight.shape(), opts)?;
        if let Some(b) = bias {
            super::checks::check_vector(OP, "bias", x, b, geo.cout)?;
        }
        Ok(geo)
    }

    /// The geometry of an input of `x_shape` and a weight of `w_shape`, checked.
    fn of_shapes(x_shape: [usize; 4], w_shape: &[usize], opts: Conv2dOptions) -> Result<Self> {
        let [n, cin, h, w] = x_shape;
        let [cout, wcin, kh, kw] = match *w_shape {
            [a, b, c, d] => [a, b, c, d],
            ref s => {
                return Err(Error::shape(
                    OP,
                    format!("weight must be [cout, cin, kh, kw], got {s:?}"),
                ))
            }
        };
        if opts.stride == 0 {
            return Err(Error::invalid(OP, "stride must be at least 1"));
        }
        if kh == 0 || kw == 0 {
            return Err(Error::invalid(OP, format!("empty kernel {kh}x{kw}")));
        }
        if wcin != cin {
            return Err(Error::shape(
                OP,
                format!(
                    "weight {w_shape:?} expects {wcin} input channels, x {x_shape:?} has {cin}"
                ),
            ));
        }
        let out_len = |len: usize, k: usize| -> Result<usize> {
            let padded = opts
                .padding
                .checked_mul(2)
                .and_then(|p| p.checked_add(len))
                .filter(|&p| p >= k)
                .ok_or_else(|| {
                    Error::shape(
                        OP,
                        format!(
                            "kernel {kh}x{kw} is larger than the padded input {h}x{w} (padding {})",
                            opts.padding
                        ),
                    )
                })?;
            Ok((padded - k) / opts.stride + 1)
        };
        let (hout, wout) = (out_len(h, kh)?, out_len(w, kw)?);
        Ok(Geometry {
            n,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            stride: opts.stride,
            padding: opts.padding,
            hout,
            wout,
            bf16_values: false,
        })
    }

    /// Rows of the column matrix: `cin * kh * kw`.
    pub(crate) fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// Output positions per image: `hout * wout`.
    /// `[n, cout, hout, wout]`.
    pub(crate) fn out_shape(&self) -> [usize; 4] {
        [self.n, self.cout, self.hout, self.wout]
    }

    pub(crate) fn p(&self) -> usize {
        self.hout * self.wout
    }

    /// The geometry of a chunk of `n` images of a 16-bit convolution of `dtype`, computed on
    /// `f32` copies.
    fn half_chunk(&self, n: usize, dtype: DType) -> Self {
        Geometry {
            n,
            bf16_values: dtype == DType::BF16,
            ..*self
        }
    }

    /// A 1x1 kernel with stride 1 and no padding: a plain GEMM on the input.
    pub(crate) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }
}

/// The most workspace bytes (im2col columns, partial weight gradients, a flipped kernel on the
/// CPU; cuDNN's workspace on a GPU, at most its limit) a [`conv2d`] of an input of `x_shape`
/// with a weight of `w_shape` reserves on `device`, forward or backward, beyond its tensors:
/// what a memory planner must leave room for. Exact on the CPU for the current thread count.
pub fn conv2d_workspace_bytes(
    device: &Device,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    opts: Conv2dOptions,
    dtype: DType,
) -> Result<usize> {
    let pass = |pass| conv2d_pass_workspace_bytes(device, x_shape, w_shape, opts, dtype, pass);
    Ok(pass(Conv2dPass::Forward)?.max(pass(Conv2dPass::Backward { input_grad: true })?))
}

/// A pass of a [`conv2d`], for [`conv2d_pass_workspace_bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conv2dPass {
    /// The forward.
    Forward,
    /// The backward, computing the weight's gradient and, when `input_grad`, the input's (not
    /// for a network's input image).
    Backward {
        /// Whether the input's gradient is computed too.
        input_grad: bool,
    },
}

/// The workspace bytes one pass of a [`conv2d`] reserves on `device` beyond its tensors. On the
/// CPU exact for the current thread count (column blocks and partial weight gradients per thread
/// group, a flipped kernel; for bf16 on the CPU's bf16 matrix units, the padded images and
/// packed operands of `tiles`); on a GPU cuDNN's workspace limit, the most its algorithms are
/// given. [`conv2d_workspace_bytes`] is the larger of the forward and the full backward.
pub fn conv2d_pass_workspace_bytes(
    device: &Device,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    opts: Conv2dOptions,
    dtype: DType,
    pass: Conv2dPass,
) -> Result<usize> {
    let geo = Geometry::of_shapes(x_shape, &w_shape, opts)?;
    Ok(match device.cuda_options() {
        // cuDNN's algorithms are chosen within the limit; what they ask for depends on cuDNN.
        Some(options) => options.workspace_limit_bytes,
        None if tiles::on_tiles(&geo, dtype) => match pass {
            Conv2dPass::Forward => tiles::forward_workspace_bytes(&geo),
            Conv2dPass::Backward { input_grad } => {
                tiles::backward_workspace_bytes(&geo, input_grad, true)
            }
        },
        None => cpu::pass_workspace_bytes(&geo, dtype.size_in_bytes(), pass),
    })
}

/// 2-D convolution of `x` (`[n, cin, h, w]`) with `weight` (`[cout, cin, kh, kw]`) plus an
/// optional `bias` (`[cout]`), giving `[n, cout, (h + 2p - kh)/s + 1, (w + 2p - kw)/s + 1]`.
/// Gradients flow to each of `x`, `weight` and `bias` that requires one; backward keeps `x` only
/// if the weight wants a gradient and the weight only if `x` does. Under a 16-bit precision
/// policy the `f32` operands are cast down first (see [`crate::precision`]).
pub fn conv2d(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: Conv2dOptions,
) -> Result<Tensor> {
    let (x, weight) = (to_low(tape, x)?, to_low(tape, weight)?);
    let bias = to_low_opt(tape, bias)?;
    let (x, weight, bias) = (x.as_ref(), weight.as_ref(), bias.as_deref());
    let _profile = tape.profile_op(OP);
    let geo = Geometry::new(x, weight, bias, opts)?;
    let k = kernels(x.device())?;
    let out = match tape.take_known_output(&geo.out_shape(), x) {
        Some(known) => known,
        None => forward(&k, &geo, (x, weight, bias))?,
    };
    Ok(record(tape, geo, k, (x, weight, bias), out))
}

/// The forward kernel; for 16-bit operands on `f32` copies, a chunk of images at a time,
/// each chunk's output rounded into the 16-bit output (see [`in_image_chunks`]), unless the
/// kernel takes them as they are (the AMX tiles, cuDNN).
fn forward(
    k: &Kernels,
    geo: &Geometry,
    (x, weight, bias): (&Tensor, &Tensor, Option<&Tensor>),
) -> Result<Tensor> {
    if !x.dtype().is_half() || tiles::on_tiles(geo, x.dtype()) || k.takes_half_operands() {
        return k.conv2d_forward(geo, x, weight, bias);
    }
    let (ww, wb) = (wide(weight)?, wide_opt(bias)?);
    in_image_chunks(k, x, geo.out_shape(), |len, xc| {
        k.conv2d_forward(&geo.half_chunk(len, x.dtype()), xc, &ww, wb.as_deref())
    })
}

/// The backward kernel; for 16-bit operands on `f32` copies, a chunk of
/// [`half_chunk_images`] images at a time: each chunk's input gradient rounded into the 16-bit
/// input gradient, its weight and bias gradients (`f32`) summed over the chunks in batch order.
/// So no `f32` copy of a whole input or output gradient exists; the order of the sums depends
/// on the geometry alone, so every memory mode and thread count gives the same bits. A kernel
/// that takes 16-bit operands as they are (the AMX tiles, cuDNN) gets them so.
fn backward(
    k: &Kernels,
    geo: &Geometry,
    g: &Tensor,
    (x, w): (Option<&Tensor>, Option<&Tensor>),
    want_bias: bool,
) -> Result<Conv2dGrads> {
    if tiles::on_tiles(geo, g.dtype()) || k.takes_half_operands() {
        return k.conv2d_backward(geo, g, x, w, want_bias);
    }
    let ww = wide_opt(w)?;
    if !g.dtype().is_half() {
        let wx = wide_opt(x)?;
        return k.conv2d_backward(geo, g, wx.as_deref(), ww.as_deref(), want_bias);
    }
    let in_shape = [geo.n, geo.cin, geo.h, geo.w];
    let mut gx = match w {
        Some(_) => Some(Tensor::zeros(&in_shape, g.dtype(), g.device())?),
        None => None,
    };
    let (mut gw, mut gb) = (None, None);
    let images = half_chunk_images((geo.h * geo.w).max(geo.p()));
    for i0 in (0..geo.n).step_by(images) {
        let len = images.min(geo.n - i0);
        let gc = wide_images(k, g, i0, len)?;
        let xc = x.map(|x| wide_images(k, x, i0, len)).transpose()?;
        let chunk = geo.half_chunk(len, g.dtype());
        let (gx_part, w_part, b_part) =
            k.conv2d_backward(&chunk, &gc, xc.as_ref(), ww.as_deref(), want_bias)?;
        if let (Some(dst), Some(part)) = (gx.as_mut(), gx_part) {
            k.cast_into(dst, i0 * geo.cin * geo.h * geo.w, &part)?;
        }
        add_part(k, &mut gw, w_part)?;
        add_part(k, &mut gb, b_part)?;
    }
    Ok((gx, gw, gb))
}

/// `acc += part` (`acc` starts as the first part).
fn add_part(k: &Kernels, acc: &mut Option<Tensor>, part: Option<Tensor>) -> Result<()> {
    match (acc.as_mut(), part) {
        (Some(a), Some(p)) => k.add_assign(a, &p),
        (None, p) => {
            *acc = p;
            Ok(())
        }
        (Some(_), None) => Ok(()),
    }
}

/// An `f32` copy of images `i0 .. i0 + len` of a 16-bit `[n, c, h, w]` tensor, converted
/// straight from them.
fn wide_images(k: &Kernels, src: &Tensor, i0: usize, len: usize) -> Result<Tensor> {
    let [_, c, h, w] = src.dims4(OP)?;
    k.cast_range(src, i0 * c * h * w, &[len, c, h, w], DType::F32)
}

/// Output positions (images x their positions) per kernel call of a 16-bit convolution, at
/// least ([`in_image_chunks`]): 8 images of 32x32; small images go more to a call, so that its
/// GEMMs stay wide.
const HALF_CHUNK_POSITIONS: usize = 8 * 32 * 32;

/// Images per kernel call of a 16-bit convolution whose images have `positions` input or
/// output positions each (the larger).
fn half_chunk_images(positions: usize) -> usize {
    HALF_CHUNK_POSITIONS.div_ceil(positions.max(1)).max(1)
}

/// A per-image map of a 16-bit `src` (`[n, ..]`) into a 16-bit tensor of `out` shape, made
/// [`half_chunk_images`] images at a time: `f(len, chunk)` gets an `f32` copy of `len` images and
/// returns their `f32` result, which is rounded into the output before the next chunk is made.
/// So no `f32` copy of the whole input or output exists (they set the peaks of a 16-bit
/// DenseNet step); each image's result is computed as in a whole-batch call.
fn in_image_chunks(
    k: &Kernels,
    src: &Tensor,
    out: [usize; 4],
    f: impl Fn(usize, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let [n, _, h, w] = src.dims4(OP)?;
    let [_, oc, oh, ow] = out;
    let mut dst = Tensor::zeros(&out, src.dtype(), src.device())?;
    let images = half_chunk_images((h * w).max(oh * ow));
    for i0 in (0..n).step_by(images) {
        let len = images.min(n - i0);
        let y = f(len, &wide_images(k, src, i0, len)?)?;
        k.cast_into(&mut dst, i0 * oc * oh * ow, &y)?;
    }
    Ok(dst)
}

/// [`conv2d`] with its output written straight into channels `c0 ..` of `storage`, the next
/// ones (no output buffer, no copy), which take it as [`BlockStorage::append`] would; its
/// backward reads the output's gradient from those channels of the storage's gradient in place.
/// Returns a stand-in for the output ([`Tensor::stand_in`]: its shape, no values, no gradient of
/// its own). Where the tape knows the output already (a recompute), nothing is written. As a
/// checkpointed segment's output, the stand-in takes [`BlockStorage::record_written`].
pub fn conv2d_into_storage(
    tape: &mut Tape,
    (x, weight, bias): (&Tensor, &Tensor, Option<&Tensor>),
    opts: Conv2dOptions,
    storage: &BlockStorage,
    c0: usize,
) -> Result<Tensor> {
    let (x, weight) = (to_low(tape, x)?, to_low(tape, weight)?);
    let bias = to_low_opt(tape, bias)?;
    let (x, weight, bias) = (x.as_ref(), weight.as_ref(), bias.as_deref());
    let _profile = tape.profile_op(OP);
    let geo = Geometry::new(x, weight, bias, opts)?;
    let shape = geo.out_shape();
    let k = kernels(x.device())?;
    let out = match tape.take_known_output(&shape, x) {
        Some(known) => known,
        None => {
            storage.write_next(shape, x, |dst, next| {
                if next != c0 {
                    return Err(Error::invalid(
                        OP,
                        format!("output for channels {c0}.. of a storage holding {next}"),
                    ));
                }
                if x.dtype().is_half() {
                    // The f32 kernels write f32: round a whole output, then copy it in.
                    let y = forward(&k, &geo, (x, weight, bias))?;
                    return k.write_channels(dst, &y, c0);
                }
                k.conv2d_forward_into(&geo, x, weight, bias, dst, c0)
            })?;
            Tensor::stand_in(&shape, x.dtype(), x.device())
        }
    };
    let op = WeightedOp::new(tape, x, weight, bias);
    if !tape.needs_grad(&op.inputs) {
        return Ok(out);
    }
    let want_bias = op.wants_bias_grad();
    let WeightedOp {
        kx,
        kw,
        kb,
        saved_x,
        saved_w,
        ..
    } = op;
    let grad = storage.grad_reader()?;
    let dtype = x.dtype();
    tape.record_effect(OP, move |grads| {
        let (sx, sw) = (saved_x.as_ref(), saved_w.as_ref());
        let made = grad.with_existing(|g| {
            if dtype.is_half() {
                // The f32 kernels read f32: a packed copy of the output's channels.
                let g = k.read_channels(g, c0, geo.cout)?;
                return backward(&k, &geo, &g, (sx, sw), want_bias);
            }
            k.conv2d_backward_window(&geo, g, c0, sx, sw, want_bias)
        })?;
        match made {
            Some(made) => accumulate_weighted(grads, (&kx, &kw, kb.as_ref()), made, dtype),
            None => Ok(()),
        }
    });
    Ok(out)
}

/// Records the backward of a convolution of `geo` over `(x, weight, bias)` whose output is
/// `out`, and returns `out`.
fn record(
    tape: &mut Tape,
    geo: Geometry,
    k: Kernels,
    (x, weight, bias): (&Tensor, &Tensor, Option<&Tensor>),
    out: Tensor,
) -> Tensor {
    let op = WeightedOp::new(tape, x, weight, bias);
    let want_bias = op.wants_bias_grad();
    let WeightedOp {
        inputs,
        kx,
        kw,
        kb,
        saved_x,
        saved_w,
    } = op;
    let dtype = x.dtype();
    tape.record(OP, &inputs, out, move |g, grads| {
        let expected = geo.out_shape();
        check_grad(OP, g, &expected, saved_x.as_ref().or(saved_w.as_ref()))?;
        let saved = (saved_x.as_ref(), saved_w.as_ref());
        let grads_out = backward(&k, &geo, g, saved, want_bias)?;
        accumulate_weighted(grads, (&kx, &kw, kb.as_ref()), grads_out, dtype)
    })
}
