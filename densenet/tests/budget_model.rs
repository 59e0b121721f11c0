//! The budget model against the engine: the peak the model predicts for a mode assignment
//! must match the measured peak of a training step (the engine's exact accounting) under that
//! assignment, for the `layer` setting and for every plan the planner picks across a range of
//! budgets (mixes of Naive, Bottleneck and Layer), on single- and multi-block networks, the
//! CIFAR and the ImageNet stem, f32 and f64, with and without dropout; and each unit's backward
//! peak must match the model's prediction for it exactly.
//!
//! Tolerance of the whole step: `measured <= predicted <= measured * (1 + OVER)`.
//! - The prediction is an upper bound: the model counts each block's storage alive until the
//!   block's backward ends (it is freed after the backward of the first unit reading it in
//!   place, which the planner does not follow) and bounds the forward pass's peak from above.
//! - That slack stays below `OVER` = 5% (measured: at most 4.5%).
//!
//! Leaving a third out of the Layer mode's backward peak lowers the all-Layer prediction by
//! 10-20% of the peak, so `measured <= predicted` fails.

use densenet::model::{plan_layer_modes, predicted_peak, BudgetModel};
use densenet::train::forward_backward;
use densenet::{DenseLayerMode, DenseNet, DenseNetConfig, Recompute, Selective};
use tape::{DType, Device, Tensor};

const OVER: f64 = 0.05;

fn single_block(growth: usize, bn_size: usize, layers: usize, drop_rate: f64) -> DenseNetConfig {
    DenseNetConfig {
        growth_rate: growth,
        bn_size,
        num_init_features: 2 * growth,
        block_config: vec![layers],
        drop_rate,
        ..DenseNetConfig::default()
    }
}

/// A plan as letters: N(aive), B(ottleneck), L(ayer) per dense layer.
fn letters(modes: &[Vec<DenseLayerMode>]) -> String {
    modes
        .iter()
        .flatten()
        .map(|m| match m {
            DenseLayerMode::Keep => 'N',
            DenseLayerMode::RecomputeBottleneck => 'B',
            DenseLayerMode::RecomputeLayer => 'L',
        })
        .collect()
}

/// Measured peak, predicted peak, the largest convolution workspace and the layer modes of one training
/// step of `config` in `mode` on one `image` x `image` input.
fn measure(
    config: &DenseNetConfig,
    mode: Recompute,
    dtype: DType,
    (image, batch): (usize, usize),
) -> (u64, u64, u64, String) {
    let shape = [batch, 3, image, image];
    let dev = Device::cpu();
    let model = DenseNet::new(config.clone(), dtype, &dev, 1)
        .unwrap()
        .with_recompute(mode)
        .unwrap();
    let x = Tensor::randn(&shape, dtype, &dev, 2).unwrap();
    let held = dev.memory().current() as u64;
    let modes = model.layer_modes(shape).unwrap();
    let bm = BudgetModel::new(&model, shape, held);
    let predicted = bm.predict(&modes).unwrap();
    dev.memory().reset_peak();
    let labels: Vec<usize> = (0..batch).map(|i| (3 + i) % 10).collect();
    drop(forward_backward(&model, &x, &labels, 0).unwrap());
    let letters = letters(&modes);
    (dev.memory().peak() as u64, predicted, bm.workspace, letters)
}

