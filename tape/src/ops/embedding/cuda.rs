//! CUDA kernels of `embedding` (NVRTC, `kernels.cu`): the indices, and for backward the groups
//! of positions by index, go to the device as `u64` scratch buffers; the gather is one thread
//! per output element, the scatter-add one thread per weight-gradient element summing its
//! group in order in `f64` (no atomics: deterministic, the CPU's bits).
//!
//! Not yet run on a GPU: the kernels compile with NVRTC, nothing more is known.

use super::{EmbeddingKernels, Groups};
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{grid, launch, scratch_from_host, CudaElem, Scratch};
use crate::device::Device;
use crate::error::Result;
use crate::tensor::Tensor;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        EmbeddingFwd = "embedding_fwd",
        EmbeddingBwd = "embedding_bwd",
    }
}

/// `values` as `u64` in a device buffer.
fn upload(device: &Device, values: &[usize]) -> Result<Scratch<u64>> {
    let as_u64: Vec<u64> = values.iter().map(|&v| v as u64).collect();
    scratch_from_host::<u64>(device, &as_u64)
}

impl EmbeddingKernels for CudaKernels {
    fn embedding_forward(
        &self,
        weight: &Tensor,
        indices: &[usize],
        out_shape: &[usize],
    ) -> Result<Tensor> {
        dispatch_float!(weight.dtype(), T => forward::<T>(weight, indices, out_shape))
    }

    fn embedding_backward(
        &self,
        g: &Tensor,
        groups: &Groups,
        vocab: usize,
        d: usize,
    ) -> Result<Tensor> {
        dispatch_float!(g.dtype(), T => backward::<T>(g, groups, vocab, d))
    }
}

fn forward<T: CudaElem>(weight: &Tensor, indices: &[usize], out_shape: &[usize]) -> Result<Tensor> {
    let dev = weight.device();
    let cu = dev.cuda_handle("embedding")?;
    let mut out = Tensor::cuda_uninit::<T>(out_shape, dev)?;
    let d = weight.shape()[1];
    let total = indices.len() * d;
    if total > 0 {
        let idx = upload(dev, indices)?;
        let (n, du) = (indices.len() as u64, d as u64);
        let ws = weight.cuda_slice::<T>()?;
        let o = out.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::EmbeddingFwd, T::DTYPE, grid(total); o, ws, &idx.buf, &n, &du)?;
    }
    Ok(out)
}

fn backward<T: CudaElem>(g: &Tensor, groups: &Groups, vocab: usize, d: usize) -> Result<Tensor> {
    let dev = g.device();
    let cu = dev.cuda_handle("embedding")?;
    let mut gw = Tensor::cuda_uninit::<T>(&[vocab, d], dev)?;
    let total = vocab * d;
    if total > 0 {
        let offsets = upload(dev, &groups.offsets)?;
        let positions = upload(dev, &groups.positions)?;
        let (vu, du) = (vocab as u64, d as u64);
        let gs = g.cuda_slice::<T>()?;
        let o = gw.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::EmbeddingBwd, T::DTYPE, grid(total);
            o, gs, &offsets.buf, &positions.buf, &vu, &du)?;
    }
    Ok(gw)
}
