//! [`checkpoint`]: run a segment of candle code without keeping its activations, and run it
//! again inside backward to get its gradients.
//!
//! The first pass runs the segment on detached inputs; its outputs are copied into the output
//! of a [`Restore`] op whose argument is a chain of [links](crate::link) over the tracked
//! inputs, so candle's graph keeps only the inputs, the outputs and a few one-element tensors.
//! When candle's backward reaches the op with the outputs' gradient, the op recomputes the
//! [`Segment`].

use crate::error::{Error, Result};
use crate::fused;
use crate::link::Link;
use crate::pack::{pack, unpack};
use crate::restore::Restore;
use crate::rng;
use crate::segment::{Segment, SegmentFn};
use candle_core::{Shape, Tensor, Var};
use std::sync::{Arc, Mutex};

/// Runs `f` on `inputs` as a checkpointed segment: candle's graph keeps the inputs and the
/// outputs but none of the segment's activations, and backward runs `f` again to get the
/// gradients. Gradients reach every tracked input (variables, or tensors computed from
/// variables) and every variable `f` captures (through [`crate::backward`], which the step must
/// call instead of `loss.backward()`); pass parameters as inputs to have candle's own
/// `backward` deliver them. Within the recompute [`crate::is_recomputing`] is true and the
/// adapter's [random stream](crate::rng) replays, so [`crate::nn::Dropout`] and
/// [`crate::nn::BatchNorm`] behave as in the first pass. Checkpoints nest: `f` may call
/// `checkpoint`.
///
/// `f` must compute the same thing both times (outputs of the same shapes, checked) and
/// return float outputs of one dtype, at least one; the outputs may be used downstream in any
/// number and order. With no tracked input and no captured variable, `f` runs once and its
/// outputs come back untracked.
pub fn checkpoint<F>(inputs: &[Tensor], f: F) -> Result<Vec<Tensor>>
where
    F: Fn(&[Tensor]) -> candle_core::Result<Vec<Tensor>> + Send + Sync + 'static,
{
    checkpoint_arc(inputs, Arc::new(f))
}

/// [`checkpoint`] for a forward already shared.
pub fn checkpoint_arc(inputs: &[Tensor], f: Arc<SegmentFn>) -> Result<Vec<Tensor>> {
    let detached: Vec<Tensor> = inputs.iter().map(Tensor::detach).collect();
    let tracked: Vec<bool> = inputs.iter().map(Tensor::track_op).collect();
    let rng = rng::state();
    let outputs = f(&detached)?;
    let dtype = match outputs.first() {
        None => return Err(Error::invalid("checkpoint", "the segment has no output")),
        Some(o) => o.dtype(),
    };
    if let Some(o) = outputs
        .iter()
        .find(|o| o.dtype() != dtype || !o.dtype().is_float())
    {
        return Err(Error::invalid(
            "checkpoint",
            format!(
                "outputs must be floats of one dtype; got {:?} and {:?}",
                dtype,
                o.dtype()
            ),
        ));
    }
    let captured = outputs.iter().any(Tensor::track_op);
    if captured {
        fused::count_uses(&outputs);
    }
    // Detached copies, and the first pass's graph (if it captured variables) dropped now.
    let outputs: Vec<Tensor> = {
        let tracked_outputs = outputs;
        tracked_outputs.iter().map(Tensor::detach).collect()
    };
    if !captured && !tracked.contains(&true) {
        return Ok(outputs);
    }
    let shapes: Vec<Shape> = outputs.iter().map(|o| o.shape().clone()).collect();
    let packed = pack(&outputs)?;
    drop(outputs);
    let segment = Arc::new(Segment {
        f,
        inputs: detached,
        tracked: tracked.clone(),
        rng,
        shapes: shapes.clone(),
        dtype,
        grads: Mutex::new(Vec::new()),
    });
    let mut link: Option<Tensor> = None;
    for (i, x) in inputs.iter().enumerate().filter(|(i, _)| tracked[*i]) {
        let op = Link {
            segment: segment.clone(),
            index: Some(i),
        };
        link = Some(match link {
            None => x.apply_op1(op)?,
            Some(prev) => prev.apply_op2(x, op)?,
        });
    }
    let link = match link {
        Some(l) => l,
        None => {
            let anchor = Var::zeros((), dtype, packed.device())?.into_inner();
            anchor.apply_op1(Link {
                segment: segment.clone(),
                index: None,
            })?
        }
    };
    let out = link.apply_op1(Restore {
        segment,
        packed: Mutex::new(Some(packed)),
    })?;
    Ok(unpack(&out, &shapes)?)
}
