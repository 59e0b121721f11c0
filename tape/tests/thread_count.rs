//! Every CPU kernel gives the same bits on any number of threads and at every SIMD level: each
//! op's forward output and the gradients of all its inputs, computed inside rayon pools of 1 and
//! of 3 threads, and at each level this CPU supports ([`tape::simd`]: baseline, AVX2, AVX-512),
//! are bitwise equal. The shapes are large enough to take every parallel path: element-wise and
//! per-plane kernels past `PAR_MIN` (32768 elements), GEMMs past the single-thread limit (2^18
//! multiply-adds) and the `gemm` crate's own threading threshold (48 * 48 * 256), and
//! convolution batches of several backward work chunks (at least 256 output positions each), or
//! of one chunk whose GEMMs run on all threads.

use std::sync::Mutex;
use tape::ops::{self, BatchNormOptions, Conv2dOptions, RunningStats};
use tape::simd::for_each_supported_level;
use tape::testing::randn_leaf;
use tape::{DType, Device, Tape, Tensor};

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_f64_vec().iter().map(|v| v.to_bits()).collect()
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Runs `f` on 1 and on 3 threads, and on 3 threads at every SIMD level this CPU supports, and
/// asserts that the tensors it returns are bitwise equal.
fn same_on_1_and_3_threads(what: &str, f: impl Fn() -> Vec<Tensor> + Sync) {
    // The SIMD level is process-wide: one comparison at a time, so that no other test's level
    // change lands in the middle of this one.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let run = || -> Vec<Vec<u64>> { f().iter().map(bits).collect() };
    let one = in_pool(1, run);
    assert_same(&format!("{what}, 1 vs 3 threads"), &one, &in_pool(3, run));
    for (level, got) in for_each_supported_level(|_| in_pool(3, run)) {
        assert_same(&format!("{what}, {level} vs the default level"), &one, &got);
    }
}

fn assert_same(what: &str, want: &[Vec<u64>], got: &[Vec<u64>]) {
    assert_eq!(want.len(), got.len());
    for (i, (a, b)) in want.iter().zip(got).enumerate() {
        let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert!(
            differ == 0 && a.len() == b.len(),
            "{what}: tensor {i} differs in {differ} of {} elements",
            a.len()
        );
    }
}

/// `op`'s output on `inputs` and the gradients of all inputs for a random output gradient.
fn forward_backward(
    inputs: &[&Tensor],
    op: impl Fn(&mut Tape) -> Tensor,
    seed: u64,
) -> Vec<Tensor> {
    let mut tape = Tape::recording().with_seed(5);
    let y = op(&mut tape);
    let gy = Tensor::randn(y.shape(), y.dtype(), y.device(), seed).unwrap();
    let grads = tape.backward_from(&y, gy).unwrap();
    let mut out = vec![y];
    out.extend(inputs.iter().map(|t| grads.get(t).unwrap().clone()));
    out
}

/// Column blocks of several whole 4x4 images (16 per block: three forward jobs of 16, 16 and
/// 8 images, split over 1 or 3 thread groups; the flipped grad-input path; 31 output channels
/// keep `f32` off Winograd's path), with a bias.
#[test]
fn conv2d_blocks_of_whole_images() {
    // bf16: on the CPU's bf16 matrix units where it has them (stride 1, same padding).
    for dtype in [DType::F32, DType::F64, DType::BF16] {
        same_on_1_and_3_threads(&format!("conv2d 40x256->31 4x4 {dtype:?}"), || {
            let dev = Device::cpu();
            let x = randn_leaf(&[40, 256, 4, 4], dtype, &dev, 1);
            let w = randn_leaf(&[31, 256, 3, 3], dtype, &dev, 2);
            let b = randn_leaf(&[31], dtype, &dev, 3);
            let opts = Conv2dOptions {
                stride: 1,
                padding: 1,
            };
            let op = |t: &mut Tape| ops::conv2d(t, &x, &w, Some(&b), opts).unwrap();
            forward_backward(&[&x, &w, &b], op, 4)
        });
    }
}

