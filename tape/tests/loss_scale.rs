//! Dynamic loss scaling ([`LossScaler`], PyTorch's `GradScaler` semantics) on a small MLP with
//! Adam: a clean step with a power-of-two scale updates the parameters bit for bit as training
//! without a scaler; an overflowed step leaves the parameters and the optimizer state unchanged
//! bit for bit, backs the scale off and resets the growth tracker; the scale grows after exactly
//! `growth_interval` clean steps (never to inf); a disabled scaler is a no-op; bad settings and
//! bad states are typed errors.

use tape::optim::{Adam, AdamConfig, LossScaleError, LossScaler, LossScalerConfig, Optimizer};
use tape::optim::{LossScalerState, Sgd, SgdConfig};
use tape::{ops, DType, Device, Gradients, Parameter, Tape, Tensor};

const N: usize = 8;
const IN: usize = 5;
const HIDDEN: usize = 6;
const CLASSES: usize = 3;

struct Mlp {
    params: Vec<Parameter>,
}

impl Mlp {
    fn new(dtype: DType, dev: &Device) -> Mlp {
        let w1 = Tensor::randn(&[HIDDEN, IN], dtype, dev, 1).unwrap();
        let b1 = Tensor::randn(&[HIDDEN], dtype, dev, 2).unwrap();
        let w2 = Tensor::randn(&[CLASSES, HIDDEN], dtype, dev, 3).unwrap();
        let b2 = Tensor::randn(&[CLASSES], dtype, dev, 4).unwrap();
        Mlp {
            params: vec![
                Parameter::new("w1", w1),
                Parameter::new("b1", b1),
                Parameter::new("w2", w2),
                Parameter::new("b2", b2),
            ],
        }
    }

    fn refs(&mut self) -> Vec<&mut Parameter> {
        self.params.iter_mut().collect()
    }

    fn values(&self) -> Vec<Vec<u64>> {
        tape::testing::parameter_bits(&self.params)
    }

    /// The tape after forward and the loss: cross entropy of batch `step` times `mult`.
    fn loss(&self, step: u64, mult: f64) -> (Tape<'_>, Tensor) {
        let p = &self.params;
        let dtype = p[0].tensor().dtype();
        let dev = p[0].tensor().device().clone();
        let x = Tensor::randn(&[N, IN], dtype, &dev, 100 + step).unwrap();
        let labels: Vec<usize> = (0..N).map(|i| (i + step as usize) % CLASSES).collect();
        let mut tape = Tape::recording();
        let h = ops::linear(&mut tape, &x, p[0].tensor(), Some(p[1].tensor())).unwrap();
        let h = ops::relu(&mut tape, &h).unwrap();
        let logits = ops::linear(&mut tape, &h, p[2].tensor(), Some(p[3].tensor())).unwrap();
        let ce = ops::cross_entropy(&mut tape, &logits, &labels).unwrap();
        let loss = ops::scale(&mut tape, &ce, mult).unwrap();
        (tape, loss)
    }

    /// The gradients of step `step` without a scaler.
    fn grads(&self, step: u64, mult: f64) -> Gradients {
        let (tape, loss) = self.loss(step, mult);
        tape.backward(&loss).unwrap()
    }

    /// One step with `scaler`: its backward, its step; whether the update was applied.
    fn scaled_step(
        &mut self,
        scaler: &mut LossScaler,
        opt: &mut dyn Optimizer,
        step: u64,
        mult: f64,
    ) -> bool {
        let (tape, loss) = self.loss(step, mult);
        let mut grads = scaler.backward(tape, &loss).unwrap();
        scaler.step(opt, &mut self.refs(), &mut grads).unwrap()
    }
}

fn adam() -> Adam {
    Adam::new(AdamConfig {
        lr: 0.01,
        weight_decay: 0.01,
        ..AdamConfig::default()
    })
    .unwrap()
}

fn config(init_scale: f64, growth_interval: u64) -> LossScalerConfig {
    LossScalerConfig {
        init_scale,
        growth_interval,
        ..LossScalerConfig::default()
    }
}

/// The optimizer state of `mlp`'s parameters, as bits.
fn state_bits(opt: &dyn Optimizer, mlp: &Mlp) -> Vec<(String, Vec<u64>)> {
    let params: Vec<&Parameter> = mlp.params.iter().collect();
    opt.state_dict(&params)
        .into_iter()
        .map(|(k, t)| (k, t.to_f64_vec().iter().map(|v| v.to_bits()).collect()))
        .collect()
}