/// `layer`, then one budget per distinct plan the planner picks between the
/// all-Layer and the all-Naive predictions (in `steps` steps).
fn modes_to_try(
    config: &DenseNetConfig,
    dtype: DType,
    (image, batch): (usize, usize),
    steps: u64,
) -> Vec<Recompute> {
    let shape = || [batch, 3, image, image];
    let dev = Device::cpu();
    let model = DenseNet::new(config.clone(), dtype, &dev, 1).unwrap();
    let _x = Tensor::randn(&shape(), dtype, &dev, 2).unwrap();
    let held = dev.memory().current() as u64;
    let uniform = |m| -> Vec<Vec<DenseLayerMode>> {
        config.block_config.iter().map(|&n| vec![m; n]).collect()
    };
    let lo = predicted_peak(
        &model,
        shape(),
        &uniform(DenseLayerMode::RecomputeLayer),
        held,
    )
    .unwrap();
    let hi = predicted_peak(&model, shape(), &uniform(DenseLayerMode::Keep), held).unwrap();
    let mut modes = vec![Recompute::Selective(Selective::Layer)];
    let mut last = None;
    for i in 0..=steps {
        let budget = lo + (hi - lo) * i / steps;
        let plan = plan_layer_modes(&model, shape(), budget, held).unwrap();
        if last.as_ref() != Some(&plan) {
            modes.push(Recompute::Budget(budget));
            last = Some(plan);
        }
    }
    modes
}

fn check(config: &DenseNetConfig, dtype: DType, image: (usize, usize), steps: u64) -> usize {
    let mut checked = 0;
    for mode in modes_to_try(config, dtype, image, steps) {
        let (measured, predicted, workspace, letters) = measure(config, mode, dtype, image);
        println!(
            "{:?} k={} bn={} {}{dtype:?} {mode:<16} {letters:<10} measured {measured:>9} \
             predicted {predicted:>9} ({:+.2}%, workspace room {workspace})",
            config.block_config,
            config.growth_rate,
            config.bn_size,
            if config.small_inputs {
                ""
            } else {
                "ImageNet stem "
            },
            100.0 * (predicted as f64 / measured as f64 - 1.0)
        );
        assert!(
            measured <= predicted,
            "{mode} ({letters}): measured {measured} above the prediction {predicted}"
        );
        assert!(
            predicted as f64 <= measured as f64 * (1.0 + OVER),
            "{mode} ({letters}): predicted {predicted} (workspace room {workspace}) more than \
             {}% above the measured {measured}",
            100.0 * OVER
        );
        checked += 1;
    }
    checked
}

#[test]
fn layer_mode_and_planned_mixes_match_the_measured_peak() {
    let two_blocks = DenseNetConfig {
        block_config: vec![3, 4],
        ..single_block(8, 4, 1, 0.0)
    };
    let imagenet = DenseNetConfig {
        block_config: vec![2, 3],
        small_inputs: false,
        ..single_block(6, 4, 1, 0.0)
    };
    let cases = [
        (single_block(12, 4, 6, 0.0), DType::F32, (64, 1)),
        (single_block(12, 4, 6, 0.0), DType::F64, (64, 1)),
        (single_block(8, 2, 8, 0.0), DType::F32, (64, 1)),
        (single_block(6, 4, 10, 0.0), DType::F64, (64, 1)),
        (single_block(8, 4, 6, 0.2), DType::F32, (64, 1)),
        (two_blocks.clone(), DType::F32, (64, 1)),
        (two_blocks.clone(), DType::F64, (64, 1)),
        (two_blocks, DType::F32, (24, 3)),
        (imagenet.clone(), DType::F32, (128, 1)),
        (imagenet, DType::F32, (64, 3)),
    ];
    for (config, dtype, image) in cases {
        let checked = check(&config, dtype, image, 8);
        assert!(checked >= 4, "only {checked} plans for {config:?}");
    }
}

