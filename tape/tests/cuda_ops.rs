//! Every op on the CUDA backend against the CPU backend, forward and backward, on random shapes:
//! f32 within 1e-4 (relative to the largest reference value), f64 within 1e-10 where cuDNN and
//! cuBLAS support it. Dropout masks and batch-norm running statistics are compared too, and the
//! memory accounting of GPU buffers.
//!
//! Needs the `cuda` feature; without a usable GPU (or CUDA libraries) every test prints why it
//! skips and passes. Run on a GPU machine after `source scripts/cuda-env.sh`.
#![cfg(feature = "cuda")]

use tape::ops::{self, BatchNormOptions, Conv2dOptions, RunningStats};
use tape::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use tape::{Context, CudaOptions, DType, Device, Error, Parameter, Phase, Result, Tape, Tensor};

/// GPU 0, or `None` (after printing why) when there is none.
fn gpu() -> Option<Device> {
    gpu_with(CudaOptions::default())
}

fn gpu_with(options: CudaOptions) -> Option<Device> {
    match Device::cuda_with(0, options) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("skipping: no usable CUDA GPU: {e}");
            None
        }
    }
}

/// A small deterministic generator of test sizes.
struct Pick(u64, u64);

impl Pick {
    fn new(seed: u64) -> Self {
        Pick(seed, 0)
    }
    /// A value in `lo..=hi`.
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        self.1 += 1;
        let u = tape::rng::uniform(self.0, 99, self.1);
        lo + ((hi - lo + 1) as f64 * u) as usize
    }
    fn bool(&mut self) -> bool {
        self.int(0, 1) == 1
    }
}

/// `max |a - b| / max |b|` (0 for two empty vectors).
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-4,
        DType::F64 => 1e-10,
    }
}

type OpFn<'f> = dyn Fn(&mut Tape, &[Tensor]) -> Result<Tensor> + 'f;

/// Output and the gradient of `sum(f(x) * R)` with respect to each input that `grad_mask`
/// marks, on `dev` (inputs copied there).
fn eval(
    dev: &Device,
    inputs: &[Tensor],
    grad_mask: &[bool],
    ctx: Context,
    f: &OpFn<'_>,
) -> (Vec<f64>, Vec<Option<Vec<f64>>>) {
    let xs: Vec<Tensor> = inputs
        .iter()
        .zip(grad_mask)
        .map(|(t, &g)| t.to_device(dev).unwrap().with_requires_grad(g))
        .collect();
    let mut tape = Tape::with_context(true, ctx);
    let out = f(&mut tape, &xs).unwrap();
    let proj = Tensor::randn(out.shape(), out.dtype(), &Device::cpu(), 0x5eed)
        .unwrap()
        .to_device(dev)
        .unwrap();
    let weighted = ops::mul(&mut tape, &out, &proj).unwrap();
    let loss = ops::sum(&mut tape, &weighted).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let gs = xs
        .iter()
        .zip(grad_mask)
        .map(|(x, &g)| {
            g.then(|| {
                grads
                    .get(x)
                    .map(|t| t.try_to_f64_vec().unwrap())
                    .unwrap_or_else(|| vec![0.0; x.numel()])
            })
        })
        .collect();
    (out.try_to_f64_vec().unwrap(), gs)
}

fn training() -> Context {
    Tape::recording().with_seed(7).context()
}

fn eval_mode() -> Context {
    Tape::recording().training(false).context()
}

