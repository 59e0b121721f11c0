//! Element-wise arithmetic (`add`, `mul`, `scale`). Shapes must match exactly (no
//! broadcasting). Fills and gradient accumulation are [`crate::primitives`].

use super::autocast::promoted;
use super::checks::check_pair;
use super::widen::{via_f32, via_f32_for};
use crate::backend::{kernel_trait, kernels};
use crate::error::Result;
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

kernel_trait! {
    /// Device kernels of the element-wise ops (arguments checked by the caller).
    pub(crate) trait ElementwiseKernels {
        /// `a + b`.
        fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
        /// `a * b`.
        fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
        /// `s * x`, with `s` rounded to the dtype first.
        fn scale(&self, x: &Tensor, s: f64) -> Result<Tensor>;
    }
}

/// `a + b` (same shape, dtype and device; a 16-bit tensor meeting an `f32` one is cast up).
pub fn add(tape: &mut Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a, b) = promoted(tape, a, b)?;
    let (a, b) = (a.as_ref(), b.as_ref());
    let _profile = tape.profile_op("add");
    check_pair(a, b, "add")?;
    let out = match tape.take_known_output(a.shape(), a) {
        Some(known) => known,
        None => {
            let k = kernels(a.device())?;
            via_f32_for(&k, [a, b], a.dtype(), |[a, b]| k.add(a, b))?
        }
    };
    let (ka, kb) = (GradKey::of(a), GradKey::of(b));
    Ok(tape.record("add", &[a, b], out, move |g, grads| {
        grads.accumulate(&ka, g.clone())?;
        grads.accumulate(&kb, g.clone())
    }))
}

/// `a * b` element-wise (same shape, dtype and device; a 16-bit tensor meeting an `f32` one
/// is cast up).
pub fn mul(tape: &mut Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a, b) = promoted(tape, a, b)?;
    let (a, b) = (a.as_ref(), b.as_ref());
    let _profile = tape.profile_op("mul");
    check_pair(a, b, "mul")?;
    let k = kernels(a.device())?;
    let out = via_f32_for(&k, [a, b], a.dtype(), |[a, b]| k.mul(a, b))?;
    let (ka, kb) = (GradKey::of(a), GradKey::of(b));
    let (sa, sb) = (
        b.requires_grad().then(|| a.clone()),
        a.requires_grad().then(|| b.clone()),
    );
    Ok(tape.record("mul", &[a, b], out, move |g, grads| {
        if let Some(b) = sb {
            check_pair(g, &b, "mul")?;
            grads.accumulate(
                &ka,
                via_f32_for(&k, [g, &b], b.dtype(), |[g, b]| k.mul(g, b))?,
            )?;
        }
        if let Some(a) = sa {
            check_pair(g, &a, "mul")?;
            grads.accumulate(
                &kb,
                via_f32_for(&k, [g, &a], a.dtype(), |[g, a]| k.mul(g, a))?,
            )?;
        }
        Ok(())
    }))
}

/// `s * x`.
pub fn scale(tape: &mut Tape, x: &Tensor, s: f64) -> Result<Tensor> {
    let _profile = tape.profile_op("scale");
    let k = kernels(x.device())?;
    let out = via_f32([x], x.dtype(), |[x]| k.scale(x, s))?;
    let kx = GradKey::of(x);
    Ok(tape.record("scale", &[x], out, move |g, grads| {
        grads.accumulate(&kx, via_f32([g], g.dtype(), |[g]| k.scale(g, s))?)
    }))
}
