//! Adam with bias correction and L2 weight decay, following `torch.optim.Adam` (no AMSGrad) step
//! for step.

use super::{check_non_negative, check_state, grad_of, zeros_like, Optimizer};
use crate::backend::kernels;
use crate::dtype::Elem;
use crate::error::{Error, Result};
use crate::gradients::Gradients;
use crate::param::Parameter;
use crate::tensor::{Tensor, TensorId};
use std::collections::hash_map::Entry;
use std::collections::HashMap;

const OP: &str = "Adam";

/// Hyper-parameters of [`Adam`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate (`>= 0`).
    pub lr: f64,
    /// Decay of the first moment, in `[0, 1)`.
    pub beta1: f64,
    /// Decay of the second moment, in `[0, 1)`.
    pub beta2: f64,
    /// Added to the denominator (`>= 0`).
    pub eps: f64,
    /// L2 penalty added to the gradient (`>= 0`).
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    /// PyTorch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

#[derive(Debug)]
struct State {
    step: u64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// Adam: `g += wd * p`; `m = b1 * m + (1 - b1) * g`; `v = b2 * v + (1 - b2) * g^2`;
/// `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`, with a step count `t` per
/// parameter.
#[derive(Debug)]
pub struct Adam {
    cfg: AdamConfig,
    state: HashMap<TensorId, State>,
}

impl Adam {
    /// An Adam optimizer; fails on a negative or non-finite hyper-parameter or a beta outside
    /// `[0, 1)`.
    pub fn new(cfg: AdamConfig) -> Result<Self> {
        check_non_negative(OP, "lr", cfg.lr)?;
        check_non_negative(OP, "eps", cfg.eps)?;
        check_non_negative(OP, "weight_decay", cfg.weight_decay)?;
        for (name, b) in [("beta1", cfg.beta1), ("beta2", cfg.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::invalid(
                    OP,
                    format!("{name} must lie in [0, 1), got {b}"),
                ));
            }
        }
        Ok(Adam {
            cfg,
            state: HashMap::new(),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    /// Bytes of optimizer state (both moments of every parameter seen).
    pub fn state_bytes(&self) -> usize {
        self.state
            .values()
            .map(|s| s.exp_avg.size_in_bytes() + s.exp_avg_sq.size_in_bytes())
            .sum()
    }
}

/// One Adam update of `p` in place at step `t` (1-based).
pub(super) fn update<T: Elem>(
    cfg: &AdamConfig,
    t: u64,
    p: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
) {
    let bc1 = 1.0 - cfg.beta1.powf(t as f64);
    let bc2_sqrt = (1.0 - cfg.beta2.powf(t as f64)).sqrt();
    let step_size = cfg.lr / bc1;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let mut g = g.f64();
        if cfg.weight_decay != 0.0 {
            g += cfg.weight_decay * p.f64();
        }
        *m = T::of(cfg.beta1 * m.f64() + (1.0 - cfg.beta1) * g);
        *v = T::of(cfg.beta2 * v.f64() + (1.0 - cfg.beta2) * g * g);
        let denom = v.f64().sqrt() / bc2_sqrt + cfg.eps;
        *p = T::of(p.f64() - step_size * (m.f64() / denom));
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &mut [&mut Parameter], grads: &Gradients) -> Result<()> {
        let _profile = crate::profile::scope("adam", crate::profile::Pass::Optimizer);
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
            let s = match self.state.entry(id) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(State {
                    step: 0,
                    exp_avg: zeros_like(p.tensor())?,
                    exp_avg_sq: zeros_like(p.tensor())?,
                }),
            };
            check_state(OP, p, &s.exp_avg)?;
            check_state(OP, p, &s.exp_avg_sq)?;
            s.step += 1;
            kernels(g.device())?.adam_update(
                &self.cfg,
                s.step,
                p.tensor_mut(),
                g,
                &mut s.exp_avg,
                &mut s.exp_avg_sq,
            )?;
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
        let mut out = Vec::new();
        for p in params {
            let Some(s) = self.state.get(&p.tensor().id()) else {
                continue;
            };
            let step = Tensor::from_f64(
                &[s.step as f64],
                &[1],
                crate::DType::F64,
                p.tensor().device(),
            );
            out.push((format!("{}.exp_avg", p.name()), s.exp_avg.clone()));
            out.push((format!("{}.exp_avg_sq", p.name()), s.exp_avg_sq.clone()));
            if let Ok(step) = step {
                out.push((format!("{}.step", p.name()), step));
            }
        }
        out
    }

    fn load_state_dict(&mut self, params: &[&Parameter], state: &[(String, Tensor)]) -> Result<()> {
        let mut loaded = Vec::new();
        for p in params {
            let slots = (
                super::saved_slot(OP, p, "exp_avg", state)?,
                super::saved_slot(OP, p, "exp_avg_sq", state)?,
                super::saved_slot(OP, p, "step", state)?,
            );
            match slots {
                (Some(exp_avg), Some(exp_avg_sq), Some(step)) => {
                    let step = step.scalar()? as u64;
                    loaded.push((
                        p.tensor().id(),
                        State {
                            step,
                            exp_avg,
                            exp_avg_sq,
                        },
                    ));
                }
                (None, None, None) => {}
                _ => {
                    return Err(Error::invalid(
                        OP,
                        format!("{}: saved Adam state is incomplete", p.name()),
                    ))
                }
            }
        }
        self.state.extend(loaded);
        Ok(())
    }
}
