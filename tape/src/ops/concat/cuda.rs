//! CUDA kernels of channel concatenation: one launch per 32 inputs (their addresses, row widths
//! and offsets passed by value), and the same for the backward split.

use super::ConcatKernels;
use crate::backend::CudaKernels;
use crate::block_storage::cuda::K as ChannelK;
use crate::device::cuda::{grid, launch, CudaElem, PartList, MAX_PARTS};
use crate::error::Result;
use crate::tensor::Tensor;

impl ConcatKernels for CudaKernels {
    fn concat(
        &self,
        xs: &[&Tensor],
        widths: &[usize],
        outer: usize,
        shape: &[usize],
    ) -> Result<Tensor> {
        dispatch_float!(xs[0].dtype(), T => concat_t::<T>(xs, widths, outer, shape))
    }

    fn concat_split(
        &self,
        g: &Tensor,
        outer: usize,
        widths: &[usize],
        shapes: &[&[usize]],
        wanted: &[bool],
        into: Vec<Option<Tensor>>,
    ) -> Result<Vec<Option<Tensor>>> {
        dispatch_float!(g.dtype(), T => split_t::<T>(g, outer, widths, shapes, wanted, into))
    }
}

fn concat_t<T: CudaElem>(
    xs: &[&Tensor],
    widths: &[usize],
    outer: usize,
    shape: &[usize],
) -> Result<Tensor> {
    let dev = xs[0].device();
    let be = &dev.cuda_handle("concat")?.backend;
    let mut out = Tensor::cuda_uninit::<T>(shape, dev)?;
    let total: usize = widths.iter().sum();
    if outer * total == 0 {
        return Ok(out);
    }
    let (outer_u, total_u) = (outer as u64, total as u64);
    let mut offset = 0usize;
    let mut parts = Vec::with_capacity(xs.len());
    for (x, &w) in xs.iter().zip(widths) {
        parts.push((be.ptr(x.cuda_slice::<T>()?), w, offset));
        offset += w;
    }
    let o = out.cuda_slice_mut::<T>()?;
    for chunk in parts.chunks(MAX_PARTS) {
        let mut list = PartList::default();
        let mut widest = 0usize;
        for (i, &(p, w, off)) in chunk.iter().enumerate() {
            list.ptr[i] = p;
            list.width[i] = w as u64;
            list.offset[i] = off as u64;
            widest = widest.max(w);
        }
        if widest == 0 {
            continue;
        }
        let mut cfg = grid(outer * widest);
        cfg.grid_dim.1 = chunk.len() as u32;
        launch!(be, ChannelK::Concat, T::DTYPE, cfg; &mut *o, &list, &outer_u, &total_u)?;
    }
    Ok(out)
}

fn split_t<T: CudaElem>(
    g: &Tensor,
    outer: usize,
    widths: &[usize],
    shapes: &[&[usize]],
    wanted: &[bool],
    into: Vec<Option<Tensor>>,
) -> Result<Vec<Option<Tensor>>> {
    let dev = g.device();
    let be = &dev.cuda_handle("concat")?.backend;
    let total: usize = widths.iter().sum();
    let mut outs: Vec<Option<Tensor>> = Vec::with_capacity(widths.len());
    // Pieces written fresh, and pieces added into an input's existing gradient.
    let (mut fresh, mut added) = (Vec::new(), Vec::new());
    let mut offset = 0usize;
    for (((&w, shape), &want), existing) in widths.iter().zip(shapes).zip(wanted).zip(into) {
        if want {
            let (mut t, list) = match existing {
                Some(t) => (t, &mut added),
                None => (Tensor::cuda_uninit::<T>(shape, dev)?, &mut fresh),
            };
            if outer * w > 0 {
                list.push((be.ptr(t.cuda_slice_mut::<T>()?), w, offset));
            }
            outs.push(Some(t));
        } else {
            outs.push(None);
        }
        offset += w;
    }
    let (outer_u, total_u) = (outer as u64, total as u64);
    let gs = g.cuda_slice::<T>()?;
    let chunks = fresh
        .chunks(MAX_PARTS)
        .map(|c| (ChannelK::Split, c))
        .chain(added.chunks(MAX_PARTS).map(|c| (ChannelK::SplitAdd, c)));
    for (kernel, chunk) in chunks {
        let mut list = PartList::default();
        let mut widest = 0usize;
        for (i, &(p, w, off)) in chunk.iter().enumerate() {
            list.ptr[i] = p;
            list.width[i] = w as u64;
            list.offset[i] = off as u64;
            widest = widest.max(w);
        }
        let mut cfg = grid(outer * widest);
        cfg.grid_dim.1 = chunk.len() as u32;
        launch!(be, kernel, T::DTYPE, cfg; gs, &list, &outer_u, &total_u)?;
    }
    Ok(outs)
}
