//! Dropout: the mask is a pure function of (seed, counter, index), replays under the same
//! context, changes with the counter, preserves the mean, is the identity in eval mode or with
//! `p == 0`, saves no buffer for backward, and rejects `p` outside [0, 1).

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::{ops, rng, Context, DType, Device, Error, Phase, Tape, Tensor};

fn ctx(seed: u64, counter: u64) -> Context {
    Context {
        training: true,
        phase: Phase::Forward,
        seed,
        counter,
        keep_batch_stats: true,
        precision: tape::Precision::F32,
    }
}

fn ones(n: usize, dev: &Device) -> Tensor {
    Tensor::ones(&[n], DType::F64, dev).unwrap()
}

proptest! {
    #![proptest_config(common::config(4096))]

    #[test]
    fn gradcheck_training(n in 1usize..5, c in 1usize..6, hw in 1usize..8, p in 0.01f64..0.9, seed in 0u64..1 << 62, counter in 0u64..1000) {
        let dev = Device::cpu();
        let x = Tensor::randn(&[n, c, hw], DType::F64, &dev, seed)?;
        let report = check_gradients(&[x], ctx(seed, counter), |tape, xs| ops::dropout(tape, &xs[0], p))?;
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }

    #[test]
    fn gradcheck_eval(n in 1usize..6, c in 1usize..8, p in 0.0f64..0.9, seed in 0u64..1 << 62) {
        let dev = Device::cpu();
        let x = Tensor::randn(&[n, c], DType::F64, &dev, seed)?;
        let eval = Context { training: false, ..ctx(seed, 0) };
        let report = check_gradients(&[x], eval, |tape, xs| ops::dropout(tape, &xs[0], p))?;
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }
}

#[test]
fn mask_is_the_counter_based_stream() {
    let dev = Device::cpu();
    let x = Tensor::randn(&[4, 50], DType::F64, &dev, 1).unwrap();
    let p = 0.4;
    let mut tape = Tape::with_context(false, ctx(11, 5));
    let y = ops::dropout(&mut tape, &x, p).unwrap();
    assert_eq!(tape.context().counter, 6);
    for (i, (xv, yv)) in x.to_f64_vec().iter().zip(y.to_f64_vec()).enumerate() {
        let keep = rng::uniform(11, 5, i as u64) >= p;
        let expected = if keep { xv * (1.0 / (1.0 - p)) } else { 0.0 };
        assert_eq!(yv, expected, "element {i}");
    }
}

#[test]
fn same_context_replays_the_mask() {
    let dev = Device::cpu();
    let x = ones(1000, &dev);
    let run = |c: Context| {
        ops::dropout(&mut Tape::with_context(false, c), &x, 0.5)
            .unwrap()
            .to_f64_vec()
    };
    assert_eq!(run(ctx(3, 2)), run(ctx(3, 2)));
    // A recompute with the context of the first pass replays it too.
    let recompute = Context {
        phase: Phase::Recompute,
        ..ctx(3, 2)
    };
    assert_eq!(run(ctx(3, 2)), run(recompute));
}

#[test]
fn different_counter_or_seed_changes_the_mask() {
    let dev = Device::cpu();
    let x = ones(1000, &dev);
    let mut tape = Tape::with_context(false, ctx(3, 0));
    let a = ops::dropout(&mut tape, &x, 0.5).unwrap().to_f64_vec();
    let b = ops::dropout(&mut tape, &x, 0.5).unwrap().to_f64_vec();
    assert_eq!(tape.context().counter, 2);
    assert_ne!(a, b);
    let c = ops::dropout(&mut Tape::with_context(false, ctx(4, 0)), &x, 0.5)
        .unwrap()
        .to_f64_vec();
    assert_ne!(a, c);
}

