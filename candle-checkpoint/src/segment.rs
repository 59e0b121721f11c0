//! [`Segment`]: what a checkpoint keeps for its recompute (the forward, its detached inputs, the
//! random state of its first pass, its outputs' shapes), and the recompute itself: run the
//! segment again with tracking (in the [recompute phase](crate::is_recomputing), the
//! [random stream](crate::rng) replayed), backpropagate the outputs' gradient through it in a
//! `GradStore` of its own (from an [`Inject`] root), detach every gradient (a candle gradient
//! keeps the graph that made it, which would pin the recomputed activations), leave the inputs'
//! gradients for the [links](crate::link) and stash those of captured parameters for
//! [`crate::backward`].

use crate::error::{Error, Result};
use crate::fused;
use crate::grads;
use crate::inject::Inject;
use crate::pack::pack;
use crate::phase::RecomputePhase;
use crate::rng::Replay;
use candle_core::{DType, Shape, Tensor, Var};
use std::sync::{Arc, Mutex};

/// A segment's forward: maps its inputs to its outputs with candle ops.
pub type SegmentFn = dyn Fn(&[Tensor]) -> candle_core::Result<Vec<Tensor>> + Send + Sync;

/// What a checkpoint keeps for its recompute.
pub(crate) struct Segment {
    pub(crate) f: Arc<SegmentFn>,
    /// The inputs, detached.
    pub(crate) inputs: Vec<Tensor>,
    /// Which inputs candle tracks (a gradient is wanted for them).
    pub(crate) tracked: Vec<bool>,
    /// The random state as the first pass started.
    pub(crate) rng: u64,
    /// The outputs' shapes.
    pub(crate) shapes: Vec<Shape>,
    /// The outputs' dtype (also the links').
    pub(crate) dtype: DType,
    /// The inputs' gradients, left by the recompute for the links.
    pub(crate) grads: Mutex<Vec<Option<Tensor>>>,
}

/// A lock error as a candle error (a panic elsewhere while the lock was held).
pub(crate) fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::msg("checkpoint: a lock was poisoned by an earlier panic")
}

impl Segment {
    /// Takes input `i`'s gradient (once).
    pub(crate) fn take_input_grad(&self, i: usize) -> candle_core::Result<Option<Tensor>> {
        let mut grads = self.grads.lock().map_err(poisoned)?;
        Ok(grads.get_mut(i).and_then(Option::take))
    }

    /// Runs the segment again with tracking and backpropagates `g` (the packed outputs'
    /// gradient) through it.
    pub(crate) fn recompute(&self, g: &Tensor) -> Result<()> {
        let _phase = RecomputePhase::enter();
        let _replay = Replay::from(self.rng);
        let leaves = self
            .inputs
            .iter()
            .zip(&self.tracked)
            .map(|(x, &t)| {
                if t {
                    Ok(Var::from_tensor(x)?.into_inner())
                } else {
                    Ok(x.clone())
                }
            })
            .collect::<Result<Vec<Tensor>>>()?;
        let outputs = (self.f)(&leaves)?;
        let shapes: Vec<Shape> = outputs.iter().map(|o| o.shape().clone()).collect();
        if shapes != self.shapes {
            return Err(Error::invalid(
                "checkpoint",
                format!(
                    "the recompute made outputs of shapes {shapes:?}, the first pass {:?}",
                    self.shapes
                ),
            ));
        }
        let packed = pack(&outputs)?;
        drop(outputs);
        let root = packed.apply_op1(Inject {
            grad: g.detach(),
            dtype: self.dtype,
        })?;
        drop(packed);
        let mut store = root.backward()?;
        drop(root);
        let mut mine = Vec::with_capacity(leaves.len());
        for (leaf, &t) in leaves.iter().zip(&self.tracked) {
            mine.push(if t {
                store.remove(leaf).map(|g| g.detach())
            } else {
                None
            });
        }
        fused::consume(&mut store)?;
        grads::stash(&store)?;
        *self.grads.lock().map_err(poisoned)? = mine;
        Ok(())
    }
}
