//! SGD and Adam on the quadratic loss `L = 0.5 * sum(a * p^2)` (gradient `a * p`, from the tape)
//! against closed forms and hand-iterated PyTorch updates, plus state, skipping and errors.

use tape::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use tape::{ops, DType, Device, Error, Gradients, Parameter, Tape, Tensor};

const A: [f64; 4] = [0.5, 1.0, 2.0, 0.1];
const P0: [f64; 4] = [1.0, -2.0, 0.5, 3.0];

fn param(dev: &Device) -> Parameter {
    Parameter::new("w", Tensor::from_vec(P0.to_vec(), &[4], dev).unwrap())
}

/// The tape's gradients of `0.5 * sum(a * p * p)`.
fn grads_of(p: &Parameter) -> Gradients {
    let dev = p.tensor().device();
    let a = Tensor::from_f64(&A, &[4], p.tensor().dtype(), dev).unwrap();
    let mut tape = Tape::recording();
    let ap = ops::mul(&mut tape, &a, p.tensor()).unwrap();
    let app = ops::mul(&mut tape, &ap, p.tensor()).unwrap();
    let s = ops::sum(&mut tape, &app).unwrap();
    let loss = ops::scale(&mut tape, &s, 0.5).unwrap();
    tape.backward(&loss).unwrap()
}

fn run(opt: &mut dyn Optimizer, steps: usize) -> Vec<f64> {
    let dev = Device::cpu();
    let mut p = param(&dev);
    let id = p.tensor().id();
    for _ in 0..steps {
        let g = grads_of(&p);
        opt.step(&mut [&mut p], &g).unwrap();
        assert_eq!(p.tensor().id(), id);
    }
    p.tensor().to_f64_vec()
}

fn assert_close(a: &[f64], b: &[f64]) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-12, "element {i}: {x} vs {y}");
    }
}

fn sgd(lr: f64, momentum: f64, dampening: f64, nesterov: bool, weight_decay: f64) -> Sgd {
    Sgd::new(SgdConfig {
        lr,
        momentum,
        dampening,
        nesterov,
        weight_decay,
    })
    .unwrap()
}

/// PyTorch's SGD, iterated by hand on the quadratic.
fn sgd_by_hand(lr: f64, m: f64, damp: f64, nesterov: bool, wd: f64, steps: usize) -> Vec<f64> {
    (0..4)
        .map(|i| {
            let (mut p, mut buf) = (P0[i], None::<f64>);
            for _ in 0..steps {
                let mut d = A[i] * p + wd * p;
                if m != 0.0 {
                    let b = match buf {
                        None => d,
                        Some(b) => m * b + (1.0 - damp) * d,
                    };
                    buf = Some(b);
                    d = if nesterov { d + m * b } else { b };
                }
                p -= lr * d;
            }
            p
        })
        .collect()
}

#[test]
fn sgd_plain_matches_closed_form() {
    let got = run(&mut sgd(0.1, 0.0, 0.0, false, 0.0), 5);
    let expected: Vec<f64> = (0..4).map(|i| P0[i] * (1.0 - 0.1 * A[i]).powi(5)).collect();
    assert_close(&got, &expected);
}

#[test]
fn sgd_weight_decay_matches_closed_form() {
    let got = run(&mut sgd(0.1, 0.0, 0.0, false, 0.01), 5);
    let expected: Vec<f64> = (0..4)
        .map(|i| P0[i] * (1.0 - 0.1 * (A[i] + 0.01)).powi(5))
        .collect();
    assert_close(&got, &expected);
}

#[test]
fn sgd_momentum_matches_hand_iteration() {
    let got = run(&mut sgd(0.1, 0.9, 0.0, false, 0.0), 6);
    assert_close(&got, &sgd_by_hand(0.1, 0.9, 0.0, false, 0.0, 6));
    // Two steps in closed form: buf1 = g0, buf2 = 0.9 * g0 + g1.
    let got = run(&mut sgd(0.1, 0.9, 0.0, false, 0.0), 2);
    let expected: Vec<f64> = (0..4)
        .map(|i| {
            let p1 = P0[i] - 0.1 * A[i] * P0[i];
            p1 - 0.1 * (0.9 * A[i] * P0[i] + A[i] * p1)
        })
        .collect();
    assert_close(&got, &expected);
}

#[test]
fn sgd_dampening_matches_hand_iteration() {
    let got = run(&mut sgd(0.05, 0.8, 0.3, false, 0.02), 6);
    assert_close(&got, &sgd_by_hand(0.05, 0.8, 0.3, false, 0.02, 6));
}

