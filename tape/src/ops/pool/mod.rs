//! Pooling over NCHW images: average (DenseNet's transitions), max (the ImageNet stem) and global
//! average (before the classifier), forward and backward, with PyTorch's semantics (floor mode,
//! average counting the zero padding).

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

use super::checks::check_grad;
use super::widen::via_f32_for;
use crate::backend::{kernel_trait, kernels};
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// Which pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PoolMode {
    /// Average with the zero padding counted (PyTorch's `count_include_pad=True`).
    Avg,
    /// Maximum (the first maximum of a window takes the gradient; NaN propagates).
    Max,
}

impl PoolMode {
    fn op(self) -> &'static str {
        match self {
            PoolMode::Avg => "avg_pool2d",
            PoolMode::Max => "max_pool2d",
        }
    }
}

kernel_trait! {
    /// Device kernels of pooling (shapes checked by the caller).
    pub(crate) trait PoolKernels {
        /// Pooling of NCHW `x` over `win`: `[n, c, hout, wout]`.
        fn pool_forward(&self, mode: PoolMode, x: &Tensor, win: &Window) -> Result<Tensor>;
        /// The input gradient (shape `x_shape`) from the output gradient `g`. Max pooling gets its
        /// saved input and output; average pooling reads neither and gets `None`.
        fn pool_backward(
            &self,
            mode: PoolMode,
            saved: Option<(&Tensor, &Tensor)>,
            g: &Tensor,
            win: &Window,
            x_shape: &[usize],
        ) -> Result<Tensor>;
        /// The mean of each plane of `x` (`[n, c, h, w]` with `hw = h * w`) as `[n, c]`.
        fn global_avg_forward(&self, x: &Tensor, hw: usize) -> Result<Tensor>;
        /// Each plane of the input gradient (shape `x_shape`) gets its gradient divided by `hw`.
        fn global_avg_backward(&self, g: &Tensor, hw: usize, x_shape: &[usize]) -> Result<Tensor>;
    }
}

/// A square pooling window over planes of `h x w`, checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    kernel: usize,
    stride: usize,
    padding: usize,
    h: usize,
    w: usize,
    hout: usize,
    wout: usize,
}

impl Window {
    fn new(
        op: &'static str,
        dims: [usize; 4],
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let [_, _, h, w] = dims;
        if kernel == 0 {
            return Err(Error::invalid(op, "kernel must be at least 1"));
        }
        if stride == 0 {
            return Err(Error::invalid(op, "stride must be at least 1"));
        }
        if padding > kernel / 2 {
            return Err(Error::invalid(
                op,
                format!("padding {padding} exceeds half the kernel {kernel}"),
            ));
        }
        let out = |len: usize| -> Result<usize> {
            let padded = len.checked_add(2 * padding).filter(|&p| p >= kernel).ok_or_else(|| {
                Error::shape(op, format!("kernel {kernel} is larger than the padded input {h}x{w} (padding {padding})"))
            })?;
            Ok((padded - kernel) / stride + 1)
        };
        let (hout, wout) = (out(h)?, out(w)?);
        Ok(Window {
            kernel,
            stride,
            padding,
            h,
            w,
            hout,
            wout,
        })
    }
}

/// Average pooling with a `kernel x kernel` window: zero padding is counted in the divisor
/// (PyTorch's `count_include_pad=true`), output sizes are floored. Needs `padding <= kernel/2`.
/// Backward saves nothing.
pub fn avg_pool2d(
    tape: &mut Tape,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    pool(tape, PoolMode::Avg, x, kernel, stride, padding)
}

/// Max pooling with a `kernel x kernel` window: padding acts as `-inf`, output sizes are floored.
/// Backward routes each gradient to its window's maximum (the first one on ties) and saves the
/// input and the output. Needs `padding <= kernel/2`.
pub fn max_pool2d(
    tape: &mut Tape,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    pool(tape, PoolMode::Max, x, kernel, stride, padding)
}

fn pool(
    tape: &mut Tape,
    mode: PoolMode,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let op = mode.op();
    let _profile = tape.profile_op(op);
    let dims = x.dims4(op)?;
    let win = Window::new(op, dims, kernel, stride, padding)?;
    let k = kernels(x.device())?;
    let out = match tape.take_known_output(&[dims[0], dims[1], win.hout, win.wout], x) {
        Some(known) => known,
        None => via_f32_for(&k, [x], x.dtype(), |[x]| k.pool_forward(mode, x, &win))?,
    };
    let kx = GradKey::of(x);
    let saved = (mode == PoolMode::Max && tape.needs_grad(&[x])).then(|| (x.clone(), out.clone()));
    let out_shape = out.shape().to_vec();
    Ok(tape.record(op, &[x], out, move |g, grads| {
        check_grad(op, g, &out_shape, saved.as_ref().map(|s| &s.1))?;
        if mode == PoolMode::Max && saved.is_none() {
            return Err(Error::Backward(format!("{op}: input not saved")));
        }
        let gx = match &saved {
            Some((x, y)) => via_f32_for(&k, [g, x, y], g.dtype(), |[g, x, y]| {
                k.pool_backward(mode, Some((x, y)), g, &win, kx.shape())
            })?,
            None => via_f32_for(&k, [g], g.dtype(), |[g]| {
                k.pool_backward(mode, None, g, &win, kx.shape())
            })?,
        };
        grads.accumulate(&kx, gx)
    }))
}

/// The mean of each channel's plane: `[n, c, h, w]` to `[n, c]` (needs `h, w >= 1`).
pub fn global_avg_pool(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    let _profile = tape.profile_op("global_avg_pool");
    let [n, c, h, w] = x.dims4("global_avg_pool")?;
    if h == 0 || w == 0 {
        return Err(Error::shape(
            "global_avg_pool",
            format!("empty planes in {:?}", x.shape()),
        ));
    }
    let k = kernels(x.device())?;
    let out = via_f32_for(&k, [x], x.dtype(), |[x]| k.global_avg_forward(x, h * w))?;
    let kx = GradKey::of(x);
    Ok(tape.record("global_avg_pool", &[x], out, move |g, grads| {
        check_grad("global_avg_pool", g, &[n, c], None)?;
        let gx = via_f32_for(&k, [g], g.dtype(), |[g]| {
            k.global_avg_backward(g, h * w, kx.shape())
        })?;
        grads.accumulate(&kx, gx)
    }))
}
