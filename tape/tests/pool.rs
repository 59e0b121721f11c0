//! Pooling: finite-difference gradient checks over random geometries (max pooling on inputs with
//! well-separated values, so the argmax does not move under the finite difference), hand-computed
//! values and gradients, tie breaking, and every error path.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::ops::{avg_pool2d, global_avg_pool, max_pool2d};
use tape::{DType, Device, Error, Tape, Tensor};

/// `(x shape, kernel, stride, padding)` with `padding <= kernel/2` and a window that fits.
fn geometry() -> impl Strategy<Value = ([usize; 4], usize, usize, usize)> {
    (1..=2usize, 1..=3usize, 1..=3usize, 1..=3usize, 0..=2usize).prop_flat_map(|(n, c, k, s, p)| {
        let p = p.min(k / 2);
        let min = k.saturating_sub(2 * p).max(1);
        (min..=min + 6, min..=min + 6).prop_map(move |(h, w)| ([n, c, h, w], k, s, p))
    })
}

/// Distinct values at least `1/1009` apart, in a pseudo-random order.
fn distinct(shape: &[usize], a: u64, b: u64) -> Tensor {
    let len: usize = shape.iter().product();
    let v: Vec<f64> = (0..len as u64)
        .map(|i| ((i * (a % 1008 + 1) + b) % 1009) as f64 / 1009.0 - 0.5)
        .collect();
    Tensor::from_f64(&v, shape, DType::F64, &Device::cpu()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn gradcheck_avg_pool((shape, k, s, p) in geometry(), seed in any::<u64>()) {
        let x = Tensor::randn(&shape, DType::F64, &Device::cpu(), seed).unwrap();
        let report = check_gradients(&[x], Tape::recording().context(), |tape, i| {
            avg_pool2d(tape, &i[0], k, s, p)
        })
        .unwrap();
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }

    #[test]
    fn gradcheck_max_pool((shape, k, s, p) in geometry(), a in any::<u64>(), b in any::<u64>()) {
        let x = distinct(&shape, a, b);
        let report = check_gradients(&[x], Tape::recording().context(), |tape, i| {
            max_pool2d(tape, &i[0], k, s, p)
        })
        .unwrap();
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }

    #[test]
    fn gradcheck_global_avg_pool(n in 1..=3usize, c in 1..=4usize, h in 1..=6usize, w in 1..=6usize, seed in any::<u64>()) {
        let x = Tensor::randn(&[n, c, h, w], DType::F64, &Device::cpu(), seed).unwrap();
        let report = check_gradients(&[x], Tape::recording().context(), |tape, i| {
            global_avg_pool(tape, &i[0])
        })
        .unwrap();
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }
}

fn seq(shape: &[usize], dev: &Device) -> Tensor {
    let v: Vec<f64> = (1..=shape.iter().product::<usize>())
        .map(|i| i as f64)
        .collect();
    common::leaf(Tensor::from_f64(&v, shape, DType::F64, dev))
}

/// Output and gradient of `sum(op(x))`.
fn run(x: &Tensor, op: impl Fn(&mut Tape, &Tensor) -> tape::Result<Tensor>) -> (Tensor, Vec<f64>) {
    let mut tape = Tape::recording();
    let y = op(&mut tape, x).unwrap();
    let g = tape::testing::grads_of_sum(tape, &y);
    (y, g.get(x).unwrap().to_f64_vec())
}

#[test]
fn avg_pool_hand_values() {
    let dev = Device::cpu();
    let (y, g) = run(&seq(&[1, 1, 4, 4], &dev), |t, x| avg_pool2d(t, x, 2, 2, 0));
    assert_eq!(y.shape(), &[1, 1, 2, 2]);
    assert_eq!(y.to_f64_vec(), vec![3.5, 5.5, 11.5, 13.5]);
    assert_eq!(g, vec![0.25; 16]);
    // Padding counts in the divisor: every window divides by 9.
    let (y, g) = run(&seq(&[1, 1, 3, 3], &dev), |t, x| avg_pool2d(t, x, 3, 2, 1));
    assert_eq!(
        y.to_f64_vec(),
        vec![12.0 / 9.0, 16.0 / 9.0, 24.0 / 9.0, 28.0 / 9.0]
    );
    let ninth = 1.0 / 9.0;
    let want = [1.0, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 1.0].map(|c| c * ninth);
    g.iter()
        .zip(want)
        .for_each(|(g, w)| assert!((g - w).abs() < 1e-15));
}

#[test]
fn max_pool_hand_values() {
    let dev = Device::cpu();
    let (y, g) = run(&seq(&[1, 1, 3, 3], &dev), |t, x| max_pool2d(t, x, 2, 1, 0));
    assert_eq!(y.to_f64_vec(), vec![5.0, 6.0, 8.0, 9.0]);
    assert_eq!(g, vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]);
    let (y, _) = run(&seq(&[1, 1, 3, 3], &dev), |t, x| max_pool2d(t, x, 3, 2, 1));
    assert_eq!(y.to_f64_vec(), vec![5.0, 6.0, 8.0, 9.0]);
    // Padding acts as -inf: all-negative inputs keep their own maxima.
    let neg = Tensor::from_f64(
        &(1..=9).map(|i| -f64::from(i)).collect::<Vec<_>>(),
        &[1, 1, 3, 3],
        DType::F64,
        &dev,
    )
    .unwrap()
    .with_requires_grad(true);
    let (y, g) = run(&neg, |t, x| max_pool2d(t, x, 3, 2, 1));
    assert_eq!(y.to_f64_vec(), vec![-1.0, -2.0, -4.0, -5.0]);
    assert_eq!(g, vec![1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn max_pool_routes_ties_to_the_first_maximum() {
    let dev = Device::cpu();
    let x = common::leaf(Tensor::ones(&[1, 1, 2, 4], DType::F64, &dev));
    let (y, g) = run(&x, |t, x| max_pool2d(t, x, 2, 2, 0));
    assert_eq!(y.to_f64_vec(), vec![1.0, 1.0]);
    assert_eq!(g, vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn global_avg_pool_hand_values() {
    let dev = Device::cpu();
    let (y, g) = run(&seq(&[2, 2, 2, 2], &dev), global_avg_pool);
    assert_eq!(y.shape(), &[2, 2]);
    assert_eq!(y.to_f64_vec(), vec![2.5, 6.5, 10.5, 14.5]);
    assert_eq!(g, vec![0.25; 16]);
}

#[test]
fn f32_large_batch_runs_in_parallel_and_matches() {
    // Enough planes to take the parallel path; compare with the f64 result.
    let dev = Device::cpu();
    let x64 = Tensor::randn(&[16, 32, 16, 16], DType::F64, &dev, 9).unwrap();
    let x32 = x64.to_dtype(DType::F32).unwrap();
    for (k, s, p) in [(2, 2, 0), (3, 2, 1)] {
        for max in [false, true] {
            let f = |x: &Tensor| {
                let mut tape = Tape::no_grad();
                if max {
                    max_pool2d(&mut tape, x, k, s, p)
                } else {
                    avg_pool2d(&mut tape, x, k, s, p)
                }
                .unwrap()
                .to_f64_vec()
            };
            let (a, b) = (f(&x64), f(&x32));
            a.iter()
                .zip(&b)
                .for_each(|(a, b)| assert!((a - b).abs() < 1e-5));
        }
    }
}

#[test]
fn error_paths() {
    let dev = Device::cpu();
    let x = Tensor::zeros(&[1, 2, 4, 4], DType::F64, &dev).unwrap();
    let mut tp = Tape::no_grad();
    for (name, pool) in [
        (
            "avg_pool2d",
            avg_pool2d as fn(&mut Tape, &Tensor, usize, usize, usize) -> tape::Result<Tensor>,
        ),
        ("max_pool2d", max_pool2d),
    ] {
        let invalid = |r| common::is_invalid_argument(r, name);
        let shape = |r| common::is_shape_error(r, name);
        // (kernel, stride, padding)
        for (k, s, p, why) in [
            (0, 1, 0, "kernel 0"),
            (2, 0, 0, "stride 0"),
            (3, 1, 2, "padding > kernel/2"),
            (2, 1, 2, "padding > kernel/2"),
        ] {
            assert!(invalid(pool(&mut tp, &x, k, s, p)), "{name}: {why}");
        }
        for (k, s, p, why) in [
            (5, 1, 0, "kernel larger than the input"),
            (7, 1, 1, "kernel larger than the padded input"),
        ] {
            assert!(shape(pool(&mut tp, &x, k, s, p)), "{name}: {why}");
        }
        let x3 = Tensor::zeros(&[2, 4, 4], DType::F64, &dev).unwrap();
        assert!(shape(pool(&mut tp, &x3, 2, 2, 0)), "{name}: rank 3");
        assert!(
            pool(&mut tp, &x, 6, 1, 1).is_ok(),
            "{name}: fits thanks to padding"
        );
    }
    let x3 = Tensor::zeros(&[2, 4, 4], DType::F64, &dev).unwrap();
    assert!(matches!(
        global_avg_pool(&mut tp, &x3),
        Err(Error::Shape {
            op: "global_avg_pool",
            ..
        })
    ));
    let empty = Tensor::zeros(&[2, 4, 0, 3], DType::F64, &dev).unwrap();
    assert!(matches!(
        global_avg_pool(&mut tp, &empty),
        Err(Error::Shape {
            op: "global_avg_pool",
            ..
        })
    ));
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use tape::ops;
    use tape::testing::*;
    use tape::DType;

    #[test]
    fn pooling_matches_cpu() {
        for_gpu_cases(7, 8, |dev, p, case, dtype| {
            let kernel = p.int(1, 3);
            let stride = p.int(1, 2);
            let padding = p.int(0, kernel / 2);
            let shape = [p.int(1, 3), p.int(1, 4), p.int(kernel, 9), p.int(kernel, 9)];
            let x = randn(&shape, dtype, case + 11);
            let what = format!("pool {shape:?} k{kernel} s{stride} p{padding}");
            compare_unary(dev, &format!("avg_{what}"), &x, &move |t, x| {
                ops::avg_pool2d(t, &x[0], kernel, stride, padding)
            });
            compare_unary(dev, &format!("max_{what}"), &x, &move |t, x| {
                ops::max_pool2d(t, &x[0], kernel, stride, padding)
            });
            compare_unary(dev, "global_avg_pool", &x, &|t, x| {
                ops::global_avg_pool(t, &x[0])
            });
        });
    }

    #[test]
    fn densenet_pooling_shapes_match_cpu() {
        let Some(dev) = gpu() else { return };
        // DenseNet's shapes: 2x2/2 average (transitions), 3x3/2 pad 1 max (ImageNet stem).
        let x = randn(&[2, 8, 16, 16], DType::F32, 5);
        compare_unary(&dev, "avg 2x2/2", &x, &|t, x| {
            ops::avg_pool2d(t, &x[0], 2, 2, 0)
        });
        compare_unary(&dev, "max 3x3/2 p1", &x, &|t, x| {
            ops::max_pool2d(t, &x[0], 3, 2, 1)
        });
    }
}