/// Workspace bytes one convolution's kernels reserve on the CPU, forward or backward (whichever
/// is more), measured with the engine's accounting: the peak during the call less what is held
/// after it (the workspace is the only thing released in between).
fn conv_workspace(
    dev: &Device,
    n: usize,
    (cin, cout, k): (usize, usize, usize),
    geo: [usize; 4],
) -> u64 {
    let [h, w, stride, padding] = geo;
    let x = Tensor::randn(&[n, cin, h, w], DType::F32, dev, 1)
        .unwrap()
        .with_requires_grad(true);
    let wt = Tensor::randn(&[cout, cin, k, k], DType::F32, dev, 2)
        .unwrap()
        .with_requires_grad(true);
    let mut tape = tape::Tape::recording();
    dev.memory().reset_peak();
    let opts = tape::ops::Conv2dOptions { stride, padding };
    let y = tape::ops::conv2d(&mut tape, &x, &wt, None, opts).unwrap();
    let forward = dev.memory().peak() - dev.memory().current();
    let seed = Tensor::ones(y.shape(), DType::F32, dev).unwrap();
    dev.memory().reset_peak();
    let grads = tape.backward_from(&y, seed.clone()).unwrap();
    let backward = dev.memory().peak() - dev.memory().current();
    drop(grads);
    forward.max(backward) as u64
}

/// The model's workspace room is exactly the largest workspace any convolution of the network
/// reserves
/// (the CPU kernels' column blocks, partial weight gradients and flipped kernels), on the CIFAR
/// and the ImageNet stem, with one and several thread groups: every convolution re-derived here
/// from the architecture and measured on its own.
#[test]
fn workspace_room_is_the_largest_convolution_workspace() {
    let imagenet = DenseNetConfig {
        block_config: vec![2, 3],
        small_inputs: false,
        ..single_block(6, 4, 1, 0.0)
    };
    let wide = DenseNetConfig {
        block_config: vec![6, 2],
        ..single_block(32, 4, 1, 0.0)
    };
    // Thirty layers of k = 8 into a 2x2 image: the 1x1 convolutions' partial weight gradients
    // are the largest workspace, the transition's (compression 0.5) or, with 64 bottleneck
    // channels and a narrow transition (compression 0.1), the last layer's conv1.
    let deep = DenseNetConfig {
        block_config: vec![30, 2],
        ..single_block(8, 8, 1, 0.0)
    };
    let cases = [
        (deep.clone(), 2, 2),
        (
            DenseNetConfig {
                compression: 0.1,
                ..deep
            },
            2,
            2,
        ),
        // Tiny images: the 1x1 convolutions' partial weight gradients are the largest workspace.
        (wide.clone(), 2, 2),
        (
            DenseNetConfig {
                compression: 1.0,
                ..wide
            },
            4,
            1,
        ),
        (single_block(12, 4, 6, 0.0), 32, 1),
        (single_block(12, 4, 6, 0.0), 32, 4),
        (
            DenseNetConfig {
                block_config: vec![3, 4],
                ..single_block(8, 2, 1, 0.0)
            },
            16,
            3,
        ),
        (imagenet.clone(), 64, 1),
        (imagenet, 64, 4),
    ];
    for (config, image, n) in cases {
        let dev = Device::cpu();
        let (k, b) = (config.growth_rate, config.bn_size * config.growth_rate);
        let (ins, _) = config.block_channels();
        let mut convs = Vec::new();
        let mut size = image;
        if config.small_inputs {
            convs.push(((3, config.num_init_features, 3), [size, size, 1, 1]));
        } else {
            convs.push(((3, config.num_init_features, 7), [size, size, 2, 3]));
            size = (size - 1) / 2 + 1; // conv0: 7x7, stride 2, padding 3
            size = (size - 1) / 2 + 1; // max pool: 3x3, stride 2, padding 1
        }
        for (i, (&layers, &c0)) in config.block_config.iter().zip(&ins).enumerate() {
            for l in 0..layers {
                convs.push(((c0 + l * k, b, 1), [size, size, 1, 0]));
                convs.push(((b, k, 3), [size, size, 1, 1]));
            }
            if let Some(&next) = ins.get(i + 1) {
                convs.push(((c0 + layers * k, next, 1), [size, size, 1, 0]));
            }
            size /= 2;
        }
        let measured = convs
            .iter()
            .map(|&(c, geo)| conv_workspace(&dev, n, c, geo))
            .max()
            .unwrap();
        let model = DenseNet::new(config.clone(), DType::F32, &dev, 1).unwrap();
        let room = BudgetModel::new(&model, [n, 3, image, image], 0).workspace;
        println!(
            "{:?} image {image} batch {n}: room {room}, measured {measured}",
            config.block_config
        );
        assert_eq!(
            room, measured,
            "workspace room against the largest measured workspace"
        );
    }
}