#[test]
fn sgd_nesterov_with_weight_decay_matches_hand_iteration() {
    let got = run(&mut sgd(0.1, 0.9, 0.0, true, 1e-2), 6);
    assert_close(&got, &sgd_by_hand(0.1, 0.9, 0.0, true, 1e-2, 6));
    // First step: buf = g, p -= lr * (g + m * g).
    let got = run(&mut sgd(0.1, 0.9, 0.0, true, 0.0), 1);
    let expected: Vec<f64> = (0..4).map(|i| P0[i] - 0.1 * 1.9 * A[i] * P0[i]).collect();
    assert_close(&got, &expected);
}

/// PyTorch's Adam, iterated by hand on the quadratic.
fn adam_by_hand(c: AdamConfig, steps: usize) -> Vec<f64> {
    (0..4)
        .map(|i| {
            let (mut p, mut m, mut v) = (P0[i], 0.0, 0.0);
            for t in 1..=steps {
                let g = A[i] * p + c.weight_decay * p;
                m = c.beta1 * m + (1.0 - c.beta1) * g;
                v = c.beta2 * v + (1.0 - c.beta2) * g * g;
                let bc1 = 1.0 - c.beta1.powi(t as i32);
                let bc2 = 1.0 - c.beta2.powi(t as i32);
                p -= c.lr / bc1 * m / (v.sqrt() / bc2.sqrt() + c.eps);
            }
            p
        })
        .collect()
}

#[test]
fn adam_first_step_is_lr_times_sign() {
    let got = run(&mut Adam::new(AdamConfig::default()).unwrap(), 1);
    let expected: Vec<f64> = (0..4)
        .map(|i| {
            let g = A[i] * P0[i];
            P0[i] - 1e-3 * g / (g.abs() + 1e-8)
        })
        .collect();
    assert_close(&got, &expected);
}

#[test]
fn adam_matches_hand_iteration() {
    let c = AdamConfig {
        lr: 0.05,
        ..AdamConfig::default()
    };
    assert_close(&run(&mut Adam::new(c).unwrap(), 8), &adam_by_hand(c, 8));
    let c = AdamConfig {
        lr: 0.01,
        beta1: 0.8,
        beta2: 0.99,
        eps: 1e-6,
        weight_decay: 0.1,
    };
    assert_close(&run(&mut Adam::new(c).unwrap(), 8), &adam_by_hand(c, 8));
}

#[test]
fn defaults_and_learning_rate() {
    let c = AdamConfig::default();
    assert_eq!(
        (c.lr, c.beta1, c.beta2, c.eps, c.weight_decay),
        (1e-3, 0.9, 0.999, 1e-8, 0.0)
    );
    let mut adam = Adam::new(c).unwrap();
    adam.set_lr(0.5);
    assert_eq!(adam.lr(), 0.5);
    let mut s = sgd(0.1, 0.0, 0.0, false, 0.0);
    assert_eq!(s.lr(), 0.1);
    s.set_lr(0.2);
    assert_eq!(s.lr(), 0.2);
    let got = run(&mut s, 1);
    let expected: Vec<f64> = (0..4).map(|i| P0[i] * (1.0 - 0.2 * A[i])).collect();
    assert_close(&got, &expected);
}

#[test]
fn state_lives_on_the_parameter_device_and_params_without_grad_are_skipped() {
    let dev = Device::cpu();
    let mut p = param(&dev);
    let mut frozen = Parameter::new("frozen", Tensor::ones(&[3], DType::F64, &dev).unwrap());
    let g = grads_of(&p);
    let before = dev.memory().current();

    let mut adam = Adam::new(AdamConfig::default()).unwrap();
    adam.step(&mut [&mut p, &mut frozen], &g).unwrap();
    assert_eq!(adam.state_bytes(), 2 * 4 * 8);
    assert_eq!(dev.memory().current(), before + 2 * 4 * 8);
    assert_eq!(frozen.tensor().to_f64_vec(), vec![1.0; 3]);

    let mut plain = sgd(0.1, 0.0, 0.0, false, 0.0);
    plain.step(&mut [&mut p, &mut frozen], &g).unwrap();
    assert_eq!(plain.state_bytes(), 0);
    assert_eq!(dev.memory().current(), before + 2 * 4 * 8);

    let mut momentum = sgd(0.1, 0.9, 0.0, false, 0.0);
    momentum.step(&mut [&mut p, &mut frozen], &g).unwrap();
    assert_eq!(momentum.state_bytes(), 4 * 8);
    assert_eq!(dev.memory().current(), before + 3 * 4 * 8);
    drop((adam, momentum));
    assert_eq!(dev.memory().current(), before);
}

