//! Batch norm: gradient checks (training and eval), running statistics the PyTorch way, the
//! recompute phase leaving them alone, what backward saves, and every error path.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::ops::{self, BatchNormOptions, RunningStats};
use tape::{Context, DType, Device, Error, Phase, Tape, Tensor};

fn ctx(training: bool, phase: Phase) -> Context {
    Context {
        training,
        phase,
        seed: 0,
        counter: 0,
        keep_batch_stats: true,
        precision: tape::Precision::F32,
    }
}

/// Per-channel (mean, biased variance) of an NCHW tensor, by hand.
fn channel_stats(x: &Tensor) -> Vec<(f64, f64)> {
    let [n, c, h, w] = x.dims4("test").unwrap();
    let v = x.to_f64_vec();
    (0..c)
        .map(|ch| {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| v[(i * c + ch) * h * w..(i * c + ch + 1) * h * w].to_vec())
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / vals.len() as f64;
            (m, var)
        })
        .collect()
}

/// `(x - mean[ch]) / sqrt(var[ch] + eps) * w[ch] + b[ch]`, by hand.
fn normalise(x: &Tensor, mean: &[f64], var: &[f64], w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let [_, c, h, wd] = x.dims4("test").unwrap();
    x.to_f64_vec()
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let ch = (i / (h * wd)) % c;
            (v - mean[ch]) / (var[ch] + eps).sqrt() * w[ch] + b[ch]
        })
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "element {i}: {x} vs {y}");
    }
}

struct Setup {
    dev: Device,
    x: Tensor,
    w: Tensor,
    b: Tensor,
    running: RunningStats,
}

/// Batch norm with the default options (which must succeed).
fn bn(tape: &mut Tape, x: &Tensor, w: &Tensor, b: &Tensor, running: &RunningStats) -> Tensor {
    ops::batch_norm2d(tape, x, w, b, running, BatchNormOptions::default()).unwrap()
}

impl Setup {
    /// [`normalise`] of `x` with this weight and bias.
    fn normalised(&self, mean: &[f64], var: &[f64], eps: f64) -> Vec<f64> {
        let (w, b) = (self.w.to_f64_vec(), self.b.to_f64_vec());
        normalise(&self.x, mean, var, &w, &b, eps)
    }
}

fn setup(shape: [usize; 4], dtype: DType) -> Setup {
    let dev = Device::cpu();
    let c = shape[1];
    let x = Tensor::randn(&shape, dtype, &dev, 7).unwrap();
    let w = Tensor::rand_uniform(&[c], 0.5, 1.5, dtype, &dev, 8).unwrap();
    let b = Tensor::randn(&[c], dtype, &dev, 9).unwrap();
    let running = RunningStats::new(c, dtype, &dev).unwrap();
    Setup {
        dev,
        x,
        w,
        b,
        running,
    }
}

proptest! {
    #![proptest_config(common::config(4096))]

    #[test]
    fn gradcheck_training(n in 1usize..6, c in 1usize..6, h in 1usize..6, w in 1usize..6, seed in 0u64..1 << 62) {
        prop_assume!(n * h * w >= 3);
        let dev = Device::cpu();
        let x = Tensor::randn(&[n, c, h, w], DType::F64, &dev, seed)?;
        let weight = Tensor::rand_uniform(&[c], 0.5, 1.5, DType::F64, &dev, seed + 1)?;
        let bias = Tensor::randn(&[c], DType::F64, &dev, seed + 2)?;
        let running = RunningStats::new(c, DType::F64, &dev)?;
        let report = check_gradients(&[x, weight, bias], ctx(true, Phase::Recompute), |tape, xs| {
            ops::batch_norm2d(tape, &xs[0], &xs[1], &xs[2], &running, BatchNormOptions::default())
        })?;
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }

    #[test]
    fn gradcheck_eval(n in 1usize..6, c in 1usize..6, h in 1usize..6, w in 1usize..6, seed in 0u64..1 << 62) {
        let dev = Device::cpu();
        let x = Tensor::randn(&[n, c, h, w], DType::F64, &dev, seed)?;
        let weight = Tensor::randn(&[c], DType::F64, &dev, seed + 1)?;
        let bias = Tensor::randn(&[c], DType::F64, &dev, seed + 2)?;
        let running = RunningStats::new(c, DType::F64, &dev)?;
        running.set(
            &Tensor::randn(&[c], DType::F64, &dev, seed + 3)?,
            &Tensor::rand_uniform(&[c], 0.2, 2.0, DType::F64, &dev, seed + 4)?,
        )?;
        let report = check_gradients(&[x, weight, bias], ctx(false, Phase::Forward), |tape, xs| {
            ops::batch_norm2d(tape, &xs[0], &xs[1], &xs[2], &running, BatchNormOptions::default())
        })?;
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }
}