/// The kept bytes of each dense layer are counted at its block's resolution: `2b` channels in
/// Bottleneck mode, `2c + 2b` in Naive mode (`c` input channels), none in Layer mode (the
/// output lives in the block's storage), with the saved statistics of the batch norms whose
/// inputs are kept (16 bytes a channel on the CPU), for the CIFAR stem (blocks at the input size, halved
/// by each transition) and the ImageNet stem (a stride-2 7x7 conv and a stride-2 max pool
/// first), with odd sizes.
#[test]
fn kept_bytes_are_counted_at_each_blocks_resolution() {
    let imagenet = DenseNetConfig {
        block_config: vec![2, 3],
        small_inputs: false,
        ..single_block(6, 4, 1, 0.0)
    };
    let cifar = DenseNetConfig {
        block_config: vec![2, 2, 1],
        ..single_block(8, 2, 1, 0.0)
    };
    for (config, image, first) in [
        (cifar, 33, 33),
        (imagenet.clone(), 128, 32),
        (imagenet, 75, 19),
    ] {
        let (n, elem) = (3u64, 4u64);
        let costs = densenet::model::layer_costs(
            &config,
            [n as usize, 3, image, image],
            DType::F32,
            &Device::cpu(),
        );
        let layers: Vec<usize> = costs.iter().map(Vec::len).collect();
        assert_eq!(layers, config.block_config, "a cost for every layer");
        let b = (config.bn_size * config.growth_rate) as u64;
        let mut size = first as u64;
        let (ins, _) = config.block_channels();
        for (block, &c0) in costs.iter().zip(&ins) {
            let unit = n * size * size * elem;
            for (l, layer) in block.iter().enumerate() {
                let c = (c0 + l * config.growth_rate) as u64;
                let at = format!("{config:?} at {size}x{size}");
                // Batch norm's saved statistics: mean and inverse standard deviation in f64.
                let stats = |channels: u64| 16 * channels;
                assert_eq!(
                    layer.stored,
                    [
                        (2 * c + 2 * b) * unit + stats(c + b),
                        // The recomputed batch norms' statistics are kept for the recompute.
                        2 * b * unit + stats(c + b),
                        stats(c + b)
                    ],
                    "{at}"
                );
            }
            size /= 2;
        }
    }
}

/// The parameter bytes the budget model counts (their gradients, made during backward) are the
/// network's, on the CIFAR and the ImageNet stem, with several blocks.
#[test]
fn the_model_counts_every_parameter() {
    let configs = [
        single_block(12, 4, 6, 0.0),
        DenseNetConfig {
            block_config: vec![3, 4, 2],
            ..single_block(8, 2, 1, 0.0)
        },
        DenseNetConfig {
            block_config: vec![2, 3],
            small_inputs: false,
            ..single_block(6, 4, 1, 0.0)
        },
    ];
    for config in configs {
        for dtype in [DType::F32, DType::F64] {
            let model = DenseNet::new(config.clone(), dtype, &Device::cpu(), 1).unwrap();
            let counted = densenet::model::parameter_bytes(&config, dtype.size_in_bytes());
            assert_eq!(
                counted,
                model.parameter_bytes() as u64,
                "{config:?} {dtype:?}"
            );
        }
    }
}

