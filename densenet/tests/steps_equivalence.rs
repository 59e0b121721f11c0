//! Every efficiency mode trains like Naive over several steps, and predicts like it in eval mode:
//! three SGD steps (the seed's recipe: Nesterov momentum, weight decay) per mode in f64, compared
//! after each step (loss, every gradient, every parameter after the update, running statistics)
//! to 1e-12, gradients relative to the step's largest gradient and parameters relative to the
//! largest parameter; then eval-mode logits (`predict`) and eval-mode gradients (a recording tape
//! in eval mode, as when fine-tuning with frozen statistics).

mod support;

use densenet::train::{forward_backward, predict, seed_sgd_config, train_step};
use densenet::{DenseLayerMode, DenseNet, DenseNetConfig, Recompute, Selective};
use tape::optim::Sgd;
use tape::{ops, DType, Device, Tape, Tensor};

const TOL: f64 = 1e-12;
const STEPS: u64 = 3;

/// (config, batch, image): two CIFAR-stem networks (one with dropout) and an ImageNet stem.
fn cases() -> Vec<(DenseNetConfig, usize, usize)> {
    let base = DenseNetConfig {
        growth_rate: 3,
        block_config: vec![2, 3],
        bn_size: 2,
        num_init_features: 6,
        num_classes: 4,
        ..DenseNetConfig::default()
    };
    vec![
        (base.clone(), 3, 8),
        (
            DenseNetConfig {
                growth_rate: 2,
                block_config: vec![3, 2],
                bn_size: 4,
                compression: 1.0,
                drop_rate: 0.3,
                ..base.clone()
            },
            2,
            6,
        ),
        (
            DenseNetConfig {
                block_config: vec![2, 2],
                small_inputs: false,
                ..base
            },
            // Odd, and large enough that the dense layers set the peak rather than conv0's
            // kernel workspace, so that a budget makes the planner mix modes.
            2,
            61,
        ),
    ]
}

/// What one step leaves behind, flattened per tensor.
struct Snapshot {
    loss: f64,
    grads: Vec<Vec<f64>>,
    params: Vec<Vec<f64>>,
    running: Vec<Vec<f64>>,
}

fn snapshot(model: &DenseNet, loss: f64, grads: &tape::Gradients) -> Snapshot {
    Snapshot {
        loss,
        grads: model
            .parameters()
            .iter()
            .map(|p| grads.get(p.tensor()).unwrap().to_f64_vec())
            .collect(),
        params: model
            .parameters()
            .iter()
            .map(|p| p.tensor().to_f64_vec())
            .collect(),
        running: model
            .running_stats()
            .iter()
            .flat_map(|(_, rs)| [rs.mean().to_f64_vec(), rs.var().to_f64_vec()])
            .collect(),
    }
}

fn max_abs(v: &[Vec<f64>]) -> f64 {
    v.iter().flatten().fold(1e-30f64, |m, x| m.max(x.abs()))
}

/// `max |a - b|` over all tensors, over `scale`; the index of the worst tensor.
fn worst(a: &[Vec<f64>], b: &[Vec<f64>], scale: f64) -> (f64, usize) {
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| {
            let d = x
                .iter()
                .zip(y)
                .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
            (d / scale, i)
        })
        .fold((0.0, 0), |m, d| if d.0 > m.0 { d } else { m })
}

fn assert_close(a: &Snapshot, b: &Snapshot, what: &str) {
    let d = (a.loss - b.loss).abs() / b.loss.abs().max(1e-30);
    assert!(d <= TOL, "{what}: loss {} vs {} ({d:e})", a.loss, b.loss);
    let (d, i) = worst(&a.grads, &b.grads, max_abs(&b.grads));
    assert!(d <= TOL, "{what}: gradient {i} off by {d:e} of the largest");
    let (d, i) = worst(&a.params, &b.params, max_abs(&b.params));
    assert!(
        d <= TOL,
        "{what}: parameter {i} off by {d:e} of the largest"
    );
    for (i, (x, y)) in a.running.iter().zip(&b.running).enumerate() {
        let (d, _) = worst(
            std::slice::from_ref(x),
            std::slice::from_ref(y),
            max_abs(std::slice::from_ref(y)),
        );
        assert!(d <= TOL, "{what}: running statistic {i} off by {d:e}");
    }
}

