//! A GPT trained with a loss scaler (`train_step_scaled`): with a power-of-two scale, a clean
//! step updates the parameters bit for bit as `train_step` does, even at the largest scale,
//! 2^127 (steps whose scaled gradients overflow are skipped, the parameters unchanged and the
//! scale halved, until the scale fits; this small model's gradients do not overflow at 2^127,
//! the skip itself is tested in `tape/tests/loss_scale.rs`).

mod common;

use common::{batch, model};
use gpt::train::{adam, train_step, train_step_scaled};
use gpt::{GptConfig, Recompute};
use tape::nn;
use tape::optim::{LossScaler, LossScalerConfig};
use tape::DType;

fn cfg() -> GptConfig {
    GptConfig {
        vocab_size: 16,
        block_size: 8,
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        dropout: 0.1,
    }
}

fn bits(m: &gpt::Gpt) -> Vec<Vec<u64>> {
    tape::testing::parameter_bits(nn::parameters(m))
}

#[test]
fn clean_scaled_steps_match_plain_steps() {
    let mut plain = model(cfg(), DType::F32, 3, Recompute::PerBlock);
    let mut scaled = model(cfg(), DType::F32, 3, Recompute::PerBlock);
    let (mut opt_plain, mut opt_scaled) = (adam(1e-2).unwrap(), adam(1e-2).unwrap());
    let mut scaler = LossScaler::new(LossScalerConfig {
        growth_interval: 2,
        ..LossScalerConfig::default()
    })
    .unwrap();
    let start = bits(&plain);
    for step in 0..4 {
        let b = batch(16, 2, 8, step as usize);
        let a = train_step(&mut plain, &mut opt_plain, &b, step).unwrap();
        let (s, applied) =
            train_step_scaled(&mut scaled, &mut opt_scaled, &mut scaler, &b, step).unwrap();
        assert!(applied);
        assert_eq!(a.loss_value().unwrap(), s.loss_value().unwrap());
    }
    assert_ne!(bits(&plain), start);
    assert_eq!(bits(&plain), bits(&scaled));
    assert_eq!(scaler.scale(), 65536.0 * 4.0);
}

#[test]
fn the_largest_scale_steps_as_the_plain_step() {
    let mut plain = model(cfg(), DType::F32, 5, Recompute::Naive);
    let mut scaled = model(cfg(), DType::F32, 5, Recompute::Naive);
    let (mut opt_plain, mut opt_scaled) = (adam(1e-2).unwrap(), adam(1e-2).unwrap());
    let mut scaler = LossScaler::new(LossScalerConfig {
        init_scale: 2f64.powi(127),
        ..LossScalerConfig::default()
    })
    .unwrap();
    let b = batch(16, 2, 8, 0);
    let start = bits(&scaled);
    let mut skipped = 0;
    loop {
        let before = scaler.scale();
        let (_, applied) =
            train_step_scaled(&mut scaled, &mut opt_scaled, &mut scaler, &b, 0).unwrap();
        if applied {
            assert_eq!((scaler.scale(), scaler.growth_tracker()), (before, 1));
            break;
        }
        skipped += 1;
        assert_eq!(scaler.scale(), before / 2.0);
        assert_eq!(scaler.growth_tracker(), 0);
        assert_eq!(bits(&scaled), start, "a skipped step changes nothing");
        assert!(skipped < 127, "never applied");
    }
    train_step(&mut plain, &mut opt_plain, &b, 0).unwrap();
    assert_eq!(bits(&plain), bits(&scaled));
}
