//! The training step's anomaly check: a NaN weight or a learning rate that makes the run
//! diverge stops training with `DenseNetError::NonFinite` naming the step, before the optimizer
//! writes NaN or infinity into the parameters; a non-finite gradient is named by parameter.
//! The queued check (`train_step_queued`) reports the same step when the next one queues its
//! update (or at `finish`), with the parameters and the momentum as before the bad step.

use densenet::train::{
    check_finite, forward_backward, train_step, train_step_queued, train_step_with, StepOptions,
};
use densenet::{DenseNet, DenseNetConfig, DenseNetError, Recompute, Selective};
use tape::optim::{Optimizer, Sgd, SgdConfig};
use tape::{DType, Device, Gradients, Tensor};
use trainer::anomaly::AnomalyGuard;

fn config() -> DenseNetConfig {
    DenseNetConfig {
        growth_rate: 3,
        block_config: vec![2, 2],
        num_init_features: 6,
        bn_size: 2,
        num_classes: 4,
        ..DenseNetConfig::default()
    }
}

fn sgd(lr: f64) -> Sgd {
    Sgd::new(SgdConfig {
        lr,
        momentum: 0.0,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    })
    .unwrap()
}

fn batch(dev: &Device) -> (Tensor, Vec<usize>) {
    (
        Tensor::randn(&[4, 3, 8, 8], DType::F32, dev, 5).unwrap(),
        vec![0, 1, 2, 3],
    )
}

/// Every parameter's bits, to check that nothing was updated.
fn bits(model: &DenseNet) -> Vec<Vec<u64>> {
    tape::testing::parameter_bits(model.parameters())
}

/// Puts a NaN into element 0 of parameter `index`.
fn poison(model: &mut DenseNet, index: usize) -> String {
    let mut params = model.parameters_mut();
    let p = &mut params[index];
    let mut v = p.tensor().to_f64_vec();
    v[0] = f64::NAN;
    let t = Tensor::from_f64(&v, p.tensor().shape(), DType::F32, p.tensor().device()).unwrap();
    p.assign(&t).unwrap();
    p.name().to_string()
}

#[test]
fn a_nan_weight_stops_the_step_before_the_update() {
    for mode in [Recompute::Naive, Recompute::Selective(Selective::Layer)] {
        let dev = Device::cpu();
        let (x, labels) = batch(&dev);
        // A NaN classifier weight, and a NaN in the first batch norm's bias: both reach the loss
        // (ReLU propagates NaN, as in PyTorch), which the check names first.
        let n_params = DenseNet::new(config(), DType::F32, &dev, 1)
            .unwrap()
            .with_recompute(mode)
            .unwrap()
            .parameters()
            .len();
        for index in [n_params - 2, 2] {
            let mut model = DenseNet::new(config(), DType::F32, &dev, 1)
                .unwrap()
                .with_recompute(mode)
                .unwrap();
            let mut opt = sgd(0.1);
            // Two healthy steps, then a NaN in one weight.
            for step in 0..2 {
                let options = StepOptions::new(step, step);
                let out = train_step_with(&mut model, &mut opt, &x, &labels, options).unwrap();
                assert!(out.loss().unwrap().is_finite());
            }
            let name = poison(&mut model, index);
            let before = bits(&model);
            match train_step_with(&mut model, &mut opt, &x, &labels, StepOptions::new(2, 2)) {
                Err(DenseNetError::NonFinite { step, what, value }) => {
                    assert_eq!(step, 2, "{mode} {name}");
                    assert_eq!(what, "the loss", "{mode} {name}");
                    assert!(value.is_nan(), "{mode} {name}: {value}");
                    let text = DenseNetError::NonFinite { step, what, value }.to_string();
                    assert!(text.contains("training step 2"), "{text}");
                }
                other => panic!("{mode} {name}: expected NonFinite, got {:?}", other.err()),
            }
            assert_eq!(bits(&model), before, "{mode} {name}: nothing was updated");
        }
    }
}

