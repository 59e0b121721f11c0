//! Element-wise arithmetic: `add`, `mul`, `scale`, and the untaped helpers gradient accumulation
//! uses.

use super::{check_pair, map_binary, map_unary};
use crate::error::Result;
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

/// `a + b` (equal shapes).
pub fn add(tape: &mut Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = add_detached(a, b)?;
    let (ka, kb) = (GradKey::of(a), GradKey::of(b));
    Ok(tape.record(&[a, b], out, move |g, grads| {
        grads.accumulate(&ka, g.clone())?;
        grads.accumulate(&kb, g.clone())
    }))
}

/// `a * b` element-wise (equal shapes).
pub fn mul(tape: &mut Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = mul_detached(a, b)?;
    let (ka, kb) = (GradKey::of(a), GradKey::of(b));
    let (sa, sb) = (
        b.requires_grad().then(|| a.clone()),
        a.requires_grad().then(|| b.clone()),
    );
    Ok(tape.record(&[a, b], out, move |g, grads| {
        if let Some(b) = sb {
            let ga = mul_detached(g, &b)?;
            grads.accumulate(&ka, ga)?;
        }
        if let Some(a) = sa {
            let gb = mul_detached(g, &a)?;
            grads.accumulate(&kb, gb)?;
        }
        Ok(())
    }))
}

/// `s * x`.
pub fn scale(tape: &mut Tape, x: &Tensor, s: f64) -> Result<Tensor> {
    let out = scale_detached(x, s)?;
    let kx = GradKey::of(x);
    Ok(tape.record(&[x], out, move |g, grads| {
        grads.accumulate(&kx, scale_detached(g, s)?)
    }))
}

/// `a + b` without recording.
pub(crate) fn add_detached(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_pair(a, b, "add")?;
    #[cfg(feature = "cuda")]
    if a.device().is_cuda() {
        return cuda::binary(crate::device::cuda::K::Add, a, b);
    }
    dispatch_float!(a.dtype(), T => map_binary::<T>(a, b, |x, y| x + y))
}

/// `a * b` without recording.
fn mul_detached(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_pair(a, b, "mul")?;
    #[cfg(feature = "cuda")]
    if a.device().is_cuda() {
        return cuda::binary(crate::device::cuda::K::Mul, a, b);
    }
    dispatch_float!(a.dtype(), T => map_binary::<T>(a, b, |x, y| x * y))
}

/// `s * x` without recording.
pub(crate) fn scale_detached(x: &Tensor, s: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return cuda::scale(x, s);
    }
    dispatch_float!(x.dtype(), T => { let s = <T as crate::Elem>::of(s); map_unary::<T>(x, |v| v * s) })
}

/// `acc += g` in place (copy-on-write if `acc`'s buffer is shared).
pub(crate) fn add_assign(acc: &mut Tensor, g: &Tensor) -> Result<()> {
    check_pair(acc, g, "accumulate")?;
    #[cfg(feature = "cuda")]
    if acc.device().is_cuda() {
        return cuda::add_assign(acc, g);
    }
    dispatch_float!(g.dtype(), T => cpu::add_assign::<T>(acc.make_mut::<T>()?, g.as_slice::<T>()?));
    Ok(())
}