/// The recompute cost the planner minimises: per dense layer, Bottleneck recomputes BN + ReLU
/// over its `c` input channels and the 1x1 conv to `b` channels (2 FLOPs per multiply-add, 8 per
/// element for BN + ReLU), Layer also BN + ReLU over `b` channels and the 3x3 conv to `k`; Naive
/// recomputes nothing. Checked against those counts, per pixel of the block's resolution.
#[test]
fn recompute_flops_count_what_each_mode_runs_again() {
    let config = DenseNetConfig {
        block_config: vec![3, 2],
        ..single_block(8, 4, 1, 0.0)
    };
    let (n, image) = (2usize, 16usize);
    let costs =
        densenet::model::layer_costs(&config, [n, 3, image, image], DType::F32, &Device::cpu());
    let (k, b) = (8.0, 32.0);
    let layers: Vec<usize> = costs.iter().map(Vec::len).collect();
    assert_eq!(layers, config.block_config, "a cost for every layer");
    let (ins, _) = config.block_channels();
    for (i, (block, &c0)) in costs.iter().zip(&ins).enumerate() {
        let side = (image >> i) as f64;
        let px = n as f64 * side * side;
        for (l, layer) in block.iter().enumerate() {
            let c = (c0 + l * 8) as f64;
            let head = px * (2.0 * c * b + 8.0 * c);
            let tail = px * (2.0 * 9.0 * b * k + 8.0 * b);
            assert_eq!(layer.flops, [0.0, head, head + tail], "block {i} layer {l}");
        }
    }
}

/// What the model holds whatever the modes: the bytes held as forward starts, the logits (a
/// training step keeps them through backward) and the loss; the kernel workspace is counted by
/// each unit as its convolutions run, not here.
#[test]
fn fixed_bytes_are_the_held_bytes_the_logits_and_the_loss() {
    let config = DenseNetConfig {
        block_config: vec![3, 2],
        ..single_block(8, 4, 1, 0.0)
    };
    let dev = Device::cpu();
    let model = DenseNet::new(config.clone(), DType::F64, &dev, 1).unwrap();
    let (n, held) = (3u64, 12345u64);
    let bm = BudgetModel::new(&model, [n as usize, 3, 16, 16], held);
    let classes = config.num_classes as u64;
    assert_eq!(bm.fixed, held + n * classes * 8 + 8);
}

/// Measured peak of each unit's backward (the stem, every dense layer, every transition, the
/// head) of one training step of `config` running `plan`, from the engine's accounting between
/// the model's backward-peak marks, beside the budget model's prediction for that unit: (label,
/// measured, predicted), the plan's modes as letters, and the workspace room.
fn unit_peaks(
    config: &DenseNetConfig,
    plan: &[Vec<DenseLayerMode>],
    dtype: DType,
    (image, batch): (usize, usize),
) -> UnitPeakRows {
    use tape::{ops, Tape, UnitPeaks};
    let shape = [batch, 3, image, image];
    let dev = Device::cpu();
    let model = DenseNet::new(config.clone(), dtype, &dev, 1)
        .unwrap()
        .with_plan(plan.to_vec())
        .unwrap();
    let x = Tensor::randn(&shape, dtype, &dev, 2).unwrap();
    let held = dev.memory().current() as u64;
    let modes = model.layer_modes(shape).unwrap();
    assert_eq!(modes, plan);
    let bm = BudgetModel::new(&model, shape, held);
    let predicted = bm.unit_peaks(&modes).unwrap();
    let bounds = bm.unit_forward_bounds(&modes).unwrap();
    let peaks = UnitPeaks::new(&dev);
    let mut tape = Tape::recording().watch_unit_peaks(peaks.clone());
    let labels: Vec<usize> = (0..batch).map(|i| (3 + i) % 10).collect();
    let logits = model.forward(&mut tape, &x).unwrap();
    tape.mark(|| "loss".into());
    let loss = ops::cross_entropy(&mut tape, &logits, &labels).unwrap();
    // The logits stay alive through backward, as in a training step.
    drop(tape.backward(&loss).unwrap());
    drop(logits);
    let pair = |(label, m): (String, usize), (plabel, p): (String, u64)| {
        assert_eq!(label, plabel);
        (label, m as u64, p)
    };
    let forward = peaks.take_forward();
    assert_eq!(forward.len(), bounds.len());
    let forward = forward
        .into_iter()
        .zip(bounds)
        .map(|(m, p)| pair(m, p))
        .collect();
    let mut measured = peaks.take_backward();
    measured.reverse();
    assert_eq!(measured.pop().map(|m| m.0), Some("loss".to_string()));
    assert_eq!(measured.len(), predicted.len());
    let letters = letters(&modes);
    let backward = measured
        .into_iter()
        .zip(predicted)
        .map(|(m, p)| pair(m, p))
        .collect();
    UnitPeakRows {
        backward,
        forward,
        letters,
        logits_and_loss: bm.fixed - held,
    }
}

