//! The anomaly check of a training step, for any model built of [`tape::nn`] modules: one fused
//! reduction ([`ops::non_finite`]) over the loss, every parameter's gradient and every parameter
//! into a device flag; the optimizer's update is conditional on that flag on the device
//! ([`Optimizer::step_if_finite`]), so a diverged step changes neither the parameters nor the
//! optimizer state. Only when the flag is set are the tensors read back one by one to name the
//! first culprit.
//!
//! Two ways to learn a step's outcome:
//!
//! - **Queued** ([`AnomalyGuard`], what the training loops use): the step's update is queued
//!   ([`Optimizer::queue_if_finite`]) and its flag copied to the host asynchronously (pinned
//!   host memory and an event on CUDA, a path that compiles but has not run on a GPU yet); the
//!   guard returns without reading it. Step `n`'s flag
//!   is checked when step `n + 1` is about to queue its update (its forward and backward are
//!   queued by then, so the device has work while the host looks), or when the caller asks
//!   ([`AnomalyGuard::check_now`], [`AnomalyGuard::finish`]: before saving a checkpoint, at the
//!   end of training). A steady-state step makes no host sync: by the time the next step asks,
//!   the copy is done (on the CPU, at once). A non-finite step `n` still fails as
//!   [`NonFinite`] naming step `n`, with the parameters and the optimizer state as they were
//!   before it (the device skipped the update, and the update of step `n + 1` is never queued).
//!   The culprit is named from what is still there: the loss (kept), then the parameters (the
//!   skipped update left them as step `n` saw them); a gradient is named only as "a gradient",
//!   since step `n`'s gradients are gone by then (the synchronous check names it).
//! - **Synchronous** ([`step_if_finite`], [`check_finite`]): the flag is read at once (one
//!   blocking host sync per step) and a non-finite step fails at once, naming the culprit
//!   exactly, gradient included.
//!
//! In data-parallel training the check is global ([`step_if_finite_global`]): the flag is
//! read and all-reduced with max over MPI on the host before the update, so a NaN on one rank
//! skips the update on every rank, otherwise the ranks' parameters would diverge silently.
//! That read is a blocking sync per step, which the global check keeps: the all-reduce needs the
//! value on the host before any rank may queue its update.
//!
//! Parameters are checked too because a NaN weight does not always reach the loss (a ReLU or a
//! max can hide it for a step) and a finite but huge gradient can overflow a weight.

use tape::nn::{self, Module};
use tape::optim::{Optimizer, PendingUpdate};
use tape::{ops, Gradients, Tensor};

/// A loss, gradient or parameter that holds a NaN or an infinity: the run diverged.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error(
    "training step {step}: {what} is not finite ({value}); the run diverged (try a lower \
     learning rate) and this step did not update the parameters"
)]
pub struct NonFinite {
    /// The step's index, as the caller numbers them.
    pub step: u64,
    /// What is not finite: `the loss`, `the gradient of '<parameter>'` or
    /// `the parameter '<parameter>'`.
    pub what: String,
    /// The first non-finite value found in it (NaN when none could be read back).
    pub value: f64,
}

/// What a guarded step can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The step diverged; the update was skipped.
    #[error(transparent)]
    NonFinite(#[from] NonFinite),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] tape::Error),
    /// The all-reduce of the flag across ranks failed.
    #[error(transparent)]
    Dist(#[from] dist::DistError),
}

/// What a checked tensor is, named only when a culprit is reported (the check itself runs every
/// step and makes no strings).
enum What<'a> {
    Loss,
    Gradient(&'a str),
    Parameter(&'a str),
}

impl std::fmt::Display for What<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            What::Loss => write!(f, "the loss"),
            What::Gradient(p) => write!(f, "the gradient of '{p}'"),
            What::Parameter(p) => write!(f, "the parameter '{p}'"),
        }
    }
}

/// The tensors the check covers, in the order it names them: the loss, then for each of
/// `model`'s parameters (declaration order) its gradient (if any) and its value.
fn checked<'a, M: Module + ?Sized>(
    model: &'a M,
    loss: &'a Tensor,
    grads: &'a Gradients,
) -> Vec<(What<'a>, &'a Tensor)> {
    let mut list = vec![(What::Loss, loss)];
    for p in nn::parameters(model) {
        if let Some(g) = grads.get(p.tensor()) {
            list.push((What::Gradient(p.name()), g));
        }
        list.push((What::Parameter(p.name()), p.tensor()));
    }
    list
}

