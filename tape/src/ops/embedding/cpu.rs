//! CPU kernels of `embedding`: a row gather (positions over threads for large outputs), and the
//! grouped scatter-add (weight rows over threads; each row sums its group in order, so the bits
//! do not depend on the thread count).

use super::{EmbeddingKernels, Groups};
use crate::backend::cpu::map::PAR_MIN;
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

fn gather<T: Elem>(w: &[T], indices: &[usize], d: usize) -> Vec<T> {
    let mut out = vec![T::zero(); indices.len() * d];
    if d == 0 {
        return out;
    }
    let copy = |(o, &v): (&mut [T], &usize)| o.copy_from_slice(&w[v * d..(v + 1) * d]);
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(d).zip(indices).for_each(copy);
    } else {
        out.chunks_mut(d).zip(indices).for_each(copy);
    }
    out
}

fn scatter_add<T: Elem>(g: &[T], groups: &Groups, vocab: usize, d: usize) -> Vec<T> {
    let mut gw = vec![T::zero(); vocab * d];
    if d == 0 {
        return gw;
    }
    let row = |(v, o): (usize, &mut [T])| {
        let group = &groups.positions[groups.offsets[v]..groups.offsets[v + 1]];
        if group.is_empty() {
            return;
        }
        let mut acc = vec![0.0f64; d];
        for &p in group {
            acc.iter_mut()
                .zip(&g[p * d..(p + 1) * d])
                .for_each(|(a, gv)| *a += gv.f64());
        }
        o.iter_mut().zip(&acc).for_each(|(o, &a)| *o = T::of(a));
    };
    if g.len() + gw.len() >= PAR_MIN {
        gw.par_chunks_mut(d).enumerate().for_each(row);
    } else {
        gw.chunks_mut(d).enumerate().for_each(row);
    }
    gw
}

impl EmbeddingKernels for Cpu {
    fn embedding_forward(
        &self,
        weight: &Tensor,
        indices: &[usize],
        out_shape: &[usize],
    ) -> Result<Tensor> {
        let d = weight.shape()[1];
        dispatch_float!(weight.dtype(), T => Tensor::from_vec(
            gather::<T>(weight.as_slice::<T>()?, indices, d),
            out_shape,
            weight.device(),
        ))
    }

    fn embedding_backward(
        &self,
        g: &Tensor,
        groups: &Groups,
        vocab: usize,
        d: usize,
    ) -> Result<Tensor> {
        dispatch_float!(g.dtype(), T => Tensor::from_vec(
            scatter_add::<T>(g.as_slice::<T>()?, groups, vocab, d),
            &[vocab, d],
            g.device(),
        ))
    }
}
