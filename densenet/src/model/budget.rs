//! `Efficiency::Budget`: per dense layer, the checkpoint planner picks Naive, Bottleneck or
//! Layer so that the predicted peak fits the budget at the least recompute FLOPs.
//!
//! The memory model follows what each op keeps and allocates, in units of one channel of one
//! feature map of the block (`n * h * w * dtype bytes`), with `c` input channels, `b = bn_size *
//! k` bottleneck channels and `k` growth channels. Budget mode runs transitions and the head
//! recomputed, and Bottleneck and Layer layers with the fused concat-BN-ReLU.
//!
//! - Kept through forward: a naive layer keeps concat (`c`, none for a single input), ReLU1
//!   (`c`), conv1 (`b`), ReLU2 (`b`) and its output (`k`); Bottleneck keeps `2b + k`; Layer
//!   keeps `k`. Whatever the modes: the stem's maps, each transition's output, the head's pooled
//!   features and logits.
//! - During a layer's backward (its own kept bytes are then freed as it goes, its output already
//!   is), besides the gradients of its `c` inputs and of its output (`k`), it holds at most: naive
//!   `concat + max(c + 4b, 3c)` (e.g. ReLU1's output with its gradient and the batch norm's
//!   input gradient), Bottleneck `max(4b, 3c + 2b)` and Layer `max(c + 4b + k, 3c + k)` (the
//!   recomputed concat-BN-ReLU output, its gradient and the gradients of the parts), plus `k`
//!   with dropout; and the parameter gradients made so far (every parameter from this layer on).
//!   The head peaks at `3c` of the last block (activation, its gradient, the parts' gradients), a
//!   transition at `max(3c, 2c + c')` of its block, the stem at its output's gradient (and the
//!   ImageNet stem's ReLU and batch norm gradients).
//!
//! So `peak = fixed + sum(kept) + max(backward peaks)`, an upper bound of the engine's exact
//! accounting (a layer's backward peak is charged as if every layer after it still kept its
//! bytes) that is tight when the largest backward peak comes first, e.g. the last layers of a
//! single block; convolution workspaces (at most 256 KiB per thread group on the CPU) are left
//! out.

use super::{DenseNet, LayerMode};
use crate::config::DenseNetConfig;
use crate::error::{DenseNetError, Result};
use checkpoint::planner::{plan_choices, Choice};

/// Kept bytes, backward-peak bytes and recompute FLOPs of one dense layer under each mode
/// (indexed Naive, Bottleneck, Layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerCost {
    /// Bytes kept through forward.
    pub stored: [u64; 3],
    /// Bytes alive during the layer's backward beyond everything kept: gradients of its inputs
    /// and output, what it recomputes, the gradients in flight inside it, and the parameter
    /// gradients made so far.
    pub transient: [u64; 3],
    /// Recompute FLOPs.
    pub flops: [f64; 3],
}

const MODES: [LayerMode; 3] = [LayerMode::Naive, LayerMode::Bottleneck, LayerMode::Layer];

/// The sizes the model needs, for one input shape and element size.
struct Shape {
    /// Per block: bytes of one channel, input channels, layers.
    blocks: Vec<(u64, u64, u64)>,
    k: u64,
    b: u64,
    /// Bytes of one channel of the ImageNet stem's conv0 output (0 for the CIFAR stem).
    stem_half: u64,
    /// Channels of the last block's output.
    c_final: u64,
    n: u64,
    elem: u64,
}

fn shape_of(config: &DenseNetConfig, input_shape: [usize; 4], elem_bytes: usize) -> Shape {
    let [n, _, h, w] = input_shape;
    let (block_in, c_final) = config.block_channels();
    let (n, e) = (n as u64, elem_bytes as u64);
    let (mut bh, mut bw) = (h, w);
    let mut stem_half = 0;
    if !config.small_inputs {
        let conv = |s: usize| (s + 6 - 7) / 2 + 1;
        let pool = |s: usize| (s + 2 - 3) / 2 + 1;
        stem_half = n * (conv(h) * conv(w)) as u64 * e;
        bh = pool(conv(h));
        bw = pool(conv(w));
    }
    let mut blocks = Vec::new();
    for (&layers, &c0) in config.block_config.iter().zip(&block_in) {
        blocks.push((n * (bh * bw) as u64 * e, c0 as u64, layers as u64));
        bh /= 2;
        bw /= 2;
    }
    Shape {
        blocks,
        k: config.growth_rate as u64,
        b: (config.bn_size * config.growth_rate) as u64,
        stem_half,
        c_final: c_final as u64,
        n,
        elem: e,
    }
}

/// Bytes of one dense layer's parameters with `c` input channels.
fn layer_param_bytes(s: &Shape, c: u64) -> u64 {
    (2 * c + c * s.b + 2 * s.b + 9 * s.b * s.k) * s.elem
}

