//! The memory-bound ops of a DenseNet step, forward + backward, on DenseNet-BC-100 shapes at
//! batch 64, f32: batch norm, ReLU, batch norm then ReLU (the naive layer's composition), the
//! fused concat -> batch norm -> ReLU over a dense layer's parts, and the transition's 2x2
//! average pooling. Shapes: the largest dense-layer input of block 1 (204 channels at 32x32,
//! made of 24 + 15 x 12 channels for the fused op).
//!
//! `benches/torch_norm_ops.py` times the same work with PyTorch on the CPU (2 threads).

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::Duration;
use tape::ops::{self, BatchNormOptions, RunningStats};
use tape::{DType, Device, Tape, Tensor};

const BATCH: usize = 64;
const HW: usize = 32;
const C: usize = 204;

struct Problem {
    dev: Device,
    x: Tensor,
    parts: Vec<Tensor>,
    w: Tensor,
    b: Tensor,
    gy: Tensor,
    gy_pool: Tensor,
}

impl Problem {
    fn new() -> Self {
        let dev = Device::cpu();
        let t = |shape: &[usize], seed| {
            Tensor::randn(shape, DType::F32, &dev, seed)
                .unwrap()
                .with_requires_grad(true)
        };
        let x = t(&[BATCH, C, HW, HW], 1);
        let mut parts = vec![t(&[BATCH, 24, HW, HW], 2)];
        parts.extend((0..15).map(|i| t(&[BATCH, 12, HW, HW], 10 + i)));
        Problem {
            x,
            parts,
            w: t(&[C], 3),
            b: t(&[C], 4),
            gy: Tensor::randn(&[BATCH, C, HW, HW], DType::F32, &dev, 5).unwrap(),
            gy_pool: Tensor::randn(&[BATCH, C, HW / 2, HW / 2], DType::F32, &dev, 6).unwrap(),
            dev,
        }
    }

    fn running(&self) -> RunningStats {
        RunningStats::new(C, DType::F32, &self.dev).unwrap()
    }

    /// Forward, then backward from a fixed output gradient; returns the input gradient.
    fn step(&self, f: impl Fn(&mut Tape) -> Tensor, gy: &Tensor, wrt: &Tensor) -> Tensor {
        let mut tape = Tape::recording();
        let y = f(&mut tape);
        let grads = tape.backward_from(&y, gy.clone()).unwrap();
        grads.get(wrt).unwrap().clone()
    }
}

fn bench(c: &mut Criterion) {
    let p = Problem::new();
    let rs = p.running();
    let opts = BatchNormOptions::default();
    let mut group = c.benchmark_group("norm_ops_fwd_bwd_b64_f32");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("batch_norm_204x32x32", |bch| {
        bch.iter(|| {
            black_box(p.step(
                |t| ops::batch_norm2d(t, &p.x, &p.w, &p.b, &rs, opts).unwrap(),
                &p.gy,
                &p.x,
            ))
        })
    });
    group.bench_function("relu_204x32x32", |bch| {
        bch.iter(|| black_box(p.step(|t| ops::relu(t, &p.x).unwrap(), &p.gy, &p.x)))
    });
    group.bench_function("batch_norm_relu_204x32x32", |bch| {
        bch.iter(|| {
            black_box(p.step(
                |t| {
                    let h = ops::batch_norm2d(t, &p.x, &p.w, &p.b, &rs, opts).unwrap();
                    ops::relu(t, &h).unwrap()
                },
                &p.gy,
                &p.x,
            ))
        })
    });
    let refs: Vec<&Tensor> = p.parts.iter().collect();
    group.bench_function("fused_concat_bn_relu_16_parts", |bch| {
        bch.iter(|| {
            black_box(p.step(
                |t| ops::batch_norm_relu(t, &refs, &p.w, &p.b, &rs, opts).unwrap(),
                &p.gy,
                &p.parts[0],
            ))
        })
    });
    group.bench_function("avg_pool_2x2_204x32x32", |bch| {
        bch.iter(|| {
            black_box(p.step(
                |t| ops::avg_pool2d(t, &p.x, 2, 2, 0).unwrap(),
                &p.gy_pool,
                &p.x,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
