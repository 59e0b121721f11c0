//! On a GPU: one training step of a small ResNet (CIFAR stem, narrow) in every memory setting
//! matches the same step on the CPU (loss, logits, every gradient and running statistic, f32
//! within the GPU-vs-CPU tolerance), and so does a step under the bf16 and f16 precision
//! policies (within a bound derived from the dtype's unit roundoff). Skipped without a usable
//! GPU; fails instead under `TAPE_EXPECT_GPU=1`.

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

/// The same step under the 16-bit precision policies (f32 weights, bf16 / f16 activations,
/// cuDNN and cuBLAS with 16-bit descriptors and f32 compute on the GPU). Tolerance: each layer
/// rounds its output once on each device (at most `2u` apart relative to the value, `u` the
/// dtype's unit roundoff, plus the f32 summation-order slack `testing::tol` allows), and these
/// differences add along the deepest path to first order: the stem, 8 basic blocks of two
/// convolutions and two batch norms each, and the head, whose normalisations keep magnitudes
/// near 1. Forty such stages in series would be a loose worst case; the errors are independent
/// roundings, so their sum grows like the square root of the count: 10 stages' worth.
#[test]
fn on_gpu_a_16_bit_training_step_matches_the_cpu() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let config = ResNetConfig::cifar(18, 10).with_width(4);
    let x = Tensor::randn(&[4, 3, 16, 16], DType::F32, &cpu, 5).unwrap();
    let labels = [1, 7, 3, 0];
    let x_gpu = x.to_device(&dev).unwrap();
    for precision in [tape::Precision::Bf16, tape::Precision::F16] {
        let mut on_cpu = ResNet::new(config.clone(), DType::F32, &cpu, 3)
            .unwrap()
            .with_precision(precision);
        let mut on_gpu = ResNet::new(config.clone(), DType::F32, &dev, 4)
            .unwrap()
            .with_precision(precision);
        let stored = nn::stored_state_dict(&on_cpu).unwrap();
        nn::load_state_dict(&mut on_gpu, &stored, nn::LoadOptions::default()).unwrap();
        let dtype = precision.low_dtype().unwrap_or(DType::F32);
        let a = step(&mut on_gpu, &x_gpu, &labels, Recompute::Naive);
        let b = step(&mut on_cpu, &x, &labels, Recompute::Naive);
        compare(
            &a,
            &b,
            10.0 * tol(dtype),
            &format!("gpu vs cpu, {precision}"),
        )
        .unwrap();
    }
}
