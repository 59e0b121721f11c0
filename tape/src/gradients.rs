//! [`Gradients`]: gradients keyed by tensor id, as the backward pass produces them. Any crate can
//! read and accumulate here; together with [`crate::Tape::record`] this is the engine's whole
//! extension surface (the checkpoint crate needs nothing else).

use crate::backend::kernels;
use crate::error::{Error, Result};
use crate::primitives::PrimitiveKernels;
use crate::tensor::{Tensor, TensorId};
use rustc_hash::FxHashMap;

/// What a backward closure needs to know about an op input to hand it a gradient: its id, whether
/// it wants one and its shape. Holding a key does not keep the tensor's buffer alive.
#[derive(Clone, Debug)]
pub struct GradKey {
    id: TensorId,
    requires_grad: bool,
    shape: Vec<usize>,
}

impl GradKey {
    /// The key of `t`.
    pub fn of(t: &Tensor) -> Self {
        GradKey {
            id: t.id(),
            requires_grad: t.requires_grad(),
            shape: t.shape().to_vec(),
        }
    }

    /// The tensor's id.
    pub fn id(&self) -> TensorId {
        self.id
    }

    /// Whether the tensor wants a gradient.
    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
}

/// Watches the gradients of a backward pass as they are written: called with a tensor's id and
/// its gradient (the sum so far) after every contribution added into it (see
/// [`crate::Tape::observe_gradients`]). An error stops backward and is returned by it.
pub type GradObserver = Box<dyn FnMut(TensorId, &Tensor) -> Result<()> + Send>;

/// Gradients by tensor id.
#[derive(Default)]
pub struct Gradients {
    map: FxHashMap<TensorId, Tensor>,
    observer: Option<GradObserver>,
}

impl std::fmt::Debug for Gradients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gradients")
            .field("map", &self.map)
            .field("observed", &self.observer.is_some())
            .finish()
    }
}

impl Gradients {
    /// No gradients.
    pub fn new() -> Self {
        Self::default()
    }

    /// The gradient of `t`, if one was computed.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }

    /// The gradient of the tensor with id `id`.
    pub fn get_id(&self, id: TensorId) -> Option<&Tensor> {
        self.map.get(&id)
    }

    /// Removes and returns the gradient of `id`.
    pub fn take(&mut self, id: TensorId) -> Option<Tensor> {
        self.map.remove(&id)
    }

    /// The stored gradient of the tensor behind `key`, taken out so that a kernel can add the
    /// next contribution into it in place (no new buffer, no separate add) and hand the sum back
    /// with [`Gradients::accumulate`], which stores it as it is in the now empty slot. `None`
    /// when the tensor wants no gradient or has none yet.
    pub fn take_for_accumulation(&mut self, key: &GradKey) -> Option<Tensor> {
        if !key.requires_grad {
            return None;
        }
        self.map.remove(&key.id)
    }

    /// Adds `grad` into the gradient of the tensor behind `key` (ignored if it wants none).
    pub fn accumulate(&mut self, key: &GradKey, grad: Tensor) -> Result<()> {
        if !key.requires_grad {
            return Ok(());
        }
        if grad.shape() != key.shape() {
            return Err(Error::Backward(format!(
                "gradient of shape {:?} for a tensor of shape {:?}",
                grad.shape(),
                key.shape()
            )));
        }
        self.accumulate_id(key.id, grad)
    }

    /// Adds `grad` into the gradient stored under `id`; the first one is stored as it is. The
    /// observer, if one is set, then sees the sum.
    pub fn accumulate_id(&mut self, id: TensorId, grad: Tensor) -> Result<()> {
        let stored = match self.map.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let existing = e.into_mut();
                existing.check_compatible(&grad, "accumulate")?;
                existing.check_same_shape(&grad, "accumulate")?;
                kernels(existing.device())?.add_assign(existing, &grad)?;
                existing
            }
            std::collections::hash_map::Entry::Vacant(e) => e.insert(grad),
        };
        match &mut self.observer {
            Some(observe) => observe(id, stored),
            None => Ok(()),
        }
    }

    /// Makes `observer` see every contribution added from now on (replacing any other).
    pub fn set_observer(&mut self, observer: GradObserver) {
        self.observer = Some(observer);
    }

    /// Removes the observer, if one is set, and returns it.
    pub fn take_observer(&mut self) -> Option<GradObserver> {
        self.observer.take()
    }

    /// Adds every gradient of `other` into `self`.
    pub fn merge(&mut self, other: Gradients) -> Result<()> {
        for (id, g) in other.map {
            self.accumulate_id(id, g)?;
        }
        Ok(())
    }

    /// Number of stored gradients.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no gradient is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The stored (id, gradient) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&TensorId, &Tensor)> {
        self.map.iter()
    }
}