/// Clean steps with a power-of-two scale (the default 2^16, growing every 2 steps so that
/// several scales are seen) give bit for bit the parameters and the Adam state of training
/// without a scaler.
fn clean_steps_match_unscaled(dtype: DType) {
    let dev = Device::cpu();
    let mut plain = Mlp::new(dtype, &dev);
    let mut scaled = Mlp::new(dtype, &dev);
    let (mut opt_plain, mut opt_scaled) = (adam(), adam());
    let mut scaler = LossScaler::new(config(65536.0, 2)).unwrap();
    for step in 0..6 {
        let g = plain.grads(step, 1.0);
        opt_plain.step(&mut plain.refs(), &g).unwrap();
        assert!(scaled.scaled_step(&mut scaler, &mut opt_scaled, step, 1.0));
    }
    assert_eq!(scaler.scale(), 65536.0 * 8.0, "grew after steps 2, 4 and 6");
    assert_ne!(
        plain.values(),
        Mlp::new(dtype, &dev).values(),
        "training moved"
    );
    assert_eq!(plain.values(), scaled.values());
    assert_eq!(
        state_bits(&opt_plain, &plain),
        state_bits(&opt_scaled, &scaled)
    );
}

#[test]
fn clean_steps_match_unscaled_f32() {
    clean_steps_match_unscaled(DType::F32);
}

#[test]
fn clean_steps_match_unscaled_f64() {
    clean_steps_match_unscaled(DType::F64);
}

/// The gradients really arrive scaled: the backward seeded with the scale gives the unscaled
/// gradients times the scale, and `unscale` brings them back bit for bit.
#[test]
fn backward_is_seeded_with_the_scale() {
    let dev = Device::cpu();
    let mut mlp = Mlp::new(DType::F32, &dev);
    let scaler = LossScaler::new(config(1024.0, 10)).unwrap();
    let plain = mlp.grads(0, 1.0);
    let (tape, loss) = mlp.loss(0, 1.0);
    let mut grads = scaler.backward(tape, &loss).unwrap();
    for p in &mlp.params {
        let want: Vec<f64> = plain.get(p.tensor()).unwrap().to_f64_vec();
        let got = grads.get(p.tensor()).unwrap().to_f64_vec();
        let times: Vec<f64> = want.iter().map(|v| v * 1024.0).collect();
        assert_eq!(got, times, "{}", p.name());
    }
    scaler.unscale(&mlp.refs(), &mut grads).unwrap();
    for p in &mlp.params {
        let want = plain.get(p.tensor()).unwrap().to_f64_vec();
        assert_eq!(grads.get(p.tensor()).unwrap().to_f64_vec(), want);
    }
}

/// Scaled gradients that overflow f32 (a loss times 8 seeded with 2^127): the update is skipped
/// (parameters and Adam state bit for bit as before), the scale halves on every such step and
/// the growth tracker is reset.
#[test]
fn overflow_skips_the_update_and_backs_off() {
    let dev = Device::cpu();
    let mut mlp = Mlp::new(DType::F32, &dev);
    let mut opt = adam();
    // A clean step first, so there is optimizer state to keep.
    let g = mlp.grads(0, 8.0);
    opt.step(&mut mlp.refs(), &g).unwrap();
    let (params0, state0) = (mlp.values(), state_bits(&opt, &mlp));
    assert!(!state0.is_empty());
    let mut scaler = LossScaler::new(config(2f64.powi(127), 5)).unwrap();
    for k in 1..=2 {
        assert!(
            !mlp.scaled_step(&mut scaler, &mut opt, k, 8.0),
            "step {k} overflows"
        );
        assert_eq!(scaler.scale(), 2f64.powi(127 - k as i32));
        assert_eq!(scaler.growth_tracker(), 0);
        assert_eq!(mlp.values(), params0, "parameters unchanged");
        assert_eq!(state_bits(&opt, &mlp), state0, "optimizer state unchanged");
    }
}