/// Runs `f` on the CPU and on `gpu` and compares outputs and input gradients.
fn compare(
    gpu: &Device,
    what: &str,
    inputs: &[Tensor],
    grad_mask: &[bool],
    ctx: Context,
    f: &OpFn<'_>,
) {
    let dtype = inputs[0].dtype();
    let (out_c, g_c) = eval(&Device::cpu(), inputs, grad_mask, ctx, f);
    let (out_g, g_g) = eval(gpu, inputs, grad_mask, ctx, f);
    let t = tol(dtype);
    let e = rel(&out_g, &out_c);
    assert!(e <= t, "{what} ({dtype:?}): forward differs by {e:e}");
    for (i, (a, b)) in g_g.iter().zip(&g_c).enumerate() {
        if let (Some(a), Some(b)) = (a, b) {
            let e = rel(a, b);
            assert!(
                e <= t,
                "{what} ({dtype:?}): gradient of input {i} differs by {e:e}"
            );
        }
    }
}

fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::randn(shape, dtype, &Device::cpu(), seed).unwrap()
}

const DTYPES: [DType; 2] = [DType::F32, DType::F64];

#[test]
fn conv2d_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let mut p = Pick::new(1);
    for case in 0..12 {
        for dtype in DTYPES {
            let k = [1, 3, 5, 7][p.int(0, 3)];
            let stride = p.int(1, 2);
            let padding = p.int(0, k / 2);
            let (n, cin, cout) = (p.int(1, 4), p.int(1, 9), p.int(1, 9));
            let h = p.int(k.saturating_sub(2 * padding).max(1), 12);
            let w = p.int(k.saturating_sub(2 * padding).max(1), 12);
            let bias = p.bool();
            let mut inputs = vec![
                randn(&[n, cin, h, w], dtype, case * 10 + 1),
                randn(&[cout, cin, k, k], dtype, case * 10 + 2),
            ];
            if bias {
                inputs.push(randn(&[cout], dtype, case * 10 + 3));
            }
            let opts = Conv2dOptions { stride, padding };
            let mask = vec![true; inputs.len()];
            let f = move |t: &mut Tape, x: &[Tensor]| ops::conv2d(t, &x[0], &x[1], x.get(2), opts);
            let what = format!(
                "conv2d x{:?} k{k} s{stride} p{padding} cout{cout} bias{bias}",
                [n, cin, h, w]
            );
            compare(&dev, &what, &inputs, &mask, training(), &f);
            // Only the weight wants a gradient (grad input skipped), then only the input.
            let mut only_w = vec![false; inputs.len()];
            only_w[1] = true;
            compare(&dev, &what, &inputs, &only_w, training(), &f);
            let mut only_x = vec![false; inputs.len()];
            only_x[0] = true;
            compare(&dev, &what, &inputs, &only_x, training(), &f);
        }
    }
}

#[test]
fn conv2d_tf32_runs_close() {
    let Some(dev) = gpu_with(CudaOptions {
        tf32: true,
        ..CudaOptions::default()
    }) else {
        return;
    };
    let x = randn(&[4, 16, 12, 12], DType::F32, 1);
    let w = randn(&[8, 16, 3, 3], DType::F32, 2);
    let opts = Conv2dOptions {
        stride: 1,
        padding: 1,
    };
    let f = |t: &mut Tape, x: &[Tensor]| ops::conv2d(t, &x[0], &x[1], None, opts);
    let (a, _) = eval(
        &Device::cpu(),
        &[x.clone(), w.clone()],
        &[true, true],
        training(),
        &f,
    );
    let (b, _) = eval(&dev, &[x, w], &[true, true], training(), &f);
    let e = rel(&b, &a);
    assert!(e <= 2e-2, "TF32 conv differs by {e:e}");
}

#[test]
fn linear_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let mut p = Pick::new(2);
    for case in 0..10 {
        for dtype in DTYPES {
            let (n, i, o) = (p.int(1, 17), p.int(1, 40), p.int(1, 23));
            let bias = p.bool();
            let mut inputs = vec![
                randn(&[n, i], dtype, case * 10 + 1),
                randn(&[o, i], dtype, case * 10 + 2),
            ];
            if bias {
                inputs.push(randn(&[o], dtype, case * 10 + 3));
            }
            let mask = vec![true; inputs.len()];
            let f = |t: &mut Tape, x: &[Tensor]| ops::linear(t, &x[0], &x[1], x.get(2));
            compare(
                &dev,
                &format!("linear {n}x{i}->{o} bias{bias}"),
                &inputs,
                &mask,
                training(),
                &f,
            );
        }
    }
}

