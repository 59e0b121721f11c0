//! softmax and log_softmax: finite-difference gradient checks (plain and causal), hand-computed
//! values, numerical stability, the causal mask against `-inf` scores, rows on several threads,
//! empty rows, and the error paths.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::ops::{log_softmax, log_softmax_with, softmax, softmax_with, SoftmaxOptions};
use tape::{DType, Device, Error, Tape, Tensor};

const CAUSAL: SoftmaxOptions = SoftmaxOptions { causal: true };

proptest! {
    #![proptest_config(common::config(1024))]

    #[test]
    fn gradcheck_softmax_and_log_softmax(
        (shape, scale, seed) in common::shape_scale_seed(),
    ) {
        let x = common::scaled_randn(&shape, scale, seed)?;
        let ctx = Tape::recording().context();
        let report =
            check_gradients(std::slice::from_ref(&x), ctx, |tape, t| softmax(tape, &t[0]))?;
        prop_assert!(report.max_rel_error <= 1e-6, "softmax {:?}", report);
        let report =
            check_gradients(std::slice::from_ref(&x), ctx, |tape, t| log_softmax(tape, &t[0]))?;
        prop_assert!(report.max_rel_error <= 1e-6, "log_softmax {:?}", report);
        if shape.len() >= 2 {
            // Causal softmax: masked outputs are 0, so the projected loss stays finite.
            let report = check_gradients(&[x], ctx, |tape, t| softmax_with(tape, &t[0], CAUSAL))?;
            prop_assert!(report.max_rel_error <= 1e-6, "causal softmax {:?}", report);
        }
    }
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let same_inf = x.is_infinite() && x == y;
        assert!(same_inf || (x - y).abs() <= tol, "[{i}]: {x} vs {y}");
    }
}

#[test]
fn hand_computed_values() {
    let dev = Device::cpu();
    let x = Tensor::from_f64(&[1.0, 2.0, 3.0, 0.0, 0.0, 0.0], &[2, 3], DType::F64, &dev).unwrap();
    let z = 1f64.exp() + 2f64.exp() + 3f64.exp();
    let want = [
        1f64.exp() / z,
        2f64.exp() / z,
        3f64.exp() / z,
        1.0 / 3.0,
        1.0 / 3.0,
        1.0 / 3.0,
    ];
    let y = softmax(&mut Tape::no_grad(), &x).unwrap();
    assert_eq!(y.shape(), &[2, 3]);
    close(&y.to_f64_vec(), &want, 1e-15);
    let ly = log_softmax(&mut Tape::no_grad(), &x).unwrap();
    let lwant: Vec<f64> = want.iter().map(|v| v.ln()).collect();
    close(&ly.to_f64_vec(), &lwant, 1e-15);
    // f32 rounds the f64 result once.
    let y32 = softmax(&mut Tape::no_grad(), &x.to_dtype(DType::F32).unwrap()).unwrap();
    assert_eq!(y32.dtype(), DType::F32);
    close(&y32.to_f64_vec(), &want, 1e-7);
}

#[test]
fn hand_computed_gradients() {
    // softmax of [0, ln 3] is [1/4, 3/4]; with upstream [1, 0]: gx = y (g - y.g) = [3/16, -3/16].
    let dev = Device::cpu();
    let x = common::leaf(Tensor::from_f64(&[0.0, 3f64.ln()], &[2], DType::F64, &dev));
    let seed = Tensor::from_f64(&[1.0, 0.0], &[2], DType::F64, &dev).unwrap();
    let mut tape = Tape::recording();
    let y = softmax(&mut tape, &x).unwrap();
    let g = tape.backward_from(&y, seed.clone()).unwrap();
    close(
        &g.get(&x).unwrap().to_f64_vec(),
        &[3.0 / 16.0, -3.0 / 16.0],
        1e-15,
    );
    // log_softmax: gx = g - softmax(x) sum(g) = [1 - 1/4, -3/4].
    let mut tape = Tape::recording();
    let y = log_softmax(&mut tape, &x).unwrap();
    let g = tape.backward_from(&y, seed).unwrap();
    close(&g.get(&x).unwrap().to_f64_vec(), &[0.75, -0.75], 1e-15);
}

