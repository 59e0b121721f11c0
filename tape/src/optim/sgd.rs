//! Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight decay,
//! following `torch.optim.SGD` step for step.

use super::{
    by_device_and_dtype, check_non_negative, check_state, gradients_of, ids_with_grad,
    settle_pending, skipped_undo, start_read, states_mut, zeros_like, FusedUpdate, OptimKernels,
    Optimizer, PendingUpdate, SgdSlot, Unsettled,
};
use crate::backend::kernels;
use crate::dtype::Elem;
use crate::error::{Error, Result};
use crate::gradients::Gradients;
use crate::param::Parameter;
use crate::tensor::{Tensor, TensorId};
use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;

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
    buffers: FxHashMap<TensorId, Tensor>,
    /// The last update of [`Optimizer::queue_if_finite`] until settled, with the momentum
    /// buffers it created (dropped should it turn out skipped: they must start fresh).
    pending: Option<Unsettled<Vec<TensorId>>>,
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
            buffers: FxHashMap::default(),
            pending: None,
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

impl Sgd {
    /// Queues one fused update of every parameter with a gradient (skipped on the device when
    /// `found_inf` is set). Returns the parameters whose momentum buffer this step created. On
    /// an error nothing was updated and no buffer was created.
    fn update_all(
        &mut self,
        params: &mut [&mut Parameter],
        grads: &Gradients,
        found_inf: Option<&Tensor>,
    ) -> Result<Vec<TensorId>> {
        let _profile = crate::profile::scope("sgd", crate::profile::Pass::Optimizer);
        check_non_negative(OP, "lr", self.cfg.lr)?;
        // Check every gradient and existing state first, so a bad one leaves all parameters
        // untouched.
        let gs = gradients_of(OP, params, grads, found_inf)?;
        let momentum = self.cfg.momentum != 0.0;
        let mut created = Vec::new();
        if momentum {
            for (p, _) in params.iter().zip(&gs).filter(|(_, g)| g.is_some()) {
                if let Some(buf) = self.buffers.get(&p.tensor().id()) {
                    check_state(OP, p, buf)?;
                }
            }
            for (p, _) in params.iter().zip(&gs).filter(|(_, g)| g.is_some()) {
                let id = p.tensor().id();
                if let Entry::Vacant(e) = self.buffers.entry(id) {
                    match zeros_like(p.tensor()) {
                        Ok(z) => {
                            e.insert(z);
                            created.push(id);
                        }
                        Err(err) => {
                            self.forget(&created);
                            return Err(err);
                        }
                    }
                }
            }
        }
        match self.launch(params, &gs, &created, found_inf) {
            Ok(()) => Ok(created),
            Err(err) => {
                self.forget(&created);
                Err(err)
            }
        }
    }

    /// One fused kernel call per device and dtype over the parameters with a gradient.
    fn launch(
        &mut self,
        params: &mut [&mut Parameter],
        gs: &[Option<&Tensor>],
        created: &[TensorId],
        found_inf: Option<&Tensor>,
    ) -> Result<()> {
        let ids = ids_with_grad(params, gs);
        let mut bufs: Vec<Option<&mut Tensor>> = if self.cfg.momentum != 0.0 {
            states_mut(OP, &mut self.buffers, &ids)?
                .into_iter()
                .map(Some)
                .collect()
        } else {
            ids.iter().map(|_| None).collect()
        };
        let slots: Vec<SgdSlot<'_>> = params
            .iter_mut()
            .zip(gs)
            .filter_map(|(p, g)| g.map(|g| (p, g)))
            .zip(bufs.iter_mut())
            .map(|((p, g), buf)| {
                let first = created.contains(&p.tensor().id());
                SgdSlot {
                    p: p.tensor_mut(),
                    g,
                    buf: buf.take().map(|b| (b, first)),
                }
            })
            .collect();
        for (device, mut group) in
            by_device_and_dtype(slots, |s| (s.g.device().clone(), s.g.dtype()))
        {
            kernels(&device)?.optim_multi(FusedUpdate::Sgd(&self.cfg, &mut group), found_inf)?;
        }
        Ok(())
    }

    /// Drops the momentum buffers of `ids` (made by a step that did not happen).
    fn forget(&mut self, ids: &[TensorId]) {
        for id in ids {
            self.buffers.remove(id);
        }
    }
}

impl Optimizer for Sgd {
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
        let created = self.update_all(params, grads, Some(found_inf))?;
        let update = start_read(found_inf)?;
        self.pending = Some(Unsettled {
            update: update.clone(),
            undo: created,
        });
        Ok(update)
    }

    fn settle(&mut self) -> Result<()> {
        // Should the device have skipped the update, buffers made for it must start fresh.
        if let Some(created) = settle_pending(&mut self.pending)? {
            self.forget(&created);
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
        let unmade = skipped_undo(&self.pending).map_or(&[][..], Vec::as_slice);
        params
            .iter()
            .filter(|p| !unmade.contains(&p.tensor().id()))
            .filter_map(|p| {
                let buf = self.buffers.get(&p.tensor().id())?;
                Some((format!("{}.momentum_buffer", p.name()), buf.clone()))
            })
            .collect()
    }

    fn load_state_dict(&mut self, params: &[&Parameter], state: &[(String, Tensor)]) -> Result<()> {
        self.settle()?;
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