/// Batch norm on `dev` in `ctx`, returning the output, the input gradients and the running
/// statistics after the step (with the batch count).
/// Batch-norm outcome: output, input gradients, running mean, running var, batch count.
type BnOutcome = (Vec<f64>, Vec<Option<Vec<f64>>>, Vec<f64>, Vec<f64>, u64);

fn bn_case(dev: &Device, x: &Tensor, ctx: Context, grad_mask: [bool; 3]) -> BnOutcome {
    let c = x.shape()[1];
    let dtype = x.dtype();
    let running = RunningStats::new(c, dtype, dev).unwrap();
    let m0: Vec<f64> = (0..c).map(|i| 0.1 * i as f64).collect();
    let v0: Vec<f64> = (0..c).map(|i| 1.0 + 0.2 * i as f64).collect();
    running
        .set(
            &Tensor::from_f64(&m0, &[c], dtype, &Device::cpu()).unwrap(),
            &Tensor::from_f64(&v0, &[c], dtype, &Device::cpu()).unwrap(),
        )
        .unwrap();
    let inputs = [x.clone(), randn(&[c], dtype, 41), randn(&[c], dtype, 42)];
    let opts = BatchNormOptions::default();
    let f =
        |t: &mut Tape, xs: &[Tensor]| ops::batch_norm2d(t, &xs[0], &xs[1], &xs[2], &running, opts);
    let (out, grads) = eval(dev, &inputs, &grad_mask, ctx, &f);
    (
        out,
        grads,
        running.mean().try_to_f64_vec().unwrap(),
        running.var().try_to_f64_vec().unwrap(),
        running.num_batches_tracked(),
    )
}

#[test]
fn batch_norm_matches_cpu_with_running_stats() {
    let Some(dev) = gpu() else { return };
    let mut p = Pick::new(3);
    let mut recompute = training();
    recompute.phase = Phase::Recompute;
    for case in 0..8 {
        for dtype in DTYPES {
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
                    let b = bn_case(&dev, &x, ctx, mask);
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
                        let c = shape[1];
                        let m0: Vec<f64> = (0..c).map(|i| 0.1 * i as f64).collect();
                        assert!(rel(&b.2, &m0) <= t, "{what}: running mean changed");
                    }
                }
            }
        }
    }
}

#[test]
fn elementwise_reduce_reshape_match_cpu() {
    let Some(dev) = gpu() else { return };
    let mut p = Pick::new(4);
    for case in 0..6 {
        for dtype in DTYPES {
            let shape = [p.int(1, 6), p.int(1, 7), p.int(1, 9)];
            let a = randn(&shape, dtype, case * 10 + 1);
            let b = randn(&shape, dtype, case * 10 + 2);
            let two = [a.clone(), b.clone()];
            let m = [true, true];
            compare(
                &dev,
                "relu",
                std::slice::from_ref(&a),
                &[true],
                training(),
                &|t, x| ops::relu(t, &x[0]),
            );
            compare(&dev, "add", &two, &m, training(), &|t, x| {
                ops::add(t, &x[0], &x[1])
            });
            compare(&dev, "mul", &two, &m, training(), &|t, x| {
                ops::mul(t, &x[0], &x[1])
            });
            compare(
                &dev,
                "scale",
                std::slice::from_ref(&a),
                &[true],
                training(),
                &|t, x| ops::scale(t, &x[0], -1.75),
            );
            compare(
                &dev,
                "sum",
                std::slice::from_ref(&a),
                &[true],
                training(),
                &|t, x| ops::sum(t, &x[0]),
            );
            compare(
                &dev,
                "mean",
                std::slice::from_ref(&a),
                &[true],
                training(),
                &|t, x| ops::mean(t, &x[0]),
            );
            let n = a.numel();
            compare(
                &dev,
                "reshape",
                std::slice::from_ref(&a),
                &[true],
                training(),
                &|t, x| {
                    let y = ops::reshape(t, &x[0], &[n])?;
                    ops::relu(t, &y)
                },
            );
            // The same buffer used twice: gradients accumulate (add_assign on the device).
            compare(
                &dev,
                "x*x+x",
                std::slice::from_ref(&a),
                &[true],
                training(),
                &|t, x| {
                    let y = ops::mul(t, &x[0], &x[0])?;
                    ops::add(t, &y, &x[0])
                },
            );
        }
    }
}

