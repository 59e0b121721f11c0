//! CUDA kernels of `narrow`: the `split` and `concat` kernels of channel concatenation
//! (`kernels.cu`) with a single part: the slice is a part `len * inner` wide at offset
//! `start * inner` of rows `size * inner` wide. Backward fills zeros first.
//!
//! Not yet run on a GPU: written against the existing kernels' argument lists only.

use super::{NarrowKernels, Slice};
use crate::backend::CudaKernels;
use crate::block_storage::cuda::K as ChannelK;
use crate::device::cuda::{grid, launch, CudaScalar, PartList};
use crate::error::Result;
use crate::tensor::Tensor;

impl NarrowKernels for CudaKernels {
    fn narrow_forward(&self, x: &Tensor, slice: Slice, shape: &[usize]) -> Result<Tensor> {
        dispatch_scalar!(x.dtype(), T => forward::<T>(x, slice, shape))
    }

    fn narrow_backward(&self, g: &Tensor, slice: Slice, shape: &[usize]) -> Result<Tensor> {
        dispatch_scalar!(g.dtype(), T => backward::<T>(g, slice, shape))
    }
}

/// `(width, total, offset)` of the slice as one part of rows of `total` elements.
fn part(s: Slice) -> (u64, u64, u64) {
    (
        (s.len * s.inner) as u64,
        (s.size * s.inner) as u64,
        (s.start * s.inner) as u64,
    )
}

fn forward<T: CudaScalar>(x: &Tensor, s: Slice, shape: &[usize]) -> Result<Tensor> {
    let dev = x.device();
    let be = &dev.cuda_handle("narrow")?.backend;
    let mut out = Tensor::cuda_uninit::<T>(shape, dev)?;
    let (w, total, off) = part(s);
    if s.outer as u64 * w > 0 {
        let mut list = PartList::default();
        list.ptr[0] = be.ptr(&*out.cuda_slice_mut::<T>()?);
        list.width[0] = w;
        list.offset[0] = off;
        let outer = s.outer as u64;
        let xs = x.cuda_slice::<T>()?;
        launch!(be, ChannelK::Split, T::DTYPE, grid(s.outer * s.len * s.inner); xs, &list, &outer, &total)?;
    }
    Ok(out)
}

fn backward<T: CudaScalar>(g: &Tensor, s: Slice, shape: &[usize]) -> Result<Tensor> {
    let dev = g.device();
    let be = &dev.cuda_handle("narrow")?.backend;
    let mut gx = Tensor::zeros(shape, T::DTYPE, dev)?;
    let (w, total, off) = part(s);
    if s.outer as u64 * w > 0 {
        let mut list = PartList::default();
        list.ptr[0] = be.ptr(g.cuda_slice::<T>()?);
        list.width[0] = w;
        list.offset[0] = off;
        let outer = s.outer as u64;
        let o = gx.cuda_slice_mut::<T>()?;
        launch!(be, ChannelK::Concat, T::DTYPE, grid(s.outer * s.len * s.inner); o, &list, &outer, &total)?;
    }
    Ok(gx)
}
