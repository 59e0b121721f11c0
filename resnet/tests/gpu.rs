//! On a GPU: one training step of a small ResNet (CIFAR stem, narrow) in every memory setting
//! matches the same step on the CPU (loss, logits, every gradient and running statistic, f32
//! within the GPU-vs-CPU tolerance). Skipped without a usable GPU; fails instead under
//! `TAPE_EXPECT_GPU=1`.

mod support;

use resnet::{Recompute, ResNet, ResNetConfig};
use support::{compare, step};
use tape::testing::{gpu, tol};
use tape::{nn, DType, Device, Tensor};

#[test]
fn on_gpu_a_training_step_matches_the_cpu() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let config = ResNetConfig::cifar(18, 10).with_width(4);
    let mut on_cpu = ResNet::new(config.clone(), DType::F32, &cpu, 3).unwrap();
    let mut on_gpu = ResNet::new(config, DType::F32, &dev, 4).unwrap();
    let stored = nn::stored_state_dict(&on_cpu).unwrap();
    nn::load_state_dict(&mut on_gpu, &stored, nn::LoadOptions::default()).unwrap();
    let x = Tensor::randn(&[4, 3, 16, 16], DType::F32, &cpu, 5).unwrap();
    let labels = [1, 7, 3, 0];
    let x_gpu = x.to_device(&dev).unwrap();
    for memory in [Recompute::Naive, Recompute::PerBlock] {
        let a = step(&mut on_gpu, &x_gpu, &labels, memory);
        let b = step(&mut on_cpu, &x, &labels, memory);
        compare(
            &a,
            &b,
            10.0 * tol(DType::F32),
            &format!("gpu vs cpu, {memory}"),
        )
        .unwrap();
    }
}