#[test]
fn reshape_shares_the_buffer() {
    let Some(dev) = gpu() else { return };
    let x = Tensor::randn(&[4, 6], DType::F32, &dev, 1).unwrap();
    let before = dev.memory().current();
    let y = ops::reshape(&mut Tape::no_grad(), &x, &[24]).unwrap();
    assert!(y.shares_buffer(&x));
    assert_eq!(
        dev.memory().current(),
        before,
        "a reshape allocates nothing"
    );
}

#[test]
fn concat_matches_cpu_including_more_than_32_parts() {
    let Some(dev) = gpu() else { return };
    let mut p = Pick::new(5);
    for case in 0..6 {
        for dtype in DTYPES {
            let parts = if case == 0 { 41 } else { p.int(1, 6) };
            let (n, h, w) = (p.int(1, 4), p.int(1, 5), p.int(1, 5));
            let inputs: Vec<Tensor> = (0..parts)
                .map(|i| randn(&[n, p.int(1, 4), h, w], dtype, case * 100 + i as u64))
                .collect();
            let mask: Vec<bool> = (0..parts).map(|i| i % 3 != 1).collect();
            compare(
                &dev,
                &format!("concat of {parts}"),
                &inputs,
                &mask,
                training(),
                &|t, x| {
                    let refs: Vec<&Tensor> = x.iter().collect();
                    ops::concat(t, &refs)
                },
            );
        }
    }
}

#[test]
fn dropout_masks_are_identical() {
    let Some(dev) = gpu() else { return };
    for dtype in DTYPES {
        for (p, seed) in [(0.2, 1u64), (0.5, 99), (0.9, 12345)] {
            let ones = Tensor::ones(&[3, 5, 7, 11], dtype, &Device::cpu()).unwrap();
            let run = |d: &Device| {
                let mut tape = Tape::recording().with_seed(seed);
                tape.next_random_stream(); // a non-zero counter
                let x = ones.to_device(d).unwrap();
                ops::dropout(&mut tape, &x, p)
                    .unwrap()
                    .try_to_f64_vec()
                    .unwrap()
            };
            let (a, b) = (run(&Device::cpu()), run(&dev));
            assert_eq!(a, b, "dropout mask p={p} seed={seed} {dtype:?}");
        }
        let x = randn(&[4, 6, 5], dtype, 3);
        compare(&dev, "dropout", &[x], &[true], training(), &|t, x| {
            ops::dropout(t, &x[0], 0.3)
        });
    }
}

#[test]
fn cross_entropy_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let mut p = Pick::new(6);
    for case in 0..6 {
        for dtype in DTYPES {
            let (n, classes) = (p.int(1, 9), if case == 0 { 1000 } else { p.int(1, 12) });
            let logits = randn(&[n, classes], dtype, case + 7);
            let labels: Vec<usize> = (0..n).map(|i| (i * 7 + case as usize) % classes).collect();
            compare(
                &dev,
                &format!("cross_entropy {n}x{classes}"),
                &[logits],
                &[true],
                training(),
                &move |t, x| ops::cross_entropy(t, &x[0], &labels),
            );
        }
    }
}

