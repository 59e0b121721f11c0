//! DenseNet under a 16-bit precision policy: every memory mode trains like naive bit for bit
//! (the recompute runs under the first pass's policy, so it makes the same 16-bit activations),
//! and the step's activations take half the bytes.

use densenet::train::{seed_sgd_config, train_step};
use densenet::{DenseNet, DenseNetConfig, Recompute, Selective};
use tape::optim::Sgd;
use tape::{DType, Device, Precision, Tensor};

/// Losses, gradients and parameters (as bits) after each of three SGD steps.
type Run = Vec<(u64, Vec<Vec<u64>>, Vec<Vec<u64>>)>;

fn config() -> DenseNetConfig {
    DenseNetConfig {
        growth_rate: 4,
        block_config: vec![3, 3],
        bn_size: 2,
        num_init_features: 8,
        num_classes: 5,
        drop_rate: 0.2,
        ..DenseNetConfig::default()
    }
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_f64_vec().iter().map(|v| v.to_bits()).collect()
}

fn train(mode: Recompute, precision: Precision) -> Run {
    let dev = Device::cpu();
    let mut model = DenseNet::new(config(), DType::F32, &dev, 3)
        .unwrap()
        .with_recompute(mode)
        .unwrap()
        .with_precision(precision);
    let x = Tensor::randn(&[4, 3, 8, 8], DType::F32, &dev, 4).unwrap();
    let labels = [0, 3, 1, 4];
    let mut opt = Sgd::new(seed_sgd_config()).unwrap();
    (0..3)
        .map(|step| {
            let out = train_step(&mut model, &mut opt, &x, &labels, step).unwrap();
            let params = model.parameters();
            let grads = params
                .iter()
                .map(|p| {
                    let g = out.grads.get(p.tensor()).unwrap();
                    assert_eq!(g.dtype(), DType::F32, "{}: an f32 gradient", p.name());
                    bits(g)
                })
                .collect();
            let weights = params.iter().map(|p| bits(p.tensor())).collect();
            (out.loss().unwrap().to_bits(), grads, weights)
        })
        .collect()
}

#[test]
fn every_mode_equals_naive_bit_for_bit_under_bf16_and_f16() {
    for precision in [Precision::Bf16, Precision::F16] {
        let naive = train(Recompute::Naive, precision);
        for mode in [
            Recompute::Selective(Selective::Bottleneck),
            Recompute::Selective(Selective::Layer),
        ] {
            let other = train(mode, precision);
            for (step, (a, b)) in other.iter().zip(&naive).enumerate() {
                assert_eq!(a.0, b.0, "{mode} {precision} step {step}: loss");
                assert!(a.1 == b.1, "{mode} {precision} step {step}: gradients");
                assert!(a.2 == b.2, "{mode} {precision} step {step}: parameters");
            }
        }
    }
}

#[test]
fn a_bf16_step_trains_like_the_f32_step_within_bf16_rounding() {
    let f32_run = train(Recompute::Naive, Precision::F32);
    let bf16_run = train(Recompute::Naive, Precision::Bf16);
    let (a, b) = (f64::from_bits(f32_run[0].0), f64::from_bits(bf16_run[0].0));
    // The loss is a mean over 4 images of values of order log(5); activations rounded to bf16
    // (unit roundoff 2^-8) through a dozen layers move it by far less than 5%.
    assert!((a - b).abs() <= 0.05 * a.abs(), "loss {b} vs f32 {a}");
    assert_ne!(
        a.to_bits(),
        b.to_bits(),
        "the policy changed the arithmetic"
    );
}

