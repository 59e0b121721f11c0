//! Helpers for tests that run an op on every device: the CPU always, and GPU 0 when one is
//! present, compared against the CPU (the reference). Used by the engine's own tests and by
//! crates built on it.
//!
//! Without a usable GPU (no NVIDIA driver, no CUDA libraries, or a build without the cargo
//! feature `cuda`), [`gpu`] returns `None` and the test skips its GPU half, after writing a
//! `SKIPPED (no GPU)` line that names the test straight to the process's stderr ([`skipped`]),
//! past the test harness's output capture: the line shows in `cargo test`'s output whether the
//! test passes or not (`cargo test ... 2>&1 | grep SKIPPED` lists them). With the environment
//! variable [`EXPECT_GPU_ENV`] set to `1`, it panics instead, so that a broken GPU set-up can
//! never pass as "skipped".

use crate::ops::{self, RunningStats};
use crate::{Context, CudaOptions, DType, Device, Result, Tape, Tensor};

/// Every parameter's values as bits (`f64` bits of each element), to check that a step updated
/// nothing, or that two runs updated the same.
pub fn parameter_bits<'a>(params: impl IntoIterator<Item = &'a crate::Parameter>) -> Vec<Vec<u64>> {
    params
        .into_iter()
        .map(|p| {
            p.tensor()
                .to_f64_vec()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect()
}

/// Set to `1` to make a missing GPU fail the tests that want one instead of skipping them.
pub const EXPECT_GPU_ENV: &str = "TAPE_EXPECT_GPU";

/// Both float dtypes, in the order tests try them.
pub const DTYPES: [DType; 2] = [DType::F32, DType::F64];

/// GPU 0 with default options, or `None` (after printing why) when there is none; panics under
/// [`EXPECT_GPU_ENV`]`=1`.
pub fn gpu() -> Option<Device> {
    gpu_with(CudaOptions::default())
}

/// GPU 0 with `options`; see [`gpu`].
pub fn gpu_with(options: CudaOptions) -> Option<Device> {
    match Device::cuda_with(0, options) {
        Ok(d) => Some(d),
        Err(e) if std::env::var(EXPECT_GPU_ENV).is_ok_and(|v| v == "1") => {
            panic!("{EXPECT_GPU_ENV}=1 but no usable CUDA GPU: {e}")
        }
        Err(e) => {
            skipped("no GPU", &format!("no usable CUDA GPU: {e}"));
            None
        }
    }
}

/// Reports that the running test skips (part of) its work: writes `SKIPPED (<kind>): <test
/// name>: <why>` to the process's stderr directly, which the test harness does not capture (a
/// skipped test still passes; this line is how it shows).
pub fn skipped(kind: &str, why: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    // Nothing to do if stderr is closed.
    let _ = writeln!(std::io::stderr(), "SKIPPED ({kind}): {test}: {why}");
}

/// A small deterministic generator of test sizes.
pub struct Pick(u64, u64);

impl Pick {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Pick(seed, 0)
    }

    /// A value in `lo..=hi`.
    pub fn int(&mut self, lo: usize, hi: usize) -> usize {
        self.1 += 1;
        let u = crate::rng::uniform(self.0, 99, self.1);
        lo + ((hi - lo + 1) as f64 * u) as usize
    }

    /// A fair coin.
    pub fn bool(&mut self) -> bool {
        self.int(0, 1) == 1
    }

    /// `n` values, each in `lo..=hi` (a shape or a list of indices).
    pub fn ints(&mut self, n: usize, lo: usize, hi: usize) -> Vec<usize> {
        (0..n).map(|_| self.int(lo, hi)).collect()
    }
}

/// `max |a - b| / max |b|`: the error relative to the reference's largest value (0 for two
/// empty vectors). Panics if the lengths differ.
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// `max|got - want| / max|want|`, or the absolute difference when `want` is all zeros (a zero
/// gradient, say); infinite when the lengths differ.
pub fn rel_diff(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let scale = want.iter().map(|b| b.abs()).fold(0.0, f64::max);
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

/// The GPU-vs-CPU tolerance of a dtype (relative to the largest reference value): `1e-4` for
/// `f32` (different summation orders), `1e-10` for `f64`; for the 16-bit dtypes, whose values
/// are f32 results rounded once, two units of roundoff (one rounding on each side) plus f32's.
pub fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-4,
        DType::F64 => 1e-10,
        DType::BF16 | DType::F16 => 2.0 * dtype.unit_roundoff() + 1e-4,
    }
}

