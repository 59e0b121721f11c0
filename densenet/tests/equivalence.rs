//! Every efficiency mode computes what Naive computes: loss, every parameter gradient and the
//! running statistics after the step, over random DenseNet configs on the CPU; and on a GPU, when
//! one is present, every mode against Naive there and the GPU against the CPU (skipped without
//! a usable GPU; failing instead under `TAPE_EXPECT_GPU=1`).

mod support;

use densenet::train::forward_backward;
use densenet::{DenseNet, DenseNetConfig, Recompute, Selective};
use proptest::prelude::*;
use tape::testing::rel;
use tape::{DType, Device, Tensor};

struct Outcome {
    loss: f64,
    grads: Vec<(String, Vec<f64>)>,
    running: Vec<Vec<f64>>,
}

/// One forward + backward of `config` in `mode` on `dev` (inputs made on the host, copied).
fn run(
    dev: &Device,
    config: &DenseNetConfig,
    mode: Recompute,
    dtype: DType,
    batch: usize,
    image: usize,
    seed: u64,
) -> Option<Outcome> {
    let mut model = DenseNet::new(config.clone(), dtype, dev, seed).unwrap();
    let x = Tensor::randn(&[batch, 3, image, image], dtype, &Device::cpu(), seed + 1)
        .unwrap()
        .to_device(dev)
        .unwrap();
    let labels: Vec<usize> = (0..batch)
        .map(|i| (i + seed as usize) % config.num_classes)
        .collect();
    let shape = [batch, 3, image, image];
    if mode == Recompute::Budget(0) {
        // A budget under which the planner must mix modes (`support::mixing_plan`, found
        // exhaustively); none for networks whose layers are too small to move the peak: the
        // case is skipped rather than run with a plan that mixes nothing.
        let (budget, modes) = support::mixing_plan(&model, shape)?;
        model.set_recompute(Recompute::Budget(budget)).unwrap();
        assert_eq!(model.layer_modes(shape).unwrap(), modes, "budget {budget}");
    } else {
        model.set_recompute(mode).unwrap();
    }
    let out = forward_backward(&model, &x, &labels, seed).unwrap();
    Some(Outcome {
        loss: out.loss().unwrap(),
        grads: model
            .parameters()
            .iter()
            .map(|p| {
                let g = out
                    .grads
                    .get(p.tensor())
                    .expect("every parameter has a gradient");
                (p.name().to_string(), g.try_to_f64_vec().unwrap())
            })
            .collect(),
        running: model
            .running_stats()
            .iter()
            .flat_map(|(_, rs)| {
                [
                    rs.mean().try_to_f64_vec().unwrap(),
                    rs.var().try_to_f64_vec().unwrap(),
                ]
            })
            .collect(),
    })
}

/// Loss and running statistics are compared value by value (relative to each tensor's largest
/// value); gradients relative to the step's largest gradient (the infinity-norm relative error of
/// the whole gradient vector). Some gradients are analytically zero (a batch norm over two values
/// per channel outputs +-1 whatever its input, a conv bias before a batch norm) and are then pure
/// rounding noise, which the modes and devices compute in different orders.
fn compare(a: &Outcome, b: &Outcome, tol: f64, what: &str) -> Result<(), String> {
    if rel(&[a.loss], &[b.loss]) > tol {
        return Err(format!("{what}: loss {} vs {}", a.loss, b.loss));
    }
    let largest = b
        .grads
        .iter()
        .flat_map(|(_, g)| g.iter())
        .fold(1e-30f64, |m, v| m.max(v.abs()));
    for ((name, x), (_, y)) in a.grads.iter().zip(&b.grads) {
        let d = x
            .iter()
            .zip(y)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()))
            / largest;
        if d > tol {
            return Err(format!(
                "{what}: gradient of {name}: {d:e} of the largest gradient"
            ));
        }
    }
    for (i, (x, y)) in a.running.iter().zip(&b.running).enumerate() {
        let d = rel(x, y);
        if d > tol {
            return Err(format!("{what}: running statistic {i} differs by {d:e}"));
        }
    }
    Ok(())
}