#[test]
fn identity_when_p_is_zero_or_in_eval() {
    let dev = Device::cpu();
    let x = tape::testing::randn_leaf(&[3, 4], DType::F32, &dev, 2);
    let mut tape = Tape::recording().with_seed(9);
    let y = ops::dropout(&mut tape, &x, 0.0).unwrap();
    assert_eq!(y.to_f64_vec(), x.to_f64_vec());
    assert_eq!(tape.context().counter, 0);
    let mut eval = Tape::recording().training(false);
    let z = ops::dropout(&mut eval, &y, 0.7).unwrap();
    assert_eq!(z.to_f64_vec(), x.to_f64_vec());
    assert_eq!(eval.context().counter, 0);
    let loss = ops::sum(&mut eval, &z).unwrap();
    let grads = eval.backward(&loss).unwrap();
    assert!(grads.get(&y).is_some());
    let grads = tape::testing::grads_of_sum(tape, &y);
    assert_eq!(grads.get(&x).unwrap().to_f64_vec(), vec![1.0; 12]);
}

#[test]
fn mean_is_preserved_and_fraction_dropped_is_p() {
    let dev = Device::cpu();
    for dtype in [DType::F32, DType::F64] {
        let x = Tensor::ones(&[100_000], dtype, &dev).unwrap();
        for p in [0.1, 0.3, 0.5, 0.8] {
            let y = ops::dropout(&mut Tape::with_context(false, ctx(42, 0)), &x, p).unwrap();
            let v = y.to_f64_vec();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let dropped = v.iter().filter(|&&e| e == 0.0).count() as f64 / v.len() as f64;
            assert!((mean - 1.0).abs() < 0.01, "p {p}: mean {mean}");
            assert!((dropped - p).abs() < 0.01, "p {p}: dropped {dropped}");
        }
    }
}

#[test]
fn backward_regenerates_the_mask_and_saves_no_buffer() {
    let dev = Device::cpu();
    let x = common::leaf(Tensor::ones(&[64, 64], DType::F32, &dev));
    let x_id = x.id();
    let mut tape = Tape::with_context(true, ctx(8, 3));
    let y = ops::dropout(&mut tape, &x, 0.25).unwrap();
    let mask: Vec<f64> = y
        .to_f64_vec()
        .iter()
        .map(|&v| if v == 0.0 { 0.0 } else { 1.0 / 0.75 })
        .collect();
    let loss = ops::sum(&mut tape, &y).unwrap();
    drop((x, y));
    // Only the loss is left on the device: the tape's closures hold no buffer.
    assert_eq!(dev.memory().current(), loss.size_in_bytes());
    let grads = tape.backward(&loss).unwrap();
    let g = grads.get_id(x_id).unwrap().to_f64_vec();
    for (a, b) in g.iter().zip(&mask) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

#[test]
fn p_outside_unit_interval_is_invalid() {
    let dev = Device::cpu();
    let x = ones(10, &dev);
    for p in [-0.1, 1.0, 1.5, f64::NAN, f64::INFINITY] {
        for training in [true, false] {
            let mut tape = Tape::no_grad().training(training);
            let r = ops::dropout(&mut tape, &x, p);
            assert!(matches!(r, Err(Error::InvalidArgument { .. })), "p {p}");
            assert_eq!(tape.context().counter, 0);
        }
    }
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use tape::ops;
    use tape::testing::*;
    use tape::{Device, Tape, Tensor};

    #[test]
    fn dropout_masks_are_identical() {
        let Some(dev) = gpu() else { return };
        for dtype in DTYPES {
            for (p, seed) in [(0.2, 1u64), (0.5, 99), (0.9, 12345)] {
                let ones = Tensor::ones(&[3, 5, 7, 11], dtype, &Device::cpu()).unwrap();
                let run = |d: &Device| {
                    let mut tape = Tape::recording().with_seed(seed);
                    tape.next_random_stream(); // a non-zero counter
                    let x = ones.to_device(d).unwrap();
                    ops::dropout(&mut tape, &x, p)
                        .unwrap()
                        .try_to_f64_vec()
                        .unwrap()
                };
                let (a, b) = (run(&Device::cpu()), run(&dev));
                assert_eq!(a, b, "dropout mask p={p} seed={seed} {dtype:?}");
            }
            let x = randn(&[4, 6, 5], dtype, 3);
            compare_unary(&dev, "dropout", &x, &|t, x| ops::dropout(t, &x[0], 0.3));
        }
    }
}
