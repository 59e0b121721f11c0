//! Element-wise maps of the CPU kernels: parallel over elements for large buffers.

use crate::dtype::Elem;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Below this many elements, element-wise kernels stay on one thread.
pub(crate) const PAR_MIN: usize = 1 << 15;

/// `out[i] = f(x[i])` as a new tensor on `x`'s device.
pub(crate) fn map_unary<T: Elem>(x: &Tensor, f: impl Fn(T) -> T + Sync) -> Result<Tensor> {
    let xs = x.as_slice::<T>()?;
    let out: Vec<T> = if xs.len() >= PAR_MIN {
        xs.par_iter().map(|&v| f(v)).collect()
    } else {
        xs.iter().map(|&v| f(v)).collect()
    };
    Tensor::from_vec(out, x.shape(), x.device())
}

/// `out[i] = f(a[i], b[i])` as a new tensor shaped like `a` (shapes checked by the caller).
pub(crate) fn map_binary<T: Elem>(
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(T, T) -> T + Sync,
) -> Result<Tensor> {
    let (xs, ys) = (a.as_slice::<T>()?, b.as_slice::<T>()?);
    let out: Vec<T> = if xs.len() >= PAR_MIN {
        xs.par_iter().zip(ys).map(|(&x, &y)| f(x, y)).collect()
    } else {
        xs.iter().zip(ys).map(|(&x, &y)| f(x, y)).collect()
    };
    Tensor::from_vec(out, a.shape(), a.device())
}