/// Trains a small DenseNet on synthetic images for three epochs under `precision`; returns the
/// last epoch's mean training loss and the test accuracy (in percent).
fn converge(precision: Precision) -> (f64, f64) {
    use densenet::data::synthetic;
    use densenet::train::predict;
    let dev = Device::cpu();
    let classes = config().num_classes;
    let (train_set, test_set) = synthetic(384, 400, classes, 8, 11);
    let mut model = DenseNet::new(config(), DType::F32, &dev, 5)
        .unwrap()
        .with_precision(precision);
    let mut opt = Sgd::new(seed_sgd_config()).unwrap();
    let batch = 32;
    let mut last_epoch = Vec::new();
    for epoch in 0..3 {
        last_epoch.clear();
        for b in 0..train_set.len() / batch {
            let idx: Vec<usize> = (b * batch..(b + 1) * batch).collect();
            let data = train_set.batch(&idx, DType::F32, &dev).unwrap();
            let step = (epoch * 100 + b) as u64;
            let out = train_step(&mut model, &mut opt, &data.images, &data.labels, step).unwrap();
            last_epoch.push(out.loss().unwrap());
        }
    }
    let idx: Vec<usize> = (0..test_set.len()).collect();
    let data = test_set.batch(&idx, DType::F32, &dev).unwrap();
    let logits = predict(&model, &data.images).unwrap().to_f64_vec();
    let hits = data
        .labels
        .iter()
        .enumerate()
        .filter(|&(i, &l)| {
            let row = &logits[i * classes..(i + 1) * classes];
            let best = (0..classes).max_by(|&a, &b| row[a].total_cmp(&row[b]));
            best == Some(l)
        })
        .count();
    let loss = last_epoch.iter().sum::<f64>() / last_epoch.len() as f64;
    (loss, 100.0 * hits as f64 / data.labels.len() as f64)
}

/// The convergence bar: a bf16 run reaches the f32 run's test accuracy within 1 point
/// and its final (last-epoch mean) training loss within 3%. The model must actually learn (the
/// f32 run well above chance, 20%), or the comparison would say nothing.
#[test]
fn bf16_training_converges_like_f32() {
    let (loss32, acc32) = converge(Precision::F32);
    let (loss16, acc16) = converge(Precision::Bf16);
    assert!(
        acc32 >= 60.0,
        "the f32 run did not learn: {acc32}% test accuracy"
    );
    assert!(
        (acc16 - acc32).abs() <= 1.0,
        "bf16 test accuracy {acc16}% vs f32 {acc32}%"
    );
    assert!(
        (loss16 - loss32).abs() <= 0.03 * loss32,
        "bf16 final loss {loss16} vs f32 {loss32}"
    );
}

/// f16 training with dynamic loss scaling (PyTorch's `GradScaler` semantics): the f16
/// activations' narrow range makes the first scaled steps overflow, each such step is skipped
/// with the parameters unchanged and the scale halved, until the scale fits; then the model
/// trains (the loss falls), with every gradient arriving in f32.
#[test]
fn f16_training_with_a_loss_scaler_backs_off_then_trains() {
    use densenet::data::synthetic;
    use densenet::train::train_step_scaled;
    use tape::optim::{LossScaler, LossScalerConfig};
    let dev = Device::cpu();
    let (train_set, _) = synthetic(64, 0, config().num_classes, 8, 3);
    let mut model = DenseNet::new(config(), DType::F32, &dev, 5)
        .unwrap()
        .with_precision(Precision::F16);
    let mut opt = Sgd::new(seed_sgd_config()).unwrap();
    // A large initial scale, so that the first steps overflow f16 for sure.
    let config = LossScalerConfig {
        init_scale: 2f64.powi(24),
        ..LossScalerConfig::default()
    };
    let mut scaler = LossScaler::new(config).unwrap();
    let idx: Vec<usize> = (0..32).collect();
    let data = train_set.batch(&idx, DType::F32, &dev).unwrap();
    let (mut skipped, mut losses) = (0, Vec::new());
    for step in 0..20 {
        let before: Vec<Vec<u64>> = model
            .parameters()
            .iter()
            .map(|p| bits(p.tensor()))
            .collect();
        let scale = scaler.scale();
        let (out, applied) = train_step_scaled(
            &mut model,
            &mut opt,
            &mut scaler,
            &data.images,
            &data.labels,
            step,
        )
        .unwrap();
        let after: Vec<Vec<u64>> = model
            .parameters()
            .iter()
            .map(|p| bits(p.tensor()))
            .collect();
        if applied {
            losses.push(out.loss().unwrap());
            assert_eq!(
                scaler.scale(),
                scale,
                "step {step}: no growth before the interval"
            );
        } else {
            skipped += 1;
            assert_eq!(
                before, after,
                "step {step}: a skipped update changed the parameters"
            );
            assert_eq!(
                scaler.scale(),
                scale / 2.0,
                "step {step}: the scale backs off"
            );
        }
    }
    assert!(
        skipped >= 1,
        "2^24 should overflow f16 activation gradients"
    );
    assert!(losses.len() >= 10, "only {} steps applied", losses.len());
    assert!(
        losses.last().unwrap() < &(0.5 * losses[0]),
        "f16 training did not learn: {losses:?}"
    );
}