#[test]
fn is_numerically_stable() {
    let dev = Device::cpu();
    for dtype in [DType::F32, DType::F64] {
        let x = Tensor::from_f64(
            &[1000.0, 0.0, -1000.0, 500.0, 500.0, 500.0],
            &[2, 3],
            dtype,
            &dev,
        )
        .unwrap();
        let y = softmax(&mut Tape::no_grad(), &x).unwrap().to_f64_vec();
        close(&y, &[1.0, 0.0, 0.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0], 1e-7);
        let ly = log_softmax(&mut Tape::no_grad(), &x).unwrap().to_f64_vec();
        let t = 3f64.ln();
        close(&ly, &[0.0, -1000.0, -2000.0, -t, -t, -t], 1e-4);
    }
}

/// `x` with the entries `j > i` of each matrix of its last two dims set to `-inf`.
fn masked(x: &Tensor) -> Tensor {
    let s = x.shape();
    let (rows, d) = (s[s.len() - 2], s[s.len() - 1]);
    let v: Vec<f64> = x
        .to_f64_vec()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if i % d > (i / d) % rows {
                f64::NEG_INFINITY
            } else {
                v
            }
        })
        .collect();
    Tensor::from_f64(&v, s, x.dtype(), x.device()).unwrap()
}

#[test]
fn causal_mask_equals_minus_infinity_scores() {
    let dev = Device::cpu();
    // Square and non-square matrices (the mask is aligned top-left: row i keeps columns 0..=i).
    for shape in [[2, 4, 4], [2, 3, 5], [1, 5, 3]] {
        let x = tape::testing::randn_leaf(&shape, DType::F64, &dev, 3);
        let xm = masked(&x).with_requires_grad(true);
        // Upstream gradients, zero at the masked entries for the reference.
        let seed = Tensor::randn(&shape, DType::F64, &dev, 4).unwrap();
        let seed_m = Tensor::from_f64(
            &masked(&seed)
                .to_f64_vec()
                .iter()
                .map(|v| if v.is_infinite() { 0.0 } else { *v })
                .collect::<Vec<_>>(),
            &shape,
            DType::F64,
            &dev,
        )
        .unwrap();
        for log in [false, true] {
            let run = |x: &Tensor, opts: SoftmaxOptions, seed: &Tensor| {
                let mut tape = Tape::recording();
                let y = if log {
                    log_softmax_with(&mut tape, x, opts).unwrap()
                } else {
                    softmax_with(&mut tape, x, opts).unwrap()
                };
                let out = y.to_f64_vec();
                let g = tape.backward_from(&y, seed.clone()).unwrap();
                (out, g.get(x).unwrap().to_f64_vec())
            };
            let (y, gx) = run(&x, CAUSAL, &seed);
            let (ym, gxm) = run(&xm, SoftmaxOptions::default(), &seed_m);
            close(&y, &ym, 1e-15);
            close(&gx, &gxm, 1e-15);
            let masked_value = if log { f64::NEG_INFINITY } else { 0.0 };
            let (rows, d) = (shape[1], shape[2]);
            for (i, (&v, &g)) in y.iter().zip(&gx).enumerate() {
                if i % d > (i / d) % rows {
                    assert_eq!(v, masked_value);
                    assert_eq!(g, 0.0);
                }
            }
        }
    }
}

#[test]
fn f32_rows_on_several_threads_match_f64() {
    let dev = Device::cpu();
    let x = Tensor::randn(&[300, 7, 64], DType::F64, &dev, 5).unwrap();
    let x32 = x.to_dtype(DType::F32).unwrap();
    for log in [false, true] {
        for opts in [SoftmaxOptions::default(), CAUSAL] {
            let f = |x: &Tensor| {
                let mut tp = Tape::no_grad();
                if log {
                    log_softmax_with(&mut tp, x, opts).unwrap()
                } else {
                    softmax_with(&mut tp, x, opts).unwrap()
                }
                .to_f64_vec()
            };
            // The f32 input is x rounded; compare against the f64 op on the rounded values.
            let want = f(&x32.to_dtype(DType::F64).unwrap());
            close(&f(&x32), &want, 1e-6);
        }
    }
    // Every softmax row sums to 1.
    let y = softmax(&mut Tape::no_grad(), &x).unwrap().to_f64_vec();
    for row in y.chunks(64) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}

