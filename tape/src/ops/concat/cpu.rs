//! CPU kernels of channel concatenation: interleaved row copies, in parallel for large outputs.

use super::super::cpu_map::PAR_MIN;
use super::ConcatKernels;
use crate::backend::Cpu;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Concatenates `outer` rows: row `o` of the output is row `o` of every part in turn, where the
/// rows of part `k` have `widths[k]` elements.
fn concat<T: Copy + Default + Send + Sync>(
    parts: &[&[T]],
    widths: &[usize],
    outer: usize,
) -> Vec<T> {
    let total: usize = widths.iter().sum();
    let mut out = vec![T::default(); outer * total];
    if total == 0 {
        return out;
    }
    let fill = |(o, row): (usize, &mut [T])| {
        let mut at = 0;
        for (part, &w) in parts.iter().zip(widths) {
            row[at..at + w].copy_from_slice(&part[o * w..(o + 1) * w]);
            at += w;
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(total).enumerate().for_each(fill);
    } else {
        out.chunks_mut(total).enumerate().for_each(fill);
    }
    out
}

/// Columns `offset..offset + width` of each of the `outer` rows (of `total` elements) of `g`.
fn slice<T: Copy + Default + Send + Sync>(
    g: &[T],
    outer: usize,
    total: usize,
    offset: usize,
    width: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); outer * width];
    if width == 0 {
        return out;
    }
    let take = |(o, row): (usize, &mut [T])| {
        let start = o * total + offset;
        row.copy_from_slice(&g[start..start + width]);
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(width).enumerate().for_each(take);
    } else {
        out.chunks_mut(width).enumerate().for_each(take);
    }
    out
}

impl ConcatKernels for Cpu {
    fn concat(
        &self,
        xs: &[&Tensor],
        widths: &[usize],
        outer: usize,
        shape: &[usize],
    ) -> Result<Tensor> {
        dispatch_float!(xs[0].dtype(), T => {
            let parts = xs.iter().map(|x| x.as_slice::<T>()).collect::<Result<Vec<_>>>()?;
            Tensor::from_vec(concat::<T>(&parts, widths, outer), shape, xs[0].device())
        })
    }

    fn concat_split(
        &self,
        g: &Tensor,
        outer: usize,
        widths: &[usize],
        shapes: &[&[usize]],
        wanted: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let total: usize = widths.iter().sum();
        let mut offset = 0;
        let mut pieces = Vec::with_capacity(widths.len());
        for ((&width, shape), &want) in widths.iter().zip(shapes).zip(wanted) {
            pieces.push(if want {
                Some(dispatch_float!(g.dtype(), T => Tensor::from_vec(slice::<T>(g.as_slice::<T>()?, outer, total, offset, width), shape, g.device()))?)
            } else {
                None
            });
            offset += width;
        }
        Ok(pieces)
    }
}
