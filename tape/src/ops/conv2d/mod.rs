//! 2-D convolution (cross-correlation, as in PyTorch) over NCHW images: pointwise convs as one
//! GEMM per image, larger kernels as im2col + GEMM. Kernel workspaces are charged to the device
//! while they live, and backward keeps only the tensors the requested gradients need.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use super::WeightedOp;
use crate::error::{Error, Result};
use crate::tape::Tape;
use crate::tensor::Tensor;
use crate::Elem;
use cpu::Needs;

const OP: &str = "conv2d";

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
}

impl Geometry {
    fn new(
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: Conv2dOptions,
    ) -> Result<Self> {
        x.check_compatible(weight, OP)?;
        let [n, cin, h, w] = x.dims4(OP)?;
        let [cout, wcin, kh, kw] = match weight.shape() {
            &[a, b, c, d] => [a, b, c, d],
            s => {
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
                    "weight {:?} expects {wcin} input channels, x {:?} has {cin}",
                    weight.shape(),
                    x.shape()
                ),
            ));
        }
        if let Some(b) = bias {
            super::check_vector(OP, "bias", x, b, cout)?;
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
        })
    }

    /// Rows of the column matrix: `cin * kh * kw`.
    pub(crate) fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// Output positions per image: `hout * wout`.
    pub(crate) fn p(&self) -> usize {
        self.hout * self.wout
    }

    /// A 1x1 kernel with stride 1 and no padding: a plain GEMM on the input.
    pub(crate) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }
}

/// Zero-filled `len` elements of workspace, charged to `x`'s device while the reservation lives.
fn workspace<T: Elem>(x: &Tensor, len: usize) -> Result<(Vec<T>, crate::Reservation)> {
    let r = x.device().reserve(len * std::mem::size_of::<T>())?;
    Ok((vec![T::zero(); len], r))
}

/// 2-D convolution of `x` (`[n, cin, h, w]`) with `weight` (`[cout, cin, kh, kw]`) plus an
/// optional `bias` (`[cout]`), giving `[n, cout, (h + 2p - kh)/s + 1, (w + 2p - kw)/s + 1]`.
/// Gradients flow to each of `x`, `weight` and `bias` that requires one.
pub fn conv2d(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: Conv2dOptions,
) -> Result<Tensor> {
    let geo = Geometry::new(x, weight, bias, opts)?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return conv2d_cuda(tape, x, weight, bias, geo);
    }
    let mut out = Tensor::zeros(
        &[geo.n, geo.cout, geo.hout, geo.wout],
        x.dtype(),
        x.device(),
    )?;
    dispatch_float!(x.dtype(), T => {
        let groups = cpu::groups(geo.n);
        let (mut ws, _reserved) = workspace::<T>(x, groups * cpu::forward_workspace(&geo, std::mem::size_of::<T>()))?;
        let b = bias.map(|b| b.as_slice::<T>()).transpose()?;
        cpu::forward::<T>(&geo, groups, x.as_slice::<T>()?, weight.as_slice::<T>()?, b, out.make_mut::<T>()?, &mut ws);
    });

    let WeightedOp {
        inputs,
        kx,
        kw,
        kb,
        saved_x,
        saved_w,
    } = WeightedOp::new(tape, x, weight, bias);
    Ok(tape.record(&inputs, out, move |g, grads| {
        if let Some(kb) = kb.filter(|k| k.requires_grad()) {
            let mut gb = Tensor::zeros(kb.shape(), g.dtype(), g.device())?;
            dispatch_float!(g.dtype(), T => cpu::grad_bias::<T>(&geo, g.as_slice::<T>()?, gb.make_mut::<T>()?));
            grads.accumulate(&kb, gb)?;
        }
        let (gx, gw) = backward(&geo, g, saved_x.as_ref(), saved_w.as_ref())?;
        if let Some(gx) = gx {
            grads.accumulate(&kx, gx)?;
        }
        if let Some(gw) = gw {
            grads.accumulate(&kw, gw)?;
        }
        Ok(())
    }))
}

/// The CUDA path of [`conv2d`]: the same recording, cuDNN kernels.
#[cfg(feature = "cuda")]
fn conv2d_cuda(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geo: Geometry,
) -> Result<Tensor> {
    let out = cuda::forward(&geo, x, weight, bias)?;
    let WeightedOp {
        inputs,
        kx,
        kw,
        kb,
        saved_x,
        saved_w,
    } = WeightedOp::new(tape, x, weight, bias);
    Ok(tape.record(&inputs, out, move |g, grads| {
        let expected = [geo.n, geo.cout, geo.hout, geo.wout];
        if g.shape() != expected {
            return Err(Error::Backward(format!(
                "{OP}: output gradient {:?}, expected {expected:?}",
                g.shape()
            )));
        }
        for t in saved_x.iter().chain(saved_w.iter()) {
            t.check_compatible(g, OP)?;
        }
        let want_bias = kb.as_ref().is_some_and(|k| k.requires_grad());
        let (gx, gw, gb) = cuda::backward(&geo, g, saved_x.as_ref(), saved_w.as_ref(), want_bias)?;
        if let (Some(kb), Some(gb)) = (kb, gb) {
            grads.accumulate(&kb, gb)?;
        }
        if let Some(gx) = gx {
            grads.accumulate(&kx, gx)?;
        }
        if let Some(gw) = gw {
            grads.accumulate(&kw, gw)?;
        }
        Ok(())
    }))
}

/// Grad input (when the weight was saved) and grad weight (when the input was saved).
fn backward(
    geo: &Geometry,
    g: &Tensor,
    x: Option<&Tensor>,
    w: Option<&Tensor>,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let expected = [geo.n, geo.cout, geo.hout, geo.wout];
    if g.shape() != expected {
        return Err(Error::Backward(format!(
            "{OP}: output gradient {:?}, expected {expected:?}",
            g.shape()
        )));
    }
    let needs = Needs {
        x: w.is_some(),
        w: x.is_some(),
    };
    let (dtype, dev) = (g.dtype(), g.device());
    let mut gx = match needs.x {
        true => Some(Tensor::zeros(&[geo.n, geo.cin, geo.h, geo.w], dtype, dev)?),
        false => None,
    };
    let mut gw = match needs.w {
        true => Some(Tensor::zeros(
            &[geo.cout, geo.cin, geo.kh, geo.kw],
            dtype,
            dev,
        )?),
        false => None,
    };
    dispatch_float!(dtype, T => {
        let (per, flip_len) = cpu::backward_workspace(geo, needs, std::mem::size_of::<T>());
        let groups = cpu::groups(geo.n);
        let (mut ws, _r1) = workspace::<T>(g, groups * per)?;
        let (mut flip, _r2) = workspace::<T>(g, flip_len)?;
        let xs = match x { Some(x) => x.as_slice::<T>()?, None => &[] };
        let ws_ = match w { Some(w) => w.as_slice::<T>()?, None => &[] };
        let gxs = match gx.as_mut() { Some(t) => t.make_mut::<T>()?, None => &mut [] };
        let gws = match gw.as_mut() { Some(t) => t.make_mut::<T>()?, None => &mut [] };
        cpu::backward::<T>(geo, groups, needs, g.as_slice::<T>()?, xs, ws_, gxs, gws, &mut ws, &mut flip);
    });
    Ok((gx, gw))
}