/// Parameter bytes of the transition after block `i` (0 after the last block).
fn transition_param_bytes(s: &Shape, i: usize) -> u64 {
    match s.blocks.get(i + 1) {
        Some(&(_, c_next, _)) => {
            let (_, c0, layers) = s.blocks[i];
            let c_end = c0 + layers * s.k;
            (2 * c_end + c_end * c_next) * s.elem
        }
        None => 0,
    }
}

/// Parameter bytes of norm5 and the classifier.
fn head_param_bytes(s: &Shape, classes: u64) -> u64 {
    (2 * s.c_final + s.c_final * classes + classes) * s.elem
}

/// Per block, per layer: what each mode costs for an input of `input_shape` with elements of
/// `elem_bytes` bytes.
pub fn layer_costs(
    config: &DenseNetConfig,
    input_shape: [usize; 4],
    elem_bytes: usize,
) -> Vec<Vec<LayerCost>> {
    let s = shape_of(config, input_shape, elem_bytes);
    let (k, b) = (s.k, s.b);
    let drop = if config.drop_rate > 0.0 { k } else { 0 };
    // Parameter gradients alive during a layer's backward: its own and everything after it.
    let mut after = head_param_bytes(&s, config.num_classes as u64);
    let mut params_from = vec![Vec::new(); s.blocks.len()];
    for (i, &(_, c0, layers)) in s.blocks.iter().enumerate().rev() {
        after += transition_param_bytes(&s, i);
        let mut v = vec![0; layers as usize];
        for l in (0..layers).rev() {
            after += layer_param_bytes(&s, c0 + l * k);
            v[l as usize] = after;
        }
        params_from[i] = v;
    }
    s.blocks
        .iter()
        .zip(&params_from)
        .map(|(&(unit, c0, layers), params)| {
            let px = (unit / s.elem) as f64;
            (0..layers)
                .map(|l| {
                    let c = c0 + l * k;
                    let concat = if l == 0 { 0 } else { c };
                    let stored = [concat + c + 2 * b + k, 2 * b + k, k];
                    // Peaks of the layer's own backward (its output is freed by then), then
                    // what it keeps is subtracted: that part is already in `stored`.
                    let own = [
                        (concat + c + 4 * b).max(concat + 3 * c),
                        (4 * b).max(3 * c + 2 * b),
                        (c + 4 * b + k).max(3 * c + k),
                    ];
                    let transient = std::array::from_fn(|m| {
                        let alive = c + k + own[m] + drop;
                        alive.saturating_sub(stored[m]) * unit + params[l as usize]
                    });
                    // BN and ReLU cost a few FLOPs per element; convs 2 per multiply-add.
                    let head = px * (2.0 * (c * b) as f64 + 8.0 * c as f64);
                    let tail = px * (2.0 * 9.0 * (b * k) as f64 + 8.0 * b as f64);
                    LayerCost {
                        stored: stored.map(|x| x * unit),
                        transient,
                        flops: [0.0, head, head + tail],
                    }
                })
                .collect()
        })
        .collect()
}

/// Bytes kept whatever the modes, beyond `held` (what the device holds when forward starts):
/// the stem's maps, each transition's output, the head's pooled features, logits and loss.
fn fixed_bytes(config: &DenseNetConfig, s: &Shape, held: u64) -> u64 {
    let (unit1, c0, _) = s.blocks[0];
    // CIFAR stem: conv0's output is block 1's input. ImageNet stem: conv0's output (kept by
    // norm0), the ReLU's (kept by it and the max pool) and the pooled block input.
    let stem = c0 * unit1 + 2 * c0 * s.stem_half;
    let transitions: u64 = s.blocks.iter().skip(1).map(|&(u, c, _)| c * u).sum();
    let head = s.n * (s.c_final + 2 * config.num_classes as u64) * s.elem + s.elem;
    held + stem + transitions + head
}

/// The largest backward peak outside the dense layers (head, transitions, stem), beyond what
/// is kept, with the parameter gradients made by then.
fn glue_transient(config: &DenseNetConfig, s: &Shape) -> u64 {
    let classes = config.num_classes as u64;
    let mut after = head_param_bytes(s, classes);
    let &(unit_last, c0_last, layers_last) = s.blocks.last().unwrap_or(&(0, 0, 0));
    let head = 3 * (c0_last + layers_last * s.k) * unit_last + after;
    let mut peak = head;
    for (i, &(unit, c0, layers)) in s.blocks.iter().enumerate().rev() {
        after += transition_param_bytes(s, i);
        if let Some(&(unit_next, c_next, _)) = s.blocks.get(i + 1) {
            // Recomputed activation, its gradient and the parts' gradients; the conv output's
            // gradient while the activation's is made; the seed and the recomputed output.
            let c_end = c0 + layers * s.k;
            let t = (3 * c_end).max(2 * c_end + c_next) * unit + 2 * c_next * unit_next;
            peak = peak.max(t + after);
        }
        after += (0..layers)
            .map(|l| layer_param_bytes(s, c0 + l * s.k))
            .sum::<u64>();
    }
    // The stem's backward: the block input's gradient, and on the ImageNet stem the gradients
    // of the ReLU and batch norm outputs; every parameter gradient exists by then.
    let (unit1, c0, _) = s.blocks[0];
    let stem_params = (c0 * config.in_channels as u64 * if config.small_inputs { 9 } else { 49 }
        + if config.small_inputs { 0 } else { 2 * c0 })
        * s.elem;
    peak.max(c0 * unit1 + 2 * c0 * s.stem_half + after + stem_params)
}

