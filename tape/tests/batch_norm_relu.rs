//! The fused concat -> batch norm -> ReLU equals the composition of the three ops (values,
//! gradients, running statistics), passes finite-difference checks, keeps less memory, and
//! rejects bad inputs.

mod common;

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
        .map(|(i, &c)| tape::testing::randn_leaf(&[n, c, hw, hw], dtype, dev, seed + i as u64))
        .collect()
}

fn affine(c: usize, dtype: DType, dev: &Device, seed: u64) -> (Tensor, Tensor) {
    (
        common::leaf(Tensor::rand_uniform(&[c], 0.5, 1.5, dtype, dev, seed)),
        tape::testing::randn_leaf(&[c], dtype, dev, seed + 1),
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
    let grads = tape::testing::grads_of_sum(tape, &yr);
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
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn gradcheck_parts_weight_bias(
        channels in prop::collection::vec(1usize..4, 1..5),
        n in 1usize..4,
        hw in 2usize..5,
        training in any::<bool>(),
        seed in 0u64..1 << 62,
    ) {
        let dev = Device::cpu();
        let c: usize = channels.iter().sum();
        let ps = parts(&channels, n, hw, DType::F64, &dev, seed);
        let (w, b) = affine(c, DType::F64, &dev, seed + 50);
        let rs = RunningStats::new(c, DType::F64, &dev).unwrap();
        let k = ps.len();
        let mut inputs = ps.clone();
        inputs.extend([w, b]);
        // The ReLU's kink: a pre-activation within the finite difference of 0 has no gradient.
        let pre = {
            let mut t = Tape::no_grad().training(training);
            let refs: Vec<&Tensor> = ps.iter().collect();
            let x = ops::concat(&mut t, &refs).unwrap();
            let rs = RunningStats::new(c, DType::F64, &dev).unwrap();
            ops::batch_norm2d(&mut t, &x, &inputs[k], &inputs[k + 1], &rs, BatchNormOptions::default()).unwrap()
        };
        prop_assume!(pre.to_f64_vec().iter().all(|v| v.abs() > 1e-3));
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
    let opts = BatchNormOptions::default();
    let mut tape = Tape::recording();
    ops::batch_norm_relu(&mut tape, &refs, &w, &b, &fused, opts).unwrap();
    let x = ops::concat(&mut tape, &refs).unwrap();
    ops::batch_norm2d(&mut tape, &x, &w, &b, &plain, opts).unwrap();
    assert!(max_rel(&fused.mean().to_f64_vec(), &plain.mean().to_f64_vec()) <= 1e-15);
    assert!(max_rel(&fused.var().to_f64_vec(), &plain.var().to_f64_vec()) <= 1e-15);
    assert_eq!(fused.num_batches_tracked(), 1);
    let mut ctx = Tape::recording().context();
    ctx.phase = tape::Phase::Recompute;
    let mut recompute = Tape::with_context(true, ctx);
    ops::batch_norm_relu(&mut recompute, &refs, &w, &b, &fused, opts).unwrap();
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

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use tape::ops::{self, BatchNormOptions, RunningStats};
    use tape::testing::*;
    use tape::{Context, DType, Device, Error, Result, Tape, Tensor};

    /// The fused concat -> batch norm -> ReLU (or, with `fused` false, the composition of concat,
    /// batch norm and ReLU) on `dev` in `ctx`, from [`running_stats`]'s starting values; the
    /// gradients are those of the inputs `grad_mask` marks (the parts, then weight and bias).
    fn bnr_case(
        dev: &Device,
        parts: &[Tensor],
        ctx: Context,
        grad_mask: &[bool],
        fused: bool,
    ) -> BnOutcome {
        let c: usize = parts.iter().map(|p| p.shape()[1]).sum();
        let dtype = parts[0].dtype();
        let running = running_stats(c, dtype, dev);
        let k = parts.len();
        let mut inputs = parts.to_vec();
        inputs.extend([randn(&[c], dtype, 41), randn(&[c], dtype, 42)]);
        let opts = BatchNormOptions::default();
        let f = |t: &mut Tape, xs: &[Tensor]| -> Result<Tensor> {
            let refs: Vec<&Tensor> = xs[..k].iter().collect();
            if fused {
                return ops::batch_norm_relu(t, &refs, &xs[k], &xs[k + 1], &running, opts);
            }
            let x = match refs[..] {
                [x] => x.clone(),
                _ => ops::concat(t, &refs)?,
            };
            let h = ops::batch_norm2d(t, &x, &xs[k], &xs[k + 1], &running, opts)?;
            ops::relu(t, &h)
        };
        bn_outcome(dev, &inputs, grad_mask, ctx, &running, &f)
    }

    /// Parts shared by two fused ops, in training (cuDNN adds into the existing gradient,
    /// `beta = 1`) and eval mode (a new gradient added afterwards), against the CPU.
    #[test]
    fn batch_norm_relu_adds_into_existing_gradients_as_the_cpu_does() {
        compare_two_parts("shared fused parts", |t, x, dtype| {
            let c = 5;
            let d = x[0].device();
            let w = randn(&[c], dtype, 41).to_device(d)?;
            let b = randn(&[c], dtype, 42).to_device(d)?;
            let rs = running_stats(c, dtype, d);
            let opts = BatchNormOptions::default();
            let h1 = ops::batch_norm_relu(t, &[&x[0], &x[1]], &w, &b, &rs, opts)?;
            let h2 = ops::batch_norm_relu(t, &[&x[1], &x[0]], &w, &b, &rs, opts)?;
            ops::concat(t, &[&h2, &h1])
        });
    }

    #[test]
    fn batch_norm_relu_matches_cpu_and_the_gpu_composition() {
        let recompute = recompute_mode();
        for_gpu_cases(8, 7, |dev, p, case, dtype| {
            // Case 0 is DenseNet-like (a block input and several growth-rate parts); the others
            // are random, with odd plane sizes so that the parts' slices of the output and of
            // the parameters start at addresses that are not 16-byte aligned.
            let (channels, n, h, w) = if case == 0 {
                (vec![6, 3, 3, 3, 3, 3], 3, 5, 5)
            } else {
                let k = p.int(1, 4);
                let channels = p.ints(k, 1, 5);
                let (h, w) = (p.int(1, 6), p.int(1, 6));
                // At least 4 values per channel: with 2, the f32 input gradient is rounding
                // noise (CPU f32 and f64 differ by 2e-3 relative), whatever the GPU does.
                let n = p.int(4usize.div_ceil(h * w), 4);
                (channels, n, h, w)
            };
            // Per-channel offsets and scales (moderate, as in the batch-norm test), so that the
            // statistics are not trivial and the ReLU cuts at different places per channel.
            let mut first = 0;
            let parts: Vec<Tensor> = channels
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    let shape = [n, c, h, w];
                    let x = randn(&shape, dtype, case * 100 + 200 + i as u64);
                    let xv: Vec<f64> = x
                        .to_f64_vec()
                        .iter()
                        .enumerate()
                        .map(|(j, v)| {
                            let ch = (first + (j / (h * w)) % c) as f64;
                            v * (0.5 + 0.1 * ch) + 0.1 * ch - 0.5
                        })
                        .collect();
                    first += c;
                    Tensor::from_f64(&xv, &shape, dtype, &Device::cpu()).unwrap()
                })
                .collect();
            let k = parts.len();
            let masks: Vec<Vec<bool>> = vec![
                vec![true; k + 2],
                (0..k + 2).map(|i| i >= k).collect(),
                (0..k + 2).map(|i| i < k).collect(),
                (0..k + 2)
                    .map(|i| (i < k && i % 2 == 0) || i == k)
                    .collect(),
                (0..k + 2).map(|i| i == k + 1).collect(),
            ];
            for (ctx, label) in [
                (training(), "train"),
                (recompute, "recompute"),
                (eval_mode(), "eval"),
            ] {
                for mask in &masks {
                    let what = format!(
                        "batch_norm_relu {label} parts {channels:?} n{n} {h}x{w} grads {mask:?} \
                     ({dtype:?})"
                    );
                    let cpu = bnr_case(&Device::cpu(), &parts, ctx, mask, true);
                    let fused = bnr_case(dev, &parts, ctx, mask, true);
                    let composed = bnr_case(dev, &parts, ctx, mask, false);
                    let t = tol(dtype);
                    assert_bn_close(&format!("{what} GPU vs CPU"), &fused, &cpu, t);
                    assert_bn_close(&format!("{what} GPU vs composition"), &fused, &composed, t);
                    let expected_count = u64::from(label == "train");
                    assert_eq!(fused.4, expected_count, "{what}: batch count");
                    if label != "train" {
                        // Running statistics untouched outside the forward phase of training.
                        let (m0, v0) = running_start(channels.iter().sum());
                        assert!(rel(&fused.2, &m0) <= t, "{what}: running mean changed");
                        assert!(rel(&fused.3, &v0) <= t, "{what}: running var changed");
                    }
                }
            }
        });
    }

    #[test]
    fn batch_norm_relu_forward_keeps_only_its_output_and_statistics_on_gpu() {
        let Some(dev) = gpu() else { return };
        for dtype in DTYPES {
            let size = dtype.size_in_bytes();
            let channels = [8usize, 4, 4, 4];
            let (n, h, w) = (4, 8, 8);
            let c: usize = channels.iter().sum();
            let parts: Vec<Tensor> = channels
                .iter()
                .enumerate()
                .map(|(i, &ci)| tape::testing::randn_leaf(&[n, ci, h, w], dtype, &dev, i as u64))
                .collect();
            let refs: Vec<&Tensor> = parts.iter().collect();
            let weight = crate::common::leaf(Tensor::rand_uniform(&[c], 0.5, 1.5, dtype, &dev, 10));
            let bias = tape::testing::randn_leaf(&[c], dtype, &dev, 11);
            let running = RunningStats::new(c, dtype, &dev).unwrap();
            let opts = BatchNormOptions::default();
            let out_bytes = n * c * h * w * size;
            let stat_bytes = c * size;
            let largest_part = n * 8 * h * w * size;
            let base = dev.memory().current();

            // Training, recorded: the output plus the saved per-channel mean and invstd.
            dev.memory().reset_peak();
            let mut tape = Tape::recording();
            let y = ops::batch_norm_relu(&mut tape, &refs, &weight, &bias, &running, opts).unwrap();
            let fused = dev.memory().current() - base;
            assert_eq!(
                fused,
                out_bytes + 2 * stat_bytes,
                "{dtype:?}: fused forward"
            );
            // Nothing else, even transiently (beyond one part-sized buffer, should cuDNN reject
            // strided outputs and the op take its scratch path).
            let peak = dev.memory().peak() - base;
            assert!(
                peak <= fused + largest_part,
                "{dtype:?}: fused forward peaked at {peak} bytes"
            );
            drop(y);
            assert_eq!(
                dev.memory().current() - base,
                fused,
                "{dtype:?}: backward keeps the output (ReLU mask) and the statistics"
            );
            // Backward runs, and everything it allocates goes with the tape and the gradients.
            let y = ops::batch_norm_relu(&mut tape, &refs, &weight, &bias, &running, opts).unwrap();
            let loss = ops::sum(&mut tape, &y).unwrap();
            let grads = tape.backward(&loss).unwrap();
            assert!(refs.iter().all(|p| grads.get(p).is_some()));
            assert!(grads.get(&weight).is_some() && grads.get(&bias).is_some());
            drop((y, loss, grads));
            assert_eq!(dev.memory().current(), base, "{dtype:?}: all released");
            assert_eq!(running.num_batches_tracked(), 2);

            // The composition keeps the concatenation as well as the output.
            let mut tape = Tape::recording();
            let x = ops::concat(&mut tape, &refs).unwrap();
            let pre = ops::batch_norm2d(&mut tape, &x, &weight, &bias, &running, opts).unwrap();
            let y = ops::relu(&mut tape, &pre).unwrap();
            drop((x, pre, y));
            let composed = dev.memory().current() - base;
            assert!(
                composed >= 2 * out_bytes && fused < composed,
                "{dtype:?}: fused {fused} bytes, composition {composed}"
            );
            drop(tape);
            assert_eq!(dev.memory().current(), base);

            // Eval: the output plus invstd (the saved mean is the running mean's buffer).
            let mut tape = Tape::recording().training(false);
            let y = ops::batch_norm_relu(&mut tape, &refs, &weight, &bias, &running, opts).unwrap();
            assert_eq!(
                dev.memory().current() - base,
                out_bytes + stat_bytes,
                "{dtype:?}: eval forward"
            );
            drop((y, tape));
            // Not recording: the output alone (the running statistics update in place).
            let mut tape = Tape::with_context(false, training());
            let y = ops::batch_norm_relu(&mut tape, &refs, &weight, &bias, &running, opts).unwrap();
            assert_eq!(
                dev.memory().current() - base,
                out_bytes,
                "{dtype:?}: unrecorded forward"
            );
            drop(y);
            assert_eq!(dev.memory().current(), base);
            assert_eq!(running.num_batches_tracked(), 4);
        }
    }

    #[test]
    fn batch_norm_relu_errors_on_gpu() {
        let Some(dev) = gpu() else { return };
        let a = Tensor::zeros(&[2, 2, 3, 3], DType::F32, &dev).unwrap();
        let (w, b) = (
            Tensor::ones(&[4], DType::F32, &dev).unwrap(),
            Tensor::zeros(&[4], DType::F32, &dev).unwrap(),
        );
        let opts = BatchNormOptions::default();
        // Running statistics in another dtype: a typed error (cuDNN takes them in the data's type).
        let rs64 = RunningStats::new(4, DType::F64, &dev).unwrap();
        assert!(matches!(
            ops::batch_norm_relu(&mut Tape::recording(), &[&a, &a], &w, &b, &rs64, opts),
            Err(Error::DType { .. })
        ));
        // Training needs more than one value per channel.
        let rs = RunningStats::new(4, DType::F32, &dev).unwrap();
        let one = Tensor::zeros(&[1, 2, 1, 1], DType::F32, &dev).unwrap();
        assert!(matches!(
            ops::batch_norm_relu(&mut Tape::recording(), &[&one, &one], &w, &b, &rs, opts),
            Err(Error::InvalidArgument { .. })
        ));
        // Running statistics on the CPU.
        let rs_cpu = RunningStats::new(4, DType::F32, &Device::cpu()).unwrap();
        assert!(matches!(
            ops::batch_norm_relu(&mut Tape::recording(), &[&a, &a], &w, &b, &rs_cpu, opts),
            Err(Error::Device { .. })
        ));
        assert_eq!(rs.num_batches_tracked(), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Parts shared by two fused ops (as a DenseNet's features are by its later layers): the
    /// second backward adds its input gradients in place into the ones the first left.
    #[test]
    fn gradcheck_parts_shared_by_two_fused_ops(
        c0 in 1usize..4,
        c1 in 1usize..4,
        n in 1usize..4,
        training in any::<bool>(),
        seed in 0u64..1 << 62,
    ) {
        let dev = Device::cpu();
        let ps = parts(&[c0, c1], n, 3, DType::F64, &dev, seed);
        let c = c0 + c1;
        let (w1, b1) = affine(c, DType::F64, &dev, seed + 50);
        let (w2, b2) = affine(c, DType::F64, &dev, seed + 60);
        let rs = RunningStats::new(c, DType::F64, &dev).unwrap();
        let mut inputs = ps.clone();
        inputs.extend([w1, b1, w2, b2]);
        let run = |t: &mut Tape, xs: &[Tensor]| {
            let (x0, x1) = (&xs[0], &xs[1]);
            let opts = BatchNormOptions::default();
            let h1 = ops::batch_norm_relu(t, &[x0, x1], &xs[2], &xs[3], &rs, opts)?;
            let h2 = ops::batch_norm_relu(t, &[x1, x0], &xs[4], &xs[5], &rs, opts)?;
            ops::concat(t, &[&h2, &h1])
        };
        // The ReLU's kink: a pre-activation within the finite difference of 0 has no gradient.
        let pre = |order: [usize; 2], w: usize| {
            let mut t = Tape::no_grad().training(training);
            let x = ops::concat(&mut t, &[&ps[order[0]], &ps[order[1]]]).unwrap();
            let rs = RunningStats::new(c, DType::F64, &dev).unwrap();
            let opts = BatchNormOptions::default();
            ops::batch_norm2d(&mut t, &x, &inputs[w], &inputs[w + 1], &rs, opts).unwrap()
        };
        let pres = [pre([0, 1], 2), pre([1, 0], 4)];
        prop_assume!(pres.iter().all(|p| p.to_f64_vec().iter().all(|v| v.abs() > 1e-3)));
        let ctx = Tape::recording().training(training).context();
        let r = check_gradients(&inputs, ctx, run).unwrap();
        prop_assert!(r.max_rel_error <= 1e-6, "{:?}", r);
    }
}

/// With its affine parameters frozen (no gradient wanted) the fused op still gives its input a
/// gradient, and with its input frozen the parameters still get theirs: equal to the composition
/// concat -> batch norm -> ReLU's, for the op over parts and the op over a storage's prefix.
#[test]
fn frozen_parameters_or_input_still_get_the_other_gradients() {
    use tape::BlockStorage;
    let dev = Device::cpu();
    let opts = BatchNormOptions::default();
    for (input_grad, param_grad) in [(true, false), (false, true)] {
        let x = Tensor::randn(&[3, 4, 2, 2], DType::F64, &dev, 1)
            .unwrap()
            .with_requires_grad(input_grad);
        let (w, b) = affine(4, DType::F64, &dev, 2);
        let (w, b) = (
            w.with_requires_grad(param_grad),
            b.with_requires_grad(param_grad),
        );
        let r = Tensor::randn(&[3, 4, 2, 2], DType::F64, &dev, 3).unwrap();
        // 0: the composition; 1: the fused op over parts; 2: the fused op over a prefix.
        let grads_of = |how: usize| -> Vec<Vec<f64>> {
            let rs = RunningStats::new(4, DType::F64, &dev).unwrap();
            let mut tape = Tape::recording();
            let storage = BlockStorage::new([3, 6, 2, 2], DType::F64, &dev).unwrap();
            let y = match how {
                0 => {
                    let h = ops::batch_norm2d(&mut tape, &x, &w, &b, &rs, opts).unwrap();
                    ops::relu(&mut tape, &h).unwrap()
                }
                1 => ops::batch_norm_relu(&mut tape, &[&x], &w, &b, &rs, opts).unwrap(),
                _ => {
                    storage.append(&mut tape, &x).unwrap();
                    ops::batch_norm_relu_prefix(&mut tape, &storage, 4, &w, &b, &rs, opts).unwrap()
                }
            };
            let yr = ops::mul(&mut tape, &y, &r).unwrap();
            let grads = tape::testing::grads_of_sum(tape, &yr);
            let wanted: Vec<&Tensor> = match (input_grad, param_grad) {
                (true, _) => vec![&x],
                _ => vec![&w, &b],
            };
            wanted
                .into_iter()
                .map(|t| {
                    let g = grads.get(t);
                    assert!(g.is_some(), "way {how}: a wanted gradient is missing");
                    g.unwrap().to_f64_vec()
                })
                .collect()
        };
        let want = grads_of(0);
        for how in [1, 2] {
            for (got, want) in grads_of(how).iter().zip(&want) {
                let d = max_rel(got, want);
                assert!(
                    d <= 1e-12,
                    "input {input_grad}, params {param_grad}, way {how}: {d:e}"
                );
            }
        }
    }
}
