//! The queued anomaly check ([`AnomalyGuard`]): no host sync per steady-state step on the CPU
//! and meta, a non-finite step reported as that step when the next one queues its update (or
//! at `finish`), with the parameters and the optimizer state (Adam's moments and step counts,
//! SGD's momentum) as they were before it, and the synchronous check unchanged.

use tape::nn::{self, Init, Linear};
use tape::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use tape::{ops, DType, Device, Gradients, Tape, Tensor};
use trainer::anomaly::{step_if_finite, AnomalyGuard, GuardError, NonFinite};

fn model(dev: &Device) -> Linear {
    let mut init = Init::new(DType::F64, dev, 5);
    let mut m = Linear::new(4, 3, &mut init).unwrap();
    nn::name_parameters(&mut m);
    m
}

/// Forward and backward of one batch; `poison` makes the loss NaN (then every gradient is NaN).
fn pass(m: &Linear, dev: &Device, seed: u64, poison: bool) -> (Tensor, Gradients) {
    let x = Tensor::randn(&[5, 4], DType::F64, dev, seed).unwrap();
    let mut tape = Tape::recording();
    let logits = m.forward(&mut tape, &x).unwrap();
    let mut loss = ops::cross_entropy(&mut tape, &logits, &[0, 1, 2, 0, 1]).unwrap();
    if poison {
        loss = ops::scale(&mut tape, &loss, f64::NAN).unwrap();
    }
    let grads = tape.backward(&loss).unwrap();
    (loss, grads)
}

/// The parameters' values and the optimizer's whole state, as host numbers.
fn snapshot(m: &Linear, opt: &dyn Optimizer) -> Vec<(String, Vec<f64>)> {
    let mut out: Vec<(String, Vec<f64>)> = nn::parameters(m)
        .iter()
        .map(|p| (p.name().to_string(), p.tensor().to_f64_vec()))
        .collect();
    for (k, t) in opt.state_dict(&nn::parameters(m)) {
        out.push((k, t.to_f64_vec()));
    }
    out
}

fn optimizers() -> Vec<(&'static str, Box<dyn Optimizer>)> {
    let sgd = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        ..SgdConfig::default()
    };
    vec![
        ("sgd", Box::new(Sgd::new(sgd).unwrap())),
        ("adam", Box::new(Adam::new(AdamConfig::default()).unwrap())),
    ]
}

fn non_finite(r: Result<(), GuardError>) -> NonFinite {
    match r {
        Err(GuardError::NonFinite(e)) => e,
        other => panic!("expected a non-finite step, got {other:?}"),
    }
}

#[test]
fn steady_state_guarded_steps_make_no_host_sync() {
    for dev in [Device::cpu(), Device::meta()] {
        for (name, mut opt) in optimizers() {
            let mut m = model(&dev);
            let mut guard = AnomalyGuard::new();
            for step in 0..4 {
                let (loss, grads) = pass(&m, &dev, step, false);
                let (r, c) = dev.count(|| guard.step(&mut m, opt.as_mut(), &loss, &grads, step));
                r.unwrap();
                assert_eq!(c.syncs, 0, "{dev} {name} step {step}: {c}");
                assert_eq!(guard.unchecked_step(), Some(step));
            }
            let (r, c) = dev.count(|| guard.finish(&m));
            r.unwrap();
            assert_eq!(c.syncs, 0, "{dev} {name}: finish: {c}");
        }
    }
}

#[test]
fn a_non_finite_step_fails_at_the_next_step_with_nothing_changed() {
    let dev = Device::cpu();
    for (name, mut opt) in optimizers() {
        let mut m = model(&dev);
        let mut guard = AnomalyGuard::new();
        for step in 0..3 {
            let (loss, grads) = pass(&m, &dev, step, false);
            guard
                .step(&mut m, opt.as_mut(), &loss, &grads, step)
                .unwrap();
        }
        let before = snapshot(&m, opt.as_ref());
        // Step 3 diverges: its update is queued (and skipped on the device); nothing is read.
        let (loss, grads) = pass(&m, &dev, 3, true);
        guard.step(&mut m, opt.as_mut(), &loss, &grads, 3).unwrap();
        // The state already reads as it was (the skipped update settled when read).
        assert_eq!(snapshot(&m, opt.as_ref()), before, "{name}: state read");
        // Step 4 finds it before queueing its own update.
        let (loss, grads) = pass(&m, &dev, 4, false);
        let e = non_finite(guard.step(&mut m, opt.as_mut(), &loss, &grads, 4));
        assert_eq!((e.step, e.what.as_str()), (3, "the loss"), "{name}");
        assert!(e.value.is_nan());
        assert_eq!(guard.unchecked_step(), None);
        assert_eq!(
            (guard.take_reported(), guard.take_reported()),
            (Some(3), None)
        );
        assert_eq!(
            snapshot(&m, opt.as_ref()),
            before,
            "{name}: after the report"
        );
        opt.settle().unwrap();
        assert_eq!(snapshot(&m, opt.as_ref()), before, "{name}: settled");
        // Training goes on from there as if step 3 never happened.
        let (loss, grads) = pass(&m, &dev, 4, false);
        guard.step(&mut m, opt.as_mut(), &loss, &grads, 4).unwrap();
        guard.finish(&m).unwrap();
        assert_ne!(snapshot(&m, opt.as_ref()), before, "{name}: step 4 applied");
    }
}