#[test]
fn pooling_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let mut p = Pick::new(7);
    for case in 0..8 {
        for dtype in DTYPES {
            let kernel = p.int(1, 3);
            let stride = p.int(1, 2);
            let padding = p.int(0, kernel / 2);
            let shape = [p.int(1, 3), p.int(1, 4), p.int(kernel, 9), p.int(kernel, 9)];
            let x = randn(&shape, dtype, case + 11);
            let what = format!("pool {shape:?} k{kernel} s{stride} p{padding}");
            compare(
                &dev,
                &format!("avg_{what}"),
                std::slice::from_ref(&x),
                &[true],
                training(),
                &move |t, x| ops::avg_pool2d(t, &x[0], kernel, stride, padding),
            );
            compare(
                &dev,
                &format!("max_{what}"),
                std::slice::from_ref(&x),
                &[true],
                training(),
                &move |t, x| ops::max_pool2d(t, &x[0], kernel, stride, padding),
            );
            compare(
                &dev,
                "global_avg_pool",
                &[x],
                &[true],
                training(),
                &|t, x| ops::global_avg_pool(t, &x[0]),
            );
        }
    }
    // DenseNet's shapes: 2x2/2 average (transitions), 3x3/2 pad 1 max (ImageNet stem).
    let x = randn(&[2, 8, 16, 16], DType::F32, 5);
    compare(
        &dev,
        "avg 2x2/2",
        std::slice::from_ref(&x),
        &[true],
        training(),
        &|t, x| ops::avg_pool2d(t, &x[0], 2, 2, 0),
    );
    compare(&dev, "max 3x3/2 p1", &[x], &[true], training(), &|t, x| {
        ops::max_pool2d(t, &x[0], 3, 2, 1)
    });
}

/// Three optimizer steps on the CPU and on the GPU from the same parameters and gradients.
fn optimizer_case(
    dev: &Device,
    dtype: DType,
    make: &dyn Fn() -> Box<dyn Optimizer>,
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut p = Parameter::new("p", randn(&[5, 7], dtype, 1).to_device(dev).unwrap());
    let mut opt = make();
    for step in 0..3u64 {
        let g = randn(&[5, 7], dtype, 10 + step).to_device(dev).unwrap();
        let mut tape = Tape::recording();
        let y = ops::mul(&mut tape, p.tensor(), &g).unwrap();
        let loss = ops::sum(&mut tape, &y).unwrap();
        let grads = tape.backward(&loss).unwrap();
        opt.step(&mut [&mut p], &grads).unwrap();
    }
    let state = opt
        .state_dict(&[&p])
        .into_iter()
        .map(|(_, t)| t.try_to_f64_vec().unwrap())
        .collect();
    (p.tensor().try_to_f64_vec().unwrap(), state)
}

#[test]
fn sgd_and_adam_match_cpu() {
    let Some(dev) = gpu() else { return };
    let sgds = [
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
            ..SgdConfig::default()
        },
        SgdConfig {
            lr: 0.05,
            momentum: 0.5,
            dampening: 0.1,
            ..SgdConfig::default()
        },
        SgdConfig {
            lr: 0.2,
            ..SgdConfig::default()
        },
    ];
    for dtype in DTYPES {
        // The updates are the CPU's f64 arithmetic, rounded once: equal up to the last bit.
        let t = match dtype {
            DType::F32 => 1e-6,
            DType::F64 => 1e-12,
        };
        for cfg in sgds {
            let make = move || Box::new(Sgd::new(cfg).unwrap()) as Box<dyn Optimizer>;
            let (pa, sa) = optimizer_case(&Device::cpu(), dtype, &make);
            let (pb, sb) = optimizer_case(&dev, dtype, &make);
            assert!(
                rel(&pb, &pa) <= t,
                "SGD {cfg:?} {dtype:?}: {:e}",
                rel(&pb, &pa)
            );
            for (x, y) in sb.iter().zip(&sa) {
                assert!(rel(x, y) <= t, "SGD state {cfg:?} {dtype:?}");
            }
        }
        let cfg = AdamConfig {
            weight_decay: 1e-2,
            ..AdamConfig::default()
        };
        let make = move || Box::new(Adam::new(cfg).unwrap()) as Box<dyn Optimizer>;
        let (pa, sa) = optimizer_case(&Device::cpu(), dtype, &make);
        let (pb, sb) = optimizer_case(&dev, dtype, &make);
        assert!(rel(&pb, &pa) <= t, "Adam {dtype:?}: {:e}", rel(&pb, &pa));
        for (x, y) in sb.iter().zip(&sa) {
            assert!(rel(x, y) <= t, "Adam state {dtype:?}");
        }
    }
}

