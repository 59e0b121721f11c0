//! The ops a CNN needs, forward and backward, one folder each: `mod.rs` holds the API and the
//! backward rule, `cpu.rs` the CPU kernels. Every op takes the tape explicitly and records its
//! backward closure only when the tape records and an input wants a gradient.

mod batch_norm;
mod batch_norm_relu;
mod concat;
mod conv2d;
mod cross_entropy;
mod dropout;
mod elementwise;
mod lanes;
mod linear;
mod pool;
mod reduce;
mod relu;
mod reshape;

// conv2d, linear, pooling:
pub use conv2d::{conv2d, Conv2dOptions};
pub use linear::linear;
pub use pool::{avg_pool2d, global_avg_pool, max_pool2d};

// batch norm, dropout, concat, cross-entropy:
pub use batch_norm::{batch_norm2d, BatchNormOptions, RunningStats};
pub use batch_norm_relu::batch_norm_relu;
pub use concat::concat;
pub use cross_entropy::cross_entropy;
pub use dropout::dropout;

pub(crate) use elementwise::add_assign;
pub use elementwise::{add, mul, scale};
pub use reduce::{mean, sum};
pub use relu::relu;
pub use reshape::reshape;

/// A CUDA tensor filled with `value` (the CUDA path of [`Tensor::full`]).
#[cfg(feature = "cuda")]
pub(crate) fn cuda_full(
    shape: &[usize],
    value: f64,
    dtype: crate::DType,
    device: &crate::Device,
) -> Result<Tensor> {
    elementwise::cuda::full(shape, value, dtype, device)
}

use crate::dtype::Elem;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Below this many elements, element-wise kernels stay on one thread.
const PAR_MIN: usize = 1 << 15;

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

/// Fails unless `v` (a bias, a batch-norm weight...) shares `x`'s dtype and device and has
/// shape `[len]`.
pub(crate) fn check_vector(
    op: &'static str,
    name: &str,
    x: &Tensor,
    v: &Tensor,
    len: usize,
) -> Result<()> {
    x.check_compatible(v, op)?;
    if v.shape() != [len] {
        return Err(crate::Error::shape(
            op,
            format!("{name} must have shape [{len}], got {:?}", v.shape()),
        ));
    }
    Ok(())
}

/// What an op `y = f(x, weight) + bias` records: its inputs and grad keys, and what its
/// backward keeps: `x` only if the weight wants a gradient, the weight only if `x` does.
pub(crate) struct WeightedOp<'t> {
    pub(crate) inputs: Vec<&'t Tensor>,
    pub(crate) kx: crate::GradKey,
    pub(crate) kw: crate::GradKey,
    pub(crate) kb: Option<crate::GradKey>,
    pub(crate) saved_x: Option<Tensor>,
    pub(crate) saved_w: Option<Tensor>,
}

impl<'t> WeightedOp<'t> {
    pub(crate) fn new(
        tape: &crate::Tape,
        x: &'t Tensor,
        weight: &'t Tensor,
        bias: Option<&'t Tensor>,
    ) -> Self {
        let mut inputs = vec![x, weight];
        inputs.extend(bias);
        let record = tape.needs_grad(&inputs);
        WeightedOp {
            kx: crate::GradKey::of(x),
            kw: crate::GradKey::of(weight),
            kb: bias.map(crate::GradKey::of),
            saved_x: (record && weight.requires_grad()).then(|| x.clone()),
            saved_w: (record && x.requires_grad()).then(|| weight.clone()),
            inputs,
        }
    }
}

/// Fails unless `a` and `b` share dtype, device and shape.
pub(crate) fn check_pair(a: &Tensor, b: &Tensor, op: &'static str) -> Result<()> {
    a.check_compatible(b, op)?;
    a.check_same_shape(b, op)
}
