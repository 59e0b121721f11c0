//! Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight decay,
//! following `torch.optim.SGD` step for step.

use super::{check_non_negative, check_state, grad_of, zeros_like, Optimizer};
use crate::backend::kernels;
use crate::dtype::Elem;
use crate::error::{Error, Result};
use crate::gradients::Gradients;
use crate::param::Parameter;
use crate::tensor::{Tensor, TensorId};
use std::collections::hash_map::Entry;
use std::collections::HashMap;

const OP: &str = "Sgd";

/// Hyper-parameters of [`Sgd`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate (`>= 0`).
    pub lr: f64,
    /// Momentum factor (`>= 0`; 0 disables momentum and its state).
    pub momentum: f64,
    /// Dampening of the momentum (0 for Nesterov).
    pub dampening: f64,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
    /// L2 penalty added to the gradient (`>= 0`).
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    /// Plain SGD with learning rate 1e-3 (PyTorch's default).
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

/// SGD: `g += wd * p`; `buf = g` on the first step, else `buf = m * buf + (1 - dampening) * g`;
/// `g = g + m * buf` (Nesterov) or `g = buf`; `p -= lr * g`.
#[derive(Debug)]
pub struct Sgd {
    cfg: SgdConfig,
    buffers: HashMap<TensorId, Tensor>,
}

impl Sgd {
    /// An SGD optimizer; fails on a negative or non-finite hyper-parameter, or on Nesterov
    /// without momentum or with dampening.
    pub fn new(cfg: SgdConfig) -> Result<Self> {
        check_non_negative(OP, "lr", cfg.lr)?;
        check_non_negative(OP, "momentum", cfg.momentum)?;
        check_non_negative(OP, "weight_decay", cfg.weight_decay)?;
        if !cfg.dampening.is_finite() {
            return Err(Error::invalid(
                OP,
                format!("dampening must be finite, got {}", cfg.dampening),
            ));
        }
        if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
            return Err(Error::invalid(
                OP,
                "Nesterov momentum needs momentum > 0 and dampening 0",
            ));
        }
        Ok(Sgd {
            cfg,
            buffers: HashMap::new(),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }

    /// Bytes of optimizer state (momentum buffers).
    pub fn state_bytes(&self) -> usize {
        self.buffers.values().map(Tensor::size_in_bytes).sum()
    }
}

/// One SGD update of `p` in place; `buf` is the momentum buffer and whether it is new.
pub(super) fn update<T: Elem>(
    cfg: &SgdConfig,
    p: &mut [T],
    g: &[T],
    mut buf: Option<(&mut [T], bool)>,
) {
    for (i, (p, &g)) in p.iter_mut().zip(g).enumerate() {
        let mut d = g.f64();
        if cfg.weight_decay != 0.0 {
            d += cfg.weight_decay * p.f64();
        }
        if let Some((buf, first)) = buf.as_mut() {
            let b = if *first {
                d
            } else {
                cfg.momentum * buf[i].f64() + (1.0 - cfg.dampening) * d
            };
            buf[i] = T::of(b);
            let b = buf[i].f64();
            d = if cfg.nesterov {
                d + cfg.momentum * b
            } else {
                b
            };
        }
        *p = T::of(p.f64() - cfg.lr * d);
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut [&mut Parameter], grads: &Gradients) -> Result<()> {
        let _profile = crate::profile::scope("sgd", crate::profile::Pass::Optimizer);
        check_non_negative(OP, "lr", self.cfg.lr)?;
        // Check every gradient first, so a bad one leaves all parameters untouched.
        for p in params.iter() {
            grad_of(OP, p, grads)?;
        }
        for p in params.iter_mut() {
            let Some(g) = grad_of(OP, p, grads)? else {
                continue;
            };
            let id = p.tensor().id();
            let buf = if self.cfg.momentum != 0.0 {
                let (buf, first) = match self.buffers.entry(id) {
                    Entry::Occupied(e) => (e.into_mut(), false),
                    Entry::Vacant(e) => (e.insert(zeros_like(p.tensor())?), true),
                };
                check_state(OP, p, buf)?;
                Some((buf, first))
            } else {
                None
            };
            kernels(g.device())?.sgd_update(&self.cfg, p.tensor_mut(), g, buf)?;
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.cfg.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    fn state_dict(&self, params: &[&Parameter]) -> Vec<(String, Tensor)> {
        params
            .iter()
            .filter_map(|p| {
                let buf = self.buffers.get(&p.tensor().id())?;
                Some((format!("{}.momentum_buffer", p.name()), buf.clone()))
            })
            .collect()
    }

    fn load_state_dict(&mut self, params: &[&Parameter], state: &[(String, Tensor)]) -> Result<()> {
        let mut loaded = Vec::new();
        for p in params {
            if let Some(buf) = super::saved_slot(OP, p, "momentum_buffer", state)? {
                loaded.push((p.tensor().id(), buf));
            }
        }
        self.buffers.extend(loaded);
        Ok(())
    }
}
