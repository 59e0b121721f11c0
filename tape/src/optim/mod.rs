//! Optimizers over named [`crate::Parameter`]s with run-time shapes: [`Sgd`] and [`Adam`], both
//! PyTorch's update rules exactly. Parameters are updated in place (they keep their id), state
//! is keyed by the parameter's [`crate::TensorId`] and lives on the parameter's device, so it
//! counts in that device's memory accounting.
//!
//! A step is fused over all parameters, like PyTorch's `foreach` / `fused` optimizers: one
//! kernel call updates every parameter of a device and dtype (one launch per step for a model
//! on one device), on the CPU as one parallel pass over all tensors (split into chunks), on
//! CUDA as one launch over device arrays of addresses and lengths (the CUDA kernels have not
//! run on a GPU yet). Results are bit for bit those of updating one tensor at a time: the same
//! per-element rule runs on every element. [`Optimizer::step_if_finite`] makes the update
//! conditional on a device flag (the device skips it), so a training step can queue its update
//! before reading anything back.
//!
//! Whether such an update was applied is known when the flag reaches the host. Two ways to ask:
//!
//! - [`Optimizer::step_if_finite`] reads the flag at once (one blocking sync) and returns it:
//!   the synchronous check.
//! - [`Optimizer::queue_if_finite`] returns a [`PendingUpdate`] without reading anything: the
//!   flag is copied to the host asynchronously ([`crate::ops::PendingScalar`]: pinned host memory
//!   and an event on CUDA; already on the host on the CPU) and [`PendingUpdate::applied`] reads
//!   it later, waiting only if the copy is not done yet. The optimizer keeps the update
//!   *unsettled* until then: host-side state that depends on whether it applied ([`Adam`]'s
//!   step counts, the momentum buffers an update creates) is put right ([`Optimizer::settle`])
//!   before the next update is queued at the latest, so a steady-state training step queues
//!   its update with no host sync at all (the previous step's copy is long done by then). The
//!   device state (parameters, moments, momentum) needs no undo: a skipped update never
//!   touched it. [`Optimizer::state_dict`] reports the state as settled (it reads the pending
//!   flag, waiting if needed).
//!
//! [`LossScaler`] ([`loss_scale`]) is dynamic loss scaling for low-precision training
//! (PyTorch's `GradScaler`): backward seeded with a scale, the gradients unscaled and checked,
//! and the update made conditional on them with [`Optimizer::step_if_finite`].

use crate::backend::kernel_trait;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gradients::Gradients;
use crate::ops::PendingScalar;
use crate::param::Parameter;
use crate::tensor::{Tensor, TensorId};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::HashSet;

mod adam;
mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod loss_scale;
mod meta;
mod sgd;

pub use adam::{Adam, AdamConfig};
pub use loss_scale::{LossScaleError, LossScaler, LossScalerConfig, LossScalerState};
pub use sgd::{Sgd, SgdConfig};

/// One parameter of a fused SGD update: the parameter (updated in place, its id stays), its
/// gradient, and its momentum buffer with whether the buffer is new this step.
pub(crate) struct SgdSlot<'a> {
    pub(crate) p: &'a mut Tensor,
    pub(crate) g: &'a Tensor,
    pub(crate) buf: Option<(&'a mut Tensor, bool)>,
}

/// One parameter of a fused Adam update: its step count `step` (1-based, this step included),
/// the parameter, its gradient and both moments.
pub(crate) struct AdamSlot<'a> {
    pub(crate) step: u64,
    pub(crate) p: &'a mut Tensor,
    pub(crate) g: &'a Tensor,
    pub(crate) m: &'a mut Tensor,
    pub(crate) v: &'a mut Tensor,
}

