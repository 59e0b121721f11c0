//! CUDA kernels of ReLU (NVRTC, `kernels.cu`): the same comparisons as the CPU kernel.

use crate::device::cuda::{grid, launch, CudaElem, K};
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// `max(x, 0)` on a CUDA device; backward keeps the output, as on the CPU.
pub(super) fn relu(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    let out = dispatch_float!(x.dtype(), T => forward::<T>(x))?;
    let kx = GradKey::of(x);
    let saved = tape.needs_grad(&[x]).then(|| out.clone());
    Ok(tape.record(&[x], out, move |g, grads| {
        let y = saved.ok_or_else(|| Error::Backward("relu saved nothing".into()))?;
        if g.shape() != y.shape() {
            return Err(Error::Backward(format!(
                "relu: gradient of shape {:?} for an output of shape {:?}",
                g.shape(),
                y.shape()
            )));
        }
        y.check_compatible(g, "relu")?;
        let gx = dispatch_float!(g.dtype(), T => backward::<T>(g, &y))?;
        grads.accumulate(&kx, gx)
    }))
}

fn forward<T: CudaElem>(x: &Tensor) -> Result<Tensor> {
    let cu = x.device().cuda_handle("relu")?;
    let mut out = Tensor::cuda_uninit::<T>(x.shape(), x.device())?;
    let n = x.numel() as u64;
    if n > 0 {
        let xs = x.cuda_slice::<T>()?;
        let o = out.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::ReluFwd, T::DTYPE, grid(n as usize); o, xs, &n)?;
    }
    Ok(out)
}

fn backward<T: CudaElem>(g: &Tensor, y: &Tensor) -> Result<Tensor> {
    let cu = g.device().cuda_handle("relu")?;
    let mut gx = Tensor::cuda_uninit::<T>(g.shape(), g.device())?;
    let n = g.numel() as u64;
    if n > 0 {
        let (gs, ys) = (g.cuda_slice::<T>()?, y.cuda_slice::<T>()?);
        let o = gx.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::ReluBwd, T::DTYPE, grid(n as usize); o, gs, ys, &n)?;
    }
    Ok(gx)
}
