//! `Memory::Budget`: per dense layer, the checkpoint planner picks Naive, Bottleneck or
//! Layer so that the predicted peak fits the budget at the least recompute FLOPs.
//!
//! The memory model follows what each op keeps and allocates, in units of one channel of one
//! feature map of the block (`n * h * w * dtype bytes`), with `c` input channels, `b = bn_size *
//! k` bottleneck channels, `k` growth channels and `C` channels in the whole block. Every block's
//! features live in one [`tape::ops::BlockStorage`] of `C` channels, allocated (by the stem or
//! the transition before it) when the block starts; each layer appends its output to it.
//! Budget mode runs transitions and the head recomputed, and Bottleneck and Layer layers with
//! the fused batch norm + ReLU reading the storage in place.
//!
//! - Kept through forward: a naive layer keeps its copy of the storage's first `c` channels
//!   (`c`), ReLU1 (`c`), conv1 (`b`) and ReLU2 (`b`); Bottleneck keeps `2b`; Layer nothing (its
//!   recompute reads its output back from the storage); the stem and each transition the next
//!   block's storage (`C'` of the next block; the ImageNet stem also its maps).
//! - During a layer's backward, beside the block's gradient buffer (`C`, made by the head's or
//!   the next transition's backward, added into in place by every consumer), it holds at most:
//!   naive `max(2c + 4b, 4c)` (its kept bytes included: ReLU2's and batch norm 2's gradients,
//!   then ReLU1's; the output's gradient with conv2's input gradient and conv1's step stay
//!   within these), Bottleneck `max(4b, 2c + 2b)` and Layer `2k + max(c + 4b, 2c + b)` (the
//!   output's gradient and the output read back,
//!   then the recomputed activations with their gradients), plus `k` with dropout; and the
//!   parameter gradients made so far (every parameter from this layer on). The head peaks at
//!   `3C` of the last block (activation, its gradient, the block's gradient buffer), a
//!   transition at `max(3C, 2C + c')` of its block plus its seed and recomputed output (`2c'`
//!   of the next block), the stem at block 1's gradient buffer with its input's gradient copied
//!   out of it (and the ImageNet stem's ReLU and batch norm gradients).
//!
//! Backward meets the layers in reverse, each after every later one has freed what it kept, so
//! `peak = fixed + max over the stem, layers, transitions and head of (bytes kept by it and
//! everything before it + its backward bytes)`, `fixed` being what the device holds as forward
//! starts, the pooled features and logits, and room for the largest convolution's kernel
//! workspace, as the engine reports it ([`tape::ops::conv2d_workspace_bytes`]: on the CPU column
//! blocks, a partial weight gradient per thread group and a flipped kernel; on a GPU cuDNN's
//! workspace limit). [`plan_layer_modes`]
//! minimises the recompute FLOPs under that exactly ([`checkpoint::planner::plan_in_order`]).

use super::{DenseLayerMode, DenseNet};
use crate::config::DenseNetConfig;
use crate::error::{DenseNetError, Result};
use checkpoint::planner::{plan_in_order, Choice};
use tape::ops::{conv2d_workspace_bytes, Conv2dOptions};
use tape::{DType, Device};

/// Kept bytes, backward-peak bytes and recompute FLOPs of one dense layer under each mode
/// (indexed Naive, Bottleneck, Layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerCost {
    /// Bytes kept through forward.
    pub stored: [u64; 3],
    /// Bytes alive at the peak of the layer's backward beyond what it and everything before it
    /// keep: gradients of its inputs and output, what it recomputes, the gradients in flight
    /// inside it, and the parameter gradients made so far.
    pub transient: [u64; 3],
    /// Recompute FLOPs.
    pub flops: [f64; 3],
}

const MODES: [DenseLayerMode; 3] = [
    DenseLayerMode::Keep,
    DenseLayerMode::RecomputeBottleneck,
    DenseLayerMode::RecomputeLayer,
];

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
    /// Every convolution's shape, for its kernel workspace.
    convs: Vec<ConvShape>,
}

/// A convolution of the network: input shape, weight shape, stride and padding.
#[derive(Clone, Copy)]
struct ConvShape {
    x: [usize; 4],
    w: [usize; 4],
    opts: Conv2dOptions,
}

