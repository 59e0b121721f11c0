//! `Efficiency::Budget`: per dense layer, the checkpoint planner picks Naive, Bottleneck or
//! Layer so that the predicted peak fits the budget at the least recompute FLOPs.
//!
//! The memory model follows what each op saves for backward (in units of one channel of one
//! feature map, `n * h * w * dtype bytes`): with `c` input channels, `b = bn_size * k` bottleneck
//! channels and `k` growth channels, a naive layer keeps concat (`c`, none for a single input),
//! ReLU1 (`c`), conv1 (`b`), ReLU2 (`b`) and its output (`k`); Bottleneck keeps `2b + k` and
//! holds `c + b` while recomputing (its fused concat-BN-ReLU writes only the activation); Layer
//! keeps `k` and holds `c + 2b + k` (plus `b` of slack) while recomputing. Fixed bytes: what the device holds when forward starts, parameter gradients, the
//! stem output and the gradients in flight (about two block-sized tensors).

use super::{DenseNet, LayerMode};
use crate::config::DenseNetConfig;
use crate::error::{DenseNetError, Result};
use checkpoint::planner::{plan_choices, Choice};

/// Stored bytes, recompute-time bytes and recompute FLOPs of one dense layer under each mode
/// (indexed Naive, Bottleneck, Layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerCost {
    /// Bytes kept through forward.
    pub stored: [u64; 3],
    /// Bytes alive while the layer is recomputed.
    pub transient: [u64; 3],
    /// Recompute FLOPs.
    pub flops: [f64; 3],
}

const MODES: [LayerMode; 3] = [LayerMode::Naive, LayerMode::Bottleneck, LayerMode::Layer];

/// Spatial size after the stem, then per block.
fn block_sizes(config: &DenseNetConfig, h: usize, w: usize) -> Vec<(usize, usize)> {
    let (mut h, mut w) = (h, w);
    if !config.small_inputs {
        let stem = |s: usize| (((s + 6 - 7) / 2 + 1) + 2 - 3) / 2 + 1;
        h = stem(h);
        w = stem(w);
    }
    let mut sizes = Vec::new();
    for _ in &config.block_config {
        sizes.push((h, w));
        h /= 2;
        w /= 2;
    }
    sizes
}

/// Per block, per layer: what each mode costs for an input of `input_shape` with elements of
/// `elem_bytes` bytes.
pub fn layer_costs(
    config: &DenseNetConfig,
    input_shape: [usize; 4],
    elem_bytes: usize,
) -> Vec<Vec<LayerCost>> {
    let [n, _, h, w] = input_shape;
    let (block_in, _) = config.block_channels();
    let (k, b) = (
        config.growth_rate as u64,
        (config.bn_size * config.growth_rate) as u64,
    );
    block_sizes(config, h, w)
        .iter()
        .zip(&config.block_config)
        .zip(&block_in)
        .map(|(((bh, bw), &layers), &c0)| {
            let unit = (n * bh * bw * elem_bytes) as u64;
            let px = (n * bh * bw) as f64;
            (0..layers)
                .map(|l| {
                    let c = (c0 + l * config.growth_rate) as u64;
                    let concat = if l == 0 { 0 } else { c };
                    let naive = concat + c + 2 * b + k;
                    // BN and ReLU cost a few FLOPs per element; convs 2 per multiply-add.
                    let head = px * (2.0 * (c * b) as f64 + 8.0 * c as f64);
                    let tail = px * (2.0 * 9.0 * (b * k) as f64 + 8.0 * b as f64);
                    LayerCost {
                        stored: [naive * unit, (2 * b + k) * unit, k * unit],
                        // The efficient modes fuse concat, BN and ReLU: no concat buffer and no
                        // pre-activation while recomputing (one `b` of slack for gradients).
                        transient: [0, (c + b) * unit, (c + 3 * b + k) * unit],
                        flops: [0.0, head, head + tail],
                    }
                })
                .collect()
        })
        .collect()
}

/// Bytes that do not depend on the modes, beyond `held` (what the device holds at the start).
fn fixed_bytes(model: &DenseNet, input_shape: [usize; 4], held: u64) -> u64 {
    let config = model.config();
    let [n, _, h, w] = input_shape;
    let e = model.dtype().size_in_bytes();
    let (block_in, c_final) = config.block_channels();
    let sizes = block_sizes(config, h, w);
    let stem_maps = if config.small_inputs { 1 } else { 4 };
    let stem = (n * config.num_init_features * h * w * e * stem_maps) as u64;
    let grads = sizes
        .iter()
        .enumerate()
        .map(|(i, (bh, bw))| {
            let c_end = block_in[i] + config.block_config[i] * config.growth_rate;
            (n * bh * bw * e * (2 * c_end + 2 * config.bn_size * config.growth_rate)) as u64
        })
        .max()
        .unwrap_or(0);
    let (lh, lw) = sizes.last().copied().unwrap_or((1, 1));
    let head = (n * c_final * lh * lw * e * 3) as u64;
    held + model.parameter_bytes() as u64 + stem + grads + head
}

/// Per block, per layer: the cheapest modes whose predicted peak fits `budget` bytes.
pub fn plan_layer_modes(
    model: &DenseNet,
    input_shape: [usize; 4],
    budget: u64,
    held: u64,
) -> Result<Vec<Vec<LayerMode>>> {
    let costs = layer_costs(model.config(), input_shape, model.dtype().size_in_bytes());
    let fixed = fixed_bytes(model, input_shape, held);
    let free = budget.checked_sub(fixed).ok_or_else(|| {
        DenseNetError::Config(format!(
            "memory budget {budget} bytes is below the {fixed} bytes needed whatever the mode \
             (parameters, their gradients, input, stem, gradients in flight)"
        ))
    })?;
    let units: Vec<Vec<Choice>> = costs
        .iter()
        .flatten()
        .map(|c| {
            (0..3)
                .map(|m| Choice {
                    stored: c.stored[m],
                    transient: c.transient[m],
                    cost: c.flops[m],
                })
                .collect()
        })
        .collect();
    let picks = plan_choices(&units, free).map_err(|_| {
        let floor: u64 = costs.iter().flatten().map(|c| c.stored[2]).sum::<u64>()
            + costs
                .iter()
                .flatten()
                .map(|c| c.transient[2])
                .max()
                .unwrap_or(0);
        DenseNetError::Config(format!(
            "memory budget {budget} bytes cannot be met: recomputing every layer predicts {} bytes",
            fixed + floor
        ))
    })?;
    let mut it = picks.into_iter();
    Ok(costs
        .iter()
        .map(|block| {
            block
                .iter()
                .map(|_| MODES[it.next().unwrap_or(2)])
                .collect()
        })
        .collect())
}
