//! [`ParamUpdate`]: an optimizer that updates one parameter at a time from its whole gradient,
//! as a [fused step](crate::fused) needs, with [`Sgd`] (momentum and weight decay optional) and
//! [`AdamW`], whose arithmetic is candle-nn's `optim::SGD` and `optim::AdamW`'s op for op, so the
//! parameters come out bit-identical.

use candle_core::{Result, Tensor, TensorId, Var};
use candle_nn::optim::ParamsAdamW;
use std::collections::HashMap;

/// A per-parameter optimizer: a [`crate::fused::FusedUpdate`] calls [`ParamUpdate::update`]
/// once per parameter and step, as soon as the parameter's whole gradient is known.
pub trait ParamUpdate: Send {
    /// Prepares the state of `var` (called once per parameter, as the fused update is made).
    fn add_param(&mut self, var: &Var) -> Result<()>;

    /// Called once as each step begins, before any [`ParamUpdate::update`] of the step.
    fn begin_step(&mut self);

    /// Updates `var` from `grad`, its gradient for this step (all contributions summed).
    fn update(&mut self, var: &Var, grad: Tensor) -> Result<()>;

    /// The learning rate.
    fn learning_rate(&self) -> f64;

    /// Sets the learning rate (for the next updates).
    fn set_learning_rate(&mut self, lr: f64);
}

/// Stochastic gradient descent with optional momentum and weight decay, PyTorch's formulation
/// (no dampening, no Nesterov): `g += weight_decay * p`, `buf = momentum * buf + g` (`buf = g`
/// the first time), `p -= lr * buf`. Without momentum and weight decay it is candle-nn's
/// `optim::SGD`, op for op.
#[derive(Debug, Clone)]
pub struct Sgd {
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    buffers: HashMap<TensorId, Tensor>,
}

impl Sgd {
    /// Plain SGD at learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        Sgd {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
            buffers: HashMap::new(),
        }
    }

    /// With momentum `momentum` (its buffer is made at a parameter's first update).
    pub fn with_momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    /// With L2 weight decay `weight_decay` added to the gradient.
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// The gradient after weight decay and momentum.
    fn direction(&mut self, var: &Var, grad: Tensor) -> Result<Tensor> {
        let g = if self.weight_decay != 0.0 {
            (grad + (var.as_tensor() * self.weight_decay)?)?
        } else {
            grad
        };
        if self.momentum == 0.0 {
            return Ok(g);
        }
        let buf = match self.buffers.remove(&var.id()) {
            Some(b) => ((b * self.momentum)? + g)?,
            None => g,
        };
        self.buffers.insert(var.id(), buf.clone());
        Ok(buf)
    }
}

impl ParamUpdate for Sgd {
    fn add_param(&mut self, _: &Var) -> Result<()> {
        Ok(())
    }

    fn begin_step(&mut self) {}

    fn update(&mut self, var: &Var, grad: Tensor) -> Result<()> {
        let g = self.direction(var, grad)?;
        var.set(&var.sub(&(g * self.lr)?)?)
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
}

/// The two moments of one parameter.
#[derive(Debug)]
struct Moments {
    first: Var,
    second: Var,
}

/// AdamW with decoupled weight decay: candle-nn's `optim::AdamW` op for op (moments made at
/// zero as each parameter is added, the step count advanced as each step begins).
#[derive(Debug)]
pub struct AdamW {
    params: ParamsAdamW,
    step_t: usize,
    moments: HashMap<TensorId, Moments>,
}

impl AdamW {
    /// AdamW with candle-nn's settings `params`.
    pub fn new(params: ParamsAdamW) -> Self {
        AdamW {
            params,
            step_t: 0,
            moments: HashMap::new(),
        }
    }

    /// The bias corrections of the current step, `(1 / (1 - beta1^t), 1 / (1 - beta2^t))`.
    fn scales(&self) -> (f64, f64) {
        let t = self.step_t as i32;
        (
            1f64 / (1f64 - self.params.beta1.powi(t)),
            1f64 / (1f64 - self.params.beta2.powi(t)),
        )
    }
}

impl ParamUpdate for AdamW {
    fn add_param(&mut self, var: &Var) -> Result<()> {
        let zeros = || Var::zeros(var.shape(), var.dtype(), var.device());
        let m = Moments {
            first: zeros()?,
            second: zeros()?,
        };
        self.moments.insert(var.id(), m);
        Ok(())
    }

    fn begin_step(&mut self) {
        self.step_t += 1;
    }

    fn update(&mut self, theta: &Var, g: Tensor) -> Result<()> {
        let p = &self.params;
        let (scale_m, scale_v) = self.scales();
        let mv = self.moments.get(&theta.id()).ok_or_else(|| {
            candle_core::Error::msg("AdamW: a parameter was updated that was never added")
        })?;
        let (m, v) = (&mv.first, &mv.second);
        let next_m = ((m.as_tensor() * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
        let next_v = ((v.as_tensor() * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
        drop(g);
        let m_hat = (&next_m * scale_m)?;
        let v_hat = (&next_v * scale_v)?;
        let next_theta = (theta.as_tensor() * (1f64 - p.lr * p.weight_decay))?;
        let adjusted_grad = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
        let next_theta = (next_theta - (adjusted_grad * p.lr)?)?;
        m.set(&next_m)?;
        v.set(&next_v)?;
        theta.set(&next_theta)
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }
}
