//! [`LayerNorm`]: layer normalisation over the last dimension.

use super::Init;
use crate::error::Result;
use crate::ops;
use crate::param::Parameter;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// Layer normalisation over the last dimension with a scale (initialised to 1) and a shift
/// (initialised to 0), PyTorch's `nn.LayerNorm(d)`.
#[derive(Debug)]
pub struct LayerNorm {
    /// Scale `[d]`.
    pub weight: Parameter,
    /// Shift `[d]`.
    pub bias: Parameter,
    /// Added to the variance (PyTorch's default 1e-5).
    pub eps: f64,
}
crate::module!(LayerNorm { "weight" => weight, "bias" => bias });

impl LayerNorm {
    /// Layer norm over `d` features.
    pub fn new(d: usize, init: &mut Init) -> Result<Self> {
        Ok(LayerNorm {
            weight: Parameter::new("weight", init.ones(&[d])?),
            bias: Parameter::new("bias", init.zeros(&[d])?),
            eps: 1e-5,
        })
    }

    /// Normalises `x` over its last dimension.
    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let _scope = self.weight.module_scope();
        ops::layer_norm(
            tape,
            x,
            Some(self.weight.tensor()),
            Some(self.bias.tensor()),
            self.eps,
        )
    }
}
