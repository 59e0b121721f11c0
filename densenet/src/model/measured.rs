//! `Recompute::Budget` under a 16-bit precision policy: plans measured on the meta device.
//!
//! The budget model ([`super::budget`]) counts `f32` activations; under `bf16`/`f16` the
//! activations, the casts of the weights and the kernels' workspaces are other bytes. So there
//! a probe network of the same configuration runs forward and backward on the meta device
//! (the engine's exact accounting, no values), under the same precision policy, holding what
//! the real device holds, for candidate plans; the plan taken is one whose measured peak fits.
//!
//! Candidates run from all Naive to all Layer, one layer changing at a time: first each layer
//! to Bottleneck, then each to Layer, the largest layers (earlier blocks, later layers in a
//! block: the most input channels at the highest resolution) first. A bisection finds the
//! first candidate that fits, assuming the peak falls along the sequence; whatever the peaks
//! do, the plan returned was measured to fit.

use super::{DenseLayerMode, DenseNet, LayerModes};
use crate::error::{DenseNetError, Result};
use tape::{ops, Device, Labels, Tape, Tensor};

/// A plan for `model` whose forward and backward on an input of `input_shape`, with `held`
/// bytes already on the device, peak at most at `budget` bytes, measured on the meta device
/// under the model's precision policy.
pub(super) fn plan_measured(
    model: &DenseNet,
    input_shape: [usize; 4],
    budget: u64,
    held: u64,
) -> Result<LayerModes> {
    let meta = Device::meta();
    let mut probe = DenseNet::new(model.config().clone(), model.dtype(), &meta, 0)?
        .with_precision(model.precision());
    let x = Tensor::zeros(&input_shape, model.dtype(), &meta)?;
    let labels = Labels::new(&vec![0; input_shape[0]], &meta)?;
    // The real device holds `held` bytes (its parameters, optimizer state, input, labels): the
    // probe's own are on the meta device already, the rest reserved.
    let own = meta.memory().current() as u64;
    let _rest = meta.reserve(held.saturating_sub(own) as usize)?;
    let blocks: Vec<usize> = probe.blocks.iter().map(|b| b.layers.len()).collect();
    let order = largest_first(&blocks);
    let candidate = |i: usize| {
        let mut plan: LayerModes = blocks
            .iter()
            .map(|&n| vec![DenseLayerMode::Keep; n])
            .collect();
        for (j, &(b, l)) in order.iter().enumerate() {
            plan[b][l] = match (j < i, j + order.len() < i) {
                (_, true) => DenseLayerMode::RecomputeLayer,
                (true, false) => DenseLayerMode::RecomputeBottleneck,
                _ => DenseLayerMode::Keep,
            };
        }
        plan
    };
    let mut fits = |i: usize| -> Result<bool> {
        probe.set_plan(candidate(i))?;
        Ok(peak_of(&probe, &x, &labels)? <= budget)
    };
    let last = 2 * order.len();
    if !fits(last)? {
        return Err(DenseNetError::Config(format!(
            "memory budget {budget} bytes cannot be met under the {} precision policy: \
             recomputing every layer peaks above it (measured on the meta device)",
            model.precision()
        )));
    }
    // The first candidate that fits, `last` being one.
    let (mut lo, mut hi) = (0, last);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fits(mid)? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(candidate(hi))
}

/// The dense layers as `(block, layer)`, the largest first: earlier blocks first (a block runs
/// at four times the next one's positions), within a block the later layers (more input
/// channels) first.
fn largest_first(blocks: &[usize]) -> Vec<(usize, usize)> {
    blocks
        .iter()
        .enumerate()
        .flat_map(|(b, &n)| (0..n).rev().map(move |l| (b, l)))
        .collect()
}

/// The meta device's peak over one forward and backward of `probe` (its plan set).
fn peak_of(probe: &DenseNet, x: &Tensor, labels: &Labels) -> Result<u64> {
    let memory = x.device().memory();
    memory.reset_peak();
    {
        let mut tape = Tape::recording().with_precision(probe.precision());
        let logits = probe.forward(&mut tape, x)?;
        let loss = ops::cross_entropy_labels(&mut tape, &logits, labels)?;
        drop(tape.backward(&loss)?);
    }
    Ok(memory.peak() as u64)
}