/// Adam's step count after a skipped step continues from the one before it: the next update
/// is bit for bit that of a run that never saw the bad step.
#[test]
fn adam_after_a_skipped_step_matches_a_run_without_it() {
    let dev = Device::cpu();
    let run = |bad: bool| {
        let mut m = model(&dev);
        let mut opt = Adam::new(AdamConfig::default()).unwrap();
        let mut guard = AnomalyGuard::new();
        let mut step = 0;
        for seed in 0..4 {
            if bad && seed == 2 {
                let (loss, grads) = pass(&m, &dev, 99, true);
                guard.step(&mut m, &mut opt, &loss, &grads, step).unwrap();
                assert!(guard.check_now(&m).is_err());
                step += 1;
            }
            let (loss, grads) = pass(&m, &dev, seed, false);
            guard.step(&mut m, &mut opt, &loss, &grads, step).unwrap();
            step += 1;
        }
        guard.finish(&m).unwrap();
        snapshot(&m, &opt)
    };
    assert_eq!(run(true), run(false));
}

#[test]
fn a_non_finite_last_step_is_reported_at_finish() {
    let dev = Device::cpu();
    for (name, mut opt) in optimizers() {
        let mut m = model(&dev);
        let mut guard = AnomalyGuard::new();
        let (loss, grads) = pass(&m, &dev, 0, false);
        guard.step(&mut m, opt.as_mut(), &loss, &grads, 0).unwrap();
        let before = snapshot(&m, opt.as_ref());
        let (loss, grads) = pass(&m, &dev, 1, true);
        guard.step(&mut m, opt.as_mut(), &loss, &grads, 1).unwrap();
        let e = non_finite(guard.finish(&m));
        assert_eq!(e.step, 1, "{name}");
        assert_eq!(snapshot(&m, opt.as_ref()), before, "{name}");
    }
}

/// A non-finite parameter (the loss finite) is named after the fact from the parameters, which
/// the skipped update left as they were.
#[test]
fn a_deferred_report_names_a_non_finite_parameter() {
    let dev = Device::cpu();
    let mut m = model(&dev);
    let mut opt = Sgd::new(SgdConfig::default()).unwrap();
    let mut guard = AnomalyGuard::new();
    let (loss, grads) = pass(&m, &dev, 0, false);
    let p = nn::parameters(&m)[1].tensor().clone();
    let mut bad = p.to_f64_vec();
    bad[0] = f64::INFINITY;
    let bad = Tensor::from_f64(&bad, p.shape(), p.dtype(), &dev).unwrap();
    nn::parameters_mut(&mut m)[1].assign(&bad).unwrap();
    guard.step(&mut m, &mut opt, &loss, &grads, 7).unwrap();
    let e = non_finite(guard.check_now(&m));
    assert_eq!(e.step, 7);
    assert!(e.what.starts_with("the parameter"), "{}", e.what);
    assert_eq!(e.value, f64::INFINITY);
}

#[test]
fn the_synchronous_check_still_fails_at_once_with_one_sync() {
    let dev = Device::cpu();
    for (name, mut opt) in optimizers() {
        let mut m = model(&dev);
        let (loss, grads) = pass(&m, &dev, 0, false);
        let (r, c) = dev.count(|| step_if_finite(&mut m, opt.as_mut(), &loss, &grads, 0));
        r.unwrap();
        assert_eq!(c.syncs, 1, "{name}: {c}");
        let before = snapshot(&m, opt.as_ref());
        let (loss, grads) = pass(&m, &dev, 1, true);
        let e = non_finite(step_if_finite(&mut m, opt.as_mut(), &loss, &grads, 1));
        assert_eq!((e.step, e.what.as_str()), (1, "the loss"));
        assert_eq!(snapshot(&m, opt.as_ref()), before, "{name}");
    }
}
