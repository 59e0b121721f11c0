//! `Recompute::Budget`: per dense layer, the checkpoint planner picks Naive, Bottleneck or
//! Layer so that the predicted peak fits the budget at the least recompute FLOPs.
//!
//! The memory model follows what each op keeps and allocates, in units of one channel of one
//! feature map of the block (`n * h * w * dtype bytes`), with `c` input channels, `b = bn_size *
//! k` bottleneck channels, `k` growth channels and `C` channels in the whole block. Every block's
//! features live in one [`tape::BlockStorage`] of `C` channels, allocated (by the stem or
//! the transition before it) when the block starts; each layer appends its output to it.
//! Budget mode runs transitions and the head recomputed, and Bottleneck and Layer layers with
//! the fused batch norm + ReLU reading the storage in place. Batch norm's saved statistics (mean
//! and inverse standard deviation: 16 bytes a channel on the CPU, two elements on a GPU) and
//! each convolution's kernel workspace, forward and backward, as the engine reports it
//! ([`tape::ops::conv2d_pass_workspace_bytes`]: on the CPU column blocks and partial weight
//! gradients per thread group and a flipped kernel; on a GPU cuDNN's workspace limit), are
//! counted where they are alive.
//!
//! - Kept through forward: a naive layer keeps its copy of the storage's first `c` channels (`c`),
//!   ReLU1 (`c`), conv1 (`b`) and ReLU2 (`b`) and both batch norms' statistics; Bottleneck keeps
//!   `2b` and both batch norms' statistics; Layer both batch norms' statistics and nothing else
//!   (its recompute's last op takes a stand-in for its output, which its backward does not
//!   read); the stem and each transition the next block's storage (`C'` of the next block; the
//!   ImageNet stem also its maps), a transition also its batch norm's statistics, the head
//!   norm5's. A recomputed batch norm's statistics are kept from the first pass, and its
//!   recompute normalises with them (no second statistics pass, nothing new allocated).
//! - During a layer's backward, beside the block's gradient buffer (`C`, made by the head's or the
//!   next transition's backward, added into in place by every consumer) and the parameter gradients
//!   of every later unit, it holds step by step (its kept bytes included): conv2's backward
//!   (conv2's input gradient, `b`, its weight gradient and workspace; it reads the output's
//!   gradient from the block's gradient buffer in place, but with dropout, which gives that
//!   gradient a buffer of its own, `k`), batch norm 2's (`2b`), then, once what only they needed is
//!   freed, conv1's and batch norm 1's (naive `c - 2b` net, its input gradient added into the
//!   block's in place; Bottleneck `2c` with the recomputed activation); Layer also holds the
//!   recomputed activations (`c + 3b` at conv2's backward, `c + 4b`, `2c + b`; with dropout `k`
//!   more), and with dropout its recompute runs conv2's forward again and its conv2 step holds
//!   dropout's gradient (`k`). The head holds the pooled features, their gradient and their
//!   recomputed copy, `3C` of the last block (activation, its gradient, the block's gradient
//!   buffer) and norm5's statistics; a transition its seed and recomputed output (`2c'` of the next
//!   block), then `3C` of its block or `2C + c'` with its convolution's workspace; the stem block
//!   1's gradient buffer with its input's gradient copied out of it, the ImageNet stem's max pool
//!   and batch norm gradients, and conv0's weight gradient with its workspace.
//!
//! Backward meets the layers in reverse, each after every later one has freed what it kept, so
//! `peak = fixed + max over the stem, layers, transitions and head of (bytes kept by it and
//! everything before it + its backward's bytes, or its forward's)`, `fixed` being what the
//! device holds as forward starts, the logits and the loss. Each block's storage is freed after
//! the backward of the first unit reading it in place; [`BudgetModel::unit_peaks`] follows that
//! (it predicts each unit's backward peak exactly on the CPU), the planner counts the storage
//! alive until the block's backward ends, an upper bound. [`plan_layer_modes`] minimises the
//! recompute FLOPs under that exactly ([`checkpoint::planner::plan_in_order`]).

use super::{DenseLayerMode, DenseNet};
use crate::config::DenseNetConfig;
use crate::error::{DenseNetError, Result};
use checkpoint::planner::{plan_in_order, Choice};
use tape::ops::{conv2d_pass_workspace_bytes, conv2d_workspace_bytes, Conv2dOptions, Conv2dPass};
use tape::{DType, Device};