/// Growth after exactly `growth_interval` (3) clean steps; an overflow (an injected inf in the
/// loss) in between resets the tracker and halves the scale, and growth then needs 3 clean
/// steps again.
#[test]
fn growth_after_exactly_growth_interval_clean_steps() {
    let dev = Device::cpu();
    let mut mlp = Mlp::new(DType::F32, &dev);
    let mut opt = Sgd::new(SgdConfig {
        lr: 0.01,
        momentum: 0.9,
        ..SgdConfig::default()
    })
    .unwrap();
    let mut scaler = LossScaler::new(config(16.0, 3)).unwrap();
    let mut step = 0;
    let mut run = |scaler: &mut LossScaler, mult: f64| {
        step += 1;
        mlp.scaled_step(scaler, &mut opt, step, mult)
    };
    let expect = |scaler: &LossScaler, scale: f64, tracker: u64| {
        assert_eq!((scaler.scale(), scaler.growth_tracker()), (scale, tracker));
    };
    assert!(run(&mut scaler, 1.0));
    expect(&scaler, 16.0, 1);
    assert!(run(&mut scaler, 1.0));
    expect(&scaler, 16.0, 2);
    assert!(run(&mut scaler, 1.0));
    expect(&scaler, 32.0, 0);
    assert!(run(&mut scaler, 1.0));
    assert!(run(&mut scaler, 1.0));
    expect(&scaler, 32.0, 2);
    assert!(!run(&mut scaler, f64::INFINITY), "an inf loss overflows");
    expect(&scaler, 16.0, 0);
    assert!(run(&mut scaler, 1.0));
    assert!(run(&mut scaler, 1.0));
    expect(&scaler, 16.0, 2);
    assert!(run(&mut scaler, 1.0));
    expect(&scaler, 32.0, 0);
}

/// A NaN gradient counts as an overflow too.
#[test]
fn nan_gradient_is_an_overflow() {
    let dev = Device::cpu();
    let mut mlp = Mlp::new(DType::F64, &dev);
    let mut opt = adam();
    let mut scaler = LossScaler::new(config(4.0, 3)).unwrap();
    let before = mlp.values();
    assert!(!mlp.scaled_step(&mut scaler, &mut opt, 0, f64::NAN));
    assert_eq!(mlp.values(), before);
    assert_eq!((scaler.scale(), scaler.growth_tracker()), (2.0, 0));
}

/// The scale never grows to inf: at 2^127 a growth to 2^128 (inf in f32) keeps the scale and
/// resets the tracker, as PyTorch does.
#[test]
fn scale_never_grows_to_inf() {
    let dev = Device::cpu();
    let mut mlp = Mlp::new(DType::F32, &dev);
    let mut opt = adam();
    let mut scaler = LossScaler::new(config(2f64.powi(127), 1)).unwrap();
    // A tiny loss, so that the gradients seeded with 2^127 stay finite.
    assert!(mlp.scaled_step(&mut scaler, &mut opt, 0, 2f64.powi(-110)));
    assert_eq!(
        (scaler.scale(), scaler.growth_tracker()),
        (2f64.powi(127), 0)
    );
    let mut s = LossScaler::new(config(3.0e38, 1)).unwrap();
    s.update(false);
    assert_eq!(s.scale(), f64::from(3.0e38f32));
    // Backoff of the smallest scale.
    let mut s = LossScaler::new(config(1.0, 1)).unwrap();
    for _ in 0..200 {
        s.update(true);
    }
    assert_eq!(s.scale(), 0.0, "backs off to 0 as PyTorch's f32 scale does");
}

/// A disabled scaler is a no-op: seeded with 1, nothing unscaled, `step` is the optimizer's
/// step, and the scaler's state never changes.
#[test]
fn disabled_scaler_is_a_no_op() {
    let dev = Device::cpu();
    let mut plain = Mlp::new(DType::F32, &dev);
    let mut scaled = Mlp::new(DType::F32, &dev);
    let (mut opt_plain, mut opt_scaled) = (adam(), adam());
    let mut scaler = LossScaler::new(LossScalerConfig {
        enabled: false,
        growth_interval: 1,
        ..LossScalerConfig::default()
    })
    .unwrap();
    let before = scaler.clone();
    assert_eq!(scaler.scale(), 1.0);
    for step in 0..3 {
        let g = plain.grads(step, 1.0);
        opt_plain.step(&mut plain.refs(), &g).unwrap();
        assert!(scaled.scaled_step(&mut scaler, &mut opt_scaled, step, 1.0));
        scaler.update(true);
    }
    assert_eq!(plain.values(), scaled.values());
    assert_eq!(scaler, before);
    assert_eq!(LossScaler::disabled().scale(), 1.0);
    assert!(!LossScaler::disabled().is_enabled());
}