#[test]
fn empty_rows_and_saved_nothing_without_a_gradient() {
    let dev = Device::cpu();
    let x = Tensor::zeros(&[3, 0], DType::F64, &dev).unwrap();
    assert_eq!(softmax(&mut Tape::no_grad(), &x).unwrap().shape(), &[3, 0]);
    assert_eq!(
        log_softmax(&mut Tape::no_grad(), &x).unwrap().shape(),
        &[3, 0]
    );
    let x = Tensor::zeros(&[0, 4, 4], DType::F64, &dev).unwrap();
    assert_eq!(
        softmax_with(&mut Tape::no_grad(), &x, CAUSAL)
            .unwrap()
            .shape(),
        &[0, 4, 4]
    );
    let mut tape = Tape::recording();
    softmax(
        &mut tape,
        &Tensor::zeros(&[2, 2], DType::F64, &dev).unwrap(),
    )
    .unwrap();
    assert!(tape.is_empty());
}

#[test]
fn error_paths() {
    let dev = Device::cpu();
    let scalar = Tensor::zeros(&[], DType::F64, &dev).unwrap();
    let mut tp = Tape::no_grad();
    assert!(matches!(
        softmax(&mut tp, &scalar),
        Err(Error::Shape { op: "softmax", .. })
    ));
    assert!(matches!(
        log_softmax(&mut tp, &scalar),
        Err(Error::Shape {
            op: "log_softmax",
            ..
        })
    ));
    let v = Tensor::zeros(&[4], DType::F64, &dev).unwrap();
    assert!(matches!(
        softmax_with(&mut tp, &v, CAUSAL),
        Err(Error::Shape { op: "softmax", .. })
    ));
    assert!(matches!(
        log_softmax_with(&mut tp, &v, CAUSAL),
        Err(Error::Shape {
            op: "log_softmax",
            ..
        })
    ));
    // A gradient of the wrong dtype is a typed error, not a panic.
    let x = common::leaf(Tensor::zeros(&[2, 3], DType::F64, &dev));
    tape::testing::assert_wrong_dtype_seed_fails(|t| softmax(t, &x));
}

/// On a GPU: the same ops against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use super::CAUSAL;
    use tape::ops::{self, SoftmaxOptions};
    use tape::testing::*;
    use tape::{Device, Tape, Tensor};

    #[test]
    fn softmax_and_log_softmax_match_cpu() {
        for_gpu_cases(21, 8, |dev, p, case, dtype| {
            // Rows longer than a block (1000) and short ones.
            let d = if case == 0 { 1000 } else { p.int(1, 40) };
            let shape = [p.int(1, 3), p.int(1, 9), d];
            let causal = p.bool();
            let opts = if causal {
                CAUSAL
            } else {
                SoftmaxOptions::default()
            };
            let x = randn(&shape, dtype, case + 3);
            for log in [false, true] {
                // A causal log-softmax has -inf outputs: see the next test.
                if log && causal {
                    continue;
                }
                let f = move |t: &mut Tape, x: &[Tensor]| {
                    if log {
                        ops::log_softmax_with(t, &x[0], opts)
                    } else {
                        ops::softmax_with(t, &x[0], opts)
                    }
                };
                compare_unary(
                    dev,
                    &format!("softmax {shape:?} causal {causal} log {log}"),
                    &x,
                    &f,
                );
            }
        });
    }

    /// Causal log-softmax (whose masked outputs are `-inf`, which `compare` cannot project):
    /// outputs and input gradients for a given output gradient, on both devices.
    #[test]
    fn causal_log_softmax_matches_cpu() {
        let Some(dev) = gpu() else { return };
        for dtype in DTYPES {
            let shape = [2, 5, 300];
            let x = randn(&shape, dtype, 8);
            let seed = randn(&shape, dtype, 9);
            let run = |d: &Device| {
                let x = x.to_device(d).unwrap().with_requires_grad(true);
                let mut tape = Tape::recording();
                let y = ops::log_softmax_with(&mut tape, &x, CAUSAL).unwrap();
                let out = y.try_to_f64_vec().unwrap();
                let g = tape.backward_from(&y, seed.to_device(d).unwrap()).unwrap();
                (out, g.get(&x).unwrap().try_to_f64_vec().unwrap())
            };
            let ((yc, gc), (yg, gg)) = (run(&Device::cpu()), run(&dev));
            let finite = |v: &[f64]| {
                v.iter()
                    .map(|x| if x.is_finite() { *x } else { 0.0 })
                    .collect::<Vec<_>>()
            };
            assert!(yc
                .iter()
                .zip(&yg)
                .all(|(a, b)| a.is_finite() == b.is_finite()));
            assert!(
                rel(&finite(&yg), &finite(&yc)) <= tol(dtype),
                "{dtype:?} forward"
            );
            assert!(rel(&gg, &gc) <= tol(dtype), "{dtype:?} gradient");
        }
    }
}
