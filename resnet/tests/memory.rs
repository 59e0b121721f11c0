//! Measured peak memory (the engine's accounting) of one training step of a deeper ResNet:
//! per-block checkpoints take less than the naive step, and a planner budget between the two
//! lands between them.

use checkpoint::planner::Plan;
use resnet::train::forward_backward;
use resnet::{Recompute, ResNet, ResNetConfig};
use tape::{DType, Device, Tensor};

const BATCH: usize = 8;
const IMAGE: usize = 32;

fn config() -> ResNetConfig {
    ResNetConfig::cifar(34, 10).with_width(4)
}

/// Peak bytes of one forward + backward above what was held before it (parameters, input), and
/// the plan it ran.
fn peak(memory: Recompute) -> (u64, Option<Plan>) {
    let dev = Device::cpu();
    let model = ResNet::new(config(), DType::F32, &dev, 1)
        .unwrap()
        .with_recompute(memory)
        .unwrap();
    let x = Tensor::randn(&[BATCH, 3, IMAGE, IMAGE], DType::F32, &dev, 2).unwrap();
    let labels: Vec<usize> = (0..BATCH).collect();
    // Profile (and plan) first, so that the dry run does not count in the step's peak.
    let plan = model.runner().plan(&x).unwrap();
    let before = dev.memory().current();
    dev.memory().reset_peak();
    drop(forward_backward(&model, &x, &labels).unwrap());
    ((dev.memory().peak() - before) as u64, plan)
}

#[test]
fn per_block_takes_less_memory_than_naive_and_a_budget_lands_between() {
    let (naive, _) = peak(Recompute::Naive);
    let (per_block, _) = peak(Recompute::PerBlock);
    println!("naive {naive} bytes, per-block {per_block} bytes");
    assert!(
        (per_block as f64) < 0.7 * naive as f64,
        "per-block {per_block} vs naive {naive}"
    );

    // A budget halfway between the two, in device bytes (parameters and input included).
    let dev = Device::cpu();
    let model = ResNet::new(config(), DType::F32, &dev, 1).unwrap();
    let x = Tensor::randn(&[BATCH, 3, IMAGE, IMAGE], DType::F32, &dev, 2).unwrap();
    let held = dev.memory().current() as u64;
    drop((model, x));
    let budget = held + (naive + per_block) / 2;
    let (mid, plan) = peak(Recompute::Budget(budget));
    let plan = plan.unwrap();
    println!("budget {budget}: {mid} bytes above the {held} held, plan {plan}");
    assert!(plan.checkpointed_count() > 0, "{plan}");
    assert!(mid < naive, "budget run {mid} vs naive {naive}");
    assert!(
        held + mid <= budget,
        "peak {} over budget {budget}",
        held + mid
    );
}