/// Kept bytes, peak bytes and recompute FLOPs of one dense layer under each mode (indexed Naive,
/// Bottleneck, Layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerCost {
    /// Bytes kept through forward (batch norm's saved statistics included).
    pub stored: [u64; 3],
    /// Bytes alive at the peak of the layer's backward beyond what it and everything before it
    /// keep: the block's gradient buffer, gradients of its inputs and output, what it
    /// recomputes, its convolutions' kernel workspace, and the parameter gradients made so far
    /// (counting the block's storage alive throughout; see [`BudgetModel::unit_peaks`]).
    pub backward: [u64; 3],
    /// Bytes alive at the peak of the layer's forward beyond what it and everything before it
    /// keep: its temporaries and its convolutions' kernel workspace.
    pub forward: [u64; 3],
    /// The larger of `backward` and `forward`: what the planner charges the layer.
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
    /// conv0's shape.
    stem_conv: ConvShape,
    /// Per block: the input shape of its convolutions (batch, -, height, width).
    block_geo: Vec<[usize; 4]>,
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
    let stem_conv = convs[0];
    let mut blocks = Vec::new();
    let mut block_geo = Vec::new();
    for (i, (&layers, &c_in)) in config.block_config.iter().zip(&block_in).enumerate() {
        blocks.push((n * (bh * bw) as u64 * e, c_in as u64, layers as u64));
        block_geo.push([batch, 0, bh, bw]);
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
        stem_conv,
        block_geo,
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

/// What the model needs of the device: the kernel workspace of each pass of a convolution and
/// the bytes per channel of batch norm's saved statistics (mean and inverse standard deviation:
/// in f64 on the CPU, in the element type on a GPU).
struct Kernels<'a> {
    device: &'a Device,
    dtype: DType,
}