fn shape_of(config: &DenseNetConfig, input_shape: [usize; 4], elem_bytes: usize) -> Shape {
    let [n, _, h, w] = input_shape;
    let (block_in, c_final) = config.block_channels();
    let batch = n;
    let (n, e) = (n as u64, elem_bytes as u64);
    let (mut bh, mut bw) = (h, w);
    let mut stem_half = 0;
    let (k, b) = (config.growth_rate, config.bn_size * config.growth_rate);
    let conv = |cin: usize, cout: usize, k: usize, (stride, padding), (h, w)| ConvShape {
        x: [batch, cin, h, w],
        w: [cout, cin, k, k],
        opts: Conv2dOptions { stride, padding },
    };
    let c0 = config.num_init_features;
    let mut convs = Vec::new();
    if config.small_inputs {
        convs.push(conv(config.in_channels, c0, 3, (1, 1), (h, w)));
    } else {
        let half = |s: usize| (s + 6 - 7) / 2 + 1;
        let pool = |s: usize| (s + 2 - 3) / 2 + 1;
        stem_half = n * (half(h) * half(w)) as u64 * e;
        convs.push(conv(config.in_channels, c0, 7, (2, 3), (h, w)));
        bh = pool(half(h));
        bw = pool(half(w));
    }
    let mut blocks = Vec::new();
    for (i, (&layers, &c_in)) in config.block_config.iter().zip(&block_in).enumerate() {
        blocks.push((n * (bh * bw) as u64 * e, c_in as u64, layers as u64));
        let c_end = c_in + layers * k;
        convs.push(conv(c_end - k, b, 1, (1, 0), (bh, bw)));
        convs.push(conv(b, k, 3, (1, 1), (bh, bw)));
        if let Some(&c_next) = block_in.get(i + 1) {
            convs.push(conv(c_end, c_next, 1, (1, 0), (bh, bw)));
        }
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
        convs,
    }
}

