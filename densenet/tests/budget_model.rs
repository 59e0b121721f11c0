//! The budget model against the engine: the peak `predicted_peak` gives for a mode assignment
//! must match the measured peak of a training step (the engine's exact accounting) under that
//! assignment, for `Efficiency::Layer` and for every plan the planner picks across a range of
//! budgets (mixes of Naive, Bottleneck and Layer).
//!
//! Tolerance: `measured - WORKSPACE <= predicted <= measured * (1 + OVER)`.
//! - The model leaves out convolution workspaces (the CPU kernels hold at most a 256 KiB column
//!   block per thread group, plus for a 3x3 convolution's backward a partial weight gradient and
//!   a flipped kernel, about 20 KiB each here); at batch 1 there is one thread group whatever the
//!   machine, so `WORKSPACE` is 320 KiB.
//! - The model is an upper bound: it charges every layer's kept bytes at every backward peak,
//!   though the layers after the one being differentiated have already freed theirs, and counts
//!   every later parameter gradient as made. On single-block networks (the largest backward
//!   peaks come first) that slack is below `OVER` = 8%.
//!
//! Leaving a third out of the Layer mode's backward peak lowers the all-Layer prediction by
//! 10-20% of the peak (far more than `WORKSPACE`, 2-4% of it here), so the lower bound fails.

use densenet::model::{plan_layer_modes, predicted_peak};
use densenet::train::forward_backward;
use densenet::{DenseNet, DenseNetConfig, Efficiency, LayerMode};
use tape::{DType, Device, Tensor};

const WORKSPACE: u64 = 320 << 10;
const OVER: f64 = 0.08;
const IMAGE: usize = 64;

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

fn shape() -> [usize; 4] {
    [1, 3, IMAGE, IMAGE]
}

/// Measured peak, predicted peak and layer modes of one training step of `config` in `mode`.
fn measure(config: &DenseNetConfig, mode: Efficiency, dtype: DType) -> (u64, u64, String) {
    let dev = Device::cpu();
    let model = DenseNet::new(config.clone().with_efficiency(mode), dtype, &dev, 1).unwrap();
    let x = Tensor::randn(&shape(), dtype, &dev, 2).unwrap();
    let held = dev.memory().current() as u64;
    let modes = model.layer_modes(shape()).unwrap();
    let predicted = predicted_peak(&model, shape(), &modes, held).unwrap();
    dev.memory().reset_peak();
    drop(forward_backward(&model, &x, &[3], 0).unwrap());
    let letters = modes
        .iter()
        .flatten()
        .map(|m| match m {
            LayerMode::Naive => 'N',
            LayerMode::Bottleneck => 'B',
            LayerMode::Layer => 'L',
        })
        .collect();
    (dev.memory().peak() as u64, predicted, letters)
}

/// `Efficiency::Layer`, then one budget per distinct plan the planner picks between the
/// all-Layer and the all-Naive predictions (in `steps` steps).
fn modes_to_try(config: &DenseNetConfig, dtype: DType, steps: u64) -> Vec<Efficiency> {
    let dev = Device::cpu();
    let model = DenseNet::new(config.clone(), dtype, &dev, 1).unwrap();
    let _x = Tensor::randn(&shape(), dtype, &dev, 2).unwrap();
    let held = dev.memory().current() as u64;
    let uniform =
        |m| -> Vec<Vec<LayerMode>> { config.block_config.iter().map(|&n| vec![m; n]).collect() };
    let lo = predicted_peak(&model, shape(), &uniform(LayerMode::Layer), held).unwrap();
    let hi = predicted_peak(&model, shape(), &uniform(LayerMode::Naive), held).unwrap();
    let mut modes = vec![Efficiency::Layer];
    let mut last = None;
    for i in 0..=steps {
        let budget = lo + (hi - lo) * i / steps;
        let plan = plan_layer_modes(&model, shape(), budget, held).unwrap();
        if last.as_ref() != Some(&plan) {
            modes.push(Efficiency::Budget(budget));
            last = Some(plan);
        }
    }
    modes
}

fn check(config: &DenseNetConfig, dtype: DType, steps: u64, over: Option<f64>) -> usize {
    let mut checked = 0;
    for mode in modes_to_try(config, dtype, steps) {
        let (measured, predicted, letters) = measure(config, mode, dtype);
        println!(
            "{:?} k={} bn={} {dtype:?} {mode:<16} {letters:<10} measured {measured:>9} predicted \
             {predicted:>9} ({:+.2}%)",
            config.block_config,
            config.growth_rate,
            config.bn_size,
            100.0 * (predicted as f64 / measured as f64 - 1.0)
        );
        assert!(
            predicted + WORKSPACE >= measured,
            "{mode} ({letters}): predicted {predicted} is more than the workspace allowance \
             below the measured {measured}"
        );
        if let Some(over) = over {
            assert!(
                predicted as f64 <= measured as f64 * (1.0 + over),
                "{mode} ({letters}): predicted {predicted} more than {}% above the measured \
                 {measured}",
                100.0 * over
            );
        }
        checked += 1;
    }
    checked
}

#[test]
fn layer_mode_and_planned_mixes_match_the_measured_peak() {
    let cases = [
        (single_block(12, 4, 6, 0.0), DType::F32),
        (single_block(12, 4, 6, 0.0), DType::F64),
        (single_block(8, 2, 8, 0.0), DType::F32),
        (single_block(6, 4, 10, 0.0), DType::F64),
        (single_block(8, 4, 6, 0.2), DType::F32),
    ];
    for (config, dtype) in cases {
        let checked = check(&config, dtype, 10, Some(OVER));
        assert!(checked >= 4, "only {checked} plans for {config:?}");
    }
}

/// Several blocks and the ImageNet stem: the bound holds (the model's slack grows with the
/// bytes later blocks free before earlier blocks' backward peaks, so no tightness is asserted).
#[test]
fn the_prediction_bounds_the_peak_of_other_architectures() {
    let two_blocks = DenseNetConfig {
        block_config: vec![3, 4],
        ..single_block(8, 4, 1, 0.0)
    };
    let imagenet = DenseNetConfig {
        block_config: vec![2, 3],
        small_inputs: false,
        ..single_block(6, 4, 1, 0.0)
    };
    for config in [two_blocks, imagenet] {
        for dtype in [DType::F32, DType::F64] {
            check(&config, dtype, 4, None);
        }
    }
}
