//! [`Linear`]: a fully connected layer.

use super::Init;
use crate::error::Result;
use crate::ops;
use crate::param::Parameter;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// `x w^T + b` over the last dimension of `x`.
#[derive(Debug)]
pub struct Linear {
    /// Weight `[out, in]`.
    pub weight: Parameter,
    /// Bias `[out]`, if any.
    pub bias: Option<Parameter>,
}
crate::module!(Linear { "weight" => weight, "bias" => bias });

impl Linear {
    /// `cin -> cout` with weights uniform in `+-1 / sqrt(cin)` (PyTorch's bound) and a zero
    /// bias (as DenseNet's and GPT-2's code set it).
    pub fn new(cin: usize, cout: usize, init: &mut Init) -> Result<Self> {
        let bound = 1.0 / (cin as f64).sqrt();
        let weight = init.uniform(&[cout, cin], bound)?;
        Self::from_weight(weight, true, init)
    }

    /// `cin -> cout` with weights drawn from N(0, `std`^2) (GPT-2 uses 0.02), a zero bias if
    /// `bias`.
    pub fn normal(cin: usize, cout: usize, std: f64, bias: bool, init: &mut Init) -> Result<Self> {
        let weight = init.normal(&[cout, cin], std)?;
        Self::from_weight(weight, bias, init)
    }

    fn from_weight(weight: Tensor, bias: bool, init: &mut Init) -> Result<Self> {
        let cout = weight.shape()[0];
        let bias = if bias {
            Some(Parameter::new("bias", init.zeros(&[cout])?))
        } else {
            None
        };
        Ok(Linear {
            weight: Parameter::new("weight", weight),
            bias,
        })
    }

    /// Applies the layer to `[.., in]` (any leading dimensions), giving `[.., out]`.
    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let _scope = self.weight.module_scope();
        let bias = self.bias.as_ref().map(Parameter::tensor);
        let shape = x.shape();
        if shape.len() == 2 {
            return ops::linear(tape, x, self.weight.tensor(), bias);
        }
        let cin = shape.last().copied().unwrap_or(1);
        let rows = x.numel() / cin.max(1);
        let flat = ops::reshape(tape, x, &[rows, cin])?;
        let y = ops::linear(tape, &flat, self.weight.tensor(), bias)?;
        let mut out_shape = shape.to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = self.weight.tensor().shape()[0];
        }
        ops::reshape(tape, &y, &out_shape)
    }
}
