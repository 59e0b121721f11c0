//! CUDA kernels of [`super::BlockStorage`]: the concatenation kernels with one part (a packed
//! `[n, k, h, w]` tensor as rows of `k*h*w` elements at offset `c0*h*w` in rows of `C*h*w`).
//! Not yet run on a GPU.

use super::{channel_runs, BlockStorageKernels};
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{grid, launch, CudaScalar, PartList};
use crate::error::Result;
use crate::tensor::Tensor;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        Concat = "concat",
        ConcatAdd = "concat_add",
        Split = "split",
        SplitAdd = "split_add",
    }
}

/// One launch of `kernel` (concat, concat_add or split) between the wide buffer at `wide` and
/// the packed one at `packed`.
fn launch_rows<T: CudaScalar>(
    dev: &crate::Device,
    kernel: K,
    wide: u64,
    packed: u64,
    (n, total, run, at): (usize, usize, usize, usize),
) -> Result<()> {
    if n * run == 0 {
        return Ok(());
    }
    let be = &dev.cuda_handle("block_storage")?.backend;
    let mut list = PartList::default();
    list.ptr[0] = packed;
    list.width[0] = run as u64;
    list.offset[0] = at as u64;
    let (outer, total) = (n as u64, total as u64);
    launch!(be, kernel, T::DTYPE, grid(n * run); &wide, &list, &outer, &total)
}

fn write_t<T: CudaScalar>(dst: &mut Tensor, src: &Tensor, c0: usize, kernel: K) -> Result<()> {
    let r = channel_runs(dst, src.dims4("block_storage")?, c0)?;
    let dev = src.device().clone();
    let be = &dev.cuda_handle("block_storage")?.backend;
    let s = be.ptr(src.cuda_slice::<T>()?);
    let d = be.ptr(&*dst.cuda_slice_mut::<T>()?);
    launch_rows::<T>(&dev, kernel, d, s, r)
}

fn read_t<T: CudaScalar>(src: &Tensor, c0: usize, k: usize) -> Result<Tensor> {
    let [n, _, h, w] = src.dims4("block_storage")?;
    let r = channel_runs(src, [n, k, h, w], c0)?;
    let dev = src.device();
    let be = &dev.cuda_handle("block_storage")?.backend;
    let mut out = Tensor::cuda_uninit::<T>(&[n, k, h, w], dev)?;
    let o = be.ptr(&*out.cuda_slice_mut::<T>()?);
    let s = be.ptr(src.cuda_slice::<T>()?);
    launch_rows::<T>(dev, K::Split, s, o, r)?;
    Ok(out)
}

impl BlockStorageKernels for CudaKernels {
    fn write_channels(&self, dst: &mut Tensor, src: &Tensor, c0: usize) -> Result<()> {
        dispatch_scalar!(src.dtype(), T => write_t::<T>(dst, src, c0, K::Concat))
    }

    fn add_channels(&self, dst: &mut Tensor, src: &Tensor, c0: usize) -> Result<()> {
        dispatch_scalar!(src.dtype(), T => write_t::<T>(dst, src, c0, K::ConcatAdd))
    }

    fn read_channels(&self, src: &Tensor, c0: usize, k: usize) -> Result<Tensor> {
        dispatch_scalar!(src.dtype(), T => read_t::<T>(src, c0, k))
    }
}
