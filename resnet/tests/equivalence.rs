//! Every memory setting computes what Naive computes, in f64 over random small ResNets: loss,
//! logits, every parameter gradient and every running statistic after the step. With the CIFAR
//! stem the budget case uses a budget under which the planner's plan mixes kept and recomputed
//! segments (asserted). With the ImageNet stem at these tiny sizes the 7x7 convolution's
//! workspace sets the peak whatever the blocks keep, so no budget mixes (the planner's front has
//! one point); the budget case then runs the chain at the least feasible peak.

mod support;

use checkpoint::planner::{Plan, PlanOptions};
use proptest::prelude::*;
use resnet::{Recompute, ResNet, ResNetConfig, Stem};
use support::{compare, forward_bitwise_equal, step};
use tape::{DType, Device, Tensor};

/// f64 tolerance: relative to each tensor's (or the step's largest gradient's) magnitude.
const TOL: f64 = 1e-12;

/// Whether a plan keeps some top-level segments and recomputes others.
fn mixes(plan: &Plan) -> bool {
    let s = plan.segments();
    s.iter().any(|s| s.checkpointed) && s.iter().any(|s| !s.checkpointed)
}

/// The least-peak budget for `model` on `x` whose plan mixes kept and recomputed segments, and
/// that plan, from the planner's front (every least-recompute plan per peak); without a mixing
/// plan on the front, the least feasible peak and its plan.
fn budget_and_plan(model: &ResNet, x: &Tensor) -> (u64, Plan) {
    let cm = model.runner().chain_model(x).unwrap();
    let front = cm.front(PlanOptions::default()).unwrap();
    let point = front.iter().find(|p| mixes(&p.plan)).unwrap_or(&front[0]);
    (point.peak, cm.plan(point.peak).unwrap())
}

fn configs() -> impl Strategy<Value = (ResNetConfig, usize, usize, u64)> {
    (
        prop::sample::select(vec![18usize, 34, 50]),
        any::<bool>(),
        2usize..5,
        2usize..4,
        0usize..5,
        0u64..1 << 62,
    )
        .prop_map(|(depth, imagenet, width, batch, extra, seed)| {
            let (stem, image) = if imagenet {
                (Stem::ImageNet, 12 + 2 * extra)
            } else {
                (Stem::Cifar, 10 + extra)
            };
            let config = ResNetConfig {
                depth,
                num_classes: 3,
                in_channels: 3,
                stem,
                width,
            };
            (config, batch, image, seed)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn every_memory_setting_matches_naive_f64((config, batch, image, seed) in configs()) {
        let dev = Device::cpu();
        let x = Tensor::randn(&[batch, 3, image, image], DType::F64, &dev, seed ^ 1).unwrap();
        let labels: Vec<usize> = (0..batch).map(|i| (i + seed as usize) % 3).collect();
        let fresh = || ResNet::new(config.clone(), DType::F64, &dev, seed).unwrap();

        let naive = step(&mut fresh(), &x, &labels, Recompute::Naive);
        let per_block = step(&mut fresh(), &x, &labels, Recompute::PerBlock);
        compare(&per_block, &naive, TOL, "per-block").map_err(TestCaseError::fail)?;
        // The forward computes the same numbers in the same order (the fused batch norm + ReLU
        // included): bitwise equal. Only the gradients' summation orders differ.
        prop_assert!(forward_bitwise_equal(&per_block, &naive), "per-block forward differs");

        let mut model = fresh();
        let (budget, plan) = budget_and_plan(&model, &x);
        if config.stem == Stem::Cifar {
            prop_assert!(mixes(&plan), "no budget makes the plan mix: {}", plan);
        }
        let memory = Recompute::Budget(budget);
        model.set_recompute(memory).unwrap();
        prop_assert_eq!(model.runner().plan(&x).unwrap(), Some(plan.clone()));
        let budgeted = step(&mut model, &x, &labels, memory);
        // The same plan given explicitly (`plan`) runs the same step.
        let replayed = step(
            &mut fresh().with_plan(plan.clone()).unwrap(),
            &x,
            &labels,
            Recompute::Plan,
        );
        compare(&replayed, &naive, TOL, "plan").map_err(TestCaseError::fail)?;
        prop_assert!(forward_bitwise_equal(&replayed, &naive), "plan forward differs");
        // The step ran the mixing plan (the chain was not profiled again).
        prop_assert_eq!(model.last_plan(), Some(plan));
        compare(&budgeted, &naive, TOL, &format!("{memory}")).map_err(TestCaseError::fail)?;
        prop_assert!(forward_bitwise_equal(&budgeted, &naive), "{} forward differs", memory);
    }
}

/// Under a 16-bit precision policy (f32 weights, 16-bit activations) per-block checkpointing
/// and a mixing budget compute what Naive computes: the forward bit for bit (the recompute
/// runs under the first pass's policy and rounds the same values), and the gradients bit for
/// bit as well.
#[test]
fn every_memory_setting_matches_naive_under_bf16_and_f16() {
    let dev = Device::cpu();
    let config = ResNetConfig::cifar(18, 3).with_width(4);
    let x = Tensor::randn(&[3, 3, 12, 12], DType::F32, &dev, 5).unwrap();
    let labels = [0, 2, 1];
    for precision in [tape::Precision::Bf16, tape::Precision::F16] {
        let fresh = || {
            ResNet::new(config.clone(), DType::F32, &dev, 6)
                .unwrap()
                .with_precision(precision)
        };
        let naive = step(&mut fresh(), &x, &labels, Recompute::Naive);
        let per_block = step(&mut fresh(), &x, &labels, Recompute::PerBlock);
        assert!(
            forward_bitwise_equal(&per_block, &naive),
            "{precision} per-block forward"
        );
        compare(&per_block, &naive, 0.0, &format!("{precision} per-block")).unwrap();
        let mut model = fresh();
        let (budget, plan) = budget_and_plan(&model, &x);
        assert!(mixes(&plan), "{precision}: no budget mixes: {plan}");
        let budgeted = step(&mut model, &x, &labels, Recompute::Budget(budget));
        assert!(
            forward_bitwise_equal(&budgeted, &naive),
            "{precision} budget forward"
        );
        compare(&budgeted, &naive, 0.0, &format!("{precision} budget")).unwrap();
        let plain = ResNet::new(config.clone(), DType::F32, &dev, 6).unwrap();
        let f32_run = step(&mut { plain }, &x, &labels, Recompute::Naive);
        assert_ne!(
            f32_run.loss, naive.loss,
            "{precision}: the policy changed the arithmetic"
        );
    }
}
