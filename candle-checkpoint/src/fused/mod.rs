//! The optimizer step fused into backward ("optimizer in backward"): each parameter that
//! checkpointed segments capture is updated by a [`ParamUpdate`] as soon as the recompute of
//! its last use has produced its gradient, and that gradient is dropped there instead of
//! joining the step's `GradStore`.
//!
//! # Why: the lower bound with every gradient kept
//!
//! candle's graph is owned by the loss, so every tensor it keeps lives to the end of backward,
//! and its `GradStore` keeps every parameter's gradient to the end too. With checkpoints, a
//! step's peak is therefore at least
//!
//! > parameters' gradients + the kept segment outputs + one segment's recompute and its
//! > gradients.
//!
//! For the MLP of the example (16 blocks of three 1024-wide Linear + ReLU layers, batch 512,
//! f32) that is 201.5 MB of gradients (48 layers x (1024 x 1024 + 1024) x 4 bytes) + 33.6 MB of
//! block outputs (16 x 512 x 1024 x 4) + 12.6 MB for one block's six recomputed activations
//! = 247.7 MB, already 0.47x the unwrapped step's 530.9 MB (per block measured 300.1 MB,
//! 0.565x): no checkpoint schedule reaches 0.40x while the store keeps every gradient. With
//! the update fused, the gradients alive at once are those of the segment being recomputed
//! (12.6 MB), and the bound falls to about 33.6 + 12.6 + 12.6 = 58.8 MB (0.11x).
//!
//! # Use
//!
//! Make a [`FusedUpdate`] over the parameters with an optimizer ([`Sgd`], [`AdamW`] or your
//! own [`ParamUpdate`]); each step, [`FusedUpdate::begin`] *before* the forward, run the
//! forward with checkpoints, and call [`FusedStep::backward`] on the loss instead of
//! [`crate::backward`] and an optimizer step. It returns the gradients of what it did not
//! update (inputs, unregistered tensors).
//!
//! # Which gradients are fused, and shared parameters
//!
//! While a step is active, each checkpoint's first pass counts the registered parameters its
//! outputs depend on (the parameters it captures), and [`FusedStep::backward`] counts those the
//! loss reaches outside checkpoints (used directly, or passed into a checkpoint as inputs): one
//! use each. A recompute hands every registered parameter's gradient to its slot; when the
//! slot has all its uses, the parameter is updated and its gradient dropped. A parameter shared
//! by several segments is thus updated once, after the recompute of its earliest use, from the
//! sum of its contributions (held until then); one also used outside checkpoints is updated
//! after candle's backward, from the store. A gradient beyond the counted uses (a segment whose
//! forward ran before [`FusedUpdate::begin`]) is [`FusedError::UncountedUse`].

mod optim;

pub use optim::{AdamW, ParamUpdate, Sgd};

use crate::error::{Error, FusedError, Result};
use crate::phase::is_recomputing;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId, Var};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

thread_local! {
    /// The fused step active on this thread, if any.
    static ACTIVE: RefCell<Option<Arc<Mutex<State>>>> = const { RefCell::new(None) };
}

/// One parameter's progress through a step.
struct Slot {
    var: Var,
    /// Uses counted this step (segments capturing it, plus one if the loss reaches it).
    uses: usize,
    /// Gradients arrived this step.
    arrived: usize,
    /// The sum of the gradients arrived, until the last one.
    pending: Option<Tensor>,
    /// Updated this step.
    done: bool,
}

impl Slot {
    /// Adds `grad` to the pending sum.
    fn add(&mut self, grad: Tensor) -> Result<()> {
        self.pending = Some(match self.pending.take() {
            Some(p) => (p + grad)?.detach(),
            None => grad,
        });
        Ok(())
    }
}

/// The parameters, their optimizer and a step's progress.
struct State {
    slots: HashMap<TensorId, Slot>,
    update: Box<dyn ParamUpdate>,
    /// A typed error raised inside candle's backward (which carries it only as text).
    failure: Option<FusedError>,
}

impl State {
    /// Starts a step: counts cleared, the optimizer told.
    fn reset(&mut self) {
        for s in self.slots.values_mut() {
            (s.uses, s.arrived, s.pending, s.done) = (0, 0, None, false);
        }
        self.failure = None;
        self.update.begin_step();
    }

    /// Counts one use of each registered parameter among `ids`.
    fn count(&mut self, ids: impl IntoIterator<Item = TensorId>) {
        for id in ids {
            if let Some(s) = self.slots.get_mut(&id) {
                s.uses += 1;
            }
        }
    }

    /// Takes one gradient of `id`; updates the parameter at its last use.
    fn arrive(&mut self, id: TensorId, grad: Tensor) -> Result<()> {
        let Some(s) = self.slots.get_mut(&id) else {
            return Ok(());
        };
        s.arrived += 1;
        if s.done || s.arrived > s.uses {
            let e = FusedError::UncountedUse {
                param: id,
                uses: s.uses,
                arrived: s.arrived,
            };
            self.failure = Some(e.clone());
            return Err(e.into());
        }
        s.add(grad)?;
        if s.arrived == s.uses {
            self.apply(id)?;
        }
        Ok(())
    }

    /// Updates parameter `id` from its pending gradient, if it has one, and drops it.
    fn apply(&mut self, id: TensorId) -> Result<()> {
        let Some(s) = self.slots.get_mut(&id) else {
            return Ok(());
        };
        s.done = true;
        match s.pending.take() {
            Some(g) => Ok(self.update.update(&s.var, g)?),
            None => Ok(()),
        }
    }