/// The budget model of one network for one input shape, in parts: `peak = fixed + sum(kept
/// bytes of each layer's mode) + max(glue, backward peak of each layer's mode)`.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetModel {
    /// Per block, per layer: what each mode costs ([`layer_costs`]).
    pub layers: Vec<Vec<LayerCost>>,
    /// Bytes needed whatever the modes: what the device held as forward started, the stem's
    /// maps, the transition outputs, pooled features and logits.
    pub fixed: u64,
    /// The largest backward peak outside the dense layers (head, transitions, stem), with the
    /// parameter gradients made by then.
    pub glue: u64,
}

impl BudgetModel {
    /// The model of `model` (as [`crate::Efficiency::Budget`] runs it: transitions and head
    /// recomputed, fused concat-BN-ReLU in the Bottleneck and Layer modes;
    /// [`crate::Efficiency::Layer`] runs exactly as all-Layer) on an input of `input_shape`,
    /// when the device holds `held` bytes as forward starts.
    pub fn new(model: &DenseNet, input_shape: [usize; 4], held: u64) -> Self {
        let config = model.config();
        let elem = model.dtype().size_in_bytes();
        let s = shape_of(config, input_shape, elem);
        BudgetModel {
            layers: layer_costs(config, input_shape, elem),
            fixed: fixed_bytes(config, &s, held),
            glue: glue_transient(config, &s),
        }
    }

    /// Predicted peak bytes with each dense layer in the mode `modes` gives (per block, per
    /// layer); an error if `modes` does not match the blocks.
    pub fn predict(&self, modes: &[Vec<LayerMode>]) -> Result<u64> {
        let (layers, modes_len) = (&self.layers, modes.iter().map(Vec::len));
        if modes.len() != layers.len() || modes_len.zip(layers).any(|(m, c)| m != c.len()) {
            return Err(DenseNetError::Config(format!(
                "layer modes for blocks of {:?} layers, the model has blocks of {:?}",
                modes.iter().map(Vec::len).collect::<Vec<_>>(),
                layers.iter().map(Vec::len).collect::<Vec<_>>()
            )));
        }
        let (mut stored, mut transient) = (0u64, self.glue);
        for (mode, cost) in modes.iter().flatten().zip(layers.iter().flatten()) {
            let m = MODES.iter().position(|x| x == mode).unwrap_or(2);
            stored += cost.stored[m];
            transient = transient.max(cost.transient[m]);
        }
        Ok(self.fixed + stored + transient)
    }
}

/// The budget model's predicted peak bytes of one training step of `model` on an input of
/// `input_shape` with each dense layer in the mode `modes` gives, when the device holds `held`
/// bytes as forward starts ([`BudgetModel::predict`]). [`plan_layer_modes`] picks modes whose
/// prediction fits a budget; this says what the model predicts for any choice.
pub fn predicted_peak(
    model: &DenseNet,
    input_shape: [usize; 4],
    modes: &[Vec<LayerMode>],
    held: u64,
) -> Result<u64> {
    BudgetModel::new(model, input_shape, held).predict(modes)
}

/// Per block, per layer: the cheapest modes whose predicted peak fits `budget` bytes.
pub fn plan_layer_modes(
    model: &DenseNet,
    input_shape: [usize; 4],
    budget: u64,
    held: u64,
) -> Result<Vec<Vec<LayerMode>>> {
    let BudgetModel {
        layers: costs,
        fixed,
        glue,
    } = BudgetModel::new(model, input_shape, held);
    let free = budget.checked_sub(fixed).ok_or_else(|| {
        DenseNetError::Config(format!(
            "memory budget {budget} bytes is below the {fixed} bytes needed whatever the mode \
             (what the device holds, input, stem, transition outputs)"
        ))
    })?;
    let mut units: Vec<Vec<Choice>> = costs
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
    // The head, transitions and stem: one option, nothing kept, their backward peak.
    units.push(vec![Choice {
        stored: 0,
        transient: glue,
        cost: 0.0,
    }]);
    let picks = plan_choices(&units, free).map_err(|_| {
        let all_layer: u64 = costs.iter().flatten().map(|c| c.stored[2]).sum::<u64>()
            + costs
                .iter()
                .flatten()
                .map(|c| c.transient[2])
                .max()
                .unwrap_or(0)
                .max(glue);
        DenseNetError::Config(format!(
            "memory budget {budget} bytes cannot be met: {fixed} bytes are needed whatever the \
             modes, and recomputing every layer predicts {} bytes",
            fixed + all_layer
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