#[test]
fn conv2d() {
    // (batch, cin, cout, kernel, stride, padding, image): 8 chunks of one 16x16 image through
    // the direct 3x3 kernel in f32 (the flipped grad-input path in f64); pointwise, 3 chunks of
    // two 12x12 images; stride 2 (col2im), 2 chunks of three 10x10 outputs; one 32x32 image
    // (Winograd in f32, one block on one thread); a batch larger than the thread count times
    // the chunk (direct in f32); 4 chunks of one 12x12 image on the flipped grad-input path in
    // f32 too; Winograd in per-thread blocks of 6 images of 9x9 in f32, the weight gradient
    // summed in runs of 24, 24 and 2 images (one wave of runs on 3 threads, three on 1); 512
    // output channels (the weight gradient summed
    // untransposed) over two chunks of 29 and 11 images; Winograd over two chunks (341 and 59
    // images of one tile) whose GEMMs run on all threads, 192 channels being too many for a
    // block.
    let cases = [
        (8, 16, 8, 3, 1, 1, 16),
        (6, 32, 16, 1, 1, 0, 12),
        (6, 4, 8, 3, 2, 1, 20),
        (1, 64, 64, 3, 1, 1, 32),
        (16, 8, 4, 3, 1, 1, 8),
        (4, 64, 31, 3, 1, 1, 12),
        (50, 40, 33, 3, 1, 1, 9),
        (40, 3, 512, 3, 2, 1, 6),
        (400, 192, 192, 3, 1, 1, 2),
    ];
    for (n, cin, cout, k, stride, padding, hw) in cases {
        // bf16: the stride-1 convolutions on the bf16 matrix units where the CPU has them
        // (weight gradients in fixed chunks of 4 images); the strided one on f32 copies.
        for dtype in [DType::F32, DType::F64, DType::BF16] {
            same_on_1_and_3_threads(&format!("conv2d {n}x{cin}->{cout} k{k} {dtype:?}"), || {
                let dev = Device::cpu();
                let x = randn_leaf(&[n, cin, hw, hw], dtype, &dev, 1);
                let w = randn_leaf(&[cout, cin, k, k], dtype, &dev, 2);
                let b = randn_leaf(&[cout], dtype, &dev, 3);
                let opts = Conv2dOptions { stride, padding };
                let op = |t: &mut Tape| ops::conv2d(t, &x, &w, Some(&b), opts).unwrap();
                forward_backward(&[&x, &w, &b], op, 4)
            });
        }
    }
}

#[test]
fn linear() {
    same_on_1_and_3_threads("linear", || {
        let dev = Device::cpu();
        let x = randn_leaf(&[256, 512], DType::F32, &dev, 1);
        let w = randn_leaf(&[384, 512], DType::F32, &dev, 2);
        let b = randn_leaf(&[384], DType::F32, &dev, 3);
        forward_backward(
            &[&x, &w, &b],
            |t| ops::linear(t, &x, &w, Some(&b)).unwrap(),
            4,
        )
    });
}

#[test]
fn batch_norm_and_batch_norm_relu() {
    for dtype in [DType::F32, DType::F64] {
        same_on_1_and_3_threads(&format!("batch_norm2d {dtype:?}"), || {
            let dev = Device::cpu();
            let x = randn_leaf(&[8, 16, 24, 24], dtype, &dev, 1);
            let w = randn_leaf(&[16], dtype, &dev, 2);
            let b = randn_leaf(&[16], dtype, &dev, 3);
            let rs = RunningStats::new(16, dtype, &dev).unwrap();
            let opts = BatchNormOptions::default();
            let op = |t: &mut Tape| ops::batch_norm2d(t, &x, &w, &b, &rs, opts).unwrap();
            let mut out = forward_backward(&[&x, &w, &b], op, 4);
            out.extend([rs.mean(), rs.var()]);
            out
        });
        same_on_1_and_3_threads(&format!("batch_norm_relu {dtype:?}"), || {
            let dev = Device::cpu();
            let a = randn_leaf(&[8, 10, 24, 24], dtype, &dev, 1);
            let c = randn_leaf(&[8, 6, 24, 24], dtype, &dev, 5);
            let w = randn_leaf(&[16], dtype, &dev, 2);
            let b = randn_leaf(&[16], dtype, &dev, 3);
            let rs = RunningStats::new(16, dtype, &dev).unwrap();
            let opts = BatchNormOptions::default();
            let op = |t: &mut Tape| ops::batch_norm_relu(t, &[&a, &c], &w, &b, &rs, opts).unwrap();
            let mut out = forward_backward(&[&a, &c, &w, &b], op, 4);
            out.extend([rs.mean(), rs.var()]);
            out
        });
    }
}

#[test]
fn pooling() {
    same_on_1_and_3_threads("pooling", || {
        let dev = Device::cpu();
        let x = randn_leaf(&[8, 16, 32, 32], DType::F32, &dev, 1);
        let mut out = forward_backward(&[&x], |t| ops::max_pool2d(t, &x, 3, 2, 1).unwrap(), 2);
        out.extend(forward_backward(
            &[&x],
            |t| ops::avg_pool2d(t, &x, 3, 2, 1).unwrap(),
            3,
        ));
        out.extend(forward_backward(
            &[&x],
            |t| ops::global_avg_pool(t, &x).unwrap(),
            4,
        ));
        out
    });
}