/// A model in `mode` trained `STEPS` steps on one batch; a snapshot after each step, and the
/// modes each step ran. `Budget(0)` stands for a budget under which the planner mixes modes once
/// the optimizer holds its momentum (from the second step on).
fn train(
    config: &DenseNetConfig,
    mode: Recompute,
    batch: usize,
    image: usize,
) -> (DenseNet, Vec<Snapshot>, Vec<Vec<Vec<DenseLayerMode>>>) {
    let dev = Device::cpu();
    let mut model = DenseNet::new(config.clone(), DType::F64, &dev, 7).unwrap();
    let shape = [batch, 3, image, image];
    let x = Tensor::randn(&shape, DType::F64, &dev, 8).unwrap();
    let labels: Vec<usize> = (0..batch)
        .map(|i| (3 * i + 1) % config.num_classes)
        .collect();
    let mut mixed = None;
    let mode = match mode {
        Recompute::Budget(0) => {
            // SGD keeps one momentum buffer per parameter from the first step on.
            let held = dev.memory().current() as u64 + model.parameter_bytes() as u64;
            let (budget, modes) = support::mixing_plan_held(&model, shape, held)
                .expect("a multi-layer network has a budget that mixes modes");
            mixed = Some(modes);
            Recompute::Budget(budget)
        }
        m => m,
    };
    model.set_recompute(mode).unwrap();
    let mut opt = Sgd::new(seed_sgd_config()).unwrap();
    let mut snaps = Vec::new();
    let mut plans = Vec::new();
    for step in 0..STEPS {
        let modes = model.layer_modes(shape).unwrap();
        if let (Some(expected), true) = (&mixed, step > 0) {
            assert_eq!(&modes, expected, "step {step} runs the mixed plan");
        }
        plans.push(modes);
        let out = train_step(&mut model, &mut opt, &x, &labels, step).unwrap();
        snaps.push(snapshot(&model, out.loss().unwrap(), &out.grads));
    }
    (model, snaps, plans)
}

const MODES: [Recompute; 4] = [
    Recompute::Selective(Selective::Bottleneck),
    Recompute::Selective(Selective::Layer),
    Recompute::Budget(0),
    Recompute::Budget(1 << 40),
];

#[test]
fn three_sgd_steps_in_every_mode_match_naive() {
    for (config, batch, image) in cases() {
        let (_, naive, _) = train(&config, Recompute::Naive, batch, image);
        for mode in MODES {
            let (_, other, plans) = train(&config, mode, batch, image);
            for (step, (a, b)) in other.iter().zip(&naive).enumerate() {
                let what = format!(
                    "{mode} step {step} ({:?}) of {:?}",
                    plans[step], config.block_config
                );
                assert_close(a, b, &what);
            }
        }
    }
}

#[test]
fn eval_mode_in_every_mode_matches_naive() {
    for (config, batch, image) in cases() {
        // Trained first, so that the running statistics are not the initial 0 and 1.
        let (naive, _, _) = train(&config, Recompute::Naive, batch, image);
        let dev = naive.device().clone();
        // New data of the training batch's shape (the budget plans for that shape).
        let x = Tensor::randn(&[batch, 3, image, image], DType::F64, &dev, 99).unwrap();
        let labels: Vec<usize> = (0..batch).map(|i| i % config.num_classes).collect();
        let eval = |model: &DenseNet| {
            // Every model lives on a device of its own.
            let x = x.to_device(model.device()).unwrap();
            let logits = predict(model, &x).unwrap().to_f64_vec();
            // Eval-mode gradients: running statistics instead of batch statistics, no dropout,
            // and checkpoints run as plain calls.
            let mut tape = Tape::recording().training(false);
            let out = model.forward(&mut tape, &x).unwrap();
            let loss = ops::cross_entropy(&mut tape, &out, &labels).unwrap();
            let grads = tape.backward(&loss).unwrap();
            let grads: Vec<Vec<f64>> = model
                .parameters()
                .iter()
                .map(|p| grads.get(p.tensor()).unwrap().to_f64_vec())
                .collect();
            (logits, grads)
        };
        let (want_logits, want_grads) = eval(&naive);
        for mode in MODES {
            let (model, _, _) = train(&config, mode, batch, image);
            let (logits, grads) = eval(&model);
            let scale = max_abs(std::slice::from_ref(&want_logits));
            let (d, _) = worst(
                std::slice::from_ref(&logits),
                std::slice::from_ref(&want_logits),
                scale,
            );
            assert!(d <= TOL, "{mode}: eval logits off by {d:e}");
            let (d, i) = worst(&grads, &want_grads, max_abs(&want_grads));
            assert!(d <= TOL, "{mode}: eval gradient {i} off by {d:e}");
        }
        // Eval mode reads the running statistics: the trained model predicts otherwise than
        // with batch statistics (so the comparison above is not between untouched models).
        let train_logits = forward_backward(&naive, &x, &labels, 0).unwrap().logits;
        let (d, _) = worst(
            &[train_logits.to_f64_vec()],
            std::slice::from_ref(&want_logits),
            max_abs(std::slice::from_ref(&want_logits)),
        );
        assert!(d > 1e-6, "eval and training logits differ ({d:e})");
    }
}
