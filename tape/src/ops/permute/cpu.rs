//! CPU kernel of `permute`: a gather, output row by output row (the last output dimension
//! innermost, rows over threads for large tensors).

use super::{layout, PermuteKernels};
use crate::backend::cpu::map::PAR_MIN;
use crate::backend::Cpu;
use crate::dtype::Scalar;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

fn gather<T: Scalar>(x: &[T], shape: &[usize], strides: &[usize]) -> Vec<T> {
    let len: usize = shape.iter().product();
    let mut out = vec![T::of(0.0); len];
    let Some((&last, outer)) = shape.split_last() else {
        // A 0-d tensor: one element.
        out.copy_from_slice(&x[..len]);
        return out;
    };
    if len == 0 {
        return out;
    }
    let step = strides[strides.len() - 1];
    let row = |(r, o): (usize, &mut [T])| {
        // The input offset of the row's first element: `r`'s multi-index over `outer`.
        let (mut rem, mut src) = (r, 0usize);
        for (&s, &st) in outer.iter().zip(strides).rev() {
            src += (rem % s) * st;
            rem /= s;
        }
        for (j, oj) in o.iter_mut().enumerate() {
            *oj = x[src + j * step];
        }
    };
    if len >= PAR_MIN {
        out.par_chunks_mut(last).enumerate().for_each(row);
    } else {
        out.chunks_mut(last).enumerate().for_each(row);
    }
    out
}

impl PermuteKernels for Cpu {
    fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
        let (shape, strides) = layout(x.shape(), perm);
        dispatch_scalar!(x.dtype(), T => Tensor::from_vec(
            gather::<T>(x.as_slice::<T>()?, &shape, &strides),
            &shape,
            x.device(),
        ))
    }
}