#[test]
fn losses_and_reductions() {
    same_on_1_and_3_threads("cross_entropy, sum, mean", || {
        let dev = Device::cpu();
        let logits = randn_leaf(&[4096, 10], DType::F32, &dev, 1);
        let labels: Vec<usize> = (0..4096).map(|i| (7 * i + 3) % 10).collect();
        let x = randn_leaf(&[8, 16, 32, 32], DType::F32, &dev, 2);
        let mut tape = Tape::recording();
        let ce = ops::cross_entropy(&mut tape, &logits, &labels).unwrap();
        let s = ops::sum(&mut tape, &x).unwrap();
        let m = ops::mean(&mut tape, &x).unwrap();
        let sm = ops::add(&mut tape, &s, &m).unwrap();
        let loss = ops::add(&mut tape, &ce, &sm).unwrap();
        let grads = tape.backward(&loss).unwrap();
        vec![
            ce,
            s,
            m,
            grads.get(&logits).unwrap().clone(),
            grads.get(&x).unwrap().clone(),
        ]
    });
}

#[test]
fn element_wise_ops() {
    same_on_1_and_3_threads("dropout, relu, concat, add, mul, scale", || {
        let dev = Device::cpu();
        let a = randn_leaf(&[4, 16, 32, 32], DType::F32, &dev, 1);
        let b = randn_leaf(&[4, 16, 32, 32], DType::F32, &dev, 2);
        let op = |t: &mut Tape| {
            let d = ops::dropout(t, &a, 0.3).unwrap();
            let r = ops::relu(t, &b).unwrap();
            let c = ops::concat(t, &[&d, &r]).unwrap();
            let m = ops::mul(t, &c, &c).unwrap();
            let s = ops::scale(t, &m, 0.5).unwrap();
            ops::add(t, &s, &c).unwrap()
        };
        forward_backward(&[&a, &b], op, 3)
    });
}

#[test]
fn transformer_ops() {
    // matmul with many items (items over threads) and with two large ones (each GEMM over
    // threads); softmax, layer norm, GELU, permute and embedding past PAR_MIN.
    for (batch, m, k, n) in [(64, 24, 32, 20), (2, 96, 128, 80)] {
        same_on_1_and_3_threads(&format!("matmul {batch}x{m}x{k}x{n}"), || {
            let dev = Device::cpu();
            let a = randn_leaf(&[batch, m, k], DType::F32, &dev, 1);
            let b = randn_leaf(&[batch, n, k], DType::F32, &dev, 2);
            let opts = ops::MatmulOptions {
                transpose_a: false,
                transpose_b: true,
            };
            forward_backward(&[&a, &b], |t| ops::matmul_with(t, &a, &b, opts).unwrap(), 3)
        });
    }
    same_on_1_and_3_threads("softmax, layer_norm, gelu, permute", || {
        let dev = Device::cpu();
        let x = randn_leaf(&[8, 64, 96], DType::F32, &dev, 1);
        let w = randn_leaf(&[96], DType::F32, &dev, 2);
        let b = randn_leaf(&[96], DType::F32, &dev, 3);
        let op = |t: &mut Tape| {
            let causal = ops::SoftmaxOptions { causal: true };
            let s = ops::softmax_with(t, &x, causal).unwrap();
            let l = ops::log_softmax(t, &x).unwrap();
            let n = ops::layer_norm(t, &x, Some(&w), Some(&b), 1e-5).unwrap();
            let g = ops::gelu(t, &n).unwrap();
            let p = ops::permute(t, &g, &[2, 0, 1]).unwrap();
            let p = ops::reshape(t, &p, &[8, 64, 96]).unwrap();
            let sum = ops::add(t, &s, &l).unwrap();
            ops::add(t, &sum, &p).unwrap()
        };
        forward_backward(&[&x, &w, &b], op, 4)
    });
    same_on_1_and_3_threads("embedding", || {
        let dev = Device::cpu();
        let w = randn_leaf(&[100, 64], DType::F32, &dev, 1);
        let indices: Vec<usize> = (0..2048)
            .map(|i| (i * 37 + i / 5) % 100 % (1 + i % 13))
            .collect();
        forward_backward(
            &[&w],
            |t| ops::embedding(t, &w, &indices, &[16, 128]).unwrap(),
            2,
        )
    });
}