#[test]
fn f32_parameters_update() {
    let dev = Device::cpu();
    let mut p = Parameter::new("w", Tensor::from_f64(&P0, &[4], DType::F32, &dev).unwrap());
    let mut opt = sgd(0.1, 0.9, 0.0, true, 0.0);
    for _ in 0..3 {
        let g = grads_of(&p);
        opt.step(&mut [&mut p], &g).unwrap();
    }
    assert_eq!(p.tensor().dtype(), DType::F32);
    let expected = sgd_by_hand(0.1, 0.9, 0.0, true, 0.0, 3);
    for (a, b) in p.tensor().to_f64_vec().iter().zip(&expected) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn invalid_configs_are_rejected() {
    let ok = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.0,
        nesterov: true,
        weight_decay: 0.0,
    };
    assert!(Sgd::new(ok).is_ok());
    for bad in [
        SgdConfig { lr: -0.1, ..ok },
        SgdConfig { lr: f64::NAN, ..ok },
        SgdConfig {
            momentum: -0.5,
            ..ok
        },
        SgdConfig {
            weight_decay: -1.0,
            ..ok
        },
        SgdConfig {
            dampening: f64::INFINITY,
            ..ok
        },
        SgdConfig {
            momentum: 0.0,
            ..ok
        },
        SgdConfig {
            dampening: 0.1,
            ..ok
        },
    ] {
        assert!(
            matches!(Sgd::new(bad), Err(Error::InvalidArgument { .. })),
            "{bad:?}"
        );
    }
    let ok = AdamConfig::default();
    for bad in [
        AdamConfig { lr: -1.0, ..ok },
        AdamConfig { beta1: 1.0, ..ok },
        AdamConfig { beta2: -0.1, ..ok },
        AdamConfig {
            beta2: f64::NAN,
            ..ok
        },
        AdamConfig { eps: -1e-8, ..ok },
        AdamConfig {
            weight_decay: f64::INFINITY,
            ..ok
        },
    ] {
        assert!(
            matches!(Adam::new(bad), Err(Error::InvalidArgument { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn bad_steps_are_errors() {
    let dev = Device::cpu();
    let mut p = param(&dev);
    let mut s = sgd(0.1, 0.0, 0.0, false, 0.0);
    s.set_lr(-1.0);
    let g = grads_of(&p);
    assert!(matches!(
        s.step(&mut [&mut p], &g),
        Err(Error::InvalidArgument { .. })
    ));
    let mut adam = Adam::new(AdamConfig::default()).unwrap();
    adam.set_lr(f64::NAN);
    assert!(matches!(
        adam.step(&mut [&mut p], &g),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(p.tensor().to_f64_vec(), P0.to_vec());

    // A gradient of `p` that does not fit it.
    let grad = |g: tape::Result<Tensor>| {
        let mut grads = Gradients::new();
        grads.accumulate_id(p.tensor().id(), g.unwrap()).unwrap();
        grads
    };
    let wrong_shape = grad(Tensor::zeros(&[5], DType::F64, &dev));
    let wrong_dtype = grad(Tensor::zeros(&[4], DType::F32, &dev));
    let wrong_device = grad(Tensor::zeros(&[4], DType::F64, &Device::cpu()));
    for opt in [
        &mut sgd(0.1, 0.9, 0.0, false, 0.0) as &mut dyn Optimizer,
        &mut Adam::new(AdamConfig::default()).unwrap(),
    ] {
        assert!(matches!(
            opt.step(&mut [&mut p], &wrong_shape),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            opt.step(&mut [&mut p], &wrong_dtype),
            Err(Error::DType { .. })
        ));
        assert!(matches!(
            opt.step(&mut [&mut p], &wrong_device),
            Err(Error::Device { .. })
        ));
    }
    assert_eq!(p.tensor().to_f64_vec(), P0.to_vec());
}

/// Optimizer state survives a save and a restore into a fresh optimizer: the next step equals
/// the uninterrupted run's.
#[test]
fn optimizer_state_round_trips_by_parameter_name() {
    use tape::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
    use tape::{ops, DType, Device, Gradients, Parameter, Tape, Tensor};
    let dev = Device::cpu();
    let grads_of = |p: &Parameter| -> Gradients {
        let mut tape = Tape::recording();
        let sq = ops::mul(&mut tape, p.tensor(), p.tensor()).unwrap();
        let loss = ops::sum(&mut tape, &sq).unwrap();
        tape.backward(&loss).unwrap()
    };
    let make: [Box<dyn Fn() -> Box<dyn Optimizer>>; 2] = [
        Box::new(|| {
            Box::new(
                Sgd::new(SgdConfig {
                    lr: 0.1,
                    momentum: 0.9,
                    nesterov: true,
                    ..SgdConfig::default()
                })
                .unwrap(),
            )
        }),
        Box::new(|| Box::new(Adam::new(AdamConfig::default()).unwrap())),
    ];
    for make in make {
        let init = Tensor::from_vec(vec![1.0f64, -2.0, 0.5], &[3], &dev).unwrap();
        let mut a = Parameter::new("w", init.clone());
        let mut opt = make();
        for _ in 0..3 {
            let g = grads_of(&a);
            opt.step(&mut [&mut a], &g).unwrap();
        }
        let saved = opt.state_dict(&[&a]);
        assert!(!saved.is_empty());
        assert!(saved.iter().all(|(k, _)| k.starts_with("w.")));
        // A fresh parameter (new id) with the same name and values, and a fresh optimizer.
        let mut b = Parameter::new(
            "w",
            Tensor::from_vec(a.tensor().to_vec::<f64>().unwrap(), &[3], &dev).unwrap(),
        );
        let mut restored = make();
        restored.load_state_dict(&[&b], &saved).unwrap();
        let (ga, gb) = (grads_of(&a), grads_of(&b));
        opt.step(&mut [&mut a], &ga).unwrap();
        restored.step(&mut [&mut b], &gb).unwrap();
        assert_eq!(
            a.tensor().to_vec::<f64>().unwrap(),
            b.tensor().to_vec::<f64>().unwrap()
        );
        let bad = vec![(
            saved[0].0.clone(),
            Tensor::zeros(&[4], DType::F64, &dev).unwrap(),
        )];
        assert!(make().load_state_dict(&[&b], &bad).is_err());
    }
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use tape::ops;
    use tape::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
    use tape::testing::*;
    use tape::{DType, Device, Parameter, Tape};

    /// Three optimizer steps on the CPU and on the GPU from the same parameters and gradients.
    fn optimizer_case(
        dev: &Device,
        dtype: DType,
        make: &dyn Fn() -> Box<dyn Optimizer>,
    ) -> (Vec<f64>, Vec<Vec<f64>>) {
        let mut p = Parameter::new("p", randn(&[5, 7], dtype, 1).to_device(dev).unwrap());
        let mut opt = make();
        for step in 0..3u64 {
            let g = randn(&[5, 7], dtype, 10 + step).to_device(dev).unwrap();
            let mut tape = Tape::recording();
            let y = ops::mul(&mut tape, p.tensor(), &g).unwrap();
            let grads = tape::testing::grads_of_sum(tape, &y);
            opt.step(&mut [&mut p], &grads).unwrap();
        }
        let state = opt
            .state_dict(&[&p])
            .into_iter()
            .map(|(_, t)| t.try_to_f64_vec().unwrap())
            .collect();
        (p.tensor().try_to_f64_vec().unwrap(), state)
    }

    #[test]
    fn sgd_and_adam_match_cpu() {
        let Some(dev) = gpu() else { return };
        let sgds = [
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 1e-4,
                ..SgdConfig::default()
            },
            SgdConfig {
                lr: 0.05,
                momentum: 0.5,
                dampening: 0.1,
                ..SgdConfig::default()
            },
            SgdConfig {
                lr: 0.2,
                ..SgdConfig::default()
            },
        ];
        for dtype in DTYPES {
            // The updates are the CPU's f64 arithmetic, rounded once: equal up to the last bit.
            let t = match dtype {
                DType::F32 => 1e-6,
                _ => 1e-12,
            };
            for cfg in sgds {
                let make = move || Box::new(Sgd::new(cfg).unwrap()) as Box<dyn Optimizer>;
                let (pa, sa) = optimizer_case(&Device::cpu(), dtype, &make);
                let (pb, sb) = optimizer_case(&dev, dtype, &make);
                assert!(
                    rel(&pb, &pa) <= t,
                    "SGD {cfg:?} {dtype:?}: {:e}",
                    rel(&pb, &pa)
                );
                for (x, y) in sb.iter().zip(&sa) {
                    assert!(rel(x, y) <= t, "SGD state {cfg:?} {dtype:?}");
                }
            }
            let cfg = AdamConfig {
                weight_decay: 1e-2,
                ..AdamConfig::default()
            };
            let make = move || Box::new(Adam::new(cfg).unwrap()) as Box<dyn Optimizer>;
            let (pa, sa) = optimizer_case(&Device::cpu(), dtype, &make);
            let (pb, sb) = optimizer_case(&dev, dtype, &make);
            assert!(rel(&pb, &pa) <= t, "Adam {dtype:?}: {:e}", rel(&pb, &pa));
            for (x, y) in sb.iter().zip(&sa) {
                assert!(rel(x, y) <= t, "Adam state {dtype:?}");
            }
        }
    }
}
