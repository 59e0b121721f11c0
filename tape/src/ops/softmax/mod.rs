//! Softmax and log-softmax over the last dimension, numerically stable (each row's maximum is
//! subtracted before exponentiating; sums in `f64`). Backward uses the saved output only:
//! `gx = y (g - sum(g y))` for softmax, `gx = g - exp(y) sum(g)` for log-softmax.
//!
//! With [`SoftmaxOptions::causal`], element `(i, j)` of each matrix of the last two dimensions
//! is masked for `j > i` (a decoder's attention scores, without a separate mask op): it takes no
//! part in its row's normalisation, its output is 0 (softmax) or `-inf` (log-softmax) and its
//! input gradient 0, as if the scores had been filled with `-inf` first.

use super::autocast::to_f32;
use super::checks::check_grad;
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

/// The rows of one softmax: `rows` rows of `d` elements; with `causal > 0`, row `r` keeps only
/// its first `min(r % causal + 1, d)` elements (`causal` rows per matrix); `log` for
/// log-softmax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rows {
    pub(crate) rows: usize,
    pub(crate) d: usize,
    pub(crate) causal: usize,
    pub(crate) log: bool,
}

impl Rows {
    /// How many leading elements of row `r` take part (the rest are masked).
    pub(crate) fn valid(&self, r: usize) -> usize {
        if self.causal == 0 {
            self.d
        } else {
            (r % self.causal + 1).min(self.d)
        }
    }
}

kernel_trait! {
    /// Device kernels of softmax and log-softmax (shapes checked by the caller).
    pub(crate) trait SoftmaxKernels {
        /// `softmax(x)` (or `log_softmax(x)` with `rows.log`) of every row, masked entries 0 (or
        /// `-inf`).
        fn softmax_forward(&self, x: &Tensor, rows: Rows) -> Result<Tensor>;
        /// The input gradient from the output gradient `g` and the saved output `y`; 0 at masked
        /// entries.
        fn softmax_backward(&self, g: &Tensor, y: &Tensor, rows: Rows) -> Result<Tensor>;
    }
}

/// Options of [`softmax_with`] and [`log_softmax_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftmaxOptions {
    /// Mask the upper triangle of each matrix of the last two dimensions (`j > i`), as a causal
    /// attention mask does; needs at least 2 dimensions.
    pub causal: bool,
}

/// `exp(x) / sum(exp(x))` along the last dimension (at least one dimension).
pub fn softmax(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    run(tape, "softmax", x, SoftmaxOptions::default(), false)
}

/// `x - log(sum(exp(x)))` along the last dimension (at least one dimension).
pub fn log_softmax(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    run(tape, "log_softmax", x, SoftmaxOptions::default(), true)
}

/// [`softmax`] with options (a causal mask).
pub fn softmax_with(tape: &mut Tape, x: &Tensor, options: SoftmaxOptions) -> Result<Tensor> {
    run(tape, "softmax", x, options, false)
}

/// [`log_softmax`] with options (a causal mask).
pub fn log_softmax_with(tape: &mut Tape, x: &Tensor, options: SoftmaxOptions) -> Result<Tensor> {
    run(tape, "log_softmax", x, options, true)
}

fn run(
    tape: &mut Tape,
    op: &'static str,
    x: &Tensor,
    options: SoftmaxOptions,
    log: bool,
) -> Result<Tensor> {
    let x = &*to_f32(tape, x)?;
    let _profile = tape.profile_op(op);
    let shape = x.shape();
    let d = match shape.last() {
        Some(&d) => d,
        None => {
            return Err(Error::shape(
                op,
                "needs at least one dimension, got a 0-d tensor",
            ))
        }
    };
    let causal = if options.causal {
        match shape {
            [.., s, _] => *s,
            _ => {
                return Err(Error::shape(
                    op,
                    format!("a causal mask needs at least 2 dimensions, got {shape:?}"),
                ))
            }
        }
    } else {
        0
    };
    let rows = Rows {
        rows: x.numel().checked_div(d).unwrap_or(0),
        d,
        causal,
        log,
    };
    let k = kernels(x.device())?;
    let out = match tape.take_known_output(shape, x) {
        Some(known) => known,
        None => via_f32([x], x.dtype(), |[x]| k.softmax_forward(x, rows))?,
    };
    let kx = GradKey::of(x);
    let saved = tape.needs_grad(&[x]).then(|| out.clone());
    Ok(tape.record(op, &[x], out, move |g, grads| {
        let y = saved.ok_or_else(|| Error::Backward(format!("{op}: output not saved")))?;
        check_grad(op, g, y.shape(), Some(&y))?;
        let gx = via_f32([g, &y], y.dtype(), |[g, y]| k.softmax_backward(g, y, rows))?;
        grads.accumulate(&kx, gx)
    }))
}
