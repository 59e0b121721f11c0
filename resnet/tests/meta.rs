//! The meta device predicts a ResNet training step's memory without running it: two SGD steps on
//! a meta device charge exactly what the CPU charges (the same peak, byte for byte, and the
//! same launches and allocations), naive and per block, both stems, f32 and f64; a budget run
//! on meta stays within its budget. The queued anomaly check (`train_step_queued`) makes no
//! host sync in a steady-state step, on the CPU and meta.

use resnet::train::{sgd_config, train_step, train_step_queued};
use resnet::{Recompute, ResNet, ResNetConfig};
use tape::optim::Sgd;
use tape::{DType, Device, Tensor};
use trainer::anomaly::AnomalyGuard;

/// The second step's peak and counts, and the bytes held after it.
fn two_steps(dev: &Device, config: &ResNetConfig, memory: Recompute, dtype: DType) -> [u64; 4] {
    let mut model = ResNet::new(config.clone(), dtype, dev, 1)
        .unwrap()
        .with_recompute(memory)
        .unwrap();
    let mut opt = Sgd::new(sgd_config()).unwrap();
    let x = Tensor::randn(&[4, 3, 16, 16], dtype, dev, 2).unwrap();
    let labels: Vec<usize> = (0..4).collect();
    train_step(&mut model, &mut opt, &x, &labels, 0).unwrap();
    dev.memory().reset_peak();
    let before = dev.counters();
    train_step(&mut model, &mut opt, &x, &labels, 1).unwrap();
    let counts = dev.counters().since(before);
    [
        dev.memory().peak() as u64,
        dev.memory().current() as u64,
        counts.launches,
        counts.allocs,
    ]
}

fn configs() -> [ResNetConfig; 2] {
    [
        ResNetConfig::cifar(18, 10).with_width(4),
        ResNetConfig::imagenet(50, 7).with_width(4),
    ]
}

#[test]
fn meta_step_charges_what_the_cpu_step_charges() {
    for config in configs() {
        for dtype in [DType::F32, DType::F64] {
            for memory in [Recompute::Naive, Recompute::PerBlock] {
                let cpu = two_steps(&Device::cpu(), &config, memory, dtype);
                let meta = two_steps(&Device::meta(), &config, memory, dtype);
                assert_eq!(meta, cpu, "{config:?} {memory} {dtype:?}");
            }
        }
    }
}

#[test]
fn a_budget_planned_on_meta_holds_on_meta() {
    let config = &configs()[0];
    let naive = two_steps(&Device::meta(), config, Recompute::Naive, DType::F32)[0];
    let per_block = two_steps(&Device::meta(), config, Recompute::PerBlock, DType::F32)[0];
    let budget = (naive + per_block) / 2;
    let peak = two_steps(
        &Device::meta(),
        config,
        Recompute::Budget(budget),
        DType::F32,
    )[0];
    assert!(peak <= budget, "peak {peak} over budget {budget}");
    assert!(peak > per_block, "peak {peak} vs per block {per_block}");
}

#[test]
fn queued_steps_make_no_host_sync() {
    let config = &configs()[0];
    for dev in [Device::cpu(), Device::meta()] {
        let mut model = ResNet::new(config.clone(), DType::F32, &dev, 1).unwrap();
        let mut opt = Sgd::new(sgd_config()).unwrap();
        let x = Tensor::randn(&[4, 3, 16, 16], DType::F32, &dev, 2).unwrap();
        let labels: Vec<usize> = (0..4).collect();
        let mut guard = AnomalyGuard::new();
        for step in 0..3 {
            let (r, c) = dev
                .count(|| train_step_queued(&mut model, &mut opt, &mut guard, &x, &labels, step));
            r.unwrap();
            assert_eq!(c.syncs, 0, "{dev} step {step}: {c}");
        }
        let (r, c) = dev.count(|| guard.finish(&model));
        r.unwrap();
        assert_eq!(c.syncs, 0, "{dev}: finish");
    }
}