#[test]
fn training_output_uses_batch_statistics() {
    let s = setup([3, 2, 2, 3], DType::F64);
    let opts = BatchNormOptions::default();
    let y = ops::batch_norm2d(
        &mut Tape::no_grad().training(true),
        &s.x,
        &s.w,
        &s.b,
        &s.running,
        opts,
    )
    .unwrap();
    let (mean, var): (Vec<f64>, Vec<f64>) = channel_stats(&s.x).into_iter().unzip();
    let expected = s.normalised(&mean, &var, opts.eps);
    assert_eq!(y.shape(), s.x.shape());
    assert_close(&y.to_f64_vec(), &expected, 1e-12);
}

#[test]
fn running_stats_follow_pytorch_formula() {
    let s = setup([4, 3, 2, 2], DType::F64);
    let opts = BatchNormOptions {
        eps: 1e-5,
        momentum: 0.25,
    };
    assert_eq!(s.running.mean().to_f64_vec(), vec![0.0; 3]);
    assert_eq!(s.running.var().to_f64_vec(), vec![1.0; 3]);
    assert_eq!(s.running.num_batches_tracked(), 0);
    let m = 4.0 * 2.0 * 2.0;
    let (mut rm, mut rv) = (vec![0.0; 3], vec![1.0; 3]);
    let x2 = Tensor::randn(&[4, 3, 2, 2], DType::F64, &s.dev, 77).unwrap();
    for (step, x) in [&s.x, &x2].into_iter().enumerate() {
        let mut tape = Tape::recording();
        ops::batch_norm2d(&mut tape, x, &s.w, &s.b, &s.running, opts).unwrap();
        for (ch, (mean, var)) in channel_stats(x).into_iter().enumerate() {
            rm[ch] = (1.0 - 0.25) * rm[ch] + 0.25 * mean;
            rv[ch] = (1.0 - 0.25) * rv[ch] + 0.25 * var * m / (m - 1.0);
        }
        assert_close(&s.running.mean().to_f64_vec(), &rm, 1e-12);
        assert_close(&s.running.var().to_f64_vec(), &rv, 1e-12);
        assert_eq!(s.running.num_batches_tracked(), step as u64 + 1);
    }
}

#[test]
fn recompute_phase_and_eval_leave_running_stats_alone() {
    let s = setup([2, 2, 3, 3], DType::F64);
    let opts = BatchNormOptions::default();
    let recompute = Context {
        training: true,
        phase: Phase::Recompute,
        seed: 0,
        counter: 0,
        keep_batch_stats: true,
        precision: tape::Precision::F32,
    };
    let mut tape = Tape::with_context(true, recompute);
    let y_re = ops::batch_norm2d(&mut tape, &s.x, &s.w, &s.b, &s.running, opts).unwrap();
    ops::batch_norm2d(&mut Tape::no_grad(), &s.x, &s.w, &s.b, &s.running, opts).unwrap();
    assert_eq!(s.running.mean().to_f64_vec(), vec![0.0; 2]);
    assert_eq!(s.running.var().to_f64_vec(), vec![1.0; 2]);
    assert_eq!(s.running.num_batches_tracked(), 0);
    // The recompute normalises exactly like the forward pass.
    let y_fw =
        ops::batch_norm2d(&mut Tape::recording(), &s.x, &s.w, &s.b, &s.running, opts).unwrap();
    assert_eq!(y_re.to_f64_vec(), y_fw.to_f64_vec());
    assert_eq!(s.running.num_batches_tracked(), 1);
}

