//! 16-bit tensors through the `f32` kernels. Every kernel computes in `f32` or `f64`; an op
//! handed 16-bit tensors gives its kernel `f32` copies ([`wide`]) and rounds the kernel's
//! results back once ([`narrow`]). What an op saves for backward stays 16-bit (the memory mixed
//! precision is for); the copies live only during the kernel call and are charged to the
//! device while they do, on a meta device as well (the copies are made by the cast kernel, so a
//! meta run charges what a CPU run allocates). A backend whose GEMM kernels take 16-bit
//! operands as they are (CUDA: cuBLAS with `f32` compute; [`Kernels::takes_half_operands`])
//! gets them without copies through the `*_for` forms.

use super::cast::cast_values;
use crate::backend::Kernels;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;
use std::borrow::Cow;

/// `x` as the kernels take it: an `f32` copy of a 16-bit tensor, `x` itself otherwise.
pub(crate) fn wide(x: &Tensor) -> Result<Cow<'_, Tensor>> {
    Ok(if x.dtype().is_half() {
        Cow::Owned(cast_values(x, DType::F32)?)
    } else {
        Cow::Borrowed(x)
    })
}

/// [`wide`] of an optional tensor.
pub(crate) fn wide_opt(x: Option<&Tensor>) -> Result<Option<Cow<'_, Tensor>>> {
    x.map(wide).transpose()
}

/// A kernel's result `y` in `dtype`: rounded once when `dtype` is 16-bit (and `y` is not),
/// `y` itself otherwise.
pub(crate) fn narrow(y: Tensor, dtype: DType) -> Result<Tensor> {
    if dtype.is_half() && y.dtype() != dtype {
        cast_values(&y, dtype)
    } else {
        Ok(y)
    }
}

/// [`narrow`] of an optional result.
pub(crate) fn narrow_opt(y: Option<Tensor>, dtype: DType) -> Result<Option<Tensor>> {
    y.map(|y| narrow(y, dtype)).transpose()
}

/// `f` (an `f32`/`f64` kernel with one result) on [`wide`] copies of `xs`, its result
/// [`narrow`]ed to `dtype`.
pub(crate) fn via_f32<const N: usize>(
    xs: [&Tensor; N],
    dtype: DType,
    f: impl FnOnce([&Tensor; N]) -> Result<Tensor>,
) -> Result<Tensor> {
    let wides = xs.iter().map(|x| wide(x)).collect::<Result<Vec<_>>>()?;
    narrow(f(std::array::from_fn(|i| wides[i].as_ref()))?, dtype)
}

/// [`wide`], unless `k` takes 16-bit operands as they are: then `x` itself.
pub(crate) fn wide_for<'a>(k: &Kernels, x: &'a Tensor) -> Result<Cow<'a, Tensor>> {
    if k.takes_half_operands() {
        Ok(Cow::Borrowed(x))
    } else {
        wide(x)
    }
}

/// [`wide_for`] of an optional tensor.
pub(crate) fn wide_opt_for<'a>(
    k: &Kernels,
    x: Option<&'a Tensor>,
) -> Result<Option<Cow<'a, Tensor>>> {
    x.map(|x| wide_for(k, x)).transpose()
}

/// [`via_f32`], unless `k` takes 16-bit operands as they are: then `f` on `xs` themselves (its
/// result already in their dtype).
pub(crate) fn via_f32_for<const N: usize>(
    k: &Kernels,
    xs: [&Tensor; N],
    dtype: DType,
    f: impl FnOnce([&Tensor; N]) -> Result<Tensor>,
) -> Result<Tensor> {
    if k.takes_half_operands() {
        narrow(f(xs)?, dtype)
    } else {
        via_f32(xs, dtype, f)
    }
}
