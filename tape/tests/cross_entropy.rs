//! Cross-entropy: hand-computed values and gradients, numerical stability, gradient checks and
//! every error path.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::{ops, DType, Device, Error, Tape, Tensor};

use common::TRAIN;

proptest! {
    #![proptest_config(common::config(4096))]

    #[test]
    fn gradcheck_logits(
        (n, classes, labels) in (1usize..9, 1usize..10).prop_flat_map(|(n, c)| {
            (Just(n), Just(c), prop::collection::vec(0..c, n))
        }),
        seed in 0u64..1 << 62,
    ) {
        let dev = Device::cpu();
        let logits = Tensor::randn(&[n, classes], DType::F64, &dev, seed)?;
        let logits = tape::ops::scale(&mut Tape::no_grad(), &logits, 3.0)?;
        let report = check_gradients(&[logits], TRAIN, |tape, xs| {
            ops::cross_entropy(tape, &xs[0], &labels)
        })?;
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }
}

#[test]
fn matches_hand_computed_values() {
    let dev = Device::cpu();
    let logits = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 1.0, 1.0, 1.0], &[2, 3], &dev).unwrap();
    let loss = ops::cross_entropy(&mut Tape::no_grad(), &logits, &[2, 0]).unwrap();
    let row0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 3.0;
    let row1 = 3f64.ln();
    assert_eq!(loss.shape(), &[1]);
    assert!((loss.scalar().unwrap() - (row0 + row1) / 2.0).abs() < 1e-14);

    let l32 = ops::cross_entropy(
        &mut Tape::no_grad(),
        &logits.to_dtype(DType::F32).unwrap(),
        &[2, 0],
    )
    .unwrap();
    assert_eq!(l32.dtype(), DType::F32);
    assert!((l32.scalar().unwrap() - (row0 + row1) / 2.0).abs() < 1e-6);
}

#[test]
fn gradient_is_softmax_minus_onehot_over_n_times_upstream() {
    let dev = Device::cpu();
    let logits = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 0.5, -0.5, 0.0], &[2, 3], &dev)
        .unwrap()
        .with_requires_grad(true);
    let mut tape = Tape::recording();
    let loss = ops::cross_entropy(&mut tape, &logits, &[0, 1]).unwrap();
    let scaled = ops::scale(&mut tape, &loss, 3.0).unwrap();
    let grads = tape.backward(&scaled).unwrap();
    let v = logits.to_f64_vec();
    let mut expected = Vec::new();
    for (r, label) in [(0usize, 0usize), (1, 1)] {
        let row = &v[r * 3..r * 3 + 3];
        let z: f64 = row.iter().map(|x| x.exp()).sum();
        for (j, x) in row.iter().enumerate() {
            let onehot = if j == label { 1.0 } else { 0.0 };
            expected.push(3.0 * (x.exp() / z - onehot) / 2.0);
        }
    }
    let g = grads.get(&logits).unwrap().to_f64_vec();
    for (a, b) in g.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-14, "{a} vs {b}");
    }
}

#[test]
fn is_numerically_stable() {
    let dev = Device::cpu();
    for dtype in [DType::F32, DType::F64] {
        let logits = Tensor::from_f64(
            &[1000.0, 0.0, 0.0, -1000.0, 500.0, 500.0],
            &[3, 2],
            dtype,
            &dev,
        )
        .unwrap()
        .with_requires_grad(true);
        let mut tape = Tape::recording();
        let loss = ops::cross_entropy(&mut tape, &logits, &[0, 1, 0]).unwrap();
        let expected = (0.0 + 1000.0 + 2f64.ln()) / 3.0;
        assert!(
            (loss.scalar().unwrap() - expected).abs() < 1e-4,
            "{:?}",
            loss.scalar()
        );
        let grads = tape.backward(&loss).unwrap();
        assert!(grads
            .get(&logits)
            .unwrap()
            .to_f64_vec()
            .iter()
            .all(|g| g.is_finite()));
    }
}

#[test]
fn saves_nothing_without_a_gradient() {
    let dev = Device::cpu();
    let logits = Tensor::zeros(&[2, 3], DType::F64, &dev).unwrap();
    let mut tape = Tape::recording();
    let loss = ops::cross_entropy(&mut tape, &logits, &[0, 2]).unwrap();
    assert!(tape.is_empty());
    assert!((loss.scalar().unwrap() - 3f64.ln()).abs() < 1e-15);
}

#[test]
fn errors() {
    let dev = Device::cpu();
    let ce = |shape: &[usize], labels: &[usize]| {
        let logits = Tensor::zeros(shape, DType::F64, &dev).unwrap();
        ops::cross_entropy(&mut Tape::no_grad(), &logits, labels)
    };
    assert!(matches!(ce(&[3], &[0, 0, 0]), Err(Error::Shape { .. })));
    assert!(matches!(ce(&[1, 2, 3], &[0]), Err(Error::Shape { .. })));
    assert!(matches!(ce(&[2, 3], &[0]), Err(Error::Shape { .. })));
    assert!(matches!(ce(&[2, 3], &[0, 1, 2]), Err(Error::Shape { .. })));
    assert!(matches!(
        ce(&[2, 3], &[0, 3]),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        ce(&[2, 0], &[0, 0]),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        ce(&[0, 3], &[]),
        Err(Error::InvalidArgument { .. })
    ));
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use tape::ops;
    use tape::testing::*;

    #[test]
    fn cross_entropy_matches_cpu() {
        for_gpu_cases(6, 6, |dev, p, case, dtype| {
            let (n, classes) = (p.int(1, 9), if case == 0 { 1000 } else { p.int(1, 12) });
            let logits = randn(&[n, classes], dtype, case + 7);
            let labels: Vec<usize> = (0..n).map(|i| (i * 7 + case as usize) % classes).collect();
            compare_unary(
                dev,
                &format!("cross_entropy {n}x{classes}"),
                &logits,
                &move |t, x| ops::cross_entropy(t, &x[0], &labels),
            );
        });
    }
}
