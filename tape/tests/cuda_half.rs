//! The 16-bit CUDA path (bf16 and f16 buffers, NVRTC kernels, cuDNN and cuBLAS with 16-bit
//! descriptors and `f32` compute) against the CPU's 16-bit results, op by op, in both dtypes.
//! Skipped without a usable GPU (`SKIPPED (no GPU)` on stderr); fails instead under
//! `TAPE_EXPECT_GPU=1` (scripts/gpu-check.sh runs every `on_gpu` test so).
//!
//! Tolerances (derived from the dtype's unit roundoff `u`: bf16 2^-8, f16 2^-11). Each device
//! computes a 16-bit op in `f32` and rounds its result once; the two `f32` results differ only
//! by summation order, at most `D = 1e-4` of the largest value for these sizes (the `f32`
//! GPU-vs-CPU tolerance of `tape::testing::tol`). Rounding moves a value by at most `u` of
//! itself, so one rounded stage on each side differs by at most `2u + D` relative to the largest
//! reference value. A value that passes through `k` rounded stages whose inputs already differ
//! (an output gradient computed from a rounded forward output, say) adds `2u + D` per stage to
//! first order, for ops whose outputs move no more than their inputs do (true of every op
//! here at these magnitudes; batch norm divides by a standard deviation near 1): the bound is
//! `k (2u + D)`, with `k` written beside each check.

mod on_gpu {
    use tape::ops::{self, BatchNormOptions, Conv2dOptions, RunningStats};
    use tape::testing::{eval, eval_mode, gpu, randn, rel, training};
    use tape::Context;
    use tape::{DType, Device, Tape, Tensor};

    /// The 16-bit dtypes, in the order the tests try them.
    const HALVES: [DType; 2] = [DType::BF16, DType::F16];

    /// The GPU-vs-CPU bound of a result that went through `stages` rounded stages (module docs).
    fn bound(dtype: DType, stages: f64) -> f64 {
        stages * (2.0 * dtype.unit_roundoff() + 1e-4)
    }

    /// `f` (inputs in, one output) on the CPU and on `gpu`: the forward outputs agree within
    /// one stage and the gradients of the inputs `mask` marks within `grad_stages`.
    fn check(
        gpu: &Device,
        what: &str,
        inputs: &[Tensor],
        mask: &[bool],
        grad_stages: f64,
        f: &dyn Fn(&mut Tape, &[Tensor]) -> tape::Result<Tensor>,
    ) {
        check_stages(gpu, what, inputs, mask, (1.0, grad_stages), training(), f);
    }

    /// [`check`] with the forward's stage count `(forward, gradients)` and the context given.
    fn check_stages(
        gpu: &Device,
        what: &str,
        inputs: &[Tensor],
        mask: &[bool],
        (fwd_stages, grad_stages): (f64, f64),
        ctx: Context,
        f: &dyn Fn(&mut Tape, &[Tensor]) -> tape::Result<Tensor>,
    ) {
        let dtype = inputs[0].dtype();
        let (yc, gc) = eval(&Device::cpu(), inputs, mask, ctx, f);
        let (yg, gg) = eval(gpu, inputs, mask, ctx, f);
        let e = rel(&yg, &yc);
        let t = bound(dtype, fwd_stages);
        assert!(
            e <= t,
            "{what} ({dtype:?}): forward differs by {e:e} > {t:e}"
        );
        for (i, (a, b)) in gg.iter().zip(&gc).enumerate() {
            if let (Some(a), Some(b)) = (a, b) {
                let e = rel(a, b);
                let t = bound(dtype, grad_stages);
                assert!(
                    e <= t,
                    "{what} ({dtype:?}): gradient {i} differs by {e:e} > {t:e}"
                );
            }
        }
    }

    /// Runs `f(gpu, dtype)` for bf16 and f16; returns at once without a usable GPU.
    fn each_half(f: impl Fn(&Device, DType)) {
        let Some(dev) = gpu() else { return };
        for dtype in HALVES {
            f(&dev, dtype);
        }
    }

