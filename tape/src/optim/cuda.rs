//! CUDA kernels of the optimizer updates (NVRTC, `kernels.cu`): PyTorch's rules in `f64` per
//! element, compiled without FMA contraction, so they round exactly like the CPU updates.

use super::{AdamConfig, OptimKernels, SgdConfig};
use crate::backend::cuda::{grid, launch, CudaElem, CudaKernels, K};
use crate::error::Result;
use crate::tensor::Tensor;

/// One SGD update of `p` in place; `buf` is the momentum buffer and whether it is new.
fn sgd<T: CudaElem>(
    cfg: &SgdConfig,
    p: &mut Tensor,
    g: &Tensor,
    buf: Option<(&mut Tensor, bool)>,
) -> Result<()> {
    let dev = p.device().clone();
    let be = &dev.cuda_handle("Sgd")?.backend;
    let n = p.numel() as u64;
    if n == 0 {
        return Ok(());
    }
    let (first, bp) = match buf {
        Some((b, first)) => (i32::from(first), be.ptr(&*b.cuda_slice_mut::<T>()?)),
        None => (0, 0u64),
    };
    let nesterov = i32::from(cfg.nesterov);
    let gs = g.cuda_slice::<T>()?;
    let ps = p.cuda_slice_mut::<T>()?;
    launch!(be, K::Sgd, T::DTYPE, grid(n as usize);
        ps, gs, &bp, &n, &cfg.lr, &cfg.momentum, &cfg.dampening, &cfg.weight_decay, &nesterov, &first)
}

/// One Adam update of `p` in place at step `t` (1-based).
fn adam<T: CudaElem>(
    cfg: &AdamConfig,
    t: u64,
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
) -> Result<()> {
    let dev = p.device().clone();
    let be = &dev.cuda_handle("Adam")?.backend;
    let n = p.numel() as u64;
    if n == 0 {
        return Ok(());
    }
    let bc1 = 1.0 - cfg.beta1.powf(t as f64);
    let bc2_sqrt = (1.0 - cfg.beta2.powf(t as f64)).sqrt();
    let step_size = cfg.lr / bc1;
    let gs = g.cuda_slice::<T>()?;
    let ms = m.cuda_slice_mut::<T>()?;
    let vs = v.cuda_slice_mut::<T>()?;
    let ps = p.cuda_slice_mut::<T>()?;
    launch!(be, K::Adam, T::DTYPE, grid(n as usize);
        ps, gs, ms, vs, &n, &cfg.beta1, &cfg.beta2, &cfg.eps, &cfg.weight_decay, &step_size, &bc2_sqrt)
}

impl OptimKernels for CudaKernels {
    fn sgd_update(
        &self,
        cfg: &SgdConfig,
        p: &mut Tensor,
        g: &Tensor,
        buf: Option<(&mut Tensor, bool)>,
    ) -> Result<()> {
        dispatch_float!(g.dtype(), T => sgd::<T>(cfg, p, g, buf))
    }

    fn adam_update(
        &self,
        cfg: &AdamConfig,
        t: u64,
        p: &mut Tensor,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
    ) -> Result<()> {
        dispatch_float!(g.dtype(), T => adam::<T>(cfg, t, p, g, m, v))
    }
}
