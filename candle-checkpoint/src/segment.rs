//! [`checkpoint`]: run a segment of candle code without keeping its activations, and run it
//! again inside backward to get its gradients.
//!
//! The first pass runs the segment on detached inputs; its outputs are copied into the output
//! of a custom op whose argument is a chain of [links](crate::link) over the tracked inputs, so
//! candle's graph keeps only the inputs, the outputs and a few one-element tensors. When
//! candle's backward reaches the op with the outputs' gradient `g`, the op runs the segment
//! again with graph tracking (in the [recompute phase](crate::is_recomputing), with the
//! [random stream](crate::rng) replayed), backpropagates `g` through it
//! (from a one-element root whose backward hands the outputs `g`: a `GradStore` of its own), detaches every gradient (a
//! gradient keeps the graph that made it, which would pin the recomputed activations), leaves
//! the inputs' gradients for the links and stashes those of captured parameters for
//! [`crate::backward`].

use crate::error::{Error, Result};
use crate::grads;
use crate::link::Link;
use crate::phase::RecomputePhase;
use crate::rng::{self, Replay};
use crate::storage::{cpu_copy, cuda_copy, metal_copy, zero_scalar};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Layout, MetalStorage};
use candle_core::{Shape, Tensor, Var};
use std::sync::{Arc, Mutex};

/// A segment's forward: maps its inputs to its outputs with candle ops.
pub type SegmentFn = dyn Fn(&[Tensor]) -> candle_core::Result<Vec<Tensor>> + Send + Sync;

/// What a checkpoint keeps for its recompute.
pub(crate) struct Segment {
    f: Arc<SegmentFn>,
    /// The inputs, detached.
    inputs: Vec<Tensor>,
    /// Which inputs candle tracks (a gradient is wanted for them).
    tracked: Vec<bool>,
    /// The random state as the first pass started.
    rng: u64,
    /// The outputs' shapes.
    shapes: Vec<Shape>,
    /// The outputs' dtype (also the links').
    pub(crate) dtype: DType,
    /// The inputs' gradients, left by the recompute for the links.
    grads: Mutex<Vec<Option<Tensor>>>,
}

/// A lock error as a candle error (a panic elsewhere while the lock was held).
fn poisoned<T>(_: T) -> candle_core::Error {
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
    fn recompute(&self, g: &Tensor) -> Result<()> {
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
        grads::stash(&store)?;
        *self.grads.lock().map_err(poisoned)? = mine;
        Ok(())
    }
}

/// The outputs as one tensor: the output itself, or all of them flattened end to end.
fn pack(outputs: &[Tensor]) -> candle_core::Result<Tensor> {
    match outputs {
        [one] => Ok(one.clone()),
        many => {
            let flat = many
                .iter()
                .map(Tensor::flatten_all)
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&flat, 0)
        }
    }
}

/// The outputs back from their packed form.
fn unpack(packed: &Tensor, shapes: &[Shape]) -> candle_core::Result<Vec<Tensor>> {
    if shapes.len() == 1 {
        return Ok(vec![packed.clone()]);
    }
    let mut at = 0;
    let mut out = Vec::with_capacity(shapes.len());
    for s in shapes {
        let n = s.elem_count();
        out.push(packed.narrow(0, at, n)?.reshape(s)?);
        at += n;
    }
    Ok(out)
}

/// The root of a recompute's backward: a one-element zero made from the packed outputs, whose
/// backward hands them the outputs' gradient `grad` as it came (candle's backward then starts
/// from exactly `grad`, with no product of the outputs and a seed to allocate).
struct Inject {
    grad: Tensor,
    dtype: DType,
}

impl CustomOp1 for Inject {
    fn name(&self) -> &'static str {
        "checkpoint-inject"
    }

    fn cpu_fwd(&self, s: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        zero_scalar(s, self.dtype)
    }

    fn cuda_fwd(&self, s: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        zero_scalar(s, self.dtype)
    }

    fn metal_fwd(
        &self,
        s: &MetalStorage,
        _: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        zero_scalar(s, self.dtype)
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.grad.clone()))
    }
}

/// The checkpoint's op: its output is a copy of the first pass's packed outputs; its backward
/// recomputes the segment.
struct Restore {
    segment: Arc<Segment>,
    /// The first pass's packed outputs, until the forward copies them.
    packed: Mutex<Option<Tensor>>,
}

impl Restore {
    /// Takes the packed outputs (the forward runs once).
    fn take(&self) -> candle_core::Result<Tensor> {
        self.packed
            .lock()
            .map_err(poisoned)?
            .take()
            .ok_or_else(|| candle_core::Error::msg("checkpoint: the output was already made"))
    }
}

impl CustomOp1 for Restore {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_copy(&self.take()?)
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        cuda_copy(&self.take()?)
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        metal_copy(&self.take()?)
    }

    fn bwd(&self, link: &Tensor, _: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        self.segment.recompute(g)?;
        Ok(Some(link.zeros_like()?))
    }
}

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
