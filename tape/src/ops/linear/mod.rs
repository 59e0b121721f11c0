//! Fully connected layer: `y = x w^T + b` with PyTorch's weight layout (`[out, in]`), the
//! classifier head of a CNN. Its `cpu` module also holds the GEMM wrapper `conv2d` uses.

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use super::WeightedOp;
use crate::error::{Error, Result};
use crate::tape::Tape;
use crate::tensor::Tensor;

const OP: &str = "linear";

/// `x w^T + bias`: `x` is `[n, in]`, `weight` is `[out, in]`, `bias` is `[out]`; the result is
/// `[n, out]`. Gradients flow to each input that requires one.
pub fn linear(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let dims = check(x, weight, bias)?;
    let (n, _, o) = dims;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return linear_cuda(tape, x, weight, bias, dims);
    }
    let mut out = Tensor::zeros(&[n, o], x.dtype(), x.device())?;
    dispatch_float!(x.dtype(), T => cpu::forward::<T>(
        out.make_mut::<T>()?,
        x.as_slice::<T>()?,
        weight.as_slice::<T>()?,
        bias.map(|b| b.as_slice::<T>()).transpose()?,
        dims,
    ));

    let WeightedOp {
        inputs,
        kx,
        kw,
        kb,
        saved_x,
        saved_w,
    } = WeightedOp::new(tape, x, weight, bias);
    Ok(tape.record(&inputs, out, move |g, grads| {
        if g.shape() != [n, o] {
            return Err(Error::Backward(format!("{OP}: output gradient {:?}, expected [{n}, {o}]", g.shape())));
        }
        let (dtype, dev) = (g.dtype(), g.device().clone());
        if let Some(w) = saved_w {
            let mut gx = Tensor::zeros(kx.shape(), dtype, &dev)?;
            dispatch_float!(dtype, T => cpu::grad_input::<T>(gx.make_mut::<T>()?, g.as_slice::<T>()?, w.as_slice::<T>()?, dims));
            grads.accumulate(&kx, gx)?;
        }
        if let Some(x) = saved_x {
            let mut gw = Tensor::zeros(kw.shape(), dtype, &dev)?;
            dispatch_float!(dtype, T => cpu::grad_weight::<T>(gw.make_mut::<T>()?, g.as_slice::<T>()?, x.as_slice::<T>()?, dims));
            grads.accumulate(&kw, gw)?;
        }
        if let Some(kb) = kb.filter(|k| k.requires_grad()) {
            let mut gb = Tensor::zeros(kb.shape(), dtype, &dev)?;
            dispatch_float!(dtype, T => cpu::grad_bias::<T>(gb.make_mut::<T>()?, g.as_slice::<T>()?, o));
            grads.accumulate(&kb, gb)?;
        }
        Ok(())
    }))
}

/// The CUDA path of [`linear`]: the same recording, cuBLAS kernels.
#[cfg(feature = "cuda")]
fn linear_cuda(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    dims: (usize, usize, usize),
) -> Result<Tensor> {
    let (n, _, o) = dims;
    let out = cuda::forward(x, weight, bias, dims)?;
    let WeightedOp {
        inputs,
        kx,
        kw,
        kb,
        saved_x,
        saved_w,
    } = WeightedOp::new(tape, x, weight, bias);
    Ok(tape.record(&inputs, out, move |g, grads| {
        if g.shape() != [n, o] {
            return Err(Error::Backward(format!(
                "{OP}: output gradient {:?}, expected [{n}, {o}]",
                g.shape()
            )));
        }
        if let Some(w) = saved_w {
            w.check_compatible(g, OP)?;
            grads.accumulate(&kx, cuda::grad_input(g, &w, dims)?)?;
        }
        if let Some(x) = saved_x {
            x.check_compatible(g, OP)?;
            grads.accumulate(&kw, cuda::grad_weight(g, &x, dims)?)?;
        }
        if let Some(kb) = kb.filter(|k| k.requires_grad()) {
            grads.accumulate(&kb, cuda::grad_bias(g, dims)?)?;
        }
        Ok(())
    }))
}

/// Checks ranks, dtypes, devices and sizes; returns `(n, in, out)`.
fn check(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    x.check_compatible(weight, OP)?;
    let (n, i) = match x.shape() {
        &[n, i] => (n, i),
        s => return Err(Error::shape(OP, format!("x must be [n, in], got {s:?}"))),
    };
    let o = match weight.shape() {
        &[o, wi] if wi == i => o,
        s => {
            return Err(Error::shape(
                OP,
                format!(
                    "weight must be [out, {i}] for x of shape {:?}, got {s:?}",
                    x.shape()
                ),
            ))
        }
    };
    if let Some(b) = bias {
        super::check_vector(OP, "bias", x, b, o)?;
    }
    Ok((n, i, o))
}
