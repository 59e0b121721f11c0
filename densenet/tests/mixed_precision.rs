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
    assert_ne!(a.to_bits(), b.to_bits(), "the policy changed the arithmetic");
}