impl Kernels<'_> {
    /// Forward and backward kernel workspace bytes of a convolution of `cin` to `cout` channels
    /// with a `k` x `k` kernel (stride 1, padding `k / 2`) on inputs of `geo` (batch, -, height,
    /// width), the backward computing the input's gradient too.
    fn conv(&self, geo: [usize; 4], cin: u64, cout: u64, k: usize) -> [u64; 2] {
        let [n, _, h, w] = geo;
        let c = ConvShape {
            x: [n, cin as usize, h, w],
            w: [cout as usize, cin as usize, k, k],
            opts: Conv2dOptions {
                stride: 1,
                padding: k / 2,
            },
        };
        self.pass(c, true)
    }

    /// Forward and backward kernel workspace bytes of `c` (the backward computing the input's
    /// gradient when `input_grad`).
    fn pass(&self, c: ConvShape, input_grad: bool) -> [u64; 2] {
        [Conv2dPass::Forward, Conv2dPass::Backward { input_grad }].map(|pass| {
            conv2d_pass_workspace_bytes(self.device, c.x, c.w, c.opts, self.dtype, pass)
                .unwrap_or(0) as u64
        })
    }

    /// Bytes per channel of a batch norm's saved statistics.
    fn stats(&self) -> u64 {
        if self.device.is_cuda() {
            2 * self.dtype.size_in_bytes() as u64
        } else {
            16
        }
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

/// The largest of `steps` (bytes, some of them net of what was freed), 0 if none is positive.
fn top(steps: &[i128]) -> u64 {
    steps.iter().copied().max().unwrap_or(0).max(0) as u64
}

/// Per block, per layer: what each mode costs for an input of `input_shape` of `dtype` elements
/// on `device` (whose convolution kernels' workspace and batch norm statistics it counts).
pub fn layer_costs(
    config: &DenseNetConfig,
    input_shape: [usize; 4],
    dtype: DType,
    device: &Device,
) -> Vec<Vec<LayerCost>> {
    let s = shape_of(config, input_shape, dtype.size_in_bytes());
    layer_costs_of(config, &s, &Kernels { device, dtype })
}

fn layer_costs_of(config: &DenseNetConfig, s: &Shape, kern: &Kernels) -> Vec<Vec<LayerCost>> {
    let (k, b, e) = (s.k, s.b, s.elem);
    let st = i128::from(kern.stats());
    let drop = if config.drop_rate > 0.0 { k } else { 0 };
    // conv2's output and its gradient have buffers of their own only when dropout follows it;
    // otherwise conv2 writes the output straight into the block's storage and its backward reads
    // the gradient from the block's gradient buffer.
    let out2 = drop;
    // Parameter gradients alive as a layer's backward starts: everything after it.
    let mut after = head_param_bytes(s, config.num_classes as u64);
    let mut params_after = vec![Vec::new(); s.blocks.len()];
    for (i, &(_, c0, layers)) in s.blocks.iter().enumerate().rev() {
        after += transition_param_bytes(s, i);
        let mut v = vec![0; layers as usize];
        for l in (0..layers).rev() {
            v[l as usize] = after;
            after += layer_param_bytes(s, c0 + l * k);
        }
        params_after[i] = v;
    }
    s.blocks
        .iter()
        .zip(&params_after)
        .zip(&s.block_geo)
        .map(|((&(unit, c0, layers), params), &geo)| {
            let px = (unit / e) as f64;
            let c_block = c0 + layers * k;
            let u = |channels: u64| i128::from(channels * unit);
            let [w2f, w2b] = kern.conv(geo, b, k, 3).map(i128::from);
            let (p2, n2) = (i128::from(9 * b * k * e), i128::from(2 * b * e));
            (0..layers)
                .map(|l| {
                    let c = c0 + l * k;
                    let [w1f, w1b] = kern.conv(geo, c, b, 1).map(i128::from);
                    let (p1, n1) = (i128::from(c * b * e), i128::from(2 * c * e));
                    let (sc, sb) = (st * i128::from(c), st * i128::from(b));
                    // The layer's output is appended to the block's storage (kept by whoever
                    // allocated it): a layer keeps only its own intermediates and the batch
                    // norms' statistics of what it keeps.
                    let stored = [u(2 * c + 2 * b) + sc + sb, u(2 * b) + sc + sb, sc + sb];
                    // Its backward, beyond what it keeps and the block's gradient buffer, step
                    // by step (see the module docs): conv2's (the output's gradient, the
                    // input's, the weight's and the kernels' workspace), batch norm 2's, then
                    // conv1's and batch norm 1's after what only they needed is freed.
                    let conv2 = u(out2 + b) + p2 + w2b;
                    let norm2 = u(2 * b) + p2 + n2;
                    let (d, p21) = (u(drop), p2 + n2 + p1);
                    let recompute_conv2 = if drop > 0 {
                        u(2 * k + c + 2 * b) + w2f
                    } else {
                        0
                    };
                    let own = [
                        top(&[
                            conv2,
                            norm2,
                            u(c) - u(b) - sb + p21 + w1b,
                            u(c) - u(2 * b) - sb + p21 + n1,
                        ]),
                        top(&[conv2, norm2, u(2 * c) - sb + p21 + w1b]),
                        top(&[
                            u(out2 + c + b) + w1f,
                            recompute_conv2,
                            u(out2 + c + 3 * b) + d + p2 + w2b,
                            u(out2 + c + 4 * b) + p2 + n2,
                            u(out2 + 2 * c + b) - sb + p21 + w1b,
                        ]),
                    ];
                    let backward = own.map(|x| c_block * unit + params[l as usize] + x);
                    // Its forward beyond what it keeps: the kernels' workspace, conv2's output
                    // and dropout's (with dropout), the recomputed modes' batch norm outputs not
                    // kept.
                    let forward = [
                        top(&[w1f, u(out2) + w2f, 2 * d]),
                        top(&[u(c) + w1f, u(out2) + w2f, 2 * d]),
                        top(&[
                            u(c + b) + w1f,
                            u(c + 2 * b + out2) + w2f,
                            u(c + 2 * b) + 2 * d,
                        ]),
                    ];
                    // BN and ReLU cost a few FLOPs per element; convs 2 per multiply-add.
                    let head = px * (2.0 * (c * b) as f64 + 8.0 * c as f64);
                    let tail = px * (2.0 * 9.0 * (b * k) as f64 + 8.0 * b as f64);
                    LayerCost {
                        stored: stored.map(|x| x as u64),
                        backward,
                        forward,
                        transient: std::array::from_fn(|m| backward[m].max(forward[m])),
                        flops: [0.0, head, head + tail],
                    }
                })
                .collect()
        })
        .collect()
}

/// A part of the network without a choice (the stem, a transition, the head): bytes it keeps
/// through forward, and beyond those (and what everything before it keeps) the peak bytes of
/// its backward, the parameter gradients made by then included, and of its forward.
#[derive(Clone, Copy, Debug, PartialEq)]
struct GlueUnit {
    stored: u64,
    backward: u64,
    forward: u64,
}

/// The parts of the network that have no choice, as planner units: the stem, each transition
/// (after its block) and the head.
#[derive(Clone, Debug, PartialEq)]
struct Glue {
    stem: GlueUnit,
    transitions: Vec<GlueUnit>,
    head: GlueUnit,
}

fn glue(config: &DenseNetConfig, s: &Shape, kern: &Kernels) -> Glue {
    let (e, n, st) = (s.elem, s.n, kern.stats());
    let classes = config.num_classes as u64;
    let mut after = head_param_bytes(s, classes);
    let &(unit_last, _, _) = s.blocks.last().unwrap_or(&(0, 0, 0));
    // The head (recomputed): as its backward starts the pooled features and the logits'
    // gradient exist; the classifier's backward adds the pooled features' gradient and its
    // parameters' (the logits' gradient is then freed), then norm5 + ReLU + pooling recomputed
    // (the activation, its statistics, the pooled features again), the activation's gradient,
    // the block's gradient buffer and norm5's parameter gradients.
    let c = s.c_final;
    let (pooled, logits) = (n * c * e, n * classes * e);
    let classifier = (c * classes + classes) * e;
    // norm5's batch statistics are kept from the forward pass for its recompute.
    let head = GlueUnit {
        stored: st * c,
        backward: (2 * pooled + logits + classifier).max(3 * pooled + 3 * c * unit_last + after),
        // Forward: the activation, the pooled features, the loss's saved probabilities and the
        // logits' gradient, the loss's seed.
        forward: c * unit_last + pooled + 2 * logits + e,
    };
    let mut transitions = vec![
        GlueUnit {
            stored: 0,
            backward: 0,
            forward: 0,
        };
        s.blocks.len().saturating_sub(1)
    ];
    for (i, &(unit, c0, layers)) in s.blocks.iter().enumerate().rev() {
        let own_params = transition_param_bytes(s, i);
        if let Some(&(unit_next, c_next, layers_next)) = s.blocks.get(i + 1) {
            // It allocates the next block's storage (kept through forward, freed by the time
            // its backward runs, when the next block's gradient buffer still exists). Its
            // backward (recomputed): the seed (its output's gradient, copied out of the next
            // block's buffer, which is then freed), batch norm + ReLU (with statistics) and the
            // convolution recomputed, the average pool's output recomputed and its gradient,
            // the convolution's input gradient, weight gradient and workspace, then this
            // block's gradient buffer made by batch norm's backward.
            let c_end = c0 + layers * s.k;
            let [wf, wb] = kern.conv(s.block_geo[i], c_end, c_next, 1);
            // Its batch norm's statistics are kept from the forward pass for its recompute.
            let stored = (c_next + layers_next * s.k) * unit_next + st * c_end;
            let (seed, h, y) = (c_next * unit_next, c_end * unit, c_next * unit);
            let norm = 2 * c_end * e;
            let alive = (stored + seed)
                .max(seed + h + st * c_end + y + wf)
                .max(2 * seed + 2 * h + st * c_end + y + own_params - norm + wb)
                .max(2 * seed + 3 * h + st * c_end + own_params);
            transitions[i] = GlueUnit {
                stored,
                backward: alive - stored + after,
                forward: h + y + wf.max(seed),
            };
        }
        after += own_params;
        after += (0..layers)
            .map(|l| layer_param_bytes(s, c0 + l * s.k))
            .sum::<u64>();
    }
    // It allocates block 1's storage, whose first channels take conv0's output (CIFAR) or the
    // max pool's (ImageNet, which also keeps conv0's output for norm0, the ReLU's with norm0's
    // statistics for the max pool, and the pooled map). Its backward: the block input's gradient
    // copied out of block 1's gradient buffer (both alive for a moment; the storage is freed by
    // then), on the ImageNet stem the max pool's input gradient and then norm0's, and conv0's
    // weight gradient (no input gradient) with its workspace; every other parameter gradient
    // exists by then.
    let (unit1, c0, layers1) = s.blocks.first().copied().unwrap_or((0, 0, 0));
    let storage = (c0 + layers1 * s.k) * unit1;
    let [w0f, w0b] = kern.pass(s.stem_conv, false);
    let stem_params = stem_param_bytes(config, s);
    let (copy, half) = (c0 * unit1, c0 * s.stem_half);
    let (stored, alive, forward) = if config.small_inputs {
        let alive = (storage + copy).max(copy + stem_params + w0b);
        (storage, alive, (copy + w0f).max(storage + copy))
    } else {
        let maps = 2 * half + copy + st * c0;
        let alive = (storage + maps + copy)
            .max(maps + copy + half)
            .max(4 * half + st * c0)
            .max(half + stem_params + w0b);
        let forward = (half + w0f).max(storage + maps + half);
        (storage + maps, alive, forward)
    };
    Glue {
        stem: GlueUnit {
            stored,
            backward: alive.saturating_sub(stored) + after,
            forward: forward.saturating_sub(stored),
        },
        transitions,
        head,
    }
}

/// One option of a unit: what it keeps, its backward's and its forward's bytes beyond what it
/// and everything before it keep, and its recompute FLOPs.
#[derive(Clone, Copy)]
struct UnitOption {
    stored: u64,
    backward: u64,
    forward: u64,
    cost: f64,
}

/// A unit in forward order: its label, the block and index of a dense layer, its options.
struct Unit {
    label: String,
    layer: Option<(usize, usize)>,
    options: Vec<UnitOption>,
}

/// The budget model of one network for one input shape: `peak = fixed + max over the units in
/// order (stem, each block's layers, its transition, ..., head) of (bytes kept by the units up
/// to it + its backward's or its forward's bytes)`.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetModel {
    /// Per block, per layer: what each mode costs ([`layer_costs`]).
    pub layers: Vec<Vec<LayerCost>>,
    /// Bytes held whatever the modes until backward ends: what the device held as forward
    /// started, the logits (a training step keeps them) and the loss.
    pub fixed: u64,
    /// The largest kernel workspace any convolution of the network reserves, forward or
    /// backward ([`tape::ops::conv2d_workspace_bytes`]): the most of a unit's bytes that are
    /// kernel workspace (each unit counts its own convolutions' as they run; see the module
    /// docs).
    pub workspace: u64,
    glue: Glue,
    /// Per block: bytes of its storage.
    storage: Vec<u64>,
}

