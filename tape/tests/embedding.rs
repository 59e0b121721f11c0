//! embedding: finite-difference gradient checks with repeated indices, gathered values, the
//! scatter-add of repeated indices by hand, the same bits on 1 and 3 threads, empty lookups,
//! and every error path.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::ops::{self, embedding};
use tape::{DType, Device, Tape, Tensor};

proptest! {
    #![proptest_config(common::config(1024))]

    #[test]
    fn gradcheck_weight(
        (vocab, indices) in (1usize..7).prop_flat_map(|v| {
            (Just(v), prop::collection::vec(0..v, 0..12))
        }),
        d in 1usize..5,
        seed in 0u64..1 << 62,
    ) {
        let dev = Device::cpu();
        let w = Tensor::randn(&[vocab, d], DType::F64, &dev, seed)?;
        let n = indices.len();
        let ctx = Tape::recording().context();
        let report = check_gradients(&[w], ctx, |tape, t| embedding(tape, &t[0], &indices, &[n]))?;
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }
}

#[test]
fn gathers_rows_into_the_index_shape() {
    let dev = Device::cpu();
    let w = Tensor::from_f64(
        &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0],
        &[3, 2],
        DType::F64,
        &dev,
    )
    .unwrap();
    let y = embedding(&mut Tape::no_grad(), &w, &[2, 0, 2, 1, 1, 0], &[2, 3]).unwrap();
    assert_eq!(y.shape(), &[2, 3, 2]);
    assert_eq!(
        y.to_f64_vec(),
        vec![20.0, 21.0, 0.0, 1.0, 20.0, 21.0, 10.0, 11.0, 10.0, 11.0, 0.0, 1.0]
    );
    // A scalar shape: one row, shaped [d].
    let y = embedding(&mut Tape::no_grad(), &w, &[1], &[]).unwrap();
    assert_eq!((y.shape(), y.to_f64_vec()), (&[2][..], vec![10.0, 11.0]));
}

#[test]
fn repeated_indices_add_their_gradients() {
    let dev = Device::cpu();
    let w = common::leaf(Tensor::zeros(&[4, 2], DType::F64, &dev));
    let mut tape = Tape::recording();
    let y = embedding(&mut tape, &w, &[1, 3, 1, 1], &[4]).unwrap();
    let seed = Tensor::from_f64(
        &[1.0, 2.0, 10.0, 20.0, 100.0, 200.0, 1000.0, 2000.0],
        &[4, 2],
        DType::F64,
        &dev,
    )
    .unwrap();
    let g = tape.backward_from(&y, seed).unwrap();
    // Row 1 takes positions 0, 2 and 3; row 3 position 1; rows 0 and 2 nothing.
    assert_eq!(
        g.get(&w).unwrap().to_f64_vec(),
        vec![0.0, 0.0, 1101.0, 2202.0, 0.0, 0.0, 10.0, 20.0]
    );
}

#[test]
fn the_weight_gradient_has_the_same_bits_on_1_and_3_threads() {
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let dev = Device::cpu();
                let (vocab, d, n) = (50, 64, 4096);
                let w = tape::testing::randn_leaf(&[vocab, d], DType::F32, &dev, 1);
                // Skewed indices: a few rows take most positions.
                let indices: Vec<usize> = (0..n)
                    .map(|i| (i * i / 7 + i) % vocab % (1 + i % 9))
                    .collect();
                let mut tape = Tape::recording();
                let y = embedding(&mut tape, &w, &indices, &[8, n / 8]).unwrap();
                let seed = Tensor::randn(y.shape(), DType::F32, &dev, 2).unwrap();
                let g = tape.backward_from(&y, seed).unwrap();
                let bits = |t: &Tensor| {
                    t.to_f64_vec()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>()
                };
                (bits(&y), bits(g.get(&w).unwrap()))
            })
    };
    assert_eq!(run(1), run(3));
}

#[test]
fn empty_lookups_and_nothing_saved_without_a_gradient() {
    let dev = Device::cpu();
    let w = tape::testing::randn_leaf(&[3, 2], DType::F64, &dev, 1);
    let mut tape = Tape::recording();
    let y = embedding(&mut tape, &w, &[], &[0, 5]).unwrap();
    assert_eq!(y.shape(), &[0, 5, 2]);
    let loss = ops::sum(&mut tape, &y).unwrap();
    let g = tape.backward(&loss).unwrap();
    assert_eq!(g.get(&w).unwrap().to_f64_vec(), vec![0.0; 6]);
    let mut tape = Tape::recording();
    embedding(&mut tape, &w.detach(), &[0, 1], &[2]).unwrap();
    assert!(tape.is_empty());
}

#[test]
fn error_paths() {
    let dev = Device::cpu();
    let z = |s: &[usize]| Tensor::zeros(s, DType::F64, &dev).unwrap();
    let w = z(&[3, 2]);
    let mut tp = Tape::no_grad();
    let shape = |r| common::is_shape_error(r, "embedding");
    assert!(shape(embedding(&mut tp, &z(&[6]), &[0], &[1])));
    assert!(shape(embedding(&mut tp, &z(&[3, 2, 1]), &[0], &[1])));
    assert!(shape(embedding(&mut tp, &w, &[0, 1], &[3])));
    assert!(shape(embedding(&mut tp, &w, &[0, 1], &[])));
    let invalid = |r| common::is_invalid_argument(r, "embedding");
    assert!(invalid(embedding(&mut tp, &w, &[0, 3], &[2])));
    assert!(invalid(embedding(&mut tp, &z(&[0, 2]), &[0], &[1])));
    // A gradient of the wrong dtype is a typed error, not a panic.
    let wg = w.clone().with_requires_grad(true);
    tape::testing::assert_wrong_dtype_seed_fails(|t| embedding(t, &wg, &[0, 2], &[2]));
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use tape::ops;
    use tape::testing::*;

    #[test]
    fn embedding_matches_cpu() {
        for_gpu_cases(51, 8, |dev, p, case, dtype| {
            let (vocab, d) = (p.int(1, 40), p.int(1, 300));
            let shape = [p.int(0, 5), p.int(1, 30)];
            let n = shape[0] * shape[1];
            // Repeats: indices drawn from a small range of the vocabulary.
            let hot = p.int(1, vocab);
            let indices = p.ints(n, 0, hot - 1);
            compare_unary(
                dev,
                &format!("embedding {vocab}x{d} {shape:?}"),
                &randn(&[vocab, d], dtype, case + 1),
                &move |t, x| ops::embedding(t, &x[0], &indices, &shape),
            );
        });
    }
}
