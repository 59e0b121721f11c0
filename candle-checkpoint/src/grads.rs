//! Gradients of parameters a segment captures (uses without receiving them as inputs): a
//! checkpoint's backward can hand candle gradients only for its own arguments, so it stashes
//! the others here, per thread, and [`backward`] adds them to the step's `GradStore`.

use crate::error::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId};
use std::cell::RefCell;

thread_local! {
    /// Gradients of captured tensors made by recomputes since the last [`backward`].
    static CAPTURED: RefCell<GradStore> = RefCell::new(GradStore::default());
}

/// Adds `grad` (detached) to `store` under `id`, summing with what is there.
fn accumulate(store: &mut GradStore, id: TensorId, grad: &Tensor) -> Result<()> {
    let sum = match store.get_id(id) {
        Some(prev) => prev.add(grad)?.detach(),
        None => grad.detach(),
    };
    store.insert_id(id, sum);
    Ok(())
}

/// Adds every gradient of `grads` (detached: a gradient that keeps its graph pins the
/// recomputed activations) to the current thread's captured gradients.
pub(crate) fn stash(grads: &GradStore) -> Result<()> {
    CAPTURED.with(|c| {
        let mut c = c.borrow_mut();
        for id in grads.get_ids() {
            if let Some(g) = grads.get_id(*id) {
                accumulate(&mut c, *id, g)?;
            }
        }
        Ok(())
    })
}

/// Takes the current thread's captured gradients, leaving none.
pub fn take_captured() -> GradStore {
    CAPTURED.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

/// Backpropagates from `loss` like `loss.backward()`, then adds the gradients of parameters that
/// checkpointed segments captured, so the store holds every parameter's gradient. Gradients
/// stashed by an earlier step that never came here are dropped first.
pub fn backward(loss: &Tensor) -> Result<GradStore> {
    drop(take_captured());
    let mut grads = loss.backward()?;
    let captured = take_captured();
    for id in captured.get_ids() {
        if let Some(g) = captured.get_id(*id) {
            accumulate(&mut grads, *id, g)?;
        }
    }
    Ok(grads)
}