    /// After candle's backward: every parameter not yet updated takes what arrived and what
    /// `store` holds for it (removed from it).
    fn finish(&mut self, store: &mut GradStore) -> Result<()> {
        let ids: Vec<TensorId> = self.slots.keys().copied().collect();
        for id in ids {
            let Some(s) = self.slots.get_mut(&id) else {
                continue;
            };
            let from_store = store.remove(s.var.as_tensor());
            if s.done {
                continue;
            }
            if let Some(g) = from_store {
                s.add(g.detach())?;
            }
            self.apply(id)?;
        }
        Ok(())
    }
}

/// Locks the state (a panic while it was held leaves it usable: counts are reset each step).
fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The optimizer step fused into backward, over a set of parameters (see the [module](self)).
pub struct FusedUpdate {
    state: Arc<Mutex<State>>,
}

impl FusedUpdate {
    /// Registers `vars` (non-float ones are left out, as candle-nn's optimizers do) with
    /// `update`, which prepares their state.
    pub fn new(vars: &[Var], mut update: impl ParamUpdate + 'static) -> Result<Self> {
        let mut slots = HashMap::new();
        for v in vars.iter().filter(|v| v.dtype().is_float()) {
            if slots.contains_key(&v.id()) {
                continue;
            }
            update.add_param(v)?;
            let slot = Slot {
                var: v.clone(),
                uses: 0,
                arrived: 0,
                pending: None,
                done: false,
            };
            slots.insert(v.id(), slot);
        }
        let state = State {
            slots,
            update: Box::new(update),
            failure: None,
        };
        Ok(FusedUpdate {
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// The optimizer's learning rate.
    pub fn learning_rate(&self) -> f64 {
        lock(&self.state).update.learning_rate()
    }

    /// Sets the optimizer's learning rate (a schedule calls it between steps).
    pub fn set_learning_rate(&self, lr: f64) {
        lock(&self.state).update.set_learning_rate(lr);
    }

    /// Begins a step on this thread: call it before the step's forward. Fails with
    /// [`FusedError::StepActive`] while another step is active on this thread.
    pub fn begin(&self) -> Result<FusedStep<'_>> {
        ACTIVE.with(|a| {
            let mut a = a.borrow_mut();
            if a.is_some() {
                return Err(Error::Fused(FusedError::StepActive));
            }
            lock(&self.state).reset();
            *a = Some(self.state.clone());
            Ok(())
        })?;
        Ok(FusedStep {
            fused: self,
            _thread: PhantomData,
        })
    }
}

/// An active fused step (see [`FusedUpdate::begin`]); dropping it ends the step on this thread.
pub struct FusedStep<'a> {
    fused: &'a FusedUpdate,
    /// The step belongs to the thread that began it.
    _thread: PhantomData<*const ()>,
}

impl FusedStep<'_> {
    /// Backpropagates from `loss` (like [`crate::backward`]), updating every registered
    /// parameter once its gradient is whole: inside the recomputes for parameters checkpointed
    /// segments capture, after candle's backward for the others. Returns the gradients of
    /// everything else (inputs, unregistered tensors).
    pub fn backward(self, loss: &Tensor) -> Result<GradStore> {
        let state = &self.fused.state;
        let outer = reached_vars(std::slice::from_ref(loss));
        lock(state).count(outer);
        let result = crate::grads::backward(loss);
        let mut st = lock(state);
        if let Some(e) = st.failure.take() {
            return Err(e.into());
        }
        let mut store = result?;
        st.finish(&mut store)?;
        Ok(store)
    }
}

impl Drop for FusedStep<'_> {
    fn drop(&mut self) {
        ACTIVE.with(|a| *a.borrow_mut() = None);
    }
}

/// The ids of the variables `roots` depend on through candle's graph.
fn reached_vars(roots: &[Tensor]) -> HashSet<TensorId> {
    let mut ids = HashSet::new();
    for r in roots {
        ids.extend(
            r.sorted_nodes()
                .into_iter()
                .filter(|n| n.is_variable())
                .map(Tensor::id),
        );
    }
    ids
}

/// The active step's state, unless none is active.
fn active() -> Option<Arc<Mutex<State>>> {
    ACTIVE.with(|a| a.borrow().clone())
}

/// Called by a checkpoint's first pass with its tracked outputs: counts one use of each
/// registered parameter they depend on (not inside a recompute, which replays a counted pass).
pub(crate) fn count_uses(outputs: &[Tensor]) {
    if is_recomputing() {
        return;
    }
    if let Some(state) = active() {
        let ids = reached_vars(outputs);
        lock(&state).count(ids);
    }
}

/// Called by a recompute with its gradients: hands every registered parameter's gradient
/// (removed from `store`) to its slot, which updates the parameter at its last use.
pub(crate) fn consume(store: &mut GradStore) -> Result<()> {
    let Some(state) = active() else {
        return Ok(());
    };
    let mut st = lock(&state);
    let vars: Vec<Tensor> = store
        .get_ids()
        .filter_map(|id| st.slots.get(id))
        .map(|s| s.var.as_tensor().clone())
        .collect();
    for v in vars {
        if let Some(g) = store.remove(&v) {
            st.arrive(v.id(), g.detach())?;
        }
    }
    Ok(())
}