/// Standard normal values on the CPU.
pub fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::randn(shape, dtype, &Device::cpu(), seed).expect("randn on the CPU")
}

/// A training context with a fixed dropout seed.
pub fn training() -> Context {
    Tape::recording().with_seed(7).context()
}

/// [`training`]'s context in the recompute phase (a checkpoint's second forward).
pub fn recompute_mode() -> Context {
    let mut ctx = training();
    ctx.phase = crate::Phase::Recompute;
    ctx
}

/// An eval-mode context.
pub fn eval_mode() -> Context {
    Tape::recording().training(false).context()
}

/// An op under test: inputs in, one output.
pub type OpFn<'f> = dyn Fn(&mut Tape, &[Tensor]) -> Result<Tensor> + 'f;

/// The output of `f` and the gradient of `sum(f(x) * R)` (a fixed random projection `R`) with
/// respect to each input that `grad_mask` marks, on `dev` (inputs copied there).
pub fn eval(
    dev: &Device,
    inputs: &[Tensor],
    grad_mask: &[bool],
    ctx: Context,
    f: &OpFn<'_>,
) -> (Vec<f64>, Vec<Option<Vec<f64>>>) {
    let xs: Vec<Tensor> = inputs
        .iter()
        .zip(grad_mask)
        .map(|(t, &g)| {
            t.to_device(dev)
                .expect("copy to the device")
                .with_requires_grad(g)
        })
        .collect();
    let mut tape = Tape::with_context(true, ctx);
    let out = f(&mut tape, &xs).expect("the op under test");
    let proj = randn(out.shape(), out.dtype(), 0x5eed)
        .to_device(dev)
        .expect("copy to the device");
    let weighted = ops::mul(&mut tape, &out, &proj).expect("mul");
    let loss = ops::sum(&mut tape, &weighted).expect("sum");
    let grads = tape.backward(&loss).expect("backward");
    let gs = xs
        .iter()
        .zip(grad_mask)
        .map(|(x, &g)| {
            g.then(|| {
                grads
                    .get(x)
                    .map(|t| t.try_to_f64_vec().expect("gradient readback"))
                    .unwrap_or_else(|| vec![0.0; x.numel()])
            })
        })
        .collect();
    (out.try_to_f64_vec().expect("output readback"), gs)
}

