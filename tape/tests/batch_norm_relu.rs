//! The fused concat -> batch norm -> ReLU equals the composition of the three ops (values,
//! gradients, running statistics), passes finite-difference checks, keeps less memory, and
//! rejects bad inputs.

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::ops::{self, BatchNormOptions, RunningStats};
use tape::{DType, Device, Error, Tape, Tensor};

fn parts(
    channels: &[usize],
    n: usize,
    hw: usize,
    dtype: DType,
    dev: &Device,
    seed: u64,
) -> Vec<Tensor> {
    channels
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            Tensor::randn(&[n, c, hw, hw], dtype, dev, seed + i as u64)
                .unwrap()
                .with_requires_grad(true)
        })
        .collect()
}

fn affine(c: usize, dtype: DType, dev: &Device, seed: u64) -> (Tensor, Tensor) {
    (
        Tensor::rand_uniform(&[c], 0.5, 1.5, dtype, dev, seed)
            .unwrap()
            .with_requires_grad(true),
        Tensor::randn(&[c], dtype, dev, seed + 1)
            .unwrap()
            .with_requires_grad(true),
    )
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Runs either the fused op or the composition; returns output, all gradients, running stats.
fn run(fused: bool, training: bool, channels: &[usize], seed: u64) -> Vec<Vec<f64>> {
    let dev = Device::cpu();
    let ps = parts(channels, 3, 4, DType::F64, &dev, seed);
    let c: usize = channels.iter().sum();
    let (w, b) = affine(c, DType::F64, &dev, seed + 50);
    let rs = RunningStats::new(c, DType::F64, &dev).unwrap();
    if !training {
        let m = Tensor::randn(&[c], DType::F64, &dev, 7).unwrap();
        let v = Tensor::rand_uniform(&[c], 0.5, 2.0, DType::F64, &dev, 8).unwrap();
        rs.set(&m, &v).unwrap();
    }
    let mut tape = Tape::recording().training(training);
    let refs: Vec<&Tensor> = ps.iter().collect();
    let y = if fused {
        ops::batch_norm_relu(&mut tape, &refs, &w, &b, &rs, BatchNormOptions::default()).unwrap()
    } else {
        let x = ops::concat(&mut tape, &refs).unwrap();
        let h = ops::batch_norm2d(&mut tape, &x, &w, &b, &rs, BatchNormOptions::default()).unwrap();
        ops::relu(&mut tape, &h).unwrap()
    };
    let r = Tensor::randn(y.shape(), DType::F64, &dev, 99).unwrap();
    let yr = ops::mul(&mut tape, &y, &r).unwrap();
    let loss = ops::sum(&mut tape, &yr).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let mut out = vec![y.to_f64_vec()];
    for p in ps.iter().chain([&w, &b]) {
        out.push(grads.get(p).unwrap().to_f64_vec());
    }
    out.push(rs.mean().to_f64_vec());
    out.push(rs.var().to_f64_vec());
    out
}

#[test]
fn fused_equals_concat_batch_norm_relu() {
    for training in [true, false] {
        for channels in [vec![3], vec![2, 1, 4], vec![1, 1]] {
            let (a, b) = (
                run(true, training, &channels, 3),
                run(false, training, &channels, 3),
            );
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                let d = max_rel(x, y);
                assert!(
                    d <= 1e-12,
                    "training {training}, channels {channels:?}, tensor {i}: {d:e}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn gradcheck_parts_weight_bias(
        channels in prop::collection::vec(1usize..4, 1..4),
        n in 1usize..3,
        hw in 2usize..4,
        training in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let dev = Device::cpu();
        let c: usize = channels.iter().sum();
        let ps = parts(&channels, n, hw, DType::F64, &dev, seed);
        let (w, b) = affine(c, DType::F64, &dev, seed + 50);
        let rs = RunningStats::new(c, DType::F64, &dev).unwrap();
        let k = ps.len();
        let mut inputs = ps.clone();
        inputs.extend([w, b]);
        let ctx = Tape::recording().training(training).context();
        let r = check_gradients(&inputs, ctx, |t, xs| {
            let refs: Vec<&Tensor> = xs[..k].iter().collect();
            ops::batch_norm_relu(t, &refs, &xs[k], &xs[k + 1], &rs, BatchNormOptions::default())
        })
        .unwrap();
        prop_assert!(r.max_rel_error <= 1e-6, "{:?}", r);
    }
}

#[test]
fn keeps_only_its_output_beyond_the_parts() {
    let dev = Device::cpu();
    let ps = parts(&[4, 4, 4], 2, 8, DType::F32, &dev, 1);
    let (w, b) = affine(12, DType::F32, &dev, 2);
    let rs = RunningStats::new(12, DType::F32, &dev).unwrap();
    let refs: Vec<&Tensor> = ps.iter().collect();
    let out_bytes = 2 * 12 * 64 * 4;
    // The per-channel mean and invstd backward reads: 12 values each, f64 on the CPU.
    let stats_bytes = 2 * 12 * 8;
    let before = dev.memory().current();
    let mut tape = Tape::recording();
    let y =
        ops::batch_norm_relu(&mut tape, &refs, &w, &b, &rs, BatchNormOptions::default()).unwrap();
    assert_eq!(dev.memory().current() - before, out_bytes + stats_bytes);
    drop(y);
    assert_eq!(
        dev.memory().current() - before,
        out_bytes + stats_bytes,
        "backward keeps the output (ReLU mask) and the statistics"
    );
    drop(tape);
    assert_eq!(dev.memory().current(), before);
    // The composition keeps the concatenation and the ReLU output (and batch norm's per-channel
    // mean and invstd in f64).
    let mut tape = Tape::recording();
    let x = ops::concat(&mut tape, &refs).unwrap();
    let h = ops::batch_norm2d(&mut tape, &x, &w, &b, &rs, BatchNormOptions::default()).unwrap();
    let y = ops::relu(&mut tape, &h).unwrap();
    drop((x, h, y));
    assert_eq!(dev.memory().current() - before, 2 * out_bytes + 2 * 12 * 8);
}

#[test]
fn running_stats_update_in_forward_phase_only() {
    let dev = Device::cpu();
    let ps = parts(&[2, 3], 2, 3, DType::F64, &dev, 1);
    let (w, b) = affine(5, DType::F64, &dev, 2);
    let refs: Vec<&Tensor> = ps.iter().collect();
    let fused = RunningStats::new(5, DType::F64, &dev).unwrap();
    let plain = RunningStats::new(5, DType::F64, &dev).unwrap();
    let mut tape = Tape::recording();
    ops::batch_norm_relu(
        &mut tape,
        &refs,
        &w,
        &b,
        &fused,
        BatchNormOptions::default(),
    )
    .unwrap();
    let x = ops::concat(&mut tape, &refs).unwrap();
    ops::batch_norm2d(&mut tape, &x, &w, &b, &plain, BatchNormOptions::default()).unwrap();
    assert!(max_rel(&fused.mean().to_f64_vec(), &plain.mean().to_f64_vec()) <= 1e-15);
    assert!(max_rel(&fused.var().to_f64_vec(), &plain.var().to_f64_vec()) <= 1e-15);
    assert_eq!(fused.num_batches_tracked(), 1);
    let mut ctx = Tape::recording().context();
    ctx.phase = tape::Phase::Recompute;
    let mut recompute = Tape::with_context(true, ctx);
    ops::batch_norm_relu(
        &mut recompute,
        &refs,
        &w,
        &b,
        &fused,
        BatchNormOptions::default(),
    )
    .unwrap();
    assert_eq!(fused.num_batches_tracked(), 1);
}

#[test]
fn errors() {
    let dev = Device::cpu();
    let (w, b) = affine(4, DType::F32, &dev, 2);
    let rs = RunningStats::new(4, DType::F32, &dev).unwrap();
    let opts = BatchNormOptions::default();
    let mut tape = Tape::recording();
    assert!(matches!(
        ops::batch_norm_relu(&mut tape, &[], &w, &b, &rs, opts),
        Err(Error::InvalidArgument { .. })
    ));
    let a = Tensor::zeros(&[2, 2, 3, 3], DType::F32, &dev).unwrap();
    let other = Tensor::zeros(&[2, 2, 4, 3], DType::F32, &dev).unwrap();
    assert!(matches!(
        ops::batch_norm_relu(&mut tape, &[&a, &other], &w, &b, &rs, opts),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        ops::batch_norm_relu(&mut tape, &[&a], &w, &b, &rs, opts),
        Err(Error::Shape { .. })
    ));
    let f64_part = Tensor::zeros(&[2, 2, 3, 3], DType::F64, &dev).unwrap();
    assert!(matches!(
        ops::batch_norm_relu(&mut tape, &[&a, &f64_part], &w, &b, &rs, opts),
        Err(Error::DType { .. })
    ));
    let flat = Tensor::zeros(&[2, 4], DType::F32, &dev).unwrap();
    assert!(matches!(
        ops::batch_norm_relu(&mut tape, &[&flat], &w, &b, &rs, opts),
        Err(Error::Shape { .. })
    ));
    let one = Tensor::zeros(&[1, 4, 1, 1], DType::F32, &dev).unwrap();
    assert!(matches!(
        ops::batch_norm_relu(&mut tape, &[&one], &w, &b, &rs, opts),
        Err(Error::InvalidArgument { .. })
    ));
    let bad_opts = BatchNormOptions {
        eps: -1.0,
        momentum: 0.1,
    };
    assert!(ops::batch_norm_relu(&mut tape, &[&a, &a], &w, &b, &rs, bad_opts).is_err());
}
