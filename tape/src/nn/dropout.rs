//! [`Dropout`]: a module form of [`crate::ops::dropout`].

use crate::error::{Error, Result};
use crate::ops;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// Zeroes each element with probability `p` in training (the tape's mode) and scales the rest
/// by `1 / (1 - p)`; the identity in eval mode. It holds no state.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    p: f64,
}

impl Dropout {
    /// Dropout with probability `p` in `[0, 1)` ([`Error::InvalidArgument`] otherwise).
    pub fn new(p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid(
                "Dropout",
                format!("p must lie in [0, 1), got {p}"),
            ));
        }
        Ok(Dropout { p })
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// Applies dropout (nothing recorded when `p == 0`: `x` itself is returned).
    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        if self.p == 0.0 {
            return Ok(x.clone());
        }
        ops::dropout(tape, x, self.p)
    }
}
