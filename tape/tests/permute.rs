//! permute and transpose: finite-difference gradient checks over random ranks and
//! permutations, values against index arithmetic, a head split for attention, and the error
//! paths.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::ops::{self, permute, transpose, MAX_PERMUTE_DIMS};
use tape::{DType, Device, Error, Tape, Tensor};

/// The permutation of `0..rank` that `key` picks (Lehmer code).
fn nth_permutation(rank: usize, mut key: usize) -> Vec<usize> {
    let mut left: Vec<usize> = (0..rank).collect();
    let mut out = Vec::with_capacity(rank);
    while !left.is_empty() {
        let n = left.len();
        out.push(left.remove(key % n));
        key /= n;
    }
    out
}

proptest! {
    #![proptest_config(common::config(1024))]

    #[test]
    fn gradcheck_permute(
        shape in prop::collection::vec(1usize..4, 0..5),
        key in any::<usize>(),
        seed in 0u64..1 << 62,
    ) {
        let dev = Device::cpu();
        let dims = nth_permutation(shape.len(), key);
        let x = Tensor::randn(&shape, DType::F64, &dev, seed)?;
        let ctx = Tape::recording().context();
        let report = check_gradients(&[x], ctx, |tape, t| permute(tape, &t[0], &dims))?;
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }
}

/// `x[idx]` for a row-major tensor of `shape`.
fn at(x: &[f64], shape: &[usize], idx: &[usize]) -> f64 {
    let mut off = 0;
    for (&i, &s) in idx.iter().zip(shape) {
        off = off * s + i;
    }
    x[off]
}