#[test]
fn eval_uses_running_stats() {
    let s = setup([2, 3, 2, 2], DType::F64);
    let rm = [0.5, -1.0, 2.0];
    let rv = [0.25, 2.0, 4.0];
    s.running
        .set(
            &Tensor::from_vec(rm.to_vec(), &[3], &s.dev).unwrap(),
            &Tensor::from_vec(rv.to_vec(), &[3], &s.dev).unwrap(),
        )
        .unwrap();
    s.running.set_num_batches_tracked(5);
    let opts = BatchNormOptions::default();
    let y = ops::batch_norm2d(&mut Tape::no_grad(), &s.x, &s.w, &s.b, &s.running, opts).unwrap();
    let expected = s.normalised(&rm, &rv, opts.eps);
    assert_close(&y.to_f64_vec(), &expected, 1e-12);
    assert_eq!(s.running.num_batches_tracked(), 5);
}

#[test]
fn f32_statistics_are_accurate_with_a_large_offset() {
    let dev = Device::cpu();
    let base = Tensor::randn(&[8, 2, 16, 16], DType::F64, &dev, 3).unwrap();
    let shifted: Vec<f64> = base.to_f64_vec().iter().map(|v| 1000.0 + v).collect();
    let x64 = Tensor::from_vec(shifted, &[8, 2, 16, 16], &dev).unwrap();
    let x32 = x64.to_dtype(DType::F32).unwrap();
    let run = |x: &Tensor| {
        let w = Tensor::ones(&[2], x.dtype(), &dev).unwrap();
        let b = Tensor::zeros(&[2], x.dtype(), &dev).unwrap();
        let r = RunningStats::new(2, x.dtype(), &dev).unwrap();
        let y = bn(&mut Tape::recording(), x, &w, &b, &r);
        (y.to_f64_vec(), r.var().to_f64_vec())
    };
    let (y32, v32) = run(&x32);
    let (y64, _) = run(&x32.to_dtype(DType::F64).unwrap());
    assert_close(&y32, &y64, 1e-4);
    for v in v32 {
        assert!((v - (0.9 + 0.1 * 1.0)).abs() < 0.05, "running var {v}");
    }
}

#[test]
fn backward_keeps_x_only_when_needed() {
    // Eval with a frozen weight: the input gradient is the affine map only, `x` is not saved.
    let s = setup([2, 2, 4, 4], DType::F64);
    let x = s.x.clone().with_requires_grad(true);
    let x_bytes = x.size_in_bytes();
    let mut tape = Tape::recording().training(false);
    let y = bn(&mut tape, &x, &s.w, &s.b, &s.running);
    let before = s.dev.memory().current();
    drop((x, s.x));
    assert_eq!(s.dev.memory().current(), before - x_bytes);
    let loss = ops::sum(&mut tape, &y).unwrap();
    assert_eq!(tape.backward(&loss).unwrap().len(), 1);

    // Training with a gradient for x: x is saved.
    let s = setup([2, 2, 4, 4], DType::F64);
    let x = s.x.clone().with_requires_grad(true);
    let mut tape = Tape::recording();
    let _y = bn(&mut tape, &x, &s.w, &s.b, &s.running);
    let before = s.dev.memory().current();
    drop((x, s.x));
    assert_eq!(s.dev.memory().current(), before);

    // Nothing wants a gradient: nothing is recorded.
    let s = setup([2, 2, 4, 4], DType::F64);
    let mut tape = Tape::recording();
    bn(&mut tape, &s.x, &s.w, &s.b, &s.running);
    assert!(tape.is_empty());
}

#[test]
fn bias_gradient_is_the_channel_sum() {
    let s = setup([2, 3, 2, 2], DType::F64);
    let b = s.b.clone().with_requires_grad(true);
    let mut tape = Tape::recording();
    let y = bn(&mut tape, &s.x, &s.w, &b, &s.running);
    let grads = tape::testing::grads_of_sum(tape, &y);
    assert_eq!(grads.get(&b).unwrap().to_f64_vec(), vec![8.0; 3]);
}