/// Bytes a convolution may hold as kernel workspace while it runs, beyond its tensors: the most
/// any convolution of the network reserves ([`tape::ops::conv2d_workspace_bytes`]: on the CPU
/// column blocks, partial weight gradients and a flipped kernel, per thread group; on a GPU
/// cuDNN's workspace limit).
fn workspace_bytes(device: &Device, s: &Shape, dtype: DType) -> u64 {
    s.convs
        .iter()
        .filter_map(|c| conv2d_workspace_bytes(device, c.x, c.w, c.opts, dtype).ok())
        .max()
        .unwrap_or(0) as u64
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

/// Parameter bytes of the stem: conv0 (3x3 CIFAR, 7x7 ImageNet) and the ImageNet stem's norm0.
fn stem_param_bytes(config: &DenseNetConfig, s: &Shape) -> u64 {
    let c0 = config.num_init_features as u64;
    let (k, norm) = if config.small_inputs {
        (9, 0)
    } else {
        (49, 2 * c0)
    };
    (c0 * config.in_channels as u64 * k + norm) * s.elem
}

/// Bytes of every parameter of a network of `config` with elements of `elem_bytes` bytes, as the
/// budget model counts them (their gradients are made during backward).
pub fn parameter_bytes(config: &DenseNetConfig, elem_bytes: usize) -> u64 {
    let s = shape_of(config, [1, config.in_channels, 64, 64], elem_bytes);
    let layers: u64 = s
        .blocks
        .iter()
        .enumerate()
        .map(|(i, &(_, c0, n))| {
            let own: u64 = (0..n).map(|l| layer_param_bytes(&s, c0 + l * s.k)).sum();
            own + transition_param_bytes(&s, i)
        })
        .sum();
    stem_param_bytes(config, &s) + layers + head_param_bytes(&s, config.num_classes as u64)
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
            let c_block = c0 + layers * k;
            (0..layers)
                .map(|l| {
                    let c = c0 + l * k;
                    // The layer's output is appended to the block's storage (kept by whoever
                    // allocated it): a layer keeps only its own intermediates.
                    let stored = [2 * c + 2 * b, 2 * b, 0];
                    // Peaks of the layer's backward, what it keeps included, beside the block's
                    // gradient buffer (every channel, `c_block`): the output's gradient copied
                    // out of it (`k`), then step by step (see the module docs).
                    // (Steps whose bytes another step always reaches are left out: with
                    // `b >= k`, conv2's backward `2c + 3b + k` and `k + 3b` are within
                    // `2c + 4b` and `4b`, and conv1's `3c + b` within `max(2c + 4b, 4c)`.)
                    let own = [
                        (2 * c + 4 * b).max(4 * c),
                        (4 * b).max(2 * c + 2 * b),
                        2 * k + (c + 4 * b).max(2 * c + b),
                    ];
                    let transient = std::array::from_fn(|m| {
                        let alive = c_block + own[m] + drop;
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

/// What the device holds beyond `held` whatever the modes until backward ends: the head's
/// pooled features, logits and loss.
fn fixed_bytes(config: &DenseNetConfig, s: &Shape, held: u64) -> u64 {
    held + s.n * (s.c_final + 2 * config.num_classes as u64) * s.elem + s.elem
}

/// The parts of the network that have no choice, as planner units: the stem, each transition
/// (after its block) and the head. Each keeps its outputs through forward and, in its backward,
/// holds its transient bytes, the parameter gradients made by then included.
#[derive(Clone, Debug, PartialEq)]
struct Glue {
    stem: Choice,
    transitions: Vec<Choice>,
    head: Choice,
}

fn glue(config: &DenseNetConfig, s: &Shape) -> Glue {
    let fixed_unit = |stored, transient| Choice {
        stored,
        transient,
        cost: 0.0,
    };
    let classes = config.num_classes as u64;
    let mut after = head_param_bytes(s, classes);
    let &(unit_last, c0_last, layers_last) = s.blocks.last().unwrap_or(&(0, 0, 0));
    // Recomputed activation, its gradient and the parts' gradients.
    let head = fixed_unit(0, 3 * (c0_last + layers_last * s.k) * unit_last + after);
    let mut transitions = vec![fixed_unit(0, 0); s.blocks.len().saturating_sub(1)];
    for (i, &(unit, c0, layers)) in s.blocks.iter().enumerate().rev() {
        after += transition_param_bytes(s, i);
        if let Some(&(unit_next, c_next, layers_next)) = s.blocks.get(i + 1) {
            // It allocates the next block's storage (kept through forward, freed by the time
            // its backward runs). Its backward holds the seed (its output's gradient, copied
            // out of the next block's) and the recomputed output, and the recomputed activation,
            // its gradient and this block's gradient buffer, or the conv output's gradient
            // while the activation's is made.
            let c_end = c0 + layers * s.k;
            let stored = (c_next + layers_next * s.k) * unit_next;
            let alive = (3 * c_end).max(2 * c_end + c_next) * unit + 2 * c_next * unit_next;
            transitions[i] = fixed_unit(stored, alive.saturating_sub(stored) + after);
        }
        after += (0..layers)
            .map(|l| layer_param_bytes(s, c0 + l * s.k))
            .sum::<u64>();
    }
    // It allocates block 1's storage, whose first channels take conv0's output (CIFAR) or the
    // max pool's (ImageNet, which also keeps conv0's output for norm0, the ReLU's for it and the
    // max pool, and the pooled map for the max pool). Its backward: the block input's gradient
    // copied out of block 1's gradient buffer (both alive for a moment), then on the ImageNet
    // stem the gradients of the ReLU and batch norm outputs; every parameter gradient exists by
    // then.
    let (unit1, c0, layers1) = s.blocks[0];
    let storage = (c0 + layers1 * s.k) * unit1;
    let maps = c0 * unit1 + 2 * c0 * s.stem_half;
    let kept_maps = if config.small_inputs { 0 } else { maps };
    let stem_params = stem_param_bytes(config, s);
    let stored = storage + kept_maps;
    let alive = kept_maps + (storage + c0 * unit1).max(maps);
    Glue {
        stem: fixed_unit(stored, alive.saturating_sub(stored) + after + stem_params),
        transitions,
        head,
    }
}

/// The budget model of one network for one input shape: `peak = fixed + max over the units in
/// order (stem, each block's layers, its transition, ..., head) of (bytes kept by the units up
/// to it + its backward bytes)`.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetModel {
    /// Per block, per layer: what each mode costs ([`layer_costs`]).
    pub layers: Vec<Vec<LayerCost>>,
    /// Bytes held whatever the modes until backward ends: what the device held as forward
    /// started, pooled features, logits and loss, and `workspace`.
    pub fixed: u64,
    /// The part of `fixed` set aside for convolution kernel workspaces (see the module docs).
    pub workspace: u64,
    glue: Glue,
}

impl BudgetModel {
    /// The model of `model` (as [`crate::Memory::Budget`] runs it: transitions and head
    /// recomputed, fused concat-BN-ReLU in the Bottleneck and Layer modes;
    /// [`crate::Memory::RecomputeLayer`] runs exactly as all-Layer) on an input of `input_shape`,
    /// when the device holds `held` bytes as forward starts.
    pub fn new(model: &DenseNet, input_shape: [usize; 4], held: u64) -> Self {
        let config = model.config();
        let elem = model.dtype().size_in_bytes();
        let s = shape_of(config, input_shape, elem);
        let workspace = workspace_bytes(model.device(), &s, model.dtype());
        BudgetModel {
            layers: layer_costs(config, input_shape, elem),
            fixed: fixed_bytes(config, &s, held) + workspace,
            workspace,
            glue: glue(config, &s),
        }
    }

    /// Every unit in order with its options: the stem, each block's layers (Naive, Bottleneck,
    /// Layer), its transition, ..., the head.
    fn units(&self) -> Vec<Vec<Choice>> {
        self.labelled_units().into_iter().map(|(_, u)| u).collect()
    }

    /// [`BudgetModel::units`] with each unit's label ([`super::unit_label`], `stem`, `head`).
    fn labelled_units(&self) -> Vec<(String, Vec<Choice>)> {
        let mut units = vec![("stem".to_string(), vec![self.glue.stem])];
        for (i, block) in self.layers.iter().enumerate() {
            for (l, c) in block.iter().enumerate() {
                units.push((
                    super::unit_label(i, Some(l)),
                    (0..3)
                        .map(|m| Choice {
                            stored: c.stored[m],
                            transient: c.transient[m],
                            cost: c.flops[m],
                        })
                        .collect(),
                ));
            }
            if let Some(t) = self.glue.transitions.get(i) {
                units.push((super::unit_label(i, None), vec![*t]));
            }
        }
        units.push(("head".to_string(), vec![self.glue.head]));
        units
    }

    /// Predicted peak bytes with each dense layer in the mode `modes` gives (per block, per
    /// layer); an error if `modes` does not match the blocks.
    pub fn predict(&self, modes: &[Vec<DenseLayerMode>]) -> Result<u64> {
        let peaks = self.unit_peaks(modes)?;
        Ok(peaks.iter().map(|(_, p)| *p).max().unwrap_or(self.fixed))
    }

    /// The predicted peak bytes of each unit's backward (the stem, every dense layer in the mode
    /// `modes` gives, every transition, the head), in forward order, labelled as the model's
    /// backward-peak marks label them (see [`tape::Tape::mark`]): `fixed`, what the unit and
    /// everything before it keep, and the unit's transient bytes. The peak of the step is the
    /// largest.
    pub fn unit_peaks(&self, modes: &[Vec<DenseLayerMode>]) -> Result<Vec<(String, u64)>> {
        let (layers, modes_len) = (&self.layers, modes.iter().map(Vec::len));
        if modes.len() != layers.len() || modes_len.zip(layers).any(|(m, c)| m != c.len()) {
            return Err(DenseNetError::Config(format!(
                "layer modes for blocks of {:?} layers, the model has blocks of {:?}",
                modes.iter().map(Vec::len).collect::<Vec<_>>(),
                layers.iter().map(Vec::len).collect::<Vec<_>>()
            )));
        }
        let mut picks = modes
            .iter()
            .flatten()
            .map(|mode| MODES.iter().position(|x| x == mode).unwrap_or(2));
        let mut kept = 0u64;
        let mut out = Vec::new();
        for (label, unit) in self.labelled_units() {
            let c = if unit.len() == 1 {
                unit[0]
            } else {
                unit[picks.next().unwrap_or(2)]
            };
            kept += c.stored;
            out.push((label, self.fixed + kept + c.transient));
        }
        Ok(out)
    }
}

/// The budget model's predicted peak bytes of one training step of `model` on an input of
/// `input_shape` with each dense layer in the mode `modes` gives, when the device holds `held`
/// bytes as forward starts ([`BudgetModel::predict`]). [`plan_layer_modes`] picks modes whose
/// prediction fits a budget; this says what the model predicts for any choice.
pub fn predicted_peak(
    model: &DenseNet,
    input_shape: [usize; 4],
    modes: &[Vec<DenseLayerMode>],
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
) -> Result<Vec<Vec<DenseLayerMode>>> {
    let bm = BudgetModel::new(model, input_shape, held);
    let free = budget.checked_sub(bm.fixed).ok_or_else(|| {
        DenseNetError::Config(format!(
            "memory budget {budget} bytes is below the {} bytes the device holds and the head \
             keeps whatever the modes",
            bm.fixed
        ))
    })?;
    let units = bm.units();
    let picks = plan_in_order(&units, free).map_err(|_| {
        let all_layer = bm
            .predict(
                &bm.layers
                    .iter()
                    .map(|b| vec![DenseLayerMode::RecomputeLayer; b.len()])
                    .collect::<Vec<_>>(),
            )
            .unwrap_or(0);
        DenseNetError::Config(format!(
            "memory budget {budget} bytes cannot be met: recomputing every layer predicts {} \
             bytes",
            all_layer
        ))
    })?;
    let mut it = picks
        .iter()
        .zip(&units)
        .filter(|(_, u)| u.len() == 3)
        .map(|(&p, _)| MODES[p]);
    Ok(bm
        .layers
        .iter()
        .map(|block| {
            block
                .iter()
                .map(|_| it.next().unwrap_or(DenseLayerMode::RecomputeLayer))
                .collect()
        })
        .collect())
}
