//! [`Dropout`]: inverted dropout whose masks come from the adapter's replayable random stream, so
//! that a checkpointed segment's recompute draws the masks of its first pass.

use crate::rng;
use candle_core::{DType, ModuleT, Result, Tensor};

/// Inverted dropout: in training each element is zeroed with probability `p` and the others are
/// scaled by `1 / (1 - p)`; in evaluation it is the identity.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    p: f64,
}

impl Dropout {
    /// Dropout with probability `p`; fails unless `0 <= p < 1`.
    pub fn new(p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            candle_core::bail!("dropout probability must be in [0, 1), got {p}");
        }
        Ok(Dropout { p })
    }

    /// The mask for `x`: `0` or `1 / (1 - p)` per element, drawn from the current thread's
    /// stream.
    pub fn mask(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.elem_count();
        let keep = 1.0 / (1.0 - self.p);
        let draws = (0..n).map(|_| if rng::next_f64() < self.p { 0.0 } else { keep });
        let mask = match x.dtype() {
            DType::F64 => Tensor::from_vec(draws.collect::<Vec<f64>>(), x.shape(), x.device())?,
            other => Tensor::from_vec(
                draws.map(|v| v as f32).collect::<Vec<f32>>(),
                x.shape(),
                x.device(),
            )?
            .to_dtype(other)?,
        };
        Ok(mask)
    }
}

impl ModuleT for Dropout {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        x.mul(&self.mask(x)?)
    }
}