#[test]
fn running_stats_set_and_clone() {
    let dev = Device::cpu();
    let r = RunningStats::new(2, DType::F32, &dev).unwrap();
    assert_eq!(r.channels(), 2);
    let mean = Tensor::from_vec(vec![1.0f64, 2.0], &[2], &dev).unwrap();
    let var = Tensor::from_vec(vec![3.0f64, 4.0], &[2], &dev).unwrap();
    r.set(&mean, &var).unwrap();
    assert_eq!(r.mean().dtype(), DType::F32);
    assert_eq!(r.mean().to_f64_vec(), vec![1.0, 2.0]);
    assert_eq!(r.var().to_f64_vec(), vec![3.0, 4.0]);
    let c = r.clone();
    r.set_num_batches_tracked(3);
    assert_eq!(c.num_batches_tracked(), 0);
    assert_eq!(c.mean().to_f64_vec(), vec![1.0, 2.0]);
}

#[test]
fn errors() {
    let s = setup([2, 3, 2, 2], DType::F64);
    let opts = BatchNormOptions::default();
    let bn =
        |x: &Tensor, w: &Tensor, b: &Tensor, r: &RunningStats, o: BatchNormOptions, train: bool| {
            ops::batch_norm2d(&mut Tape::no_grad().training(train), x, w, b, r, o)
        };
    let flat = Tensor::zeros(&[2, 3], DType::F64, &s.dev).unwrap();
    assert!(matches!(
        bn(&flat, &s.w, &s.b, &s.running, opts, true),
        Err(Error::Shape { .. })
    ));
    let w4 = Tensor::ones(&[4], DType::F64, &s.dev).unwrap();
    assert!(matches!(
        bn(&s.x, &w4, &s.b, &s.running, opts, true),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        bn(&s.x, &s.w, &w4, &s.running, opts, false),
        Err(Error::Shape { .. })
    ));
    let b32 = s.b.to_dtype(DType::F32).unwrap();
    assert!(matches!(
        bn(&s.x, &s.w, &b32, &s.running, opts, true),
        Err(Error::DType { .. })
    ));
    let r4 = RunningStats::new(4, DType::F64, &s.dev).unwrap();
    assert!(matches!(
        bn(&s.x, &s.w, &s.b, &r4, opts, false),
        Err(Error::Shape { .. })
    ));
    let other = RunningStats::new(3, DType::F64, &Device::cpu()).unwrap();
    assert!(matches!(
        bn(&s.x, &s.w, &s.b, &other, opts, false),
        Err(Error::Device { .. })
    ));
    let w_other = Tensor::ones(&[3], DType::F64, &Device::cpu()).unwrap();
    assert!(matches!(
        bn(&s.x, &w_other, &s.b, &s.running, opts, true),
        Err(Error::Device { .. })
    ));
    let single = Tensor::ones(&[1, 3, 1, 1], DType::F64, &s.dev).unwrap();
    assert!(matches!(
        bn(&single, &s.w, &s.b, &s.running, opts, true),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(bn(&single, &s.w, &s.b, &s.running, opts, false).is_ok());
    // Two values per channel are enough to train on (the smallest batch PyTorch takes).
    let pair = Tensor::from_f64(
        &[1.0, 2.0, 3.0, 5.0, -1.0, 1.0],
        &[2, 3, 1, 1],
        DType::F64,
        &s.dev,
    )
    .unwrap();
    let fresh = RunningStats::new(3, DType::F64, &s.dev).unwrap();
    assert!(bn(&pair, &s.w, &s.b, &fresh, opts, true).is_ok());
    for bad in [
        BatchNormOptions { eps: -1.0, ..opts },
        BatchNormOptions {
            eps: f64::NAN,
            ..opts
        },
        BatchNormOptions {
            momentum: 1.5,
            ..opts
        },
        BatchNormOptions {
            momentum: -0.1,
            ..opts
        },
    ] {
        assert!(matches!(
            bn(&s.x, &s.w, &s.b, &s.running, bad, true),
            Err(Error::InvalidArgument { .. })
        ));
    }
    assert_eq!(s.running.num_batches_tracked(), 0);
    let bad = Tensor::zeros(&[2], DType::F64, &s.dev).unwrap();
    let good = Tensor::zeros(&[3], DType::F64, &s.dev).unwrap();
    assert!(matches!(
        s.running.set(&bad, &good),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        s.running.set(&good, &bad),
        Err(Error::Shape { .. })
    ));
    assert_eq!(s.running.var().to_f64_vec(), vec![1.0; 3]);
}

#[test]
fn defaults() {
    let o = BatchNormOptions::default();
    assert_eq!((o.eps, o.momentum), (1e-5, 0.1));
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use tape::ops::{self, BatchNormOptions};
    use tape::testing::*;
    use tape::{Context, Device, Tape, Tensor};

    /// Batch norm on `dev` in `ctx` from [`running_stats`]'s starting values.
    fn bn_case(dev: &Device, x: &Tensor, ctx: Context, grad_mask: [bool; 3]) -> BnOutcome {
        let c = x.shape()[1];
        let dtype = x.dtype();
        let running = running_stats(c, dtype, dev);
        let inputs = [x.clone(), randn(&[c], dtype, 41), randn(&[c], dtype, 42)];
        let opts = BatchNormOptions::default();
        let f = |t: &mut Tape, xs: &[Tensor]| {
            ops::batch_norm2d(t, &xs[0], &xs[1], &xs[2], &running, opts)
        };
        bn_outcome(dev, &inputs, &grad_mask, ctx, &running, &f)
    }

    #[test]
    fn batch_norm_matches_cpu_with_running_stats() {
        let recompute = recompute_mode();
        for_gpu_cases(3, 8, |dev, p, case, dtype| {
            let shape = [p.int(1, 5), p.int(1, 9), p.int(2, 7), p.int(2, 7)];
            // Per-channel offsets and scales, so the statistics are not trivial (offsets kept
            // moderate: a float variance of values far from their mean loses digits).
            let x = randn(&shape, dtype, case + 100);
            let xv: Vec<f64> = x
                .to_f64_vec()
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let ch = (i / (shape[2] * shape[3])) % shape[1];
                    v * (0.5 + 0.3 * ch as f64) + 0.25 * ch as f64 - 1.0
                })
                .collect();
            let x = Tensor::from_f64(&xv, &shape, dtype, &Device::cpu()).unwrap();
            for (ctx, label) in [
                (training(), "train"),
                (recompute, "recompute"),
                (eval_mode(), "eval"),
            ] {
                for mask in [
                    [true; 3],
                    [false, true, true],
                    [false, true, false],
                    [false, false, true],
                    [true, false, false],
                ] {
                    let a = bn_case(&Device::cpu(), &x, ctx, mask);
                    let b = bn_case(dev, &x, ctx, mask);
                    let what = format!("batch_norm2d {label} {shape:?} grads {mask:?} ({dtype:?})");
                    let t = tol(dtype);
                    assert!(
                        rel(&b.0, &a.0) <= t,
                        "{what}: forward differs by {:e}",
                        rel(&b.0, &a.0)
                    );
                    for (i, (g, h)) in b.1.iter().zip(&a.1).enumerate() {
                        if let (Some(g), Some(h)) = (g, h) {
                            assert!(
                                rel(g, h) <= t,
                                "{what}: gradient {i} differs by {:e}",
                                rel(g, h)
                            );
                        }
                    }
                    assert!(
                        rel(&b.2, &a.2) <= t,
                        "{what}: running mean differs by {:e}",
                        rel(&b.2, &a.2)
                    );
                    assert!(
                        rel(&b.3, &a.3) <= t,
                        "{what}: running var differs by {:e}",
                        rel(&b.3, &a.3)
                    );
                    assert_eq!(b.4, a.4, "{what}: batch count");
                    if label != "train" {
                        // Running statistics untouched outside the forward phase of training.
                        let (m0, _) = running_start(shape[1]);
                        assert!(rel(&b.2, &m0) <= t, "{what}: running mean changed");
                    }
                }
            }
        });
    }
}
