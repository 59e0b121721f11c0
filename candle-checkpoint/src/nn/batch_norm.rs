//! [`BatchNorm`]: batch normalisation over dimension 1 that updates its running statistics once
//! per step even inside a checkpointed segment (candle-nn's `BatchNorm` updates them again when
//! the segment is recomputed).

use crate::phase::is_recomputing;
use candle_core::{DType, Device, Module, Result, Tensor, Var};

/// Batch normalisation over dimension 1 of a tensor of rank 2 or more (training: batch
/// statistics; evaluation: running statistics), with an affine weight and bias.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    /// Per-channel scale (a variable: it gets a gradient).
    pub weight: Var,
    /// Per-channel shift (a variable).
    pub bias: Var,
    /// Running mean, updated in training outside the recompute phase.
    pub running_mean: Var,
    /// Running (unbiased) variance, updated like the mean.
    pub running_var: Var,
    /// Weight of the new batch's statistics in the running ones.
    pub momentum: f64,
    /// Added to the variance before the square root.
    pub eps: f64,
}

impl BatchNorm {
    /// A batch norm of `channels` channels: weight 1, bias 0, running mean 0 and variance 1,
    /// momentum 0.1, eps 1e-5.
    pub fn new(channels: usize, dtype: DType, device: &Device) -> Result<Self> {
        Ok(BatchNorm {
            weight: Var::ones(channels, dtype, device)?,
            bias: Var::zeros(channels, dtype, device)?,
            running_mean: Var::zeros(channels, dtype, device)?,
            running_var: Var::ones(channels, dtype, device)?,
            momentum: 0.1,
            eps: 1e-5,
        })
    }

    /// `x` with channels first and everything else flattened, as `(channels, rest)`.
    fn channels_first(x: &Tensor) -> Result<Tensor> {
        x.transpose(0, 1)?.flatten_from(1)?.contiguous()
    }

    /// Back from [`BatchNorm::channels_first`] to the shape of `x`.
    fn back(y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let t = x.transpose(0, 1)?;
        y.reshape(t.dims())?.transpose(0, 1)?.contiguous()
    }

    /// Applies the per-channel affine map to `(channels, rest)` values.
    fn affine(&self, y: &Tensor) -> Result<Tensor> {
        let w = self.weight.as_tensor().reshape(((), 1))?;
        let b = self.bias.as_tensor().reshape(((), 1))?;
        y.broadcast_mul(&w)?.broadcast_add(&b)
    }

    /// Training forward: batch statistics, and the running ones updated unless recomputing.
    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        let xt = Self::channels_first(x)?;
        let n = xt.dim(1)?;
        let mean = xt.mean_keepdim(1)?;
        let centred = xt.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(1)?;
        if !is_recomputing() {
            let m = self.momentum;
            let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))?
                + (mean.detach().flatten_all()? * m)?)?;
            let unbiased = if n > 1 {
                n as f64 / (n - 1) as f64
            } else {
                1.0
            };
            let new_var = ((self.running_var.as_tensor() * (1.0 - m))?
                + (var.detach().flatten_all()? * (m * unbiased))?)?;
            self.running_mean.set(&new_mean)?;
            self.running_var.set(&new_var)?;
        }
        let y = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Self::back(&self.affine(&y)?, x)
    }

    /// Evaluation forward: running statistics.
    fn forward_eval(&self, x: &Tensor) -> Result<Tensor> {
        let xt = Self::channels_first(x)?;
        let mean = self.running_mean.as_tensor().reshape(((), 1))?;
        let std = (self.running_var.as_tensor() + self.eps)?
            .sqrt()?
            .reshape(((), 1))?;
        let y = xt.broadcast_sub(&mean)?.broadcast_div(&std)?;
        Self::back(&self.affine(&y)?, x)
    }
}

impl BatchNorm {
    /// Training (`train`: batch statistics, running ones updated outside the recompute phase)
    /// or evaluation forward. (candle's `ModuleT` comes with [`Module`], in training mode.)
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if x.rank() < 2 {
            candle_core::bail!("batch norm needs rank 2 or more, got {:?}", x.shape());
        }
        if train {
            self.forward_train(x)
        } else {
            self.forward_eval(x)
        }
    }
}

/// Training mode (`forward_t(x, true)`).
impl Module for BatchNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, true)
    }
}