impl BudgetModel {
    /// The model of `model` (as [`crate::Recompute::Budget`] runs it: transitions and head
    /// recomputed, fused concat-BN-ReLU in the Bottleneck and Layer modes;
    /// `layer` ([`crate::Selective::Layer`]) runs exactly as all-Layer) on an input of `input_shape`,
    /// when the device holds `held` bytes as forward starts.
    pub fn new(model: &DenseNet, input_shape: [usize; 4], held: u64) -> Self {
        let config = model.config();
        let elem = model.dtype().size_in_bytes();
        let s = shape_of(config, input_shape, elem);
        let kern = Kernels {
            device: model.device(),
            dtype: model.dtype(),
        };
        BudgetModel {
            layers: layer_costs_of(config, &s, &kern),
            fixed: held + (s.n * config.num_classes as u64 + 1) * s.elem,
            workspace: workspace_bytes(model.device(), &s, model.dtype()),
            glue: glue(config, &s, &kern),
            storage: s
                .blocks
                .iter()
                .map(|&(unit, c0, layers)| (c0 + layers * s.k) * unit)
                .collect(),
        }
    }

    /// Every unit in order with its options: the stem, each block's layers (Naive, Bottleneck,
    /// Layer), its transition, ..., the head.
    fn units(&self) -> Vec<Unit> {
        let glue = |label: String, g: GlueUnit| Unit {
            label,
            layer: None,
            options: vec![UnitOption {
                stored: g.stored,
                backward: g.backward,
                forward: g.forward,
                cost: 0.0,
            }],
        };
        let mut units = vec![glue("stem".to_string(), self.glue.stem)];
        for (i, block) in self.layers.iter().enumerate() {
            for (l, c) in block.iter().enumerate() {
                units.push(Unit {
                    label: super::unit_label(i, Some(l)),
                    layer: Some((i, l)),
                    options: (0..3)
                        .map(|m| UnitOption {
                            stored: c.stored[m],
                            backward: c.backward[m],
                            forward: c.forward[m],
                            cost: c.flops[m],
                        })
                        .collect(),
                });
            }
            if let Some(&t) = self.glue.transitions.get(i) {
                units.push(glue(super::unit_label(i, None), t));
            }
        }
        units.push(glue("head".to_string(), self.glue.head));
        units
    }

