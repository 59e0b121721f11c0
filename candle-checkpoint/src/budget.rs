//! The budget mode: [`profile_chain`] measures each stage of a candle chain with a
//! [`CountingAlloc`] (bytes kept, forward and backward peaks, parameters' gradients, time) into
//! the planner's [`HeldChain`] (the model of an engine whose graph holds what the forward kept
//! until backward ends, as candle's does); [`HeldChain::plan`] picks the cheapest plan under a
//! budget and [`crate::run_plan`] runs it.

use crate::alloc::CountingAlloc;
use crate::error::{Error, Result};
use crate::sequential::Stage;
use candle_core::{Tensor, Var};
use recompute_planner::{HeldChain, HeldStage};
use std::time::Instant;

/// Bytes of a tensor's elements.
pub fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// Measures one stage on `x` (a detached input); returns it and the stage's output, detached.
fn profile_stage(stage: &Stage, x: &Tensor, meter: &CountingAlloc) -> Result<(HeldStage, Tensor)> {
    let h = Var::from_tensor(x)?.into_inner();
    let before = meter.live();
    meter.reset_peak();
    let start = Instant::now();
    let y = stage.forward(&h)?;
    let cost = start.elapsed().as_secs_f64();
    let forward_peak = meter.peak().saturating_sub(before);
    let kept_bytes = meter.live().saturating_sub(before);
    // The sum's gradient reaches `y` as a broadcast one: the gradient `y` gets is its only
    // allocation before the stage's own backward (as the next stage's would be in a chain).
    let probe = y.sum_all()?;
    let ready = meter.live();
    meter.reset_peak();
    let grads = probe.backward()?;
    let backward_peak = meter.peak().saturating_sub(ready);
    let param_grad_bytes = grads
        .get_ids()
        .filter(|id| **id != h.id())
        .filter_map(|id| grads.get_id(*id))
        .map(tensor_bytes)
        .sum();
    let out = y.detach();
    Ok((
        HeldStage {
            name: stage.name().to_string(),
            input_bytes: tensor_bytes(x),
            output_bytes: tensor_bytes(&out),
            kept_bytes,
            forward_peak,
            backward_peak,
            param_grad_bytes,
            cost,
        },
        out,
    ))
}

/// Measures every stage of `stages` from `x` in a dry run (each stage on its own, with the
/// chain's real activations), and the loss's kept bytes with `loss` on the chain's output.
/// `base_bytes` is what `meter` counts as alive at the call (parameters, input, ...). `meter`
/// must be the program's global allocator, or every byte count is 0.
pub fn profile_chain(
    stages: &[Stage],
    x: &Tensor,
    loss: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    meter: &CountingAlloc,
) -> Result<HeldChain> {
    if stages.is_empty() {
        return Err(Error::invalid("profile_chain", "the chain has no layers"));
    }
    let base_bytes = meter.live();
    let mut h = x.detach();
    let mut profiles = Vec::with_capacity(stages.len());
    for s in stages {
        let (p, out) = profile_stage(s, &h, meter)?;
        profiles.push(p);
        h = out;
    }
    let y = Var::from_tensor(&h)?.into_inner();
    drop(h);
    let before = meter.live();
    let l = loss(&y)?;
    let loss_bytes = meter.live().saturating_sub(before);
    drop(l);
    Ok(HeldChain {
        stages: profiles,
        base_bytes,
        loss_bytes,
    })
}
