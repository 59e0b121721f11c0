//! Pooling over NCHW images: average (DenseNet's transitions), max (the ImageNet stem) and global
//! average (before the classifier), forward and backward, with PyTorch's semantics (floor mode,
//! average counting the zero padding).

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

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
pub fn avg_pool2d(
    tape: &mut Tape,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let dims = x.dims4("avg_pool2d")?;
    let win = Window::new("avg_pool2d", dims, kernel, stride, padding)?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        use crate::device::cuda::PoolMode;
        let out = cuda::forward("avg_pool2d", PoolMode::Avg, x, &win)?;
        let kx = GradKey::of(x);
        return Ok(tape.record(&[x], out, move |g, grads| {
            let gx = cuda::backward("avg_pool2d", PoolMode::Avg, None, g, &win, kx.shape())?;
            grads.accumulate(&kx, gx)
        }));
    }
    let mut out = Tensor::zeros(
        &[dims[0], dims[1], win.hout, win.wout],
        x.dtype(),
        x.device(),
    )?;
    dispatch_float!(x.dtype(), T => cpu::avg_forward::<T>(&win, x.as_slice::<T>()?, out.make_mut::<T>()?));
    let kx = GradKey::of(x);
    Ok(tape.record(&[x], out, move |g, grads| {
        let mut gx = Tensor::zeros(kx.shape(), g.dtype(), g.device())?;
        dispatch_float!(g.dtype(), T => cpu::avg_backward::<T>(&win, g.as_slice::<T>()?, gx.make_mut::<T>()?));
        grads.accumulate(&kx, gx)
    }))
}

/// Max pooling with a `kernel x kernel` window: padding acts as `-inf`, output sizes are floored.
/// Backward routes each gradient to its window's maximum (the first one on ties). Needs
/// `padding <= kernel/2`.
pub fn max_pool2d(
    tape: &mut Tape,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let dims = x.dims4("max_pool2d")?;
    let win = Window::new("max_pool2d", dims, kernel, stride, padding)?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        // cuDNN's backward takes the output as well as the input: both are kept.
        use crate::device::cuda::PoolMode;
        let out = cuda::forward("max_pool2d", PoolMode::Max, x, &win)?;
        let kx = GradKey::of(x);
        let saved = tape.needs_grad(&[x]).then(|| (x.clone(), out.clone()));
        return Ok(tape.record(&[x], out, move |g, grads| {
            let (x, y) = saved
                .ok_or_else(|| crate::Error::Backward("max_pool2d: input not saved".into()))?;
            let gx = cuda::backward(
                "max_pool2d",
                PoolMode::Max,
                Some((&x, &y)),
                g,
                &win,
                kx.shape(),
            )?;
            grads.accumulate(&kx, gx)
        }));
    }
    let mut out = Tensor::zeros(
        &[dims[0], dims[1], win.hout, win.wout],
        x.dtype(),
        x.device(),
    )?;
    dispatch_float!(x.dtype(), T => cpu::max_forward::<T>(&win, x.as_slice::<T>()?, out.make_mut::<T>()?));
    let kx = GradKey::of(x);
    let saved = tape.needs_grad(&[x]).then(|| x.clone());
    Ok(tape.record(&[x], out, move |g, grads| {
        let x = saved.ok_or_else(|| crate::Error::Backward("max_pool2d: input not saved".into()))?;
        let mut gx = Tensor::zeros(kx.shape(), g.dtype(), g.device())?;
        dispatch_float!(g.dtype(), T => cpu::max_backward::<T>(&win, x.as_slice::<T>()?, g.as_slice::<T>()?, gx.make_mut::<T>()?));
        grads.accumulate(&kx, gx)
    }))
}

/// The mean of each channel's plane: `[n, c, h, w]` to `[n, c]` (needs `h, w >= 1`).
pub fn global_avg_pool(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    let [n, c, h, w] = x.dims4("global_avg_pool")?;
    if h == 0 || w == 0 {
        return Err(Error::shape(
            "global_avg_pool",
            format!("empty planes in {:?}", x.shape()),
        ));
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        let out = cuda::global_avg_forward(x, h * w, &[n, c])?;
        let kx = GradKey::of(x);
        return Ok(tape.record(&[x], out, move |g, grads| {
            if g.shape() != [n, c] {
                return Err(Error::Backward(format!(
                    "global_avg_pool: gradient of shape {:?}, expected [{n}, {c}]",
                    g.shape()
                )));
            }
            let gx = cuda::global_avg_backward(g, h * w, kx.shape())?;
            grads.accumulate(&kx, gx)
        }));
    }
    let mut out = Tensor::zeros(&[n, c], x.dtype(), x.device())?;
    dispatch_float!(x.dtype(), T => cpu::global_avg_forward::<T>(x.as_slice::<T>()?, h * w, out.make_mut::<T>()?));
    let kx = GradKey::of(x);
    Ok(tape.record(&[x], out, move |g, grads| {
        let mut gx = Tensor::zeros(kx.shape(), g.dtype(), g.device())?;
        dispatch_float!(g.dtype(), T => cpu::global_avg_backward::<T>(g.as_slice::<T>()?, h * w, gx.make_mut::<T>()?));
        grads.accumulate(&kx, gx)
    }))
}
