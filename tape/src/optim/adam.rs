//! Adam with bias correction and L2 weight decay, following `torch.optim.Adam` (no AMSGrad) step
//! for step.

use super::{
    by_device_and_dtype, check_non_negative, check_state, gradients_of, ids_with_grad,
    settle_pending, skipped_undo, start_read, states_mut, zeros_like, AdamSlot, FusedUpdate,
    OptimKernels, Optimizer, PendingUpdate, Unsettled,
};
use crate::backend::kernels;
use crate::dtype::Elem;
use crate::error::{Error, Result};
use crate::gradients::Gradients;
use crate::param::Parameter;
use crate::tensor::{Tensor, TensorId};
use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;

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
    state: FxHashMap<TensorId, State>,
    /// The last update of [`Optimizer::queue_if_finite`] until settled, with the parameters it
    /// touched and whether it created their state (undone should it turn out skipped).
    pending: Option<Unsettled<Vec<(TensorId, bool)>>>,
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
            state: FxHashMap::default(),
            pending: None,
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

impl Adam {
    /// Queues one fused update of every parameter with a gradient (skipped on the device when
    /// `found_inf` is set), advancing their step counts. Returns each updated parameter's id
    /// and whether its state was created this step. On an error nothing was updated and the
    /// state is as it was.
    fn update_all(
        &mut self,
        params: &mut [&mut Parameter],
        grads: &Gradients,
        found_inf: Option<&Tensor>,
    ) -> Result<Vec<(TensorId, bool)>> {
        let _profile = crate::profile::scope("adam", crate::profile::Pass::Optimizer);
        check_non_negative(OP, "lr", self.cfg.lr)?;
        // Check every gradient and existing state first, so a bad one leaves all parameters
        // untouched.
        let gs = gradients_of(OP, params, grads, found_inf)?;
        for (p, _) in params.iter().zip(&gs).filter(|(_, g)| g.is_some()) {
            if let Some(s) = self.state.get(&p.tensor().id()) {
                check_state(OP, p, &s.exp_avg)?;
                check_state(OP, p, &s.exp_avg_sq)?;
            }
        }
        let mut touched = Vec::new();
        for (p, _) in params.iter().zip(&gs).filter(|(_, g)| g.is_some()) {
            let id = p.tensor().id();
            let created = match self.state.entry(id) {
                Entry::Occupied(_) => false,
                Entry::Vacant(e) => {
                    let fresh =
                        zeros_like(p.tensor()).and_then(|m| Ok((m, zeros_like(p.tensor())?)));
                    match fresh {
                        Ok((exp_avg, exp_avg_sq)) => {
                            e.insert(State {
                                step: 0,
                                exp_avg,
                                exp_avg_sq,
                            });
                            true
                        }
                        Err(err) => {
                            self.undo(&touched);
                            return Err(err);
                        }
                    }
                }
            };
            if let Some(s) = self.state.get_mut(&id) {
                s.step += 1;
            }
            touched.push((id, created));
        }
        match self.launch(params, &gs, found_inf) {
            Ok(()) => Ok(touched),
            Err(err) => {
                self.undo(&touched);
                Err(err)
            }
        }
    }

    /// One fused kernel call per device and dtype over the parameters with a gradient.
    fn launch(
        &mut self,
        params: &mut [&mut Parameter],
        gs: &[Option<&Tensor>],
        found_inf: Option<&Tensor>,
    ) -> Result<()> {
        let ids = ids_with_grad(params, gs);
        let states = states_mut(OP, &mut self.state, &ids)?;
        let slots: Vec<AdamSlot<'_>> = params
            .iter_mut()
            .zip(gs)
            .filter_map(|(p, g)| g.map(|g| (p, g)))
            .zip(states)
            .map(|((p, g), s)| AdamSlot {
                step: s.step,
                p: p.tensor_mut(),
                g,
                m: &mut s.exp_avg,
                v: &mut s.exp_avg_sq,
            })
            .collect();
        for (device, mut group) in
            by_device_and_dtype(slots, |s| (s.g.device().clone(), s.g.dtype()))
        {
            kernels(&device)?.optim_multi(FusedUpdate::Adam(&self.cfg, &mut group), found_inf)?;
        }
        Ok(())
    }

    /// Takes back a step that did not happen: step counts go back, states it made are dropped.
    fn undo(&mut self, touched: &[(TensorId, bool)]) {
        for &(id, created) in touched {
            if created {
                self.state.remove(&id);
            } else if let Some(s) = self.state.get_mut(&id) {
                s.step = s.step.saturating_sub(1);
            }
        }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &mut [&mut Parameter], grads: &Gradients) -> Result<()> {
        self.settle()?;
        self.update_all(params, grads, None).map(|_| ())
    }

    fn step_if_finite(
        &mut self,
        params: &mut [&mut Parameter],
        grads: &Gradients,
        found_inf: &Tensor,
    ) -> Result<bool> {
        super::checked_after_queueing(self, params, grads, found_inf)
    }

    fn queue_if_finite(
        &mut self,
        params: &mut [&mut Parameter],
        grads: &Gradients,
        found_inf: &Tensor,
    ) -> Result<PendingUpdate> {
        self.settle()?;
        let touched = self.update_all(params, grads, Some(found_inf))?;
        let update = start_read(found_inf)?;
        self.pending = Some(Unsettled {
            update: update.clone(),
            undo: touched,
        });
        Ok(update)
    }

    fn settle(&mut self) -> Result<()> {
        if let Some(touched) = settle_pending(&mut self.pending)? {
            self.undo(&touched);
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
        let skipped = skipped_undo(&self.pending).map_or(&[][..], Vec::as_slice);
        let mut out = Vec::new();
        for p in params {
            let id = p.tensor().id();
            let Some(s) = self.state.get(&id) else {
                continue;
            };
            // A skipped, unsettled update: state it created is not there yet, and the step it
            // counted did not happen.
            let (undo_step, unmade) = match skipped.iter().find(|(t, _)| *t == id) {
                Some(&(_, created)) => (1, created),
                None => (0, false),
            };
            if unmade {
                continue;
            }
            let step = Tensor::from_f64(
                &[s.step.saturating_sub(undo_step) as f64],
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
        self.settle()?;
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