/// The slots of one fused kernel call (all on one device, of one dtype) with their rule's
/// hyper-parameters.
pub(crate) enum FusedUpdate<'s, 'a> {
    /// One SGD update of every slot.
    Sgd(&'s SgdConfig, &'s mut [SgdSlot<'a>]),
    /// One Adam update of every slot.
    Adam(&'s AdamConfig, &'s mut [AdamSlot<'a>]),
}

impl FusedUpdate<'_, '_> {
    /// The first slot's gradient (its device and dtype are every slot's); `None` when there is
    /// no slot (nothing to do).
    pub(crate) fn first_grad(&self) -> Option<&Tensor> {
        match self {
            FusedUpdate::Sgd(_, slots) => slots.first().map(|s| s.g),
            FusedUpdate::Adam(_, slots) => slots.first().map(|s| s.g),
        }
    }
}

kernel_trait! {
    /// Device kernels of the optimizer updates: every slot (all on this device, of one dtype)
    /// updated in one kernel call, or none of them when `found_inf` (one element, on this device)
    /// holds a non-zero value. Slots that do not fit (dtype, device) are an error before any update.
    pub(crate) trait OptimKernels {
        /// One update of every slot of `update`.
        fn optim_multi(&self, update: FusedUpdate<'_, '_>, found_inf: Option<&Tensor>) -> Result<()>;
    }
}

/// Updates parameters from their gradients.
pub trait Optimizer {
    /// One update of every parameter that has a gradient in `grads` (the others are skipped).
    fn step(&mut self, params: &mut [&mut Parameter], grads: &Gradients) -> Result<()>;
    /// One update like [`Optimizer::step`] that the device skips when `found_inf` holds a
    /// non-zero value: a one-element tensor on the parameters' device (any dtype), such as
    /// [`crate::ops::non_finite`] makes from the loss and the gradients. [`Sgd`] and [`Adam`]
    /// queue the update with no host round-trip before it, then read `found_inf` once (one
    /// blocking host sync, after the update is queued: the synchronous check) and return
    /// whether the update was applied; a skipped update leaves the parameters and the optimizer
    /// state as they were. [`Optimizer::queue_if_finite`] does the same without the sync.
    ///
    /// The default, for optimizers without such a kernel, reads `found_inf` first and then
    /// calls [`Optimizer::step`] when it is zero.
    fn step_if_finite(
        &mut self,
        params: &mut [&mut Parameter],
        grads: &Gradients,
        found_inf: &Tensor,
    ) -> Result<bool> {
        check_found_inf("step_if_finite", found_inf, &[])?;
        if crate::ops::flag_is_set(found_inf)? {
            return Ok(false);
        }
        self.step(params, grads)?;
        Ok(true)
    }
    /// [`Optimizer::step_if_finite`] without reading `found_inf`: the update is queued (skipped
    /// on the device when the flag is set) and the returned [`PendingUpdate`] says later whether
    /// it was applied. [`Sgd`] and [`Adam`] copy the flag to the host asynchronously and make no
    /// host sync here; they keep the update unsettled and settle it ([`Optimizer::settle`])
    /// before their next update, state load or state read, so a skipped update leaves the
    /// parameters and the optimizer state as they were, as seen by every later call.
    ///
    /// The default, for optimizers without such a kernel, is the synchronous
    /// [`Optimizer::step_if_finite`] with its result wrapped.
    fn queue_if_finite(
        &mut self,
        params: &mut [&mut Parameter],
        grads: &Gradients,
        found_inf: &Tensor,
    ) -> Result<PendingUpdate> {
        let applied = self.step_if_finite(params, grads, found_inf)?;
        Ok(PendingUpdate::resolved(applied, found_inf.device()))
    }
    /// Settles the last update of [`Optimizer::queue_if_finite`]: reads whether it was applied
    /// (waiting for its flag only if it is not on the host yet) and, if it was skipped, undoes
    /// its host-side state. Called by the optimizer itself before its next update; callers need
    /// it only to have the host-side state settled at a point of their choosing. The default
    /// has nothing to settle.
    fn settle(&mut self) -> Result<()> {
        Ok(())
    }
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

/// An optimizer update queued by [`Optimizer::queue_if_finite`]: whether it was applied (its
/// anomaly flag was clear), read when asked. Cheap to clone; clones share the read.
#[derive(Clone, Debug)]
pub struct PendingUpdate {
    flag: PendingScalar,
}

impl PendingUpdate {
    /// The update conditional on `found_inf` (one element): its asynchronous read starts now
    /// ([`PendingScalar::start`]; no sync).
    pub fn start(found_inf: &Tensor) -> Result<PendingUpdate> {
        Ok(PendingUpdate {
            flag: PendingScalar::start(found_inf)?,
        })
    }

    /// An update whose outcome is known already (checked synchronously), on `device`.
    pub fn resolved(applied: bool, device: &Device) -> PendingUpdate {
        PendingUpdate {
            flag: PendingScalar::ready(f64::from(u8::from(!applied)), device),
        }
    }

    /// Whether the outcome is on the host ([`PendingUpdate::applied`] would not wait). Never
    /// waits.
    pub fn is_ready(&self) -> Result<bool> {
        self.flag.is_ready()
    }

    /// Whether the update was applied (its flag clear), waiting for the flag if it is not on
    /// the host yet: then one sync of its device is counted, otherwise none.
    pub fn applied(&self) -> Result<bool> {
        Ok(!self.flag.is_set()?)
    }
}

/// An update of [`Optimizer::queue_if_finite`] not settled yet, with what undoes its host-side
/// state should it turn out skipped.
#[derive(Debug)]
struct Unsettled<U> {
    update: PendingUpdate,
    undo: U,
}

/// The undo of `pending` if its update was skipped, read without changing anything (for state
/// reads through `&self`; they wait for the flag if needed). A flag that cannot be read counts
/// as applied here: the device failed, and the next update or settle reports the error.
fn skipped_undo<U>(pending: &Option<Unsettled<U>>) -> Option<&U> {
    let p = pending.as_ref()?;
    matches!(p.update.applied(), Ok(false)).then_some(&p.undo)
}

/// Takes `pending` if its update was skipped (to undo it) or drops it if applied; leaves it in
/// place on an error reading the flag.
fn settle_pending<U>(pending: &mut Option<Unsettled<U>>) -> Result<Option<U>> {
    let Some(p) = pending.as_ref() else {
        return Ok(None);
    };
    let applied = p.update.applied()?;
    Ok(pending.take().filter(|_| !applied).map(|p| p.undo))
}

/// Starts the read of `found_inf` for an update just queued with it. Should the read fail to
/// start (a device error), the flag is read at once instead (one sync) so the outcome is known.
fn start_read(found_inf: &Tensor) -> Result<PendingUpdate> {
    match PendingUpdate::start(found_inf) {
        Ok(u) => Ok(u),
        Err(_) => {
            let applied = !crate::ops::flag_is_set(found_inf)?;
            Ok(PendingUpdate::resolved(applied, found_inf.device()))
        }
    }
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

/// The gradient of every parameter (`None`: it has none and is skipped), each checked against
/// its parameter, no parameter given twice, and `found_inf` (when given) checked against the
/// parameters' device.
fn gradients_of<'g>(
    op: &'static str,
    params: &[&mut Parameter],
    grads: &'g Gradients,
    found_inf: Option<&Tensor>,
) -> Result<Vec<Option<&'g Tensor>>> {
    let mut seen = HashSet::with_capacity(params.len());
    let mut out = Vec::with_capacity(params.len());
    for p in params {
        if !seen.insert(p.tensor().id()) {
            return Err(Error::invalid(
                op,
                format!("the parameter '{}' is given twice", p.name()),
            ));
        }
        out.push(grad_of(op, p, grads)?);
    }
    if let Some(flag) = found_inf {
        let devices: Vec<&Device> = out.iter().flatten().map(|g| g.device()).collect();
        check_found_inf(op, flag, &devices)?;
    }
    Ok(out)
}

/// The ids of the parameters that have a gradient (`gs`: one entry per parameter).
fn ids_with_grad(params: &[&mut Parameter], gs: &[Option<&Tensor>]) -> Vec<TensorId> {
    params
        .iter()
        .zip(gs)
        .filter(|(_, g)| g.is_some())
        .map(|(p, _)| p.tensor().id())
        .collect()
}

/// [`Optimizer::step_if_finite`] of an optimizer whose [`Optimizer::queue_if_finite`] queues
/// the update: queued, `found_inf` read once (the synchronous check: one blocking read), then
/// settled (which waits for nothing by then).
fn checked_after_queueing(
    opt: &mut dyn Optimizer,
    params: &mut [&mut Parameter],
    grads: &Gradients,
    found_inf: &Tensor,
) -> Result<bool> {
    opt.queue_if_finite(params, grads, found_inf)?;
    let applied = !crate::ops::flag_is_set(found_inf)?;
    opt.settle()?;
    Ok(applied)
}

/// Fails unless `found_inf` has one element and lives on every one of `devices`.
fn check_found_inf(op: &'static str, found_inf: &Tensor, devices: &[&Device]) -> Result<()> {
    if found_inf.numel() != 1 {
        return Err(Error::shape(
            op,
            format!(
                "found_inf must have one element, got shape {:?}",
                found_inf.shape()
            ),
        ));
    }
    for d in devices {
        found_inf.device().check_same(d, op)?;
    }
    Ok(())
}

/// Mutable references to the states of `ids`, in that order (each id once, present in `states`).
fn states_mut<'s, S>(
    op: &'static str,
    states: &'s mut FxHashMap<TensorId, S>,
    ids: &[TensorId],
) -> Result<Vec<&'s mut S>> {
    let wanted: FxHashSet<TensorId> = ids.iter().copied().collect();
    let mut found: FxHashMap<TensorId, &'s mut S> = states
        .iter_mut()
        .filter(|(id, _)| wanted.contains(id))
        .map(|(id, s)| (*id, s))
        .collect();
    ids.iter()
        .map(|id| {
            found.remove(id).ok_or_else(|| {
                Error::Backward(format!(
                    "{op}: optimizer state of {id:?} missing (engine bug)"
                ))
            })
        })
        .collect()
}

/// `slots` split by device and dtype (in order of first appearance, each keeping its order):
/// one fused kernel call per group.
fn by_device_and_dtype<S>(
    slots: Vec<S>,
    key: impl Fn(&S) -> (Device, DType),
) -> Vec<(Device, Vec<S>)> {
    let mut groups: Vec<(Device, DType, Vec<S>)> = Vec::new();
    for s in slots {
        let (device, dtype) = key(&s);
        match groups
            .iter_mut()
            .find(|(d, t, _)| d.same(&device) && *t == dtype)
        {
            Some(group) => group.2.push(s),
            None => groups.push((device, dtype, vec![s])),
        }
    }
    groups.into_iter().map(|(d, _, s)| (d, s)).collect()
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
