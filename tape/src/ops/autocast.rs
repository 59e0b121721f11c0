//! The precision policy's casts (see [`crate::precision`]): recorded on the tape, so an `f32`
//! parameter cast down for a low-precision op receives its gradient in `f32`.

use super::cast::cast;
use crate::dtype::DType;
use crate::error::Result;
use crate::tape::Tape;
use crate::tensor::Tensor;
use std::borrow::Cow;

/// `x` in the policy's low dtype when the policy has one and `x` is `f32` (a low-precision
/// op's input or weight); `x` itself otherwise.
pub(crate) fn to_low<'t>(tape: &mut Tape, x: &'t Tensor) -> Result<Cow<'t, Tensor>> {
    match tape.precision().low_dtype() {
        Some(low) if x.dtype() == DType::F32 => Ok(Cow::Owned(cast(tape, x, low)?)),
        _ => Ok(Cow::Borrowed(x)),
    }
}

/// [`to_low`] of an optional tensor.
pub(crate) fn to_low_opt<'t>(
    tape: &mut Tape,
    x: Option<&'t Tensor>,
) -> Result<Option<Cow<'t, Tensor>>> {
    x.map(|x| to_low(tape, x)).transpose()
}

/// `x` in `f32` when a low-precision policy is on and `x` is 16-bit (an `f32` op's input);
/// `x` itself otherwise.
pub(crate) fn to_f32<'t>(tape: &mut Tape, x: &'t Tensor) -> Result<Cow<'t, Tensor>> {
    if tape.precision().low_dtype().is_some() && x.dtype().is_half() {
        Ok(Cow::Owned(cast(tape, x, DType::F32)?))
    } else {
        Ok(Cow::Borrowed(x))
    }
}

/// `a` and `b` in the wider of their dtypes (autocast's `promote`): a 16-bit tensor meeting an
/// `f32` one is cast up; equal dtypes pass unchanged.
pub(crate) fn promoted<'t>(
    tape: &mut Tape,
    a: &'t Tensor,
    b: &'t Tensor,
) -> Result<(Cow<'t, Tensor>, Cow<'t, Tensor>)> {
    let wider = |d: DType| if d.is_half() { 0 } else { d.size_in_bytes() };
    let target = if wider(a.dtype()) >= wider(b.dtype()) {
        a.dtype()
    } else {
        b.dtype()
    };
    let up = |tape: &mut Tape, t: &'t Tensor| -> Result<Cow<'t, Tensor>> {
        if t.dtype() == target || !t.dtype().is_half() {
            Ok(Cow::Borrowed(t))
        } else {
            Ok(Cow::Owned(cast(tape, t, target)?))
        }
    };
    Ok((up(tape, a)?, up(tape, b)?))
}
