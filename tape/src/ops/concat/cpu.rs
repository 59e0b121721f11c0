//! CPU kernels of channel concatenation: interleaved row copies, in parallel for large outputs.

use super::ConcatKernels;
use crate::backend::cpu::map::{write_copy, written_vec, PAR_MIN};
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Concatenates `outer` rows: row `o` of the output is row `o` of every part in turn, where the
/// rows of part `k` have `widths[k]` elements.
fn concat<T: Elem>(parts: &[&[T]], widths: &[usize], outer: usize) -> Vec<T> {
    let total: usize = widths.iter().sum();
    let fill = |(o, row): (usize, &mut [MaybeUninit<T>])| {
        let mut at = 0;
        for (part, &w) in parts.iter().zip(widths) {
            write_copy(&mut row[at..at + w], &part[o * w..(o + 1) * w]);
            at += w;
        }
    };
    // SAFETY: every row is `total` elements, all written by `fill` (the widths add up to it).
    unsafe { written_vec(outer * total, |out| rows(out, total, fill)) }
}

/// Columns `offset..offset + width` of each of the `outer` rows (of `total` elements) of `g`.
fn slice<T: Elem>(g: &[T], outer: usize, total: usize, offset: usize, width: usize) -> Vec<T> {
    let take = |(o, row): (usize, &mut [MaybeUninit<T>])| {
        let start = o * total + offset;
        write_copy(row, &g[start..start + width]);
    };
    // SAFETY: every row of `width` elements is written whole by `take`.
    unsafe { written_vec(outer * width, |out| rows(out, width, take)) }
}

/// Adds columns `offset..offset + width` of each of the `outer` rows (of `total` elements) of
/// `g` into `acc` (`outer` rows of `width`).
fn add_slice<T: Elem>(g: &[T], outer: usize, total: usize, offset: usize, acc: &mut [T]) {
    let width = acc.len() / outer.max(1);
    if width == 0 {
        return;
    }
    let add = |(o, row): (usize, &mut [T])| {
        let start = o * total + offset;
        row.iter_mut()
            .zip(&g[start..start + width])
            .for_each(|(a, &v)| *a += v);
    };
    if acc.len() >= PAR_MIN {
        acc.par_chunks_mut(width).enumerate().for_each(add);
    } else {
        acc.chunks_mut(width).enumerate().for_each(add);
    }
}

/// `f(index, row)` over the rows of `width` elements of `out`, in parallel when large.
fn rows<T: Send>(
    out: &mut [MaybeUninit<T>],
    width: usize,
    f: impl Fn((usize, &mut [MaybeUninit<T>])) + Sync + Send,
) {
    if width == 0 {
        return;
    }
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(width).enumerate().for_each(f);
    } else {
        out.chunks_mut(width).enumerate().for_each(f);
    }
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
        into: Vec<Option<Tensor>>,
    ) -> Result<Vec<Option<Tensor>>> {
        let total: usize = widths.iter().sum();
        let mut offset = 0;
        let mut pieces = Vec::with_capacity(widths.len());
        let inputs = widths.iter().zip(shapes).zip(wanted).zip(into);
        for (((&width, shape), &want), existing) in inputs {
            pieces.push(match (want, existing) {
                (false, _) => None,
                (true, Some(mut acc)) => {
                    dispatch_float!(g.dtype(), T => add_slice::<T>(g.as_slice::<T>()?, outer, total, offset, acc.make_mut::<T>()?));
                    Some(acc)
                }
                (true, None) => Some(dispatch_float!(g.dtype(), T => Tensor::from_vec(slice::<T>(g.as_slice::<T>()?, outer, total, offset, width), shape, g.device()))?),
            });
            offset += width;
        }
        Ok(pieces)
    }
}