    /// The planner's units: each option's kept bytes and the larger of its backward's and its
    /// forward's bytes.
    fn choices(&self) -> Vec<Vec<Choice>> {
        self.units()
            .into_iter()
            .map(|u| {
                u.options
                    .iter()
                    .map(|o| Choice {
                        stored: o.stored,
                        transient: o.backward.max(o.forward),
                        cost: o.cost,
                    })
                    .collect()
            })
            .collect()
    }

    /// Each unit with the option `modes` picks (an error if `modes` does not match the blocks).
    fn picked(&self, modes: &[Vec<DenseLayerMode>]) -> Result<Vec<(Unit, UnitOption, usize)>> {
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
        Ok(self
            .units()
            .into_iter()
            .map(|u| {
                let m = if u.options.len() == 1 {
                    0
                } else {
                    picks.next().unwrap_or(2)
                };
                let o = u.options[m];
                (u, o, m)
            })
            .collect())
    }

    /// Predicted peak bytes of a training step with each dense layer in the mode `modes` gives
    /// (per block, per layer): the planner's peak, `fixed` plus the largest over the units of
    /// what they keep up to it and its backward's or its forward's bytes, counting each block's
    /// storage alive until its block's backward ends (an upper bound of
    /// [`BudgetModel::unit_peaks`]); an error if `modes` does not match the blocks.
    pub fn predict(&self, modes: &[Vec<DenseLayerMode>]) -> Result<u64> {
        let mut kept = 0u64;
        let mut peak = self.fixed;
        for (_, o, _) in self.picked(modes)? {
            kept += o.stored;
            peak = peak.max(self.fixed + kept + o.backward.max(o.forward));
        }
        Ok(peak)
    }