/// The device flag: a one-element tensor holding 1 if `loss`, the gradient of any of `model`'s
/// parameters or a parameter itself holds a NaN or an infinity, else 0. One kernel call;
/// nothing is read back.
pub fn non_finite_flag<M: Module + ?Sized>(
    model: &M,
    loss: &Tensor,
    grads: &Gradients,
) -> tape::Result<Tensor> {
    let list = checked(model, loss, grads);
    let tensors: Vec<&Tensor> = list.iter().map(|(_, t)| *t).collect();
    ops::non_finite(&tensors)
}

/// The first non-finite tensor of the check (the loss first, then in declaration order a
/// parameter's gradient before its value) and its first non-finite element, read back one by
/// one: for the failure path.
pub fn first_non_finite<M: Module + ?Sized>(
    model: &M,
    loss: &Tensor,
    grads: &Gradients,
    step: u64,
) -> tape::Result<NonFinite> {
    for (what, t) in checked(model, loss, grads) {
        if let Some(&value) = t.try_to_f64_vec()?.iter().find(|v| !v.is_finite()) {
            let what = what.to_string();
            return Ok(NonFinite { step, what, value });
        }
    }
    Ok(NonFinite {
        step,
        what: "a gradient or parameter (the device flagged one; none read back)".into(),
        value: f64::NAN,
    })
}

/// Fails with [`NonFinite`] naming `step` if the loss, a gradient or a parameter is not finite:
/// the flag read once (one host sync), the culprit named only when it is set.
pub fn check_finite<M: Module + ?Sized>(
    model: &M,
    loss: &Tensor,
    grads: &Gradients,
    step: u64,
) -> Result<(), GuardError> {
    if !tape::ops::flag_is_set(&non_finite_flag(model, loss, grads)?)? {
        return Ok(());
    }
    Err(first_non_finite(model, loss, grads, step)?.into())
}

/// One optimizer update of `model`'s parameters from `grads`, queued with no host read before
/// it and skipped on the device when the loss, a gradient or a parameter is not finite; the
/// flag is read once, after the update is queued. A skipped update fails with [`NonFinite`]
/// naming `step`, the parameters and the optimizer state as they were.
pub fn step_if_finite<M: Module + ?Sized>(
    model: &mut M,
    optimizer: &mut dyn Optimizer,
    loss: &Tensor,
    grads: &Gradients,
    step: u64,
) -> Result<(), GuardError> {
    let flag = non_finite_flag(model, loss, grads)?;
    if optimizer.step_if_finite(&mut nn::parameters_mut(model), grads, &flag)? {
        return Ok(());
    }
    Err(first_non_finite(model, loss, grads, step)?.into())
}

/// [`step_if_finite`] across the ranks of `group`: the flag is read (one host sync) and
/// all-reduced with max before the update, so that every rank skips the update when the loss,
/// a gradient or a parameter is not finite on any rank. A skipped update fails with
/// [`NonFinite`] naming `step` on every rank: the culprit on the rank that has it, "another
/// rank" on the others.
pub fn step_if_finite_global<M: Module + ?Sized>(
    group: &dist::ProcessGroup,
    model: &mut M,
    optimizer: &mut dyn Optimizer,
    loss: &Tensor,
    grads: &Gradients,
    step: u64,
) -> Result<(), GuardError> {
    let flag = non_finite_flag(model, loss, grads)?;
    let local = tape::ops::flag_is_set(&flag)?;
    let any = group.any(local)?;
    let global = Tensor::full(&[1], f64::from(u8::from(any)), flag.dtype(), flag.device())?;
    if optimizer.step_if_finite(&mut nn::parameters_mut(model), grads, &global)? {
        return Ok(());
    }
    if local {
        return Err(first_non_finite(model, loss, grads, step)?.into());
    }
    Err(NonFinite {
        step,
        what: "the loss, a gradient or a parameter of another rank".into(),
        value: f64::NAN,
    }
    .into())
}