/// The peak bytes of one forward and backward of `model` on `x` (what the device holds before
/// it, `x` and the parameters, included).
fn step_peak(model: &DenseNet, x: &Tensor, labels: &[usize]) -> u64 {
    let memory = x.device().memory();
    memory.reset_peak();
    drop(densenet::train::forward_backward(model, x, labels, 0).unwrap());
    memory.peak() as u64
}

/// Under bf16 and f16 a memory budget is planned on the meta device: every budget from the
/// all-Layer plan's peak to naive's is met by the real step (its peak at most the budget), the
/// plans in between mix modes, each trains like naive bit for bit (three SGD steps, with room
/// for the optimizer's state), and a budget below every plan is a typed error.
#[test]
fn budgets_under_16_bit_are_met_and_train_like_naive() {
    let dev = Device::cpu();
    let x = Tensor::randn(&[4, 3, 8, 8], DType::F32, &dev, 4).unwrap();
    // Bytes the device holds beside the model (the probe on the meta device must count them).
    let _ballast = Tensor::zeros(&[20_000], DType::F32, &dev).unwrap();
    let labels = [0, 3, 1, 4];
    let all = |m| -> Vec<Vec<densenet::DenseLayerMode>> {
        config().block_config.iter().map(|&n| vec![m; n]).collect()
    };
    for precision in [Precision::Bf16, Precision::F16] {
        let model = |mode| {
            DenseNet::new(config(), DType::F32, &dev, 3)
                .unwrap()
                .with_recompute(mode)
                .unwrap()
                .with_precision(precision)
        };
        let layer = DenseNet::new(config(), DType::F32, &dev, 3)
            .unwrap()
            .with_plan(all(densenet::DenseLayerMode::RecomputeLayer))
            .unwrap()
            .with_precision(precision);
        // One model on the device at a time: what it holds is part of every peak.
        let lo = step_peak(&layer, &x, &labels);
        drop(layer);
        let hi = step_peak(&model(Recompute::Naive), &x, &labels);
        assert!(lo < hi, "{precision}: all-Layer {lo} below naive {hi}");
        let naive = train(Recompute::Naive, precision);
        let mut mixed = false;
        for i in 0..=4 {
            let budget = lo + (hi - lo) * i / 4;
            let m = model(Recompute::Budget(budget));
            let plan = m.layer_modes([4, 3, 8, 8]).unwrap();
            let first = plan[0][0];
            mixed |= plan.iter().flatten().any(|&m| m != first);
            let peak = step_peak(&m, &x, &labels);
            assert!(
                peak <= budget,
                "{precision} budget {budget}: peak {peak} ({plan:?})"
            );
            let state = (m.parameter_bytes() + x.size_in_bytes()) as u64;
            drop(m);
            // Training holds more from the second step: the momentum buffers, and `train`'s own
            // copy of the input beside this test's.
            let run = train(Recompute::Budget(budget + state), precision);
            assert!(
                run == naive,
                "{precision} budget {budget}: not naive's bits"
            );
        }
        assert!(mixed, "{precision}: no budget mixed modes");
        let too_small = model(Recompute::Budget(lo - 1));
        let Err(err) = densenet::train::forward_backward(&too_small, &x, &labels, 0) else {
            panic!("{precision}: a budget below the all-Layer plan's peak was met");
        };
        assert!(err.to_string().contains("cannot be met"), "{err}");
    }
}
