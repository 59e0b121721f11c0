//! Argument checks shared by several ops.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

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
        return Err(Error::shape(
            op,
            format!("{name} must have shape [{len}], got {:?}", v.shape()),
        ));
    }
    Ok(())
}

/// [`check_vector`] for a normalisation's parameter: beside a 16-bit `x` it may be `f32` (mixed
/// precision's master weights), otherwise it has `x`'s dtype.
pub(crate) fn check_param(
    op: &'static str,
    name: &str,
    x: &Tensor,
    v: &Tensor,
    len: usize,
) -> Result<()> {
    if x.dtype().is_half() && v.dtype() == crate::dtype::DType::F32 {
        x.device().check_same(v.device(), op)?;
        return check_vector(op, name, v, v, len);
    }
    check_vector(op, name, x, v, len)
}

/// Fails unless `a` and `b` share dtype, device and shape.
pub(crate) fn check_pair(a: &Tensor, b: &Tensor, op: &'static str) -> Result<()> {
    a.check_compatible(b, op)?;
    a.check_same_shape(b, op)
}

/// Fails with [`Error::Backward`] unless the output gradient `g` has `expected` shape and the
/// dtype and device of `like` (a tensor the op saved).
pub(crate) fn check_grad(
    op: &'static str,
    g: &Tensor,
    expected: &[usize],
    like: Option<&Tensor>,
) -> Result<()> {
    if g.shape() != expected {
        return Err(Error::Backward(format!(
            "{op}: output gradient of shape {:?}, expected {expected:?}",
            g.shape()
        )));
    }
    match like {
        Some(t) => t.check_compatible(g, op),
        None => Ok(()),
    }
}