/// Runs `f` on the CPU and on `gpu` and asserts that outputs and input gradients agree within
/// [`tol`] of the inputs' dtype.
pub fn compare(
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

/// What a batch-norm step gives: output, input gradients, running mean, running var, batch
/// count.
pub type BnOutcome = (Vec<f64>, Vec<Option<Vec<f64>>>, Vec<f64>, Vec<f64>, u64);

/// Running statistics of `c` channels on `dev` with non-trivial starting values: mean
/// `0.1 * i`, variance `1 + 0.2 * i` for channel `i`.
pub fn running_stats(c: usize, dtype: DType, dev: &Device) -> RunningStats {
    let running = RunningStats::new(c, dtype, dev).expect("running statistics");
    let (m0, v0) = running_start(c);
    running
        .set(
            &Tensor::from_f64(&m0, &[c], dtype, &Device::cpu()).expect("mean"),
            &Tensor::from_f64(&v0, &[c], dtype, &Device::cpu()).expect("var"),
        )
        .expect("set running statistics");
    running
}

/// The starting mean and variance of [`running_stats`].
pub fn running_start(c: usize) -> (Vec<f64>, Vec<f64>) {
    (
        (0..c).map(|i| 0.1 * i as f64).collect(),
        (0..c).map(|i| 1.0 + 0.2 * i as f64).collect(),
    )
}

/// The outcome of `f` (a batch norm over `running`) on `dev`, with the running statistics after.
pub fn bn_outcome(
    dev: &Device,
    inputs: &[Tensor],
    grad_mask: &[bool],
    ctx: Context,
    running: &RunningStats,
    f: &OpFn<'_>,
) -> BnOutcome {
    let (out, grads) = eval(dev, inputs, grad_mask, ctx, f);
    (
        out,
        grads,
        running.mean().try_to_f64_vec().expect("mean readback"),
        running.var().try_to_f64_vec().expect("var readback"),
        running.num_batches_tracked(),
    )
}

/// Asserts that two batch-norm outcomes agree within `t` (and on the batch count and which
/// gradients exist).
pub fn assert_bn_close(what: &str, got: &BnOutcome, want: &BnOutcome, t: f64) {
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

/// Runs `f(gpu, pick, case, dtype)` on GPU 0 for each of `cases` cases and each of [`DTYPES`]
/// (in that nesting), with one [`Pick`] seeded with `seed` that every call draws from in turn;
/// returns at once without a usable GPU (see [`gpu`]).
pub fn for_gpu_cases(seed: u64, cases: u64, mut f: impl FnMut(&Device, &mut Pick, u64, DType)) {
    let Some(dev) = gpu() else { return };
    let mut p = Pick::new(seed);
    for case in 0..cases {
        for dtype in DTYPES {
            f(&dev, &mut p, case, dtype);
        }
    }
}

/// [`compare`] of a one-input op, its input's gradient checked, in [`training`] mode.
pub fn compare_unary(gpu: &Device, what: &str, x: &Tensor, f: &OpFn<'_>) {
    compare(gpu, what, std::slice::from_ref(x), &[true], training(), f);
}

/// [`compare`] of `f(tape, inputs, dtype)` on two inputs of shapes `[3, 2, 4, 4]` and
/// `[3, 3, 4, 4]` (both gradients checked), for each of [`DTYPES`], in training and in eval
/// mode; returns at once without a usable GPU (see [`gpu`]).
pub fn compare_two_parts(what: &str, f: impl Fn(&mut Tape, &[Tensor], DType) -> Result<Tensor>) {
    let Some(dev) = gpu() else { return };
    for dtype in DTYPES {
        for ctx in [training(), eval_mode()] {
            let inputs = [
                randn(&[3, 2, 4, 4], dtype, 1),
                randn(&[3, 3, 4, 4], dtype, 2),
            ];
            compare(&dev, what, &inputs, &[true, true], ctx, &|t, x| {
                f(t, x, dtype)
            });
        }
    }
}

/// Asserts that backward from `f`'s output (`f64`, recorded on a new tape) with a seed gradient
/// of the wrong dtype (`f32`) is a typed [`crate::Error::DType`], not a panic.
pub fn assert_wrong_dtype_seed_fails(f: impl FnOnce(&mut Tape) -> Result<Tensor>) {
    let mut tape = Tape::recording();
    let y = f(&mut tape).expect("the op under test");
    assert_eq!(y.dtype(), DType::F64, "the output under test");
    let wrong = Tensor::zeros(y.shape(), DType::F32, y.device()).expect("zeros");
    match tape.backward_from(&y, wrong) {
        Err(crate::Error::DType { .. }) => {}
        Err(e) => panic!("expected a dtype error, got {e}"),
        Ok(_) => panic!("expected a dtype error, backward ran"),
    }
}

/// Standard normal values on `dev` that require a gradient (a leaf to run backward to).
pub fn randn_leaf(shape: &[usize], dtype: DType, dev: &Device, seed: u64) -> Tensor {
    Tensor::randn(shape, dtype, dev, seed)
        .expect("randn")
        .with_requires_grad(true)
}

/// Fresh batch-norm parameters of `c` channels on `dev`: weight ones and bias zeros (both
/// leaves that require a gradient) and new running statistics.
pub fn batch_norm_params(c: usize, dtype: DType, dev: &Device) -> (Tensor, Tensor, RunningStats) {
    let leaf = |t: Result<Tensor>| t.expect("a parameter").with_requires_grad(true);
    (
        leaf(Tensor::ones(&[c], dtype, dev)),
        leaf(Tensor::zeros(&[c], dtype, dev)),
        RunningStats::new(c, dtype, dev).expect("running statistics"),
    )
}

/// The gradients of `sum(y)`, with `y` recorded on `tape` (which the backward pass consumes).
pub fn grads_of_sum(mut tape: Tape, y: &Tensor) -> crate::Gradients {
    let loss = ops::sum(&mut tape, y).expect("sum");
    tape.backward(&loss).expect("backward")
}
