//! Optimizers over named [`crate::Parameter`]s with run-time shapes: [`Sgd`] and [`Adam`], both
//! PyTorch's update rules exactly. Parameters are updated in place (they keep their id), state
//! is keyed by the parameter's [`crate::TensorId`] and lives on the parameter's device, so it
//! counts in that device's memory accounting.

use crate::error::{Error, Result};
use crate::gradients::Gradients;
use crate::param::Parameter;
use crate::tensor::Tensor;

mod adam;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod sgd;

pub use adam::{Adam, AdamConfig};
pub use sgd::{Sgd, SgdConfig};

/// Device kernels of the optimizer updates: one parameter updated in place (its id stays).
pub(crate) trait OptimKernels {
    /// One SGD update of `p` from `g`; `buf` is the momentum buffer and whether it is new.
    fn sgd_update(
        &self,
        cfg: &SgdConfig,
        p: &mut Tensor,
        g: &Tensor,
        buf: Option<(&mut Tensor, bool)>,
    ) -> Result<()>;
    /// One Adam update of `p` from `g` at step `t` (1-based), with moments `m` and `v`.
    fn adam_update(
        &self,
        cfg: &AdamConfig,
        t: u64,
        p: &mut Tensor,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
    ) -> Result<()>;
}

/// Updates parameters from their gradients.
pub trait Optimizer {
    /// One update of every parameter that has a gradient in `grads` (the others are skipped).
    fn step(&mut self, params: &mut [&mut Parameter], grads: &Gradients) -> Result<()>;
    /// The learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate (a schedule); a negative or non-finite one fails at the next step.
    fn set_lr(&mut self, lr: f64);
    /// The state of every parameter in `params` that has any, named `<parameter>.<slot>`
    /// (PyTorch's slot names: `momentum_buffer`, `exp_avg`, `exp_avg_sq`, `step`), for training
    /// checkpoints.
    fn state_dict(&self, params: &[&Parameter]) -> Vec<(String, Tensor)>;
    /// Restores state saved by [`Optimizer::state_dict`] for `params` (matched by name, values
    /// converted to each parameter's dtype); parameters without saved state start fresh.
    fn load_state_dict(&mut self, params: &[&Parameter], state: &[(String, Tensor)]) -> Result<()>;
}

/// Finds `<name>.<slot>` in `state` and converts it to a tensor like `p` (checked shape).
fn saved_slot(
    op: &'static str,
    p: &Parameter,
    slot: &str,
    state: &[(String, Tensor)],
) -> Result<Option<Tensor>> {
    let key = format!("{}.{slot}", p.name());
    let Some((_, t)) = state.iter().find(|(k, _)| *k == key) else {
        return Ok(None);
    };
    if slot != "step" && t.shape() != p.tensor().shape() {
        return Err(Error::shape(
            op,
            format!(
                "{key}: saved state of shape {:?} for a parameter of shape {:?}",
                t.shape(),
                p.tensor().shape()
            ),
        ));
    }
    let t = Tensor::from_f64(
        &t.try_to_f64_vec()?,
        t.shape(),
        p.tensor().dtype(),
        p.tensor().device(),
    )?;
    Ok(Some(t))
}

/// Fails unless `value` is finite and `>= 0`.
fn check_non_negative(op: &'static str, name: &str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("{name} must be finite and >= 0, got {value}"),
        ))
    }
}

/// The gradient of `p` in `grads`, checked against the parameter (shape, dtype, device).
fn grad_of<'g>(
    op: &'static str,
    p: &Parameter,
    grads: &'g Gradients,
) -> Result<Option<&'g Tensor>> {
    let Some(g) = grads.get(p.tensor()) else {
        return Ok(None);
    };
    p.tensor().check_compatible(g, op)?;
    if g.shape() != p.tensor().shape() {
        return Err(Error::shape(
            op,
            format!(
                "{}: gradient of shape {:?} for a parameter of shape {:?}",
                p.name(),
                g.shape(),
                p.tensor().shape()
            ),
        ));
    }
    Ok(Some(g))
}

/// A zero state tensor like `p` (same shape, dtype and device).
fn zeros_like(p: &Tensor) -> Result<Tensor> {
    Tensor::zeros(p.shape(), p.dtype(), p.device())
}

/// Fails unless the state tensor `s` still fits the parameter `p`.
fn check_state(op: &'static str, p: &Parameter, s: &Tensor) -> Result<()> {
    if s.shape() != p.tensor().shape() || s.dtype() != p.tensor().dtype() {
        return Err(Error::shape(
            op,
            format!(
                "{}: optimizer state of shape {:?} ({:?}) for a parameter of shape {:?} ({:?})",
                p.name(),
                s.shape(),
                s.dtype(),
                p.tensor().shape(),
                p.tensor().dtype()
            ),
        ));
    }
    Ok(())
}
