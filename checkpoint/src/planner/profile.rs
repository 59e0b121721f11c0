//! Dry-run profiling of a chain on real tensors: per-layer saved bytes from the device's memory
//! accounting and per-layer forward time.

use super::{ChainModel, LayerProfile};
use crate::sequential::Layer;
use std::time::Instant;
use tape::{Phase, Result, Tape, Tensor};

/// Runs `layers` once on `x` with a recording tape and measures, per layer, the bytes it adds
/// (output plus what its backward saves) and its forward time; then runs backward from the output
/// and takes the bytes it needed above the stored activations (gradients in flight, kernel
/// workspaces) as the model's `grad_bytes`. The run uses the recompute phase, so batch norm
/// running statistics are not touched; it resets the device's peak counter. `base_bytes` is what
/// stays allocated whatever the plan (parameters, input, parameter gradients).
pub fn profile_chain<'a>(
    tape_context: &Tape<'a>,
    layers: &'a [Layer<'a>],
    x: &Tensor,
    base_bytes: u64,
) -> Result<ChainModel> {
    let mut ctx = tape_context.context();
    ctx.phase = Phase::Recompute;
    ctx.training = true;
    let mut tape = Tape::with_context(true, ctx);
    let memory = x.device().memory();
    let mut h = x.clone();
    let mut profiles = Vec::with_capacity(layers.len());
    for l in layers {
        let before = memory.current();
        let t0 = Instant::now();
        let y = l.forward(&mut tape, &h)?;
        let cost = t0.elapsed().as_secs_f64();
        let after = memory.current();
        let output_bytes = y.size_in_bytes() as u64;
        profiles.push(LayerProfile {
            name: l.name().to_string(),
            saved_bytes: (after.saturating_sub(before)) as u64,
            output_bytes,
            cost,
        });
        h = y;
    }
    let stored = memory.current();
    memory.reset_peak();
    let seed = Tensor::ones(h.shape(), h.dtype(), h.device())?;
    let grads = tape.backward_from(&h, seed)?;
    let grad_bytes = memory.peak().saturating_sub(stored) as u64;
    drop(grads);
    Ok(ChainModel {
        layers: profiles,
        base_bytes,
        grad_bytes,
    })
}