#[test]
fn a_huge_learning_rate_is_stopped_at_the_step_that_diverges() {
    let dev = Device::cpu();
    let mut model = DenseNet::new(config(), DType::F32, &dev, 1)
        .unwrap()
        .with_recompute(Recompute::Selective(Selective::Bottleneck))
        .unwrap();
    let (x, labels) = batch(&dev);
    let mut opt = sgd(1e30);
    let mut failed = None;
    for step in 0..10u64 {
        match train_step(&mut model, &mut opt, &x, &labels, step) {
            Ok(out) => assert!(
                out.loss().unwrap().is_finite(),
                "step {step} returned a non-finite loss"
            ),
            Err(DenseNetError::NonFinite { step: s, what, .. }) => {
                assert_eq!(s, step, "the error names the step that diverged");
                failed = Some((step, what));
                break;
            }
            Err(e) => panic!("step {step}: unexpected error {e}"),
        }
    }
    let (step, what) = failed.expect("lr 1e30 diverges within 10 steps");
    assert!(step >= 1, "the first step starts from finite weights");
    println!("lr 1e30: stopped at step {step} ({what})");
}

#[test]
fn a_non_finite_gradient_is_named_by_parameter() {
    let dev = Device::cpu();
    let model = DenseNet::new(config(), DType::F32, &dev, 1)
        .unwrap()
        .with_recompute(Recompute::Naive)
        .unwrap();
    let (x, labels) = batch(&dev);
    let mut out = forward_backward(&model, &x, &labels, 0).unwrap();
    check_finite(&model, &out, 7).unwrap();
    let params = model.parameters();
    let victim = params[9];
    // Replace its gradient by one with an infinity; the loss stays finite.
    let good = out.grads.get(victim.tensor()).unwrap().to_f64_vec();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] = f64::INFINITY;
    let mut grads = Gradients::new();
    for (id, g) in out.grads.iter() {
        if *id != victim.tensor().id() {
            grads.accumulate_id(*id, g.clone()).unwrap();
        }
    }
    grads
        .accumulate_id(
            victim.tensor().id(),
            Tensor::from_f64(&bad, victim.tensor().shape(), DType::F32, &dev).unwrap(),
        )
        .unwrap();
    out.grads = grads;
    assert!(out.loss().unwrap().is_finite());
    match check_finite(&model, &out, 7) {
        Err(DenseNetError::NonFinite { step, what, value }) => {
            assert_eq!(step, 7);
            assert_eq!(what, format!("the gradient of '{}'", victim.name()));
            assert_eq!(value, f64::INFINITY);
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
}

/// The momentum buffers' bits (SGD's state).
fn state_bits(model: &DenseNet, opt: &Sgd) -> Vec<Vec<u64>> {
    opt.state_dict(&model.parameters())
        .iter()
        .map(|(_, t)| t.to_f64_vec().iter().map(|v| v.to_bits()).collect())
        .collect()
}

#[test]
fn a_queued_nan_step_is_reported_by_the_next_step_with_nothing_changed() {
    let dev = Device::cpu();
    let (x, labels) = batch(&dev);
    for report_at_finish in [false, true] {
        let mut model = DenseNet::new(config(), DType::F32, &dev, 1)
            .unwrap()
            .with_recompute(Recompute::Selective(Selective::Layer))
            .unwrap();
        let mut opt = Sgd::new(SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            ..SgdConfig::default()
        })
        .unwrap();
        let mut guard = AnomalyGuard::new();
        for step in 0..2 {
            let options = StepOptions::new(step, step);
            train_step_queued(&mut model, &mut opt, &mut guard, &x, &labels, options).unwrap();
        }
        let n = model.parameters().len();
        let name = poison(&mut model, n - 2);
        let before = (bits(&model), state_bits(&model, &opt));
        // Step 2 diverges; its update is queued (and skipped), nothing is read back.
        let options = StepOptions::new(2, 2);
        train_step_queued(&mut model, &mut opt, &mut guard, &x, &labels, options).unwrap();
        let reported = if report_at_finish {
            guard.finish(&model).map_err(DenseNetError::from)
        } else {
            let options = StepOptions::new(3, 3);
            train_step_queued(&mut model, &mut opt, &mut guard, &x, &labels, options).map(|_| ())
        };
        match reported {
            Err(DenseNetError::NonFinite { step, what, .. }) => {
                assert_eq!(step, 2, "{name}");
                assert_eq!(what, "the loss", "{name}");
            }
            other => panic!("{name}: expected NonFinite, got {other:?}"),
        }
        // The poisoned weight is still there (the test put it), nothing else moved.
        assert_eq!((bits(&model), state_bits(&model, &opt)), before, "{name}");
    }
}
