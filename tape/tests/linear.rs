//! linear: finite-difference gradient checks over random sizes, hand-computed values and
//! gradients, a larger f32 case against a naive product, and every error path.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::ops::linear;
use tape::{DType, Device, Error, Tape, Tensor};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn gradcheck_x_weight_bias(n in 1..=8usize, i in 1..=8usize, o in 1..=8usize, seed in any::<u64>()) {
        let dev = Device::cpu();
        let x = Tensor::randn(&[n, i], DType::F64, &dev, seed).unwrap();
        let w = Tensor::randn(&[o, i], DType::F64, &dev, seed ^ 1).unwrap();
        let b = Tensor::randn(&[o], DType::F64, &dev, seed ^ 2).unwrap();
        let ctx = Tape::recording().context();
        let report = check_gradients(&[x.clone(), w.clone(), b], ctx, |tape, t| {
            linear(tape, &t[0], &t[1], Some(&t[2]))
        })
        .unwrap();
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
        let report = check_gradients(&[x, w], ctx, |tape, t| linear(tape, &t[0], &t[1], None)).unwrap();
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }
}

use common::leaf_f64 as t;

#[test]
fn hand_computed_values_and_gradients() {
    let dev = Device::cpu();
    let x = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2], &dev);
    let w = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2], &dev);
    let b = t(&[0.5, -1.0, 2.0], &[3], &dev);
    let mut tape = Tape::recording();
    let y = linear(&mut tape, &x, &w, Some(&b)).unwrap();
    assert_eq!(y.shape(), &[2, 3]);
    assert_eq!(y.to_f64_vec(), vec![1.5, 1.0, 5.0, 3.5, 3.0, 9.0]);
    let g = tape::testing::grads_of_sum(tape, &y);
    assert_eq!(g.get(&x).unwrap().to_f64_vec(), vec![2.0; 4]);
    assert_eq!(
        g.get(&w).unwrap().to_f64_vec(),
        vec![4.0, 6.0, 4.0, 6.0, 4.0, 6.0]
    );
    assert_eq!(g.get(&b).unwrap().to_f64_vec(), vec![2.0; 3]);
}

#[test]
fn only_requested_gradients_are_computed() {
    let dev = Device::cpu();
    let x = t(&[1.0, 2.0], &[1, 2], &dev);
    let w = Tensor::from_f64(&[3.0, 4.0], &[1, 2], DType::F64, &dev).unwrap();
    let mut tape = Tape::recording();
    let y = linear(&mut tape, &x, &w, None).unwrap();
    let g = tape::testing::grads_of_sum(tape, &y);
    assert_eq!(g.get(&x).unwrap().to_f64_vec(), vec![3.0, 4.0]);
    assert!(g.get(&w).is_none());
}

#[test]
fn f32_matches_naive_product() {
    // Big enough that the GEMM runs on several threads.
    let (n, i, o) = (70, 90, 80);
    let dev = Device::cpu();
    let x = Tensor::randn(&[n, i], DType::F32, &dev, 1).unwrap();
    let w = Tensor::randn(&[o, i], DType::F32, &dev, 2).unwrap();
    let b = Tensor::randn(&[o], DType::F32, &dev, 3).unwrap();
    let y = linear(&mut Tape::no_grad(), &x, &w, Some(&b))
        .unwrap()
        .to_f64_vec();
    let (xs, ws, bs) = (x.to_f64_vec(), w.to_f64_vec(), b.to_f64_vec());
    for r in 0..n {
        for c in 0..o {
            let want: f64 = bs[c] + (0..i).map(|k| xs[r * i + k] * ws[c * i + k]).sum::<f64>();
            assert!(
                (y[r * o + c] - want).abs() < 1e-3,
                "[{r}, {c}]: {} vs {want}",
                y[r * o + c]
            );
        }
    }
}

#[test]
fn error_paths() {
    let dev = Device::cpu();
    let z = |s: &[usize]| Tensor::zeros(s, DType::F64, &dev).unwrap();
    let (x, w) = (z(&[2, 3]), z(&[4, 3]));
    let mut tp = Tape::no_grad();
    let shape = |r| matches!(r, Err(Error::Shape { op: "linear", .. }));
    assert!(shape(linear(&mut tp, &z(&[2, 3, 1]), &w, None)));
    assert!(shape(linear(&mut tp, &z(&[3]), &w, None)));
    assert!(shape(linear(&mut tp, &x, &z(&[4, 2]), None)));
    assert!(shape(linear(&mut tp, &x, &z(&[12]), None)));
    assert!(shape(linear(&mut tp, &x, &w, Some(&z(&[3])))));
    assert!(shape(linear(&mut tp, &x, &w, Some(&z(&[4, 1])))));
    let w32 = Tensor::zeros(&[4, 3], DType::F32, &dev).unwrap();
    let b32 = Tensor::zeros(&[4], DType::F32, &dev).unwrap();
    for (w, b) in [(&w32, None), (&w, Some(&b32))] {
        let r = linear(&mut tp, &x, w, b);
        assert!(matches!(r, Err(Error::DType { .. })));
    }
    let other = Device::cpu();
    let w_other = Tensor::zeros(&[4, 3], DType::F64, &other).unwrap();
    let b_other = Tensor::zeros(&[4], DType::F64, &other).unwrap();
    for (w, b) in [(&w_other, None), (&w, Some(&b_other))] {
        let r = linear(&mut tp, &x, w, b);
        assert!(matches!(r, Err(Error::Device { .. })));
    }
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use tape::ops;
    use tape::testing::*;
    use tape::{Tape, Tensor};

    #[test]
    fn linear_matches_cpu() {
        for_gpu_cases(2, 10, |dev, p, case, dtype| {
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
                dev,
                &format!("linear {n}x{i}->{o} bias{bias}"),
                &inputs,
                &mask,
                training(),
                &f,
            );
        });
    }
}
