//! conv2d forward + backward (grads of input and weight) on DenseNet-BC-100 shapes at batch 64,
//! f32: the bottleneck's 1x1 conv (216 -> 48 channels) and the 3x3 growth conv (48 -> 12, pad 1),
//! both at 32x32. Criterion's throughput is in FLOPs (so `Gelem/s` reads as GFLOP/s), counted as
//! `3 * 2*N*Cout*Cin*kh*kw*Hout*Wout`; a plain GFLOP/s line is printed as well.
//!
//! `benches/torch_conv2d.py` times the same work with PyTorch on the CPU.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tape::ops::{conv2d, Conv2dOptions};
use tape::{DType, Device, Tape, Tensor};

/// (name, cin, cout, kernel, padding) at batch 64, 32x32, stride 1.
const SHAPES: [(&str, usize, usize, usize, usize); 2] = [
    ("1x1_216_to_48", 216, 48, 1, 0),
    ("3x3_48_to_12_pad1", 48, 12, 3, 1),
];
const BATCH: usize = 64;
const HW: usize = 32;

struct Problem {
    x: Tensor,
    w: Tensor,
    gy: Tensor,
    opts: Conv2dOptions,
    flops: u64,
}

impl Problem {
    fn new(cin: usize, cout: usize, k: usize, padding: usize) -> Self {
        let dev = Device::cpu();
        let x = Tensor::randn(&[BATCH, cin, HW, HW], DType::F32, &dev, 1)
            .unwrap()
            .with_requires_grad(true);
        let w = Tensor::randn(&[cout, cin, k, k], DType::F32, &dev, 2)
            .unwrap()
            .with_requires_grad(true);
        let gy = Tensor::randn(&[BATCH, cout, HW, HW], DType::F32, &dev, 3).unwrap();
        let flops = 3 * 2 * (BATCH * cout * cin * k * k * HW * HW) as u64;
        let opts = Conv2dOptions { stride: 1, padding };
        Problem {
            x,
            w,
            gy,
            opts,
            flops,
        }
    }

    /// One forward and backward; returns the gradients so nothing is optimised away.
    fn step(&self) -> (Tensor, Tensor) {
        let mut tape = Tape::recording();
        let y = conv2d(&mut tape, &self.x, &self.w, None, self.opts).unwrap();
        let grads = tape.backward_from(&y, self.gy.clone()).unwrap();
        (
            grads.get(&self.x).unwrap().clone(),
            grads.get(&self.w).unwrap().clone(),
        )
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d_fwd_bwd_b64_f32");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, cin, cout, k, pad) in SHAPES {
        let p = Problem::new(cin, cout, k, pad);
        group.throughput(Throughput::Elements(p.flops));
        group.bench_function(name, |b| b.iter(|| black_box(p.step())));

        let iters = 5;
        let start = Instant::now();
        for _ in 0..iters {
            black_box(p.step());
        }
        let secs = start.elapsed().as_secs_f64() / iters as f64;
        println!(
            "{name}: {:.1} ms per fwd+bwd, {:.1} GFLOP/s",
            secs * 1e3,
            p.flops as f64 / secs / 1e9
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