    /// The bound of each unit's forward peak bytes that the planner charges (the stem, every
    /// dense layer in the mode `modes` gives, every transition, the head), in forward order,
    /// labelled as the model's marks label them: `fixed`, what the unit and everything before
    /// it keep, and the unit's forward bytes. An upper bound: the unit's own kept bytes are
    /// counted from its start, the logits and the loss (in `fixed`) before they exist.
    pub fn unit_forward_bounds(&self, modes: &[Vec<DenseLayerMode>]) -> Result<Vec<(String, u64)>> {
        let mut kept = 0u64;
        let mut out = Vec::new();
        for (unit, o, _) in self.picked(modes)? {
            kept += o.stored;
            out.push((unit.label, self.fixed + kept + o.forward));
        }
        Ok(out)
    }

    /// The predicted peak bytes of each unit's backward (the stem, every dense layer in the mode
    /// `modes` gives, every transition, the head), in forward order, labelled as the model's
    /// backward-peak marks label them (see [`tape::Tape::mark`]): `fixed`, what the unit and
    /// everything before it keep, and the unit's backward bytes, less its block's storage for a
    /// Naive layer that no earlier layer of its block reads in place (the storage is freed after
    /// the backward of the first unit reading it in place, which the planner and
    /// [`BudgetModel::predict`] do not follow).
    pub fn unit_peaks(&self, modes: &[Vec<DenseLayerMode>]) -> Result<Vec<(String, u64)>> {
        let mut kept = 0u64;
        let mut out = Vec::new();
        // Per block: whether a layer reading its storage in place has run.
        let mut reader = vec![false; self.layers.len()];
        for (unit, o, m) in self.picked(modes)? {
            kept += o.stored;
            let mut peak = self.fixed + kept + o.backward;
            if let Some((i, _)) = unit.layer {
                if m == 0 && !reader[i] {
                    peak = peak.saturating_sub(self.storage[i]);
                }
                reader[i] |= m != 0;
            }
            out.push((unit.label, peak));
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
    let units = bm.choices();
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
