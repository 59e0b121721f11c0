//! Peak memory against depth, from the engine's accounting: Naive grows superlinearly,
//! Bottleneck and Layer about linearly, and Layer < Bottleneck < Naive at the largest depth.
//! A planner budget between Layer and Naive holds.

use densenet::train::forward_backward;
use densenet::{DenseNet, DenseNetConfig, Recompute, Selective};
use harness::fitted_exponent;
use tape::{DType, Device, Tensor};

const BATCH: usize = 4;
const IMAGE: usize = 16;

fn config(depth: usize) -> DenseNetConfig {
    DenseNetConfig {
        bn_size: 1,
        ..DenseNetConfig::densenet_bc_cifar(depth, 12).unwrap()
    }
}

/// Peak bytes of one forward+backward above what was held before it (parameters, input).
fn peak(depth: usize, mode: Recompute) -> u64 {
    let dev = Device::cpu();
    let model = DenseNet::new(config(depth), DType::F32, &dev, 1)
        .unwrap()
        .with_recompute(mode)
        .unwrap();
    let x = Tensor::randn(&[BATCH, 3, IMAGE, IMAGE], DType::F32, &dev, 2).unwrap();
    let labels: Vec<usize> = (0..BATCH).collect();
    let before = dev.memory().current();
    dev.memory().reset_peak();
    let out = forward_backward(&model, &x, &labels, 0).unwrap();
    drop(out);
    (dev.memory().peak() - before) as u64
}

#[test]
fn memory_grows_quadratically_naive_and_linearly_efficient() {
    let depths = [16, 28, 40, 52];
    let mut exps = Vec::new();
    let mut at_max = Vec::new();
    for mode in [
        Recompute::Naive,
        Recompute::Selective(Selective::Bottleneck),
        Recompute::Selective(Selective::Layer),
    ] {
        let points: Vec<(usize, u64)> = depths.iter().map(|&d| (d, peak(d, mode))).collect();
        let xy: Vec<(f64, f64)> = points.iter().map(|&(d, p)| (d as f64, p as f64)).collect();
        let e = fitted_exponent(&xy);
        println!("{mode}: {points:?} exponent {e:.3}");
        exps.push(e);
        at_max.push(points.last().unwrap().1);
    }
    assert!(exps[0] >= 1.5, "naive exponent {}", exps[0]);
    assert!(exps[1] <= 1.15, "bottleneck exponent {}", exps[1]);
    assert!(exps[2] <= 1.15, "layer exponent {}", exps[2]);
    assert!(
        at_max[2] < at_max[1] && at_max[1] < at_max[0],
        "peaks at depth 52: {at_max:?}"
    );
}

#[test]
fn a_budget_between_layer_and_naive_holds() {
    let depth = 40;
    let (naive, layer) = (
        peak(depth, Recompute::Naive),
        peak(depth, Recompute::Selective(Selective::Layer)),
    );
    let dev = Device::cpu();
    let model = DenseNet::new(config(depth), DType::F32, &dev, 1).unwrap();
    let x = Tensor::randn(&[BATCH, 3, IMAGE, IMAGE], DType::F32, &dev, 2).unwrap();
    let held = dev.memory().current() as u64;
    for frac in [0.3, 0.6] {
        let budget = held + layer + ((naive - layer) as f64 * frac) as u64;
        let mut model = DenseNet::new(config(depth), DType::F32, &dev, 1).unwrap();
        model.set_recompute(Recompute::Budget(budget)).unwrap();
        dev.memory().reset_peak();
        let out = forward_backward(&model, &x, &[0, 1, 2, 3], 0).unwrap();
        drop(out);
        let measured = dev.memory().peak() as u64;
        println!(
            "budget {budget}: measured peak {measured} (naive {}, layer {})",
            held + naive,
            held + layer
        );
        assert!(measured <= budget, "peak {measured} over budget {budget}");
    }
    drop(model);
}