#[test]
fn values_follow_the_permutation() {
    let dev = Device::cpu();
    let shape = [2, 3, 4, 5];
    let x = Tensor::randn(&shape, DType::F64, &dev, 1).unwrap();
    let xs = x.to_f64_vec();
    let dims = [2, 0, 3, 1];
    let y = permute(&mut Tape::no_grad(), &x, &dims).unwrap();
    assert_eq!(y.shape(), &[4, 2, 5, 3]);
    let ys = y.to_f64_vec();
    let yshape = y.shape().to_vec();
    for (i, &v) in ys.iter().enumerate() {
        // The output multi-index, then the input's.
        let mut rem = i;
        let mut oi = [0; 4];
        for k in (0..4).rev() {
            oi[k] = rem % yshape[k];
            rem /= yshape[k];
        }
        let mut ii = [0; 4];
        for k in 0..4 {
            ii[dims[k]] = oi[k];
        }
        assert_eq!(v, at(&xs, &shape, &ii));
    }
    // transpose(x, 1, 3) is permute [0, 3, 2, 1], and transposing twice gives x back.
    let t = transpose(&mut Tape::no_grad(), &x, 1, 3).unwrap();
    let p = permute(&mut Tape::no_grad(), &x, &[0, 3, 2, 1]).unwrap();
    assert_eq!(t.to_f64_vec(), p.to_f64_vec());
    let back = transpose(&mut Tape::no_grad(), &t, 3, 1).unwrap();
    assert_eq!(back.to_f64_vec(), xs);
    // A 2-D transpose, by hand.
    let m = Tensor::from_f64(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], DType::F64, &dev).unwrap();
    let mt = transpose(&mut Tape::no_grad(), &m, 0, 1).unwrap();
    assert_eq!(mt.shape(), &[3, 2]);
    assert_eq!(mt.to_f64_vec(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
}

#[test]
fn heads_split_and_merge_round_trip_with_gradients() {
    // [batch, seq, heads * dim] -> [batch, heads, seq, dim] and back, as attention does.
    let dev = Device::cpu();
    let (b, s, h, d) = (2, 5, 3, 4);
    let x = tape::testing::randn_leaf(&[b, s, h * d], DType::F32, &dev, 2);
    let mut tape = Tape::recording();
    let r = ops::reshape(&mut tape, &x, &[b, s, h, d]).unwrap();
    let heads = permute(&mut tape, &r, &[0, 2, 1, 3]).unwrap();
    assert_eq!(heads.shape(), &[b, h, s, d]);
    let merged = permute(&mut tape, &heads, &[0, 2, 1, 3]).unwrap();
    let y = ops::reshape(&mut tape, &merged, &[b, s, h * d]).unwrap();
    assert_eq!(y.to_f64_vec(), x.to_f64_vec());
    let seed = Tensor::randn(y.shape(), DType::F32, &dev, 3).unwrap();
    let g = tape.backward_from(&y, seed.clone()).unwrap();
    assert_eq!(g.get(&x).unwrap().to_f64_vec(), seed.to_f64_vec());
}

#[test]
fn large_tensors_on_several_threads() {
    let dev = Device::cpu();
    let x = Tensor::randn(&[16, 32, 8, 16], DType::F32, &dev, 4).unwrap();
    let y = permute(&mut Tape::no_grad(), &x, &[3, 1, 0, 2]).unwrap();
    let back = permute(&mut Tape::no_grad(), &y, &[2, 1, 3, 0]).unwrap();
    assert_eq!(back.to_f64_vec(), x.to_f64_vec());
}

#[test]
fn error_paths() {
    let dev = Device::cpu();
    let x = Tensor::zeros(&[2, 3, 4], DType::F64, &dev).unwrap();
    let mut tp = Tape::no_grad();
    let invalid = |r| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(invalid(permute(&mut tp, &x, &[0, 1])));
    assert!(invalid(permute(&mut tp, &x, &[0, 1, 1])));
    assert!(invalid(permute(&mut tp, &x, &[0, 1, 3])));
    assert!(invalid(permute(&mut tp, &x, &[0, 1, 2, 3])));
    assert!(invalid(transpose(&mut tp, &x, 0, 3)));
    assert!(invalid(transpose(&mut tp, &x, 3, 0)));
    let big = Tensor::zeros(&[1; MAX_PERMUTE_DIMS + 1], DType::F64, &dev).unwrap();
    let dims: Vec<usize> = (0..=MAX_PERMUTE_DIMS).collect();
    assert!(invalid(permute(&mut tp, &big, &dims)));
    // A scalar permutes to itself.
    let s = Tensor::full(&[], 2.5, DType::F64, &dev).unwrap();
    assert_eq!(permute(&mut tp, &s, &[]).unwrap().to_f64_vec(), vec![2.5]);
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use super::nth_permutation;
    use tape::ops;
    use tape::testing::*;

    #[test]
    fn permute_matches_cpu() {
        for_gpu_cases(61, 10, |dev, p, case, dtype| {
            let rank = p.int(1, 6);
            let shape = p.ints(rank, 1, 7);
            let dims = nth_permutation(rank, p.int(0, 1000));
            compare_unary(
                dev,
                &format!("permute {shape:?} {dims:?}"),
                &randn(&shape, dtype, case + 1),
                &move |t, x| ops::permute(t, &x[0], &dims),
            );
        });
    }
}

/// A tensor of exactly the most dimensions permute takes permutes; one more is refused.
#[test]
fn the_largest_rank_permutes_and_one_more_is_refused() {
    let dev = Device::cpu();
    let mut shape = vec![1; MAX_PERMUTE_DIMS];
    shape[0] = 2;
    shape[MAX_PERMUTE_DIMS - 1] = 3;
    let x = Tensor::randn(&shape, DType::F64, &dev, 1).unwrap();
    let mut order: Vec<usize> = (0..MAX_PERMUTE_DIMS).collect();
    order.swap(0, MAX_PERMUTE_DIMS - 1);
    let y = ops::permute(&mut Tape::no_grad(), &x, &order).unwrap();
    assert_eq!(y.shape()[0], 3);
    assert_eq!(y.shape()[MAX_PERMUTE_DIMS - 1], 2);
    let big = Tensor::zeros(&[1; MAX_PERMUTE_DIMS + 1], DType::F64, &dev).unwrap();
    let order: Vec<usize> = (0..=MAX_PERMUTE_DIMS).collect();
    assert!(ops::permute(&mut Tape::no_grad(), &big, &order).is_err());
}
