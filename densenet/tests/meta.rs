//! The meta device predicts a training step's memory without running it: for every recompute setting
//! (and a budget), three configurations and both dtypes, two SGD steps on a meta device charge
//! exactly the bytes the CPU charges (the same peak, byte for byte) and count the same kernel
//! launches and allocations. A value read on meta is an error, and so is mixing devices.

use densenet::train::{seed_sgd_config, train_step};
use densenet::{DenseNet, DenseNetConfig, Recompute, Selective};
use tape::optim::Sgd;
use tape::{DType, Device, Error, Precision, Tensor};

/// What one run of two training steps measured: the peak of the second step, and its counts.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    peak: usize,
    current: usize,
    launches: u64,
    allocs: u64,
}

fn two_steps(dev: &Device, config: &DenseNetConfig, mode: Recompute, dtype: DType) -> Run {
    two_steps_under(dev, config, mode, (dtype, Precision::F32))
}

fn two_steps_under(
    dev: &Device,
    config: &DenseNetConfig,
    mode: Recompute,
    (dtype, precision): (DType, Precision),
) -> Run {
    let mut model = DenseNet::new(config.clone(), dtype, dev, 3)
        .unwrap()
        .with_recompute(mode)
        .unwrap()
        .with_precision(precision);
    let mut opt = Sgd::new(seed_sgd_config()).unwrap();
    let image = 12;
    let x = Tensor::randn(&[4, config.in_channels, image, image], dtype, dev, 5).unwrap();
    let labels: Vec<usize> = (0..4).map(|i| i % config.num_classes).collect();
    train_step(&mut model, &mut opt, &x, &labels, 0).unwrap();
    dev.memory().reset_peak();
    let before = dev.counters();
    train_step(&mut model, &mut opt, &x, &labels, 1).unwrap();
    let counts = dev.counters().since(before);
    Run {
        peak: dev.memory().peak(),
        current: dev.memory().current(),
        launches: counts.launches,
        allocs: counts.allocs,
    }
}

fn configs() -> Vec<DenseNetConfig> {
    let small = DenseNetConfig::densenet_bc_cifar(16, 6).unwrap();
    let wide = DenseNetConfig {
        bn_size: 8,
        drop_rate: 0.2,
        ..DenseNetConfig::densenet_bc_cifar(10, 4).unwrap()
    };
    let imagenet_stem = DenseNetConfig {
        small_inputs: false,
        block_config: vec![2, 3],
        ..DenseNetConfig::densenet_bc_cifar(16, 6).unwrap()
    };
    vec![small, wide, imagenet_stem]
}

#[test]
fn meta_step_charges_what_the_cpu_step_charges() {
    for config in configs() {
        for dtype in [DType::F32, DType::F64] {
            let naive = two_steps(&Device::cpu(), &config, Recompute::Naive, dtype).peak;
            let layer = two_steps(
                &Device::cpu(),
                &config,
                Recompute::Selective(Selective::Layer),
                dtype,
            )
            .peak;
            let budget = Recompute::Budget(((naive + layer) / 2) as u64);
            for mode in [
                Recompute::Naive,
                Recompute::Selective(Selective::Bottleneck),
                Recompute::Selective(Selective::Layer),
                budget,
            ] {
                let cpu = two_steps(&Device::cpu(), &config, mode, dtype);
                let meta = two_steps(&Device::meta(), &config, mode, dtype);
                assert_eq!(meta, cpu, "{config:?} {mode} {dtype:?}");
            }
        }
    }
}

/// Under a 16-bit precision policy too: the f32 copies the kernels compute on are made by the
/// cast kernel, which charges them on a meta device as on the CPU.
#[test]
fn meta_step_charges_what_the_cpu_step_charges_under_bf16_and_f16() {
    for config in configs() {
        for precision in [Precision::Bf16, Precision::F16] {
            for mode in [
                Recompute::Naive,
                Recompute::Selective(Selective::Bottleneck),
                Recompute::Selective(Selective::Layer),
            ] {
                let run =
                    |dev: &Device| two_steps_under(dev, &config, mode, (DType::F32, precision));
                let (cpu, meta) = (run(&Device::cpu()), run(&Device::meta()));
                assert_eq!(meta, cpu, "{config:?} {mode} {precision}");
            }
        }
    }
}

#[test]
fn a_value_read_on_meta_is_an_error() {
    let dev = Device::meta();
    let x = Tensor::randn(&[2, 3], DType::F32, &dev, 0).unwrap();
    let one = Tensor::zeros(&[1], DType::F32, &dev).unwrap();
    for result in [
        one.scalar().map(|_| ()),
        x.to_vec::<f32>().map(|_| ()),
        x.try_to_f64_vec().map(|_| ()),
        x.as_slice::<f32>().map(|_| ()),
    ] {
        match result {
            Err(Error::NoValues { .. }) => {}
            other => panic!("expected a no-values error, got {other:?}"),
        }
    }
    let cpu = Tensor::randn(&[2, 3], DType::F32, &Device::cpu(), 0).unwrap();
    let mut tape = tape::Tape::recording();
    match tape::ops::add(&mut tape, &x, &cpu) {
        Err(Error::Device { .. }) => {}
        other => panic!("expected a device mismatch, got {other:?}"),
    }
}
