//! Dropout. The mask is a pure function of the tape's random stream `(seed, counter)` and the
//! element index ([`crate::rng::uniform`]), so a recompute under the same context replays it and
//! backward regenerates it instead of keeping it in memory: the closure saves no buffer.

use super::widen::via_f32;
use crate::backend::{kernel_trait, kernels};
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

kernel_trait! {
    /// Device kernels of dropout.
    pub(crate) trait DropoutKernels {
        /// `x` with the mask of stream (`seed`, `counter`) applied: `out[i] = x[i] / (1 - p)` where
        /// `uniform(seed, counter, i) >= p` (the factor rounded to the dtype first), else 0.
        fn dropout_mask(&self, x: &Tensor, seed: u64, counter: u64, p: f64) -> Result<Tensor>;
    }
}

/// Zeroes each element of `x` with probability `p` and scales the kept ones by `1 / (1 - p)`.
///
/// In training, takes the next stream `(seed, counter)` of the tape and keeps element `i` iff
/// `uniform(seed, counter, i) >= p`. In eval mode or with `p == 0` it is the identity (a view of
/// `x` with a new id) and takes no stream. `p` outside `[0, 1)` is an
/// [`Error::InvalidArgument`].
pub fn dropout(tape: &mut Tape, x: &Tensor, p: f64) -> Result<Tensor> {
    let _profile = tape.profile_op("dropout");
    if !(0.0..1.0).contains(&p) {
        return Err(Error::invalid(
            "dropout",
            format!("p must lie in [0, 1), got {p}"),
        ));
    }
    let kx = GradKey::of(x);
    if !tape.is_training() || p == 0.0 {
        let out = x.view_as(x.shape())?;
        return Ok(tape.record("dropout", &[x], out, move |g, grads| {
            grads.accumulate(&kx, g.clone())
        }));
    }
    let (seed, counter) = tape.next_random_stream();
    let k = kernels(x.device())?;
    let out = match tape.take_known_output(x.shape(), x) {
        Some(known) => known,
        None => via_f32([x], x.dtype(), |[x]| k.dropout_mask(x, seed, counter, p))?,
    };
    Ok(tape.record("dropout", &[x], out, move |g, grads| {
        let gx = via_f32([g], g.dtype(), |[g]| k.dropout_mask(g, seed, counter, p))?;
        grads.accumulate(&kx, gx)
    }))
}