fn configs() -> impl Strategy<Value = (DenseNetConfig, usize, usize, u64)> {
    (
        1usize..5,
        prop::collection::vec(1usize..4, 1..4),
        1usize..4,
        prop::sample::select(vec![0.5, 0.75, 1.0]),
        any::<bool>(),
        prop::sample::select(vec![0.0, 0.0, 0.3]),
        2usize..4,
        0usize..3,
        0u64..1 << 62,
    )
        .prop_map(
            |(growth, blocks, bn_size, compression, small, drop, batch, extra, seed)| {
                let config = DenseNetConfig {
                    growth_rate: growth,
                    block_config: blocks,
                    bn_size,
                    compression,
                    num_init_features: 2 * growth,
                    drop_rate: drop,
                    num_classes: 3,
                    small_inputs: small,
                    ..DenseNetConfig::default()
                };
                let image = config.min_image_size() + extra;
                (config, batch, image, seed)
            },
        )
}

const MODES: [Recompute; 4] = [
    Recompute::Selective(Selective::Bottleneck),
    Recompute::Selective(Selective::Layer),
    Recompute::Budget(0),
    Recompute::Budget(1 << 40),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn every_mode_matches_naive_f64((config, batch, image, seed) in configs()) {
        let naive = run(&Device::cpu(), &config, Recompute::Naive, DType::F64, batch, image, seed).unwrap();
        for mode in MODES {
            let Some(other) = run(&Device::cpu(), &config, mode, DType::F64, batch, image, seed) else { continue };
            compare(&other, &naive, 1e-12, &format!("{mode} f64")).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn every_mode_matches_naive_f32((config, batch, image, seed) in configs()) {
        let naive = run(&Device::cpu(), &config, Recompute::Naive, DType::F32, batch, image, seed).unwrap();
        for mode in MODES {
            let Some(other) = run(&Device::cpu(), &config, mode, DType::F32, batch, image, seed) else { continue };
            compare(&other, &naive, 1e-5, &format!("{mode} f32")).map_err(TestCaseError::fail)?;
        }
    }
}

/// On a GPU: every mode against Naive there, and the GPU against the CPU.
mod on_gpu {
    use super::*;
    use densenet::train::{train_step, train_step_with, StepOptions};
    use densenet::DenseNetError;
    use tape::optim::{Sgd, SgdConfig};
    use tape::testing::gpu;

    fn assert_same(a: &Outcome, b: &Outcome, tol: f64, what: &str) {
        if let Err(e) = compare(a, b, tol, what) {
            panic!("{e}");
        }
    }

    fn small_configs() -> Vec<(DenseNetConfig, usize, usize)> {
        let cifar = DenseNetConfig {
            growth_rate: 4,
            block_config: vec![2, 3, 2],
            num_init_features: 8,
            bn_size: 2,
            num_classes: 5,
            drop_rate: 0.2,
            ..DenseNetConfig::default()
        };
        let imagenet = DenseNetConfig {
            growth_rate: 3,
            block_config: vec![2, 2],
            num_init_features: 6,
            bn_size: 2,
            num_classes: 4,
            small_inputs: false,
            compression: 0.75,
            ..DenseNetConfig::default()
        };
        let image = imagenet.min_image_size() + 3;
        vec![(cifar, 3, 12), (imagenet, 2, image)]
    }

    #[test]
    fn every_mode_matches_naive_on_the_gpu() {
        let Some(dev) = gpu() else { return };
        for (config, batch, image) in small_configs() {
            for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-4)] {
                for seed in [3u64, 11] {
                    let naive =
                        run(&dev, &config, Recompute::Naive, dtype, batch, image, seed).unwrap();
                    for mode in MODES {
                        let Some(other) = run(&dev, &config, mode, dtype, batch, image, seed)
                        else {
                            continue;
                        };
                        assert_same(
                            &other,
                            &naive,
                            tol,
                            &format!("GPU {mode} vs naive ({dtype:?}, seed {seed})"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gpu_matches_cpu_for_a_small_densenet() {
        let Some(dev) = gpu() else { return };
        for (config, batch, image) in small_configs() {
            for (dtype, tol) in [(DType::F64, 1e-9), (DType::F32, 1e-3)] {
                for mode in [Recompute::Naive, Recompute::Selective(Selective::Layer)] {
                    let cpu = run(&Device::cpu(), &config, mode, dtype, batch, image, 5).unwrap();
                    let gpu = run(&dev, &config, mode, dtype, batch, image, 5).unwrap();
                    assert_same(&gpu, &cpu, tol, &format!("GPU vs CPU {mode} ({dtype:?})"));
                }
            }
        }
    }

    #[test]
    fn sgd_steps_on_the_gpu_follow_the_cpu() {
        let Some(gpu_dev) = gpu() else { return };
        let (config, batch, image) = small_configs().remove(0);
        let mut losses = Vec::new();
        for dev in [Device::cpu(), gpu_dev] {
            let mut model = DenseNet::new(config.clone(), DType::F64, &dev, 1)
                .unwrap()
                .with_recompute(Recompute::Selective(Selective::Layer))
                .unwrap();
            let mut opt = Sgd::new(SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 1e-4,
                ..SgdConfig::default()
            })
            .unwrap();
            let x = Tensor::randn(&[batch, 3, image, image], DType::F64, &Device::cpu(), 2)
                .unwrap()
                .to_device(&dev)
                .unwrap();
            let labels: Vec<usize> = (0..batch).map(|i| i % config.num_classes).collect();
            let mut l = Vec::new();
            for step in 0..3 {
                l.push(
                    train_step(&mut model, &mut opt, &x, &labels, step)
                        .unwrap()
                        .loss()
                        .unwrap(),
                );
            }
            let params: Vec<Vec<f64>> = model
                .parameters()
                .iter()
                .map(|p| p.tensor().try_to_f64_vec().unwrap())
                .collect();
            losses.push((l, params));
        }
        let (cpu, gpu) = (&losses[0], &losses[1]);
        assert!(
            rel(&gpu.0, &cpu.0) <= 1e-9,
            "losses {:?} vs {:?}",
            gpu.0,
            cpu.0
        );
        for (i, (a, b)) in gpu.1.iter().zip(&cpu.1).enumerate() {
            assert!(
                rel(a, b) <= 1e-8,
                "parameter {i} after 3 steps: {:e}",
                rel(a, b)
            );
        }
    }

    #[test]
    fn a_gpu_step_is_accounted_on_the_gpu_device() {
        let Some(dev) = gpu() else { return };
        let (config, batch, image) = small_configs().remove(0);
        let model = DenseNet::new(config.clone(), DType::F32, &dev, 0).unwrap();
        let params = model.parameter_bytes();
        assert!(
            dev.memory().current() >= params,
            "parameters live on the GPU device"
        );
        let x = Tensor::randn(&[batch, 3, image, image], DType::F32, &dev, 1).unwrap();
        let before = dev.memory().current();
        dev.memory().reset_peak();
        let labels: Vec<usize> = (0..batch).map(|i| i % config.num_classes).collect();
        let out = forward_backward(&model, &x, &labels, 0).unwrap();
        assert!(out.loss().unwrap().is_finite());
        assert!(
            dev.memory().peak() > before + params,
            "activations and gradients were charged to the GPU device"
        );
        drop(out);
        drop(x);
        drop(model);
        assert_eq!(dev.memory().current(), 0, "everything released");
    }

    #[test]
    fn the_anomaly_check_stops_a_gpu_step() {
        let Some(dev) = gpu() else { return };
        let (config, batch, image) = small_configs().remove(0);
        let mut model = DenseNet::new(config.clone(), DType::F32, &dev, 0).unwrap();
        let x = Tensor::randn(&[batch, 3, image, image], DType::F32, &dev, 1).unwrap();
        let labels: Vec<usize> = (0..batch).map(|i| i % config.num_classes).collect();
        let mut opt = Sgd::new(SgdConfig::default()).unwrap();
        train_step_with(&mut model, &mut opt, &x, &labels, StepOptions::new(0, 0)).unwrap();
        // A NaN in the first batch norm's bias reaches the loss (ReLU propagates NaN).
        let _name = {
            let mut params = model.parameters_mut();
            let p = &mut params[2];
            let mut v = p.tensor().try_to_f64_vec().unwrap();
            v[0] = f64::NAN;
            let t = Tensor::from_f64(&v, p.tensor().shape(), DType::F32, &dev).unwrap();
            p.assign(&t).unwrap();
            p.name().to_string()
        };
        match train_step_with(&mut model, &mut opt, &x, &labels, StepOptions::new(1, 1)) {
            Err(DenseNetError::NonFinite { step, what, .. }) => {
                assert_eq!(step, 1);
                assert_eq!(what, "the loss");
            }
            other => panic!("expected NonFinite, got {:?}", other.err()),
        }
    }
}
