//! CPU kernels of `narrow`: row copies (`len * inner` contiguous elements per outer index).

use super::{NarrowKernels, Slice};
use crate::backend::Cpu;
use crate::dtype::Scalar;
use crate::error::Result;
use crate::tensor::Tensor;

fn forward<T: Scalar>(x: &[T], s: Slice) -> Vec<T> {
    let (w, total, off) = (s.len * s.inner, s.size * s.inner, s.start * s.inner);
    let mut out = Vec::with_capacity(s.outer * w);
    for o in 0..s.outer {
        out.extend_from_slice(&x[o * total + off..o * total + off + w]);
    }
    out
}

fn backward<T: Scalar>(g: &[T], s: Slice) -> Vec<T> {
    let (w, total, off) = (s.len * s.inner, s.size * s.inner, s.start * s.inner);
    let mut gx = vec![T::of(0.0); s.outer * total];
    for o in 0..s.outer {
        gx[o * total + off..o * total + off + w].copy_from_slice(&g[o * w..(o + 1) * w]);
    }
    gx
}

impl NarrowKernels for Cpu {
    fn narrow_forward(&self, x: &Tensor, slice: Slice, shape: &[usize]) -> Result<Tensor> {
        dispatch_scalar!(x.dtype(), T => Tensor::from_vec(forward::<T>(x.as_slice::<T>()?, slice), shape, x.device()))
    }

    fn narrow_backward(&self, g: &Tensor, slice: Slice, shape: &[usize]) -> Result<Tensor> {
        dispatch_scalar!(g.dtype(), T => Tensor::from_vec(backward::<T>(g.as_slice::<T>()?, slice), shape, g.device()))
    }
}
