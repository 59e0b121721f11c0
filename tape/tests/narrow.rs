//! narrow and split: finite-difference gradient checks, values by hand, split pieces that
//! concatenate back to the input (and whose gradients add up), and the error paths.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::ops::{self, narrow, split};
use tape::{DType, Device, Error, Tape, Tensor};

proptest! {
    #![proptest_config(common::config(1024))]

    #[test]
    fn gradcheck_narrow(
        shape in prop::collection::vec(1usize..5, 1..4),
        pick in any::<(usize, usize, usize)>(),
        seed in 0u64..1 << 62,
    ) {
        let dev = Device::cpu();
        let dim = pick.0 % shape.len();
        let start = pick.1 % (shape[dim] + 1);
        let len = pick.2 % (shape[dim] - start + 1);
        let x = Tensor::randn(&shape, DType::F64, &dev, seed)?;
        let ctx = Tape::recording().context();
        let report = check_gradients(&[x], ctx, |tape, t| narrow(tape, &t[0], dim, start, len))?;
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }
}

#[test]
fn hand_computed_values_and_gradient() {
    let dev = Device::cpu();
    let v: Vec<f64> = (0..24).map(f64::from).collect();
    let x = common::leaf(Tensor::from_f64(&v, &[2, 3, 4], DType::F64, &dev));
    let mut tape = Tape::recording();
    let y = narrow(&mut tape, &x, 1, 1, 2).unwrap();
    assert_eq!(y.shape(), &[2, 2, 4]);
    let want: Vec<f64> = [4..12, 16..24]
        .into_iter()
        .flatten()
        .map(|i| i as f64)
        .collect();
    assert_eq!(y.to_f64_vec(), want);
    let g = tape::testing::grads_of_sum(tape, &y);
    let gw: Vec<f64> = (0..24)
        .map(|i| if (i / 4) % 3 == 0 { 0.0 } else { 1.0 })
        .collect();
    assert_eq!(g.get(&x).unwrap().to_f64_vec(), gw);
    // The last dimension, and an empty slice.
    let z = narrow(&mut Tape::no_grad(), &x, 2, 3, 1).unwrap();
    assert_eq!(z.to_f64_vec(), vec![3.0, 7.0, 11.0, 15.0, 19.0, 23.0]);
    assert_eq!(
        narrow(&mut Tape::no_grad(), &x, 0, 2, 0).unwrap().shape(),
        &[0, 3, 4]
    );
}

#[test]
fn split_pieces_concatenate_back_and_their_gradients_add_up() {
    // q, k, v out of one projection: [n, 3 * d] split along dim 1.
    let dev = Device::cpu();
    let (n, d) = (4, 5);
    let x = tape::testing::randn_leaf(&[n, 3 * d], DType::F32, &dev, 1);
    let mut tape = Tape::recording();
    let parts = split(&mut tape, &x, 1, &[d, d, d]).unwrap();
    assert_eq!(parts.len(), 3);
    assert!(parts.iter().all(|p| p.shape() == [n, d]));
    let refs: Vec<&Tensor> = parts.iter().collect();
    // concat joins along dim 1 of a rank >= 2 tensor.
    let joined = ops::concat(&mut tape, &refs).unwrap();
    assert_eq!(joined.to_f64_vec(), x.to_f64_vec());
    let seed = Tensor::randn(joined.shape(), DType::F32, &dev, 2).unwrap();
    let g = tape.backward_from(&joined, seed.clone()).unwrap();
    assert_eq!(g.get(&x).unwrap().to_f64_vec(), seed.to_f64_vec());
    // Sizes of different lengths, one of them empty.
    let parts = split(&mut Tape::no_grad(), &x, 0, &[1, 0, 3]).unwrap();
    let shapes: Vec<&[usize]> = parts.iter().map(Tensor::shape).collect();
    assert_eq!(shapes, vec![&[1, 15][..], &[0, 15], &[3, 15]]);
}

#[test]
fn error_paths() {
    let dev = Device::cpu();
    let x = Tensor::zeros(&[2, 3], DType::F64, &dev).unwrap();
    let mut tp = Tape::no_grad();
    let invalid = |r: Result<_, Error>| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(invalid(narrow(&mut tp, &x, 2, 0, 1)));
    assert!(invalid(narrow(&mut tp, &x, 1, 2, 2)));
    assert!(invalid(narrow(&mut tp, &x, 1, 4, 0)));
    assert!(invalid(narrow(&mut tp, &x, 0, 1, usize::MAX)));
    assert!(matches!(
        split(&mut tp, &x, 2, &[1]),
        Err(Error::InvalidArgument { op: "split", .. })
    ));
    assert!(matches!(
        split(&mut tp, &x, 1, &[1, 1]),
        Err(Error::Shape { op: "split", .. })
    ));
    assert!(matches!(
        split(&mut tp, &x, 1, &[2, 2]),
        Err(Error::Shape { op: "split", .. })
    ));
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use tape::ops;
    use tape::testing::*;

    #[test]
    fn narrow_matches_cpu() {
        for_gpu_cases(71, 10, |dev, p, case, dtype| {
            let rank = p.int(1, 4);
            let shape = p.ints(rank, 1, 9);
            let dim = p.int(0, rank - 1);
            let start = p.int(0, shape[dim]);
            let len = p.int(0, shape[dim] - start);
            compare_unary(
                dev,
                &format!("narrow {shape:?} dim {dim} {start}+{len}"),
                &randn(&shape, dtype, case + 1),
                &move |t, x| ops::narrow(t, &x[0], dim, start, len),
            );
        });
    }
}
