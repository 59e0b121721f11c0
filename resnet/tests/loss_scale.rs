//! A ResNet trained with a loss scaler (`train_step_scaled`): with a power-of-two scale, clean
//! steps update the parameters bit for bit as `train_step` does (batch norm's backward
//! included); a batch whose gradients are not finite (an inf pixel) skips the update, leaving
//! the parameters as they were, and halves the scale, without failing the step.

use resnet::train::{sgd_config, train_step, train_step_scaled};
use resnet::{ResNet, ResNetConfig};
use tape::nn;
use tape::optim::{LossScaler, LossScalerConfig, Sgd};
use tape::{DType, Device, Tensor};

fn bits(m: &ResNet) -> Vec<Vec<u64>> {
    tape::testing::parameter_bits(nn::parameters(m))
}

fn model(dev: &Device) -> ResNet {
    let config = ResNetConfig::cifar(18, 10).with_width(4);
    ResNet::new(config, DType::F32, dev, 1).unwrap()
}

#[test]
fn clean_scaled_steps_match_plain_steps_and_overflow_skips() {
    let dev = Device::cpu();
    let (mut plain, mut scaled) = (model(&dev), model(&dev));
    let mut opt_plain = Sgd::new(sgd_config()).unwrap();
    let mut opt_scaled = Sgd::new(sgd_config()).unwrap();
    let mut scaler = LossScaler::new(LossScalerConfig::default()).unwrap();
    let labels: Vec<usize> = (0..4).collect();
    let start = bits(&plain);
    for step in 0..3 {
        let x = Tensor::randn(&[4, 3, 16, 16], DType::F32, &dev, 2 + step).unwrap();
        train_step(&mut plain, &mut opt_plain, &x, &labels, step).unwrap();
        let (_, applied) =
            train_step_scaled(&mut scaled, &mut opt_scaled, &mut scaler, &x, &labels).unwrap();
        assert!(applied);
    }
    assert_ne!(bits(&plain), start);
    assert_eq!(bits(&plain), bits(&scaled));
    assert_eq!((scaler.scale(), scaler.growth_tracker()), (65536.0, 3));

    let mut pixels = vec![0.5f32; 4 * 3 * 16 * 16];
    pixels[7] = f32::INFINITY;
    let x = Tensor::from_vec(pixels, &[4, 3, 16, 16], &dev).unwrap();
    let before = bits(&scaled);
    let (_, applied) =
        train_step_scaled(&mut scaled, &mut opt_scaled, &mut scaler, &x, &labels).unwrap();
    assert!(!applied);
    assert_eq!(bits(&scaled), before);
    assert_eq!((scaler.scale(), scaler.growth_tracker()), (32768.0, 0));
}
