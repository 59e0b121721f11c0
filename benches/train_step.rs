//! Criterion bench: one DenseNet training step (forward, backward, SGD) naive vs each efficient
//! mode on a small config, with the engine's peak bytes printed beside the times.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use densenet::train::{seed_sgd_config, train_step};
use densenet::{DenseNet, DenseNetConfig, Recompute, Selective};
use densenet_suite::densenet_bench::measure_training_step;
use tape::optim::Sgd;
use tape::{DType, Device, Tensor};

const BATCH: usize = 16;
const IMAGE: usize = 32;

fn config() -> DenseNetConfig {
    DenseNetConfig::densenet_bc_cifar(40, 12).expect("depth 40 is 6n+4")
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step_bc40_k12_b16");
    group.sample_size(10);
    for mode in [
        Recompute::Naive,
        Recompute::Selective(Selective::Bottleneck),
        Recompute::Selective(Selective::Layer),
    ] {
        let peak = measure_training_step(
            &Device::cpu(),
            "bc-40-k12",
            &config(),
            densenet_suite::CaseSetting::f32(mode),
            BATCH,
            IMAGE,
            1,
            1,
        )
        .map(|r| r.measured.peak_bytes)
        .unwrap_or(0);
        println!("{mode}: engine peak {:.2} MB per step", peak as f64 / 1e6);
        let dev = Device::cpu();
        let mut model = DenseNet::new(config(), DType::F32, &dev, 0)
            .expect("model")
            .with_recompute(mode)
            .unwrap();
        let mut opt = Sgd::new(seed_sgd_config()).expect("sgd");
        let x = Tensor::randn(&[BATCH, 3, IMAGE, IMAGE], DType::F32, &dev, 1).expect("input");
        let labels: Vec<usize> = (0..BATCH).map(|i| i % 10).collect();
        group.bench_function(BenchmarkId::from_parameter(mode), |b| {
            b.iter(|| train_step(&mut model, &mut opt, &x, &labels, 0).expect("step"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