#[test]
fn memory_accounting_counts_gpu_buffers_and_workspaces() {
    let Some(dev) = gpu() else { return };
    assert_eq!(dev.memory().current(), 0);
    let x = Tensor::zeros(&[8, 16, 32, 32], DType::F32, &dev).unwrap();
    assert_eq!(dev.memory().current(), 8 * 16 * 32 * 32 * 4);
    let y = Tensor::ones(&[100], DType::F64, &dev).unwrap();
    assert_eq!(dev.memory().current(), 8 * 16 * 32 * 32 * 4 + 800);
    drop(y);
    assert_eq!(dev.memory().current(), 8 * 16 * 32 * 32 * 4);
    // A convolution: output plus, while it runs, its cuDNN workspace (if the algorithm has one).
    dev.memory().reset_peak();
    let w = Tensor::randn(&[16, 16, 3, 3], DType::F32, &dev, 1).unwrap();
    let base = dev.memory().current();
    let out = ops::conv2d(
        &mut Tape::no_grad(),
        &x,
        &w,
        None,
        Conv2dOptions {
            stride: 1,
            padding: 1,
        },
    )
    .unwrap();
    assert_eq!(dev.memory().current(), base + out.size_in_bytes());
    assert!(dev.memory().peak() >= base + out.size_in_bytes());
    drop((x, w, out));
    assert_eq!(dev.memory().current(), 0, "every GPU buffer is released");
    // The driver's view is available beside the engine's.
    let (free, total) = dev
        .mem_get_info()
        .unwrap()
        .expect("a CUDA device reports cuMemGetInfo");
    assert!(free <= total && total > 0);
    // A limit makes allocations fail with the typed error, as on the CPU.
    dev.memory().set_limit(Some(1000));
    match Tensor::zeros(&[1000], DType::F32, &dev) {
        Err(Error::OutOfMemory { requested, .. }) => assert_eq!(requested, 4000),
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    dev.memory().set_limit(None);
}

#[test]
fn gpu_tensors_copy_and_refuse_host_access() {
    let Some(dev) = gpu() else { return };
    let host = randn(&[3, 4], DType::F32, 9);
    let x = host.to_device(&dev).unwrap();
    assert_ne!(x.id(), host.id(), "to_device makes a new leaf");
    assert_eq!(x.to_vec::<f32>().unwrap(), host.to_vec::<f32>().unwrap());
    assert_eq!(x.to_f64_vec(), host.to_f64_vec());
    assert!(matches!(
        x.as_slice::<f32>(),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(x.to_vec::<f64>(), Err(Error::DType { .. })));
    let back = x.to_device(&Device::cpu()).unwrap();
    assert_eq!(
        back.as_slice::<f32>().unwrap(),
        host.as_slice::<f32>().unwrap()
    );
    // Mixing devices is a typed error, not a crash.
    let mut tape = Tape::no_grad();
    assert!(matches!(
        ops::add(&mut tape, &x, &host),
        Err(Error::Device { .. })
    ));
    // f64 round trip and scalar reads.
    let s = Tensor::full(&[1], 2.5, DType::F64, &dev).unwrap();
    assert_eq!(s.scalar().unwrap(), 2.5);
    assert_eq!(
        x.to_dtype(DType::F64).unwrap().to_f64_vec(),
        host.to_f64_vec()
    );
}

#[test]
fn a_conv_bn_relu_pool_linear_chain_matches_cpu() {
    let Some(dev) = gpu() else { return };
    for dtype in DTYPES {
        let running_c = RunningStats::new(6, dtype, &Device::cpu()).unwrap();
        let running_g = RunningStats::new(6, dtype, &dev).unwrap();
        let inputs = [
            randn(&[4, 3, 10, 10], dtype, 1),
            randn(&[6, 3, 3, 3], dtype, 2),
            Tensor::ones(&[6], dtype, &Device::cpu()).unwrap(),
            Tensor::zeros(&[6], dtype, &Device::cpu()).unwrap(),
            randn(&[5, 6], dtype, 3),
            randn(&[5], dtype, 4),
        ];
        fn chain(running: &RunningStats) -> impl Fn(&mut Tape, &[Tensor]) -> Result<Tensor> + '_ {
            move |t: &mut Tape, x: &[Tensor]| -> Result<Tensor> {
                let y = ops::conv2d(
                    t,
                    &x[0],
                    &x[1],
                    None,
                    Conv2dOptions {
                        stride: 1,
                        padding: 1,
                    },
                )?;
                let y =
                    ops::batch_norm2d(t, &y, &x[2], &x[3], running, BatchNormOptions::default())?;
                let y = ops::relu(t, &y)?;
                let y = ops::avg_pool2d(t, &y, 2, 2, 0)?;
                let y = ops::global_avg_pool(t, &y)?;
                let logits = ops::linear(t, &y, &x[4], Some(&x[5]))?;
                ops::cross_entropy(t, &logits, &[0, 1, 2, 3])
            }
        }
        let mask = [true; 6];
        let (a, ga) = eval(
            &Device::cpu(),
            &inputs,
            &mask,
            training(),
            &chain(&running_c),
        );
        let (b, gb) = eval(&dev, &inputs, &mask, training(), &chain(&running_g));
        let t = tol(dtype);
        assert!(rel(&b, &a) <= t, "chain loss {dtype:?}");
        for (i, (x, y)) in gb.iter().zip(&ga).enumerate() {
            let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
            assert!(
                rel(x, y) <= t,
                "chain gradient {i} {dtype:?}: {:e}",
                rel(x, y)
            );
        }
        let (mc, mg) = (
            running_c.mean().to_f64_vec(),
            running_g.mean().try_to_f64_vec().unwrap(),
        );
        assert!(rel(&mg, &mc) <= t, "chain running mean {dtype:?}");
    }
}

/// The fused concat -> batch norm -> ReLU (or, with `fused` false, the composition of concat,
/// batch norm and ReLU) on `dev` in `ctx`: output, the gradients of the inputs `grad_mask` marks
/// (the parts, then weight and bias), running mean and var after the step, batch count.
fn bnr_case(
    dev: &Device,
    parts: &[Tensor],
    ctx: Context,
    grad_mask: &[bool],
    fused: bool,
) -> BnOutcome {
    let c: usize = parts.iter().map(|p| p.shape()[1]).sum();
    let dtype = parts[0].dtype();
    let running = RunningStats::new(c, dtype, dev).unwrap();
    let m0: Vec<f64> = (0..c).map(|i| 0.1 * i as f64).collect();
    let v0: Vec<f64> = (0..c).map(|i| 1.0 + 0.2 * i as f64).collect();
    running
        .set(
            &Tensor::from_f64(&m0, &[c], dtype, &Device::cpu()).unwrap(),
            &Tensor::from_f64(&v0, &[c], dtype, &Device::cpu()).unwrap(),
        )
        .unwrap();
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
    let (out, grads) = eval(dev, &inputs, grad_mask, ctx, &f);
    (
        out,
        grads,
        running.mean().try_to_f64_vec().unwrap(),
        running.var().try_to_f64_vec().unwrap(),
        running.num_batches_tracked(),
    )
}

/// Asserts that two batch-norm outcomes agree within `t` (and on the batch count).
fn assert_bn_close(what: &str, got: &BnOutcome, want: &BnOutcome, t: f64) {
    let e = rel(&got.0, &want.0);
    assert!(e <= t, "{what}: forward differs by {e:e}");
    assert_eq!(got.1.len(), want.1.len());
    for (i, (g, h)) in got.1.iter().zip(&want.1).enumerate() {
        assert_eq!(g.is_some(), h.is_some(), "{what}: gradient {i} presence");
        if let (Some(g), Some(h)) = (g, h) {
            let e = rel(g, h);
            assert!(e <= t, "{what}: gradient of input {i} differs by {e:e}");
        }
    }
    let e = rel(&got.2, &want.2);
    assert!(e <= t, "{what}: running mean differs by {e:e}");
    let e = rel(&got.3, &want.3);
    assert!(e <= t, "{what}: running var differs by {e:e}");
    assert_eq!(got.4, want.4, "{what}: batch count");
}

#[test]
fn batch_norm_relu_matches_cpu_and_the_gpu_composition() {
    let Some(dev) = gpu() else { return };
    let mut p = Pick::new(8);
    let mut recompute = training();
    recompute.phase = Phase::Recompute;
    for case in 0..7u64 {
        for dtype in DTYPES {
            // Case 0 is DenseNet-like (a block input and several growth-rate parts); the others
            // are random, with odd plane sizes so that the parts' slices of the output and of
            // the parameters start at addresses that are not 16-byte aligned.
            let (channels, n, h, w) = if case == 0 {
                (vec![6, 3, 3, 3, 3, 3], 3, 5, 5)
            } else {
                let k = p.int(1, 4);
                let channels: Vec<usize> = (0..k).map(|_| p.int(1, 5)).collect();
                let (h, w) = (p.int(1, 6), p.int(1, 6));
                let n = p.int(if h * w == 1 { 2 } else { 1 }, 4);
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
                    let fused = bnr_case(&dev, &parts, ctx, mask, true);
                    let composed = bnr_case(&dev, &parts, ctx, mask, false);
                    let t = tol(dtype);
                    assert_bn_close(&format!("{what} GPU vs CPU"), &fused, &cpu, t);
                    assert_bn_close(&format!("{what} GPU vs composition"), &fused, &composed, t);
                    let expected_count = u64::from(label == "train");
                    assert_eq!(fused.4, expected_count, "{what}: batch count");
                    if label != "train" {
                        // Running statistics untouched outside the forward phase of training.
                        let c: usize = channels.iter().sum();
                        let m0: Vec<f64> = (0..c).map(|i| 0.1 * i as f64).collect();
                        let v0: Vec<f64> = (0..c).map(|i| 1.0 + 0.2 * i as f64).collect();
                        assert!(rel(&fused.2, &m0) <= t, "{what}: running mean changed");
                        assert!(rel(&fused.3, &v0) <= t, "{what}: running var changed");
                    }
                }
            }
        }
    }
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
            .map(|(i, &ci)| {
                Tensor::randn(&[n, ci, h, w], dtype, &dev, i as u64)
                    .unwrap()
                    .with_requires_grad(true)
            })
            .collect();
        let refs: Vec<&Tensor> = parts.iter().collect();
        let weight = Tensor::rand_uniform(&[c], 0.5, 1.5, dtype, &dev, 10)
            .unwrap()
            .with_requires_grad(true);
        let bias = Tensor::randn(&[c], dtype, &dev, 11)
            .unwrap()
            .with_requires_grad(true);
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