    /// Values that exercise rounding: normals at several scales, ties, tiny and huge values,
    /// signed zeros, infinities and NaN.
    fn rounding_cases() -> Vec<f64> {
        let mut v: Vec<f64> = randn(&[256], DType::F64, 3).to_f64_vec();
        for (i, x) in v.iter_mut().enumerate() {
            *x *= [1e-6, 1e-3, 1.0, 1e3, 1e5][i % 5];
        }
        v.extend([
            0.0,
            -0.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            1.0 + 1.0 / 2048.0,
            -11.781251907,
            65504.0,
            65520.0,
            1e-8,
            3.0e38,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ]);
        v
    }

    /// Equal as values, NaN equal to NaN.
    fn same(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x == y || (x.is_nan() && y.is_nan()))
    }

    #[test]
    fn casts_between_every_pair_of_dtypes_match_the_cpu_bit_for_bit() {
        let Some(dev) = gpu() else { return };
        let all = [DType::F32, DType::F64, DType::BF16, DType::F16];
        let values = rounding_cases();
        for src in all {
            let x = Tensor::from_f64(&values, &[values.len()], src, &Device::cpu()).unwrap();
            let xg = x.to_device(&dev).unwrap();
            for dst in all {
                let want = ops::cast(&mut Tape::recording(), &x, dst).unwrap();
                let got = ops::cast(&mut Tape::recording(), &xg, dst).unwrap();
                assert_eq!(got.dtype(), dst);
                assert!(
                    same(&got.try_to_f64_vec().unwrap(), &want.to_f64_vec()),
                    "cast {src:?} -> {dst:?} differs from the CPU's"
                );
            }
        }
    }

    #[test]
    fn buffers_round_trip_and_charge_two_bytes_an_element() {
        each_half(|dev, dtype| {
            let x = randn(&[3, 5, 7], dtype, 11);
            let before = dev.memory().current();
            let xg = x.to_device(dev).unwrap();
            assert_eq!(dev.memory().current() - before, 2 * x.numel(), "{dtype:?}");
            assert_eq!(xg.dtype(), dtype);
            assert!(same(&xg.try_to_f64_vec().unwrap(), &x.to_f64_vec()));
            let copy = xg.to_device(&Device::cpu()).unwrap();
            assert!(same(&copy.to_f64_vec(), &x.to_f64_vec()));
            let filled = Tensor::full(&[4, 3], 1.0 / 3.0, dtype, dev).unwrap();
            let want = Tensor::full(&[4, 3], 1.0 / 3.0, dtype, &Device::cpu()).unwrap();
            assert!(same(&filled.try_to_f64_vec().unwrap(), &want.to_f64_vec()));
        });
    }

    #[test]
    fn element_wise_ops_and_activations_match_the_cpu() {
        each_half(|dev, dtype| {
            let a = randn(&[4, 33], dtype, 1);
            let b = randn(&[4, 33], dtype, 2);
            // Element-wise: one rounding forward, one in backward on top (k = 2).
            check(
                dev,
                "add",
                &[a.clone(), b.clone()],
                &[true, true],
                2.0,
                &|t, x| ops::add(t, &x[0], &x[1]),
            );
            check(
                dev,
                "mul",
                &[a.clone(), b.clone()],
                &[true, true],
                2.0,
                &|t, x| ops::mul(t, &x[0], &x[1]),
            );
            check(
                dev,
                "scale",
                std::slice::from_ref(&a),
                &[true],
                2.0,
                &|t, x| ops::scale(t, &x[0], 0.7),
            );
            check(
                dev,
                "relu",
                std::slice::from_ref(&a),
                &[true],
                2.0,
                &|t, x| ops::relu(t, &x[0]),
            );
            check(
                dev,
                "gelu",
                std::slice::from_ref(&a),
                &[true],
                2.0,
                &|t, x| ops::gelu(t, &x[0]),
            );
            // The same counter-based mask on both devices: the kept values scaled once.
            check(
                dev,
                "dropout",
                std::slice::from_ref(&a),
                &[true],
                2.0,
                &|t, x| ops::dropout(t, &x[0], 0.3),
            );
        });
    }

    #[test]
    fn f32_ops_of_the_policy_match_the_cpu() {
        each_half(|dev, dtype| {
            let x = randn(&[6, 19], dtype, 4);
            // softmax reads its rounded output in backward: forward rounding, the output
            // gradient's, its own (k = 3).
            check(
                dev,
                "softmax",
                std::slice::from_ref(&x),
                &[true],
                3.0,
                &|t, x| ops::softmax(t, &x[0]),
            );
            check(
                dev,
                "log_softmax",
                std::slice::from_ref(&x),
                &[true],
                3.0,
                &|t, x| ops::log_softmax(t, &x[0]),
            );
            check(
                dev,
                "layer_norm",
                std::slice::from_ref(&x),
                &[true],
                3.0,
                &|t, x| ops::layer_norm(t, &x[0], None, None, 1e-5),
            );
            check(
                dev,
                "sum",
                std::slice::from_ref(&x),
                &[true],
                2.0,
                &|t, x| ops::sum(t, &x[0]),
            );
            check(
                dev,
                "mean",
                std::slice::from_ref(&x),
                &[true],
                2.0,
                &|t, x| ops::mean(t, &x[0]),
            );
            let labels = [0, 5, 18, 3, 3, 7];
            check(
                dev,
                "cross_entropy",
                std::slice::from_ref(&x),
                &[true],
                2.0,
                &|t, x| ops::cross_entropy(t, &x[0], &labels),
            );
        });
    }

    #[test]
    fn conv2d_matches_the_cpu() {
        each_half(|dev, dtype| {
            for (stride, padding, k) in [(1, 1, 3), (2, 1, 3), (1, 0, 1), (2, 0, 2)] {
                let inputs = [
                    randn(&[3, 5, 9, 8], dtype, 5),
                    randn(&[4, 5, k, k], dtype, 6),
                    randn(&[4], dtype, 7),
                ];
                let opts = Conv2dOptions { stride, padding };
                // cuDNN sums in f32 (its order), the CPU in f32 (its order or the AMX tiles'):
                // the GPU rounds the convolution, then its sum with the bias (two stages
                // forward; the CPU rounds once); the gradients read the rounded g (k = 2).
                check_stages(
                    dev,
                    &format!("conv2d k{k} s{stride} p{padding}"),
                    &inputs,
                    &[true, true, true],
                    (2.0, 2.0),
                    training(),
                    &|t, x| ops::conv2d(t, &x[0], &x[1], Some(&x[2]), opts),
                );
            }
        });
    }

    #[test]
    fn linear_and_matmul_match_the_cpu() {
        each_half(|dev, dtype| {
            let inputs = [
                randn(&[7, 40], dtype, 8),
                randn(&[9, 40], dtype, 9),
                randn(&[9], dtype, 10),
            ];
            // cuBLAS gemmEx sums in f32: one rounding forward, one per gradient (k = 2).
            check(dev, "linear", &inputs, &[true, true, true], 2.0, &|t, x| {
                ops::linear(t, &x[0], &x[1], Some(&x[2]))
            });
            let ab = [randn(&[2, 5, 17], dtype, 11), randn(&[2, 17, 6], dtype, 12)];
            check(dev, "matmul", &ab, &[true, true], 2.0, &|t, x| {
                ops::matmul(t, &x[0], &x[1])
            });
        });
    }

    #[test]
    fn pooling_matches_the_cpu() {
        each_half(|dev, dtype| {
            let x = randn(&[2, 3, 9, 9], dtype, 13);
            // Max pooling selects (exact); the averages sum in f32 and round once (k = 2).
            check(
                dev,
                "max_pool2d",
                std::slice::from_ref(&x),
                &[true],
                2.0,
                &|t, x| ops::max_pool2d(t, &x[0], 3, 2, 1),
            );
            check(
                dev,
                "avg_pool2d",
                std::slice::from_ref(&x),
                &[true],
                2.0,
                &|t, x| ops::avg_pool2d(t, &x[0], 2, 2, 0),
            );
            check(
                dev,
                "global_avg_pool",
                std::slice::from_ref(&x),
                &[true],
                2.0,
                &|t, x| ops::global_avg_pool(t, &x[0]),
            );
        });
    }

    #[test]
    fn batch_norm_and_the_fused_batch_norm_relu_match_the_cpu() {
        each_half(|dev, dtype| {
            // Under the policy: 16-bit x, f32 weight, bias and running statistics.
            let inputs = [
                randn(&[4, 3, 5, 5], dtype, 14),
                randn(&[3], DType::F32, 15),
                randn(&[3], DType::F32, 16),
            ];
            let opts = BatchNormOptions::default();
            // Statistics in f32, y rounded once; the input gradient combines g, x and the
            // saved statistics: one more stage than element-wise (k = 3).
            let bn = |t: &mut Tape, x: &[Tensor]| {
                let running = RunningStats::new(3, DType::F32, x[0].device())?;
                ops::batch_norm2d(t, &x[0], &x[1], &x[2], &running, opts)
            };
            let three = [true, true, true];
            check(dev, "batch_norm2d", &inputs, &three, 3.0, &bn);
            // Eval mode: cuDNN's inference forward, the NVRTC backward on f32 copies.
            let what = "batch_norm2d (eval)";
            check_stages(dev, what, &inputs, &three, (1.0, 3.0), eval_mode(), &bn);
            let parts = [
                randn(&[4, 2, 5, 5], dtype, 17),
                randn(&[4, 1, 5, 5], dtype, 18),
                randn(&[3], DType::F32, 19),
                randn(&[3], DType::F32, 20),
            ];
            let fused = |t: &mut Tape, x: &[Tensor]| {
                let running = RunningStats::new(3, DType::F32, x[0].device())?;
                ops::batch_norm_relu(t, &[&x[0], &x[1]], &x[2], &x[3], &running, opts)
            };
            let all = [true, true, true, true];
            check(dev, "batch_norm_relu", &parts, &all, 3.0, &fused);
            // The other backward paths (f32 copies on the GPU): the parameters' gradients
            // alone, and eval mode (normalised by the running statistics).
            let params_only = [false, false, true, true];
            check(
                dev,
                "batch_norm_relu (params)",
                &parts,
                &params_only,
                3.0,
                &fused,
            );
            let what = "batch_norm_relu (eval)";
            check_stages(dev, what, &parts, &all, (1.0, 3.0), eval_mode(), &fused);
        });
    }

    #[test]
    fn data_movement_ops_match_the_cpu() {
        each_half(|dev, dtype| {
            let a = randn(&[2, 3, 4, 4], dtype, 21);
            let b = randn(&[2, 5, 4, 4], dtype, 22);
            // Copies are exact; a gradient that sums (embedding) rounds once (k = 1).
            check(
                dev,
                "concat",
                &[a.clone(), b.clone()],
                &[true, true],
                1.0,
                &|t, x| ops::concat(t, &[&x[0], &x[1]]),
            );
            check(
                dev,
                "narrow",
                std::slice::from_ref(&b),
                &[true],
                1.0,
                &|t, x| ops::narrow(t, &x[0], 1, 1, 3),
            );
            check(
                dev,
                "permute",
                std::slice::from_ref(&a),
                &[true],
                1.0,
                &|t, x| ops::permute(t, &x[0], &[0, 2, 3, 1]),
            );
            let table = randn(&[11, 6], dtype, 23);
            let idx = [3, 0, 10, 3, 7, 3];
            check(dev, "embedding", &[table], &[true], 1.0, &|t, x| {
                ops::embedding(t, &x[0], &idx, &[2, 3])
            });
        });
    }
}
