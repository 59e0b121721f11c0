//! CUDA kernels of the full reductions: a deterministic two-stage sum accumulated in `f64`
//! (per-block partial sums, then one block), and the scalar-times-constant gradient fill.

use crate::device::cuda::{grid, launch, per_row, scratch, CudaElem, K, RBLOCK, SUM_BLOCKS};
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;
use cudarc::driver::LaunchConfig;

/// `sum(x) * factor` as a `[1]` tensor on a CUDA device, recorded like the CPU op.
pub(super) fn reduce(tape: &mut Tape, x: &Tensor, factor: f64) -> Result<Tensor> {
    let out = dispatch_float!(x.dtype(), T => total::<T>(x, factor, 1.0))?;
    let kx = GradKey::of(x);
    Ok(tape.record(&[x], out, move |g, grads| {
        if g.numel() != 1 {
            return Err(Error::Backward(format!(
                "sum/mean: gradient of shape {:?} for a one-element output",
                g.shape()
            )));
        }
        let gx = dispatch_float!(g.dtype(), T => fill_scalar::<T>(kx.shape(), g, factor, 1.0))?;
        grads.accumulate(&kx, gx)
    }))
}

/// `sum(x) * mul / div` (in `f64`, rounded once) as a `[1]` tensor.
pub(crate) fn total<T: CudaElem>(x: &Tensor, mul: f64, div: f64) -> Result<Tensor> {
    let dev = x.device();
    let cu = dev.cuda_handle("sum")?;
    let n = x.numel() as u64;
    let blocks = (x.numel().div_ceil(RBLOCK as usize)).clamp(1, SUM_BLOCKS);
    let mut partials = scratch::<f64>(dev, blocks)?;
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (RBLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let xs = x.cuda_slice::<T>()?;
    launch!(&cu.backend, K::SumPartial, T::DTYPE, cfg; xs, &n, &mut partials.buf)?;
    let mut out = Tensor::cuda_uninit::<T>(&[1], dev)?;
    let count = blocks as u64;
    let o = out.cuda_slice_mut::<T>()?;
    launch!(&cu.backend, K::SumFinal, T::DTYPE, per_row(1); &partials.buf, &count, &mul, &div, o)?;
    Ok(out)
}

/// A tensor of `shape` filled with `g[0] * mul / div` (computed on the device: no sync).
pub(crate) fn fill_scalar<T: CudaElem>(
    shape: &[usize],
    g: &Tensor,
    mul: f64,
    div: f64,
) -> Result<Tensor> {
    let dev = g.device();
    let cu = dev.cuda_handle("fill")?;
    let mut out = Tensor::cuda_uninit::<T>(shape, dev)?;
    let n = out.numel() as u64;
    if n > 0 {
        let gs = g.cuda_slice::<T>()?;
        let o = out.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::FillScalar, T::DTYPE, grid(n as usize); o, gs, &mul, &div, &n)?;
    }
    Ok(out)
}
