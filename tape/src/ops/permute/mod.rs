//! Permuting dimensions (`permute`, and `transpose` of two of them): a copy into the new layout,
//! recorded (the engine's tensors are contiguous, so there are no strided views). Backward
//! permutes the gradient back with the inverse permutation; nothing is saved. At most
//! [`MAX_PERMUTE_DIMS`] dimensions.

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

use super::checks::check_grad;
use crate::backend::{kernel_trait, kernels};
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

const OP: &str = "permute";

/// Most dimensions a permuted tensor may have.
pub const MAX_PERMUTE_DIMS: usize = 8;

kernel_trait! {
    /// Device kernels of `permute`.
    pub(crate) trait PermuteKernels {
        /// `x` with its dimensions reordered: dimension `i` of the result is dimension `perm[i]` of
        /// `x` (a valid permutation of at most [`MAX_PERMUTE_DIMS`] dimensions, checked by the caller).
        fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor>;
    }
}

/// `x` with its dimensions reordered, as a new tensor: dimension `i` of the result is dimension
/// `dims[i]` of `x` (PyTorch's `permute`). `dims` must name every dimension of `x` once, and
/// `x` may have at most [`MAX_PERMUTE_DIMS`] dimensions ([`Error::InvalidArgument`] otherwise).
pub fn permute(tape: &mut Tape, x: &Tensor, dims: &[usize]) -> Result<Tensor> {
    let _profile = tape.profile_op(OP);
    check(x, dims)?;
    record_permute(tape, x, dims)
}

/// `x` with dimensions `dim0` and `dim1` swapped, as a new tensor (a [`permute`]).
pub fn transpose(tape: &mut Tape, x: &Tensor, dim0: usize, dim1: usize) -> Result<Tensor> {
    let _profile = tape.profile_op("transpose");
    let rank = x.rank();
    if dim0 >= rank || dim1 >= rank {
        return Err(Error::invalid(
            "transpose",
            format!(
                "dimensions {dim0} and {dim1} for a tensor of shape {:?}",
                x.shape()
            ),
        ));
    }
    let mut dims: Vec<usize> = (0..rank).collect();
    dims.swap(dim0, dim1);
    check(x, &dims)?;
    record_permute(tape, x, &dims)
}

fn check(x: &Tensor, dims: &[usize]) -> Result<()> {
    let rank = x.rank();
    if rank > MAX_PERMUTE_DIMS {
        return Err(Error::invalid(
            OP,
            format!(
                "at most {MAX_PERMUTE_DIMS} dimensions, got shape {:?}",
                x.shape()
            ),
        ));
    }
    let mut seen = [false; MAX_PERMUTE_DIMS];
    let valid = dims.len() == rank
        && dims
            .iter()
            .all(|&d| d < rank && !std::mem::replace(&mut seen[d], true));
    if !valid {
        return Err(Error::invalid(
            OP,
            format!(
                "{dims:?} is not a permutation of the {rank} dimensions of shape {:?}",
                x.shape()
            ),
        ));
    }
    Ok(())
}

fn record_permute(tape: &mut Tape, x: &Tensor, dims: &[usize]) -> Result<Tensor> {
    let k = kernels(x.device())?;
    let out = k.permute(x, dims)?;
    let mut inverse = vec![0; dims.len()];
    for (i, &d) in dims.iter().enumerate() {
        inverse[d] = i;
    }
    let kx = GradKey::of(x);
    let out_shape = out.shape().to_vec();
    Ok(tape.record(OP, &[x], out, move |g, grads| {
        check_grad(OP, g, &out_shape, None)?;
        grads.accumulate(&kx, k.permute(g, &inverse)?)
    }))
}

/// For a permutation `perm` of a tensor of `shape`: the result's shape, and for each of its
/// dimensions the stride (in elements) of the matching dimension of the input.
pub(crate) fn layout(shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut strides = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    (
        perm.iter().map(|&p| shape[p]).collect(),
        perm.iter().map(|&p| strides[p]).collect(),
    )
}