#[test]
fn defaults_are_pytorch_s() {
    let c = LossScalerConfig::default();
    assert_eq!(
        (c.init_scale, c.growth_factor, c.backoff_factor),
        (65536.0, 2.0, 0.5)
    );
    assert_eq!((c.growth_interval, c.enabled), (2000, true));
    let s = LossScaler::new(c).unwrap();
    assert_eq!((s.scale(), s.growth_tracker()), (65536.0, 0));
    assert_eq!(s.inv_scale(), 1.0 / 65536.0);
}

#[test]
fn bad_config_is_a_typed_error() {
    let d = LossScalerConfig::default();
    let cases: Vec<(LossScalerConfig, &str)> = vec![
        (
            LossScalerConfig {
                init_scale: 0.0,
                ..d
            },
            "init_scale",
        ),
        (
            LossScalerConfig {
                init_scale: -1.0,
                ..d
            },
            "init_scale",
        ),
        (
            LossScalerConfig {
                init_scale: f64::INFINITY,
                ..d
            },
            "init_scale",
        ),
        (
            LossScalerConfig {
                init_scale: 1e300,
                ..d
            },
            "init_scale",
        ),
        (
            LossScalerConfig {
                growth_factor: 1.0,
                ..d
            },
            "growth_factor",
        ),
        (
            LossScalerConfig {
                growth_factor: 0.5,
                ..d
            },
            "growth_factor",
        ),
        (
            LossScalerConfig {
                growth_factor: -2.0,
                ..d
            },
            "growth_factor",
        ),
        (
            LossScalerConfig {
                growth_factor: f64::NAN,
                ..d
            },
            "growth_factor",
        ),
        (
            LossScalerConfig {
                backoff_factor: 1.0,
                ..d
            },
            "backoff_factor",
        ),
        (
            LossScalerConfig {
                backoff_factor: 0.0,
                ..d
            },
            "backoff_factor",
        ),
        (
            LossScalerConfig {
                backoff_factor: -0.5,
                ..d
            },
            "backoff_factor",
        ),
        (
            LossScalerConfig {
                growth_interval: 0,
                ..d
            },
            "growth_interval",
        ),
        (
            LossScalerConfig {
                growth_interval: 0,
                enabled: false,
                ..d
            },
            "growth_interval",
        ),
    ];
    for (c, field) in cases {
        match LossScaler::new(c) {
            Err(LossScaleError::Config { field: f, .. }) => assert_eq!(f, field, "{c:?}"),
            other => panic!("{c:?}: expected a config error, got {other:?}"),
        }
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains(field), "{e}");
    }
    // Converts into the engine's error for `?` in tape code.
    let e: tape::Error = LossScaler::new(LossScalerConfig {
        growth_interval: 0,
        ..d
    })
    .unwrap_err()
    .into();
    assert!(e.to_string().contains("growth_interval"), "{e}");
}

#[test]
fn state_round_trips_and_bad_state_is_a_typed_error() {
    let mut a = LossScaler::new(config(16.0, 3)).unwrap();
    a.update(false);
    a.update(true);
    a.update(false);
    let state = a.state();
    assert_eq!(
        state,
        LossScalerState {
            scale: 8.0,
            growth_tracker: 1
        }
    );
    let mut b = LossScaler::new(config(16.0, 3)).unwrap();
    b.load_state(state).unwrap();
    assert_eq!(a, b);
    let zero = LossScalerState {
        scale: 0.0,
        growth_tracker: 0,
    };
    let mut c = b.clone();
    c.load_state(zero).unwrap();
    assert_eq!(c.state(), zero, "a scale backed off to 0 round-trips");
    for bad in [
        LossScalerState {
            scale: -1.0,
            growth_tracker: 0,
        },
        LossScalerState {
            scale: f64::NAN,
            growth_tracker: 0,
        },
        LossScalerState {
            scale: f64::INFINITY,
            growth_tracker: 0,
        },
        LossScalerState {
            scale: 1e300,
            growth_tracker: 0,
        },
        LossScalerState {
            scale: 8.0,
            growth_tracker: 3,
        },
    ] {
        let e = b.load_state(bad).unwrap_err();
        assert!(matches!(e, LossScaleError::State(_)), "{bad:?}: {e}");
        assert_eq!(a, b, "a refused state changes nothing");
    }
}