/// The queued anomaly check of a training loop (see the [module docs](self)): holds the
/// outcome of the last queued step until it is checked. Make one per run (or per epoch), pass
/// every step through [`AnomalyGuard::step`], and call [`AnomalyGuard::check_now`] (or
/// [`AnomalyGuard::finish`]) before anything that must not follow an unreported non-finite step
/// (saving a checkpoint, reporting a result) and at the end of training. A guard dropped with a
/// step unchecked leaves that step unreported (its update, if skipped, still changed nothing).
#[derive(Debug, Default)]
pub struct AnomalyGuard {
    last: Option<QueuedStep>,
    /// The step of the last non-finite report, until taken.
    reported: Option<u64>,
}

/// A queued step whose flag is not checked yet.
#[derive(Debug)]
struct QueuedStep {
    step: u64,
    loss: Tensor,
    update: PendingUpdate,
}

impl AnomalyGuard {
    /// A guard with no step queued.
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of the queued step whose check is still to come, if any.
    pub fn unchecked_step(&self) -> Option<u64> {
        self.last.as_ref().map(|q| q.step)
    }

    /// Queues step `step`'s optimizer update of `model`'s parameters from `grads`, skipped on
    /// the device when the loss, a gradient or a parameter is not finite, and returns without
    /// reading the flag. First checks the previous step (no wait in steady state): if it was
    /// not finite, fails with [`NonFinite`] naming it and queues nothing, so the parameters and
    /// the optimizer state are those from before that step.
    pub fn step<M: Module + ?Sized>(
        &mut self,
        model: &mut M,
        optimizer: &mut dyn Optimizer,
        loss: &Tensor,
        grads: &Gradients,
        step: u64,
    ) -> Result<(), GuardError> {
        self.check_now(model)?;
        let flag = non_finite_flag(model, loss, grads)?;
        let update = optimizer.queue_if_finite(&mut nn::parameters_mut(model), grads, &flag)?;
        self.last = Some(QueuedStep {
            step,
            loss: loss.clone(),
            update,
        });
        Ok(())
    }

    /// Checks the last queued step now, waiting for its flag if it is not on the host yet (one
    /// sync then, none if it is): fails with [`NonFinite`] naming it if it was not finite (its
    /// update was skipped). Nothing is left to check afterwards, whatever the outcome.
    pub fn check_now<M: Module + ?Sized>(&mut self, model: &M) -> Result<(), GuardError> {
        let Some(last) = self.last.take() else {
            return Ok(());
        };
        if last.update.applied()? {
            return Ok(());
        }
        self.reported = Some(last.step);
        Err(culprit_after(model, &last.loss, last.step)?.into())
    }

    /// The index of the step the guard last reported as non-finite, taken (a second call
    /// returns `None`): lets a loop that sees a step fail tell a report of the previous step
    /// from a failure of the step it ran.
    pub fn take_reported(&mut self) -> Option<u64> {
        self.reported.take()
    }

    /// [`AnomalyGuard::check_now`] at the end of training, consuming the guard.
    pub fn finish<M: Module + ?Sized>(mut self, model: &M) -> Result<(), GuardError> {
        self.check_now(model)
    }
}

/// The culprit of a skipped step `step`, found after the fact: its loss (kept), else the first
/// non-finite parameter (unchanged since: the update was skipped), else its gradients, which
/// are gone.
fn culprit_after<M: Module + ?Sized>(
    model: &M,
    loss: &Tensor,
    step: u64,
) -> tape::Result<NonFinite> {
    let mut list = vec![(What::Loss, loss)];
    for p in nn::parameters(model) {
        list.push((What::Parameter(p.name()), p.tensor()));
    }
    for (what, t) in list {
        if let Some(&value) = t.try_to_f64_vec()?.iter().find(|v| !v.is_finite()) {
            let what = what.to_string();
            return Ok(NonFinite { step, what, value });
        }
    }
    Ok(NonFinite {
        step,
        what: "a gradient (the step's gradients are no longer held; the synchronous check, \
               `step_if_finite`, names it)"
            .into(),
        value: f64::NAN,
    })
}