/// Per unit (label, measured peak, predicted peak) of its backward and of its forward (the bound
/// the planner charges), the plan as letters, and the bytes of the logits and the loss.
struct UnitPeakRows {
    backward: Vec<(String, u64, u64)>,
    forward: Vec<(String, u64, u64)>,
    letters: String,
    logits_and_loss: u64,
}

/// Every unit's backward, not just the one that sets the step's peak: the peak bytes between
/// its backward-peak marks are exactly the budget model's prediction for that unit (the model
/// follows each op's allocations step by step, its kernel workspace and batch norm's statistics
/// included; both sides use the engine's accounting, so there is nothing to round), for plans
/// fixed in advance (all Naive, all Bottleneck, all Layer and two mixes: a plan the planner picks
/// would avoid a mode whose cost is mispredicted upwards), on a single block with and without
/// dropout, three blocks (two transitions) and the ImageNet stem, in f32 and f64. A term of a
/// layer's, a transition's, the stem's or the head's backward that is wrong shows here even
/// where another unit sets the step's peak.
#[test]
fn each_units_backward_peak_is_predicted() {
    let configs = [
        (single_block(4, 2, 4, 0.0), (8, 3)),
        (single_block(4, 4, 3, 0.2), (6, 2)),
        (
            DenseNetConfig {
                growth_rate: 3,
                bn_size: 2,
                num_init_features: 5,
                block_config: vec![2, 3, 2],
                ..DenseNetConfig::default()
            },
            (12, 2),
        ),
        (
            DenseNetConfig {
                growth_rate: 4,
                bn_size: 2,
                num_init_features: 6,
                block_config: vec![2, 2],
                small_inputs: false,
                ..DenseNetConfig::default()
            },
            (19, 2),
        ),
        // Narrow bottlenecks (`b = k`) and wide inputs: batch norm 1's backward sets a Naive
        // layer's peak.
        (
            DenseNetConfig {
                growth_rate: 4,
                bn_size: 1,
                num_init_features: 16,
                block_config: vec![6],
                ..DenseNetConfig::default()
            },
            (8, 3),
        ),
        // One 2x2 image in the second block: the 1x1 convolutions' partial weight gradients
        // outgrow the feature maps, and conv1's backward sets the peak.
        (
            DenseNetConfig {
                growth_rate: 4,
                bn_size: 4,
                num_init_features: 4,
                block_config: vec![2, 3],
                ..DenseNetConfig::default()
            },
            (4, 1),
        ),
        // Wide inputs on 1x1 maps: conv1's partial weight gradient outgrows everything else.
        (
            DenseNetConfig {
                growth_rate: 2,
                bn_size: 4,
                num_init_features: 198,
                block_config: vec![1, 2],
                ..DenseNetConfig::default()
            },
            (2, 2),
        ),
        // Narrow inputs into a wide bottleneck (`b = 8k`, `c = k`) on a large batch: batch norm
        // 2's backward (`2b` with its parameter gradients) outgrows conv2's and conv1's steps.
        (
            DenseNetConfig {
                growth_rate: 2,
                bn_size: 8,
                num_init_features: 2,
                block_config: vec![1],
                ..DenseNetConfig::default()
            },
            (16, 32),
        ),
        // A thousand classes after a narrow network on 2x2 images: the classifier's backward
        // (its weight gradient, the pooled features' gradient, the logits') sets the head's peak.
        (
            DenseNetConfig {
                growth_rate: 2,
                bn_size: 2,
                num_init_features: 4,
                block_config: vec![1],
                num_classes: 1000,
                ..DenseNetConfig::default()
            },
            (2, 2),
        ),
    ];
    use DenseLayerMode::*;
    let cycle = [Keep, RecomputeBottleneck, RecomputeLayer];
    for (config, input) in &configs {
        let n: usize = config.block_config.iter().sum();
        let mut flat: Vec<Vec<DenseLayerMode>> = cycle.iter().map(|&m| vec![m; n]).collect();
        flat.push((0..n).map(|i| cycle[i % 3]).collect());
        flat.push((0..n).map(|i| cycle[(i + 2) % 3]).collect());
        for dtype in [DType::F32, DType::F64] {
            for modes in &flat {
                let mut it = modes.iter().copied();
                let plan: Vec<Vec<DenseLayerMode>> = config
                    .block_config
                    .iter()
                    .map(|&l| it.by_ref().take(l).collect())
                    .collect();
                let rows = unit_peaks(config, &plan, dtype, *input);
                let letters = &rows.letters;
                // Forward: the bound the planner charges holds for every unit (the logits and
                // the loss, counted in it, do not exist yet), and is exact for the stem and
                // for Naive layers, whose forward keeps everything it makes.
                let mut layer_modes = plan.iter().flatten();
                for (label, m, p) in &rows.forward {
                    let what = format!("{:?} {letters} {dtype:?} {label}", config.block_config);
                    let m = m + rows.logits_and_loss;
                    assert!(m <= *p, "{what}: forward bound {p} below the measured {m}");
                    let exact = match label.as_str() {
                        "stem" => true,
                        l if l.contains("denselayer") => layer_modes.next() == Some(&Keep),
                        _ => false,
                    };
                    if exact {
                        assert_eq!(*p, m, "{what}: forward bound against measured");
                    }
                }
                for (label, m, p) in rows.backward {
                    assert_eq!(
                        p, m,
                        "{:?} {letters} {dtype:?} {label}: predicted against measured",
                        config.block_config
                    );
                    println!(
                        "{:?} {letters} {dtype:?} {label:<40} measured {m:>8} predicted {p:>8} \
                         ({:+.2}%)",
                        config.block_config,
                        100.0 * (p as f64 / m as f64 - 1.0)
                    );
                }
            }
        }
    }
}

/// Modes that do not match the blocks (too few blocks, a block with too many layers, too many
/// blocks) are an error naming both shapes, for every use of the model.
#[test]
fn modes_of_the_wrong_shape_are_refused() {
    let config = DenseNetConfig {
        block_config: vec![3, 2],
        ..single_block(4, 2, 1, 0.0)
    };
    let model = DenseNet::new(config, DType::F32, &Device::cpu(), 1).unwrap();
    let bm = BudgetModel::new(&model, [2, 3, 8, 8], 0);
    use DenseLayerMode::Keep;
    let wrong = [
        vec![vec![Keep; 3]],
        vec![vec![Keep; 3], vec![Keep; 3]],
        vec![vec![Keep; 3], vec![Keep; 2], vec![]],
    ];
    for modes in wrong {
        let err = bm.predict(&modes).unwrap_err().to_string();
        assert!(err.contains("[3, 2]"), "{err}");
        assert!(bm.unit_peaks(&modes).is_err());
        assert!(bm.unit_forward_bounds(&modes).is_err());
    }
    assert!(bm.predict(&[vec![Keep; 3], vec![Keep; 2]]).is_ok());
}
