//! matmul: finite-difference gradient checks over random ranks, sizes and transposes, values
//! against a naive product (hand-computed for a small case; f32 on several threads, items in
//! parallel and GEMMs in parallel), empty and zero-inner products, and every error path.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::ops::{self, matmul, matmul_with, MatmulOptions};
use tape::{DType, Device, Error, Tape, Tensor};

fn opts(ta: bool, tb: bool) -> MatmulOptions {
    MatmulOptions {
        transpose_a: ta,
        transpose_b: tb,
    }
}

/// The shapes of `a` and `b` for leading dims `lead` and an `m x k` by `k x n` product.
fn shapes(lead: &[usize], (m, k, n): (usize, usize, usize), ta: bool, tb: bool) -> [Vec<usize>; 2] {
    let mut sa = lead.to_vec();
    sa.extend(if ta { [k, m] } else { [m, k] });
    let mut sb = lead.to_vec();
    sb.extend(if tb { [n, k] } else { [k, n] });
    [sa, sb]
}

/// `op(a) op(b)` item by item in f64, the slow obvious way.
fn naive(
    a: &[f64],
    b: &[f64],
    batch: usize,
    (m, k, n): (usize, usize, usize),
    ta: bool,
    tb: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; batch * m * n];
    for i in 0..batch {
        let (ai, bi) = (&a[i * m * k..], &b[i * k * n..]);
        for r in 0..m {
            for c in 0..n {
                out[i * m * n + r * n + c] = (0..k)
                    .map(|j| {
                        let x = if ta { ai[j * m + r] } else { ai[r * k + j] };
                        let y = if tb { bi[c * k + j] } else { bi[j * n + c] };
                        x * y
                    })
                    .sum();
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(common::config(1024))]

    #[test]
    fn gradcheck_a_and_b(
        lead in prop::collection::vec(1usize..4, 0..3),
        m in 1usize..5, k in 1usize..5, n in 1usize..5,
        ta in any::<bool>(), tb in any::<bool>(),
        seed in 0u64..1 << 62,
    ) {
        let dev = Device::cpu();
        let [sa, sb] = shapes(&lead, (m, k, n), ta, tb);
        let a = Tensor::randn(&sa, DType::F64, &dev, seed)?;
        let b = Tensor::randn(&sb, DType::F64, &dev, seed ^ 1)?;
        let ctx = Tape::recording().context();
        let report = check_gradients(&[a, b], ctx, |tape, t| {
            matmul_with(tape, &t[0], &t[1], opts(ta, tb))
        })?;
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }
}

use common::leaf_f64 as t;

#[test]
fn hand_computed_values_and_gradients() {
    let dev = Device::cpu();
    // Two items: [[1, 2], [3, 4]] x [[1, 0, 1], [0, 1, 1]] and [[0, 1], [1, 0]] x the same b.
    let a = t(&[1.0, 2.0, 3.0, 4.0, 0.0, 1.0, 1.0, 0.0], &[2, 2, 2], &dev);
    let b = t(
        &[1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0],
        &[2, 2, 3],
        &dev,
    );
    let mut tape = Tape::recording();
    let y = matmul(&mut tape, &a, &b).unwrap();
    assert_eq!(y.shape(), &[2, 2, 3]);
    assert_eq!(
        y.to_f64_vec(),
        vec![1.0, 2.0, 3.0, 3.0, 4.0, 7.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    );
    let g = tape::testing::grads_of_sum(tape, &y);
    // d sum / d a = 1 b^T: row sums of b; d sum / d b = a^T 1: column sums of a.
    assert_eq!(
        g.get(&a).unwrap().to_f64_vec(),
        vec![2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    );
    assert_eq!(
        g.get(&b).unwrap().to_f64_vec(),
        vec![4.0, 4.0, 4.0, 6.0, 6.0, 6.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    );
}

#[test]
fn transposed_operands_equal_products_of_transposed_copies() {
    let dev = Device::cpu();
    let (m, k, n) = (3, 4, 5);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let [sa, sb] = shapes(&[2], (m, k, n), ta, tb);
        let a = Tensor::randn(&sa, DType::F64, &dev, 1).unwrap();
        let b = Tensor::randn(&sb, DType::F64, &dev, 2).unwrap();
        let y = matmul_with(&mut Tape::no_grad(), &a, &b, opts(ta, tb)).unwrap();
        assert_eq!(y.shape(), &[2, m, n]);
        let want = naive(&a.to_f64_vec(), &b.to_f64_vec(), 2, (m, k, n), ta, tb);
        for (x, w) in y.to_f64_vec().iter().zip(&want) {
            assert!((x - w).abs() < 1e-12, "ta {ta} tb {tb}: {x} vs {w}");
        }
    }
}

#[test]
fn attention_scores_need_no_copy() {
    // q k^T for q, k of [batch, heads, seq, dim]: a 4-D product with k taken transposed.
    let dev = Device::cpu();
    let (q, k) = (
        Tensor::randn(&[2, 3, 4, 5], DType::F64, &dev, 3).unwrap(),
        Tensor::randn(&[2, 3, 4, 5], DType::F64, &dev, 4).unwrap(),
    );
    let s = matmul_with(&mut Tape::no_grad(), &q, &k, opts(false, true)).unwrap();
    assert_eq!(s.shape(), &[2, 3, 4, 4]);
    let want = naive(&q.to_f64_vec(), &k.to_f64_vec(), 6, (4, 5, 4), false, true);
    for (x, w) in s.to_f64_vec().iter().zip(&want) {
        assert!((x - w).abs() < 1e-12);
    }
}

#[test]
fn f32_matches_naive_product_on_several_threads() {
    let dev = Device::cpu();
    // Many small items (items over threads) and a few large ones (each GEMM over threads).
    for (batch, (m, k, n)) in [(64, (20, 30, 25)), (2, (90, 80, 70))] {
        for (ta, tb) in [(false, false), (true, true)] {
            let [sa, sb] = shapes(&[batch], (m, k, n), ta, tb);
            let a = Tensor::randn(&sa, DType::F32, &dev, 5).unwrap();
            let b = Tensor::randn(&sb, DType::F32, &dev, 6).unwrap();
            let y = matmul_with(&mut Tape::no_grad(), &a, &b, opts(ta, tb)).unwrap();
            assert_eq!(y.dtype(), DType::F32);
            let want = naive(&a.to_f64_vec(), &b.to_f64_vec(), batch, (m, k, n), ta, tb);
            for (i, (x, w)) in y.to_f64_vec().iter().zip(&want).enumerate() {
                assert!((x - w).abs() < 1e-3, "[{i}]: {x} vs {w}");
            }
        }
    }
}

#[test]
fn empty_and_zero_inner_products() {
    let dev = Device::cpu();
    let z = |s: &[usize]| Tensor::randn(s, DType::F64, &dev, 9).unwrap();
    let mut tp = Tape::no_grad();
    // k == 0: a matrix of zeros.
    let y = matmul(&mut tp, &z(&[3, 0]), &z(&[0, 2])).unwrap();
    assert_eq!(y.shape(), &[3, 2]);
    assert_eq!(y.to_f64_vec(), vec![0.0; 6]);
    // An empty batch, and empty rows.
    assert_eq!(
        matmul(&mut tp, &z(&[0, 3, 2]), &z(&[0, 2, 4]))
            .unwrap()
            .shape(),
        &[0, 3, 4]
    );
    assert_eq!(
        matmul(&mut tp, &z(&[0, 2]), &z(&[2, 4])).unwrap().shape(),
        &[0, 4]
    );
}

#[test]
fn only_requested_gradients_are_computed_and_kept() {
    let dev = Device::cpu();
    let a = t(&[1.0, 2.0], &[1, 2], &dev);
    let b = Tensor::from_f64(&[3.0, 4.0], &[2, 1], DType::F64, &dev).unwrap();
    let mut tape = Tape::recording();
    let y = matmul(&mut tape, &a, &b).unwrap();
    let loss = ops::sum(&mut tape, &y).unwrap();
    let g = tape.backward(&loss).unwrap();
    assert_eq!(g.get(&a).unwrap().to_f64_vec(), vec![3.0, 4.0]);
    assert!(g.get(&b).is_none());
    // Nothing wants a gradient: nothing is recorded.
    let mut tape = Tape::recording();
    let plain = a.detach();
    matmul(&mut tape, &plain, &b).unwrap();
    assert!(tape.is_empty());
}

#[test]
fn error_paths() {
    let dev = Device::cpu();
    let z = |s: &[usize]| Tensor::zeros(s, DType::F64, &dev).unwrap();
    let mut tp = Tape::no_grad();
    let shape = |r| matches!(r, Err(Error::Shape { op: "matmul", .. }));
    // Rank below 2, ranks that differ, batch dimensions that differ.
    assert!(shape(matmul(&mut tp, &z(&[3]), &z(&[3, 2]))));
    assert!(shape(matmul(&mut tp, &z(&[2, 3]), &z(&[3]))));
    assert!(shape(matmul(&mut tp, &z(&[1, 2, 3]), &z(&[3, 2]))));
    assert!(shape(matmul(&mut tp, &z(&[2, 2, 3]), &z(&[3, 3, 2]))));
    // Inner dimensions that differ, with and without transposes.
    assert!(shape(matmul(&mut tp, &z(&[2, 3]), &z(&[2, 3]))));
    assert!(shape(matmul_with(
        &mut tp,
        &z(&[2, 3]),
        &z(&[2, 3]),
        opts(true, true)
    )));
    assert!(shape(matmul_with(
        &mut tp,
        &z(&[2, 3]),
        &z(&[3, 2]),
        opts(true, false)
    )));
    assert!(matmul_with(&mut tp, &z(&[2, 3]), &z(&[2, 3]), opts(false, true)).is_ok());
    assert!(matmul_with(&mut tp, &z(&[2, 3]), &z(&[2, 3]), opts(true, false)).is_ok());
    let b32 = Tensor::zeros(&[3, 2], DType::F32, &dev).unwrap();
    assert!(matches!(
        matmul(&mut tp, &z(&[2, 3]), &b32),
        Err(Error::DType { op: "matmul", .. })
    ));
    let other = Device::cpu();
    let b_other = Tensor::zeros(&[3, 2], DType::F64, &other).unwrap();
    assert!(matches!(
        matmul(&mut tp, &z(&[2, 3]), &b_other),
        Err(Error::Device { op: "matmul", .. })
    ));
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use super::{opts, shapes};
    use tape::ops;
    use tape::testing::*;
    use tape::{Tape, Tensor};

    #[test]
    fn matmul_matches_cpu() {
        for_gpu_cases(11, 12, |dev, p, case, dtype| {
            let rank = p.int(0, 2);
            let lead = p.ints(rank, 1, 4);
            let (m, k, n) = (p.int(1, 33), p.int(1, 40), p.int(1, 29));
            let (ta, tb) = (p.bool(), p.bool());
            let [sa, sb] = shapes(&lead, (m, k, n), ta, tb);
            let inputs = vec![
                randn(&sa, dtype, case * 10 + 1),
                randn(&sb, dtype, case * 10 + 2),
            ];
            let f =
                move |t: &mut Tape, x: &[Tensor]| ops::matmul_with(t, &x[0], &x[1], opts(ta, tb));
            compare(
                dev,
                &format!("matmul {lead:?} {m}x{k}x{n} ta {ta} tb {tb}"),
                &inputs,
                &[true, true],
                training(),
                &f,
            );
        });
    }
}
