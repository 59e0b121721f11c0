//! Slicing along one dimension: `narrow` (one slice) and `split` (consecutive slices that cover
//! the dimension, each a `narrow` of its own). Each slice is a copy, recorded; backward writes
//! the slice's gradient into a zero gradient of the input's shape. Nothing is saved.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod meta;

use super::checks::check_grad;
use crate::backend::{kernel_trait, kernels};
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

const OP: &str = "narrow";

/// A slice `start..start + len` of the middle dimension of a tensor viewed as `[outer, size,
/// inner]` (the dimensions before, the sliced one, and those after).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slice {
    pub(crate) outer: usize,
    pub(crate) size: usize,
    pub(crate) inner: usize,
    pub(crate) start: usize,
    pub(crate) len: usize,
}

kernel_trait! {
    /// Device kernels of `narrow`.
    pub(crate) trait NarrowKernels {
        /// The slice of `x`, as a tensor of `shape`.
        fn narrow_forward(&self, x: &Tensor, slice: Slice, shape: &[usize]) -> Result<Tensor>;
        /// A tensor of `shape` (the input's) that is zero outside the slice and `g` inside it.
        fn narrow_backward(&self, g: &Tensor, slice: Slice, shape: &[usize]) -> Result<Tensor>;
    }
}

/// Elements `start..start + len` of dimension `dim` of `x`, as a new tensor (PyTorch's `narrow`,
/// but a copy). `dim` must be a dimension of `x` and the range must lie inside it
/// ([`Error::InvalidArgument`] otherwise).
pub fn narrow(tape: &mut Tape, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let _profile = tape.profile_op(OP);
    let shape = x.shape();
    let Some(&size) = shape.get(dim) else {
        return Err(Error::invalid(
            OP,
            format!("dimension {dim} of a tensor of shape {shape:?}"),
        ));
    };
    if start.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::invalid(
            OP,
            format!("elements {start}..{start}+{len} of dimension {dim} of size {size}"),
        ));
    }
    let slice = Slice {
        outer: shape[..dim].iter().product(),
        size,
        inner: shape[dim + 1..].iter().product(),
        start,
        len,
    };
    let mut out_shape = shape.to_vec();
    out_shape[dim] = len;
    let k = kernels(x.device())?;
    let out = k.narrow_forward(x, slice, &out_shape)?;
    let kx = GradKey::of(x);
    Ok(tape.record(OP, &[x], out, move |g, grads| {
        check_grad(OP, g, &out_shape, None)?;
        grads.accumulate(&kx, k.narrow_backward(g, slice, kx.shape())?)
    }))
}

/// `x` cut along dimension `dim` into consecutive slices of `sizes` elements, which must add up
/// to the dimension's size ([`Error::Shape`] otherwise): PyTorch's `split` with a list of sizes,
/// but copies. Each slice is a [`narrow`].
pub fn split(tape: &mut Tape, x: &Tensor, dim: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
    let Some(&size) = x.shape().get(dim) else {
        return Err(Error::invalid(
            "split",
            format!("dimension {dim} of a tensor of shape {:?}", x.shape()),
        ));
    };
    if sizes.iter().sum::<usize>() != size {
        return Err(Error::shape(
            "split",
            format!(
                "sizes {sizes:?} do not add up to dimension {dim} of shape {:?}",
                x.shape()
            ),
        ));
    }
    let mut start = 0;
    sizes
        .iter()
        .map(|&len| {
            let part = narrow(tape, x, dim, start, len);
            start += len;
            part
        })
        .collect()
}
