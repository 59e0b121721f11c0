//! Shared block storage: appended channels read back exactly; a channel prefix through the fused
//! batch norm + ReLU equals the same op over separate parts, bit for bit, values and gradients;
//! finite-difference checks through appends, prefixes and gathers; the storage's gradient is
//! freed by the end of backward; bad arguments are errors.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::ops::{self, BatchNormOptions, RunningStats};
use tape::BlockStorage;
use tape::{DType, Device, Error, Tape, Tensor};

fn randn(dev: &Device, shape: &[usize], seed: u64) -> Tensor {
    tape::testing::randn_leaf(shape, DType::F64, dev, seed)
}

#[test]
fn appended_channels_read_back_and_gather_concatenates() {
    let dev = Device::cpu();
    let (a, b) = (randn(&dev, &[2, 3, 2, 2], 1), randn(&dev, &[2, 1, 2, 2], 2));
    let s = BlockStorage::new([2, 5, 2, 2], DType::F64, &dev).unwrap();
    let mut tape = Tape::no_grad();
    assert_eq!(s.append(&mut tape, &a).unwrap(), 0);
    assert_eq!(s.append(&mut tape, &b).unwrap(), 3);
    assert_eq!(s.channels(), 4);
    assert_eq!(s.read(3, 1).unwrap().to_f64_vec(), b.to_f64_vec());
    assert_eq!(s.read(0, 3).unwrap().to_f64_vec(), a.to_f64_vec());
    let cat = ops::concat(&mut tape, &[&a, &b]).unwrap();
    assert_eq!(
        s.gather(&mut tape, 4).unwrap().to_f64_vec(),
        cat.to_f64_vec()
    );
}

/// The fused op over a prefix of a storage against the same op over the parts: output, part
/// gradients, weight and bias gradients and running statistics, bit for bit.
#[test]
fn prefix_equals_parts_bit_for_bit() {
    for training in [true, false] {
        let dev = Device::cpu();
        let xs = [
            randn(&dev, &[3, 2, 3, 3], 1),
            randn(&dev, &[3, 4, 3, 3], 2),
            randn(&dev, &[3, 1, 3, 3], 3),
        ];
        let c = 6;
        let w = common::leaf(Tensor::rand_uniform(&[c], 0.5, 1.5, DType::F64, &dev, 4));
        let b = randn(&dev, &[c], 5);
        let opts = BatchNormOptions::default();
        let run = |prefix: bool| -> Vec<Vec<f64>> {
            let rs = RunningStats::new(c, DType::F64, &dev).unwrap();
            let mut tape = Tape::recording().training(training);
            let out = if prefix {
                let s = BlockStorage::new([3, 7, 3, 3], DType::F64, &dev).unwrap();
                for x in &xs {
                    s.append(&mut tape, x).unwrap();
                }
                ops::batch_norm_relu_prefix(&mut tape, &s, c, &w, &b, &rs, opts).unwrap()
            } else {
                ops::batch_norm_relu(&mut tape, &[&xs[0], &xs[1]], &w, &b, &rs, opts).unwrap()
            };
            let proj = Tensor::randn(out.shape(), DType::F64, &dev, 9).unwrap();
            let weighted = ops::mul(&mut tape, &out, &proj).unwrap();
            let grads = tape::testing::grads_of_sum(tape, &weighted);
            let mut v = vec![out.to_f64_vec()];
            for t in [&xs[0], &xs[1], &w, &b] {
                v.push(grads.get(t).unwrap().to_f64_vec());
            }
            // The appended but unread third part: no gradient (parts) or zeros (storage).
            let third = grads.get(&xs[2]).map(|g| g.to_f64_vec());
            assert!(
                third.as_ref().is_none_or(|g| g.iter().all(|&v| v == 0.0)),
                "{third:?}"
            );
            v.extend([rs.mean().to_f64_vec(), rs.var().to_f64_vec()]);
            v
        };
        let (p, q) = (run(true), run(false));
        for (i, (a, b)) in p.iter().zip(&q).enumerate() {
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(a), bits(b), "item {i}, training {training}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Gradients through appends, two prefixes of different widths (as two dense layers read
    /// them) and a gather (as a naive layer or a transition reads them).
    #[test]
    fn gradcheck_through_storage(
        c0 in 1usize..4,
        c1 in 1usize..3,
        n in 1usize..3,
        training in any::<bool>(),
        seed in 0u64..1 << 62,
    ) {
        let dev = Device::cpu();
        let inputs = vec![
            randn(&dev, &[n, c0, 3, 3], seed),
            randn(&dev, &[n, c1, 3, 3], seed + 1),
            Tensor::rand_uniform(&[c0], 0.5, 1.5, DType::F64, &dev, seed + 2).unwrap(),
            randn(&dev, &[c0], seed + 3),
            Tensor::rand_uniform(&[c0 + c1], 0.5, 1.5, DType::F64, &dev, seed + 4).unwrap(),
            randn(&dev, &[c0 + c1], seed + 5),
        ];
        let run = |t: &mut Tape, xs: &[Tensor]| {
            let opts = BatchNormOptions::default();
            let d = xs[0].device();
            let s = BlockStorage::new([n, c0 + c1 + 1, 3, 3], DType::F64, d)?;
            s.append(t, &xs[0])?;
            let rs0 = RunningStats::new(c0, DType::F64, d)?;
            let h0 = ops::batch_norm_relu_prefix(t, &s, c0, &xs[2], &xs[3], &rs0, opts)?;
            s.append(t, &xs[1])?;
            let rs1 = RunningStats::new(c0 + c1, DType::F64, d)?;
            let h1 = ops::batch_norm_relu_prefix(t, &s, c0 + c1, &xs[4], &xs[5], &rs1, opts)?;
            let all = s.gather(t, c0 + c1)?;
            ops::concat(t, &[&h1, &all, &h0])
        };
        // The ReLU's kink: a pre-activation within the finite difference of 0 has no gradient.
        let pre = |x: &Tensor, w: &Tensor, b: &Tensor| {
            let mut t = Tape::no_grad().training(training);
            let rs = RunningStats::new(w.numel(), DType::F64, &dev).unwrap();
            let o = BatchNormOptions::default();
            ops::batch_norm2d(&mut t, x, w, b, &rs, o).unwrap().to_f64_vec()
        };
        let both = ops::concat(&mut Tape::no_grad(), &[&inputs[0], &inputs[1]]).unwrap();
        let kinks = pre(&inputs[0], &inputs[2], &inputs[3])
            .into_iter()
            .chain(pre(&both, &inputs[4], &inputs[5]));
        prop_assume!(kinks.map(f64::abs).all(|v| v > 1e-3));
        let ctx = Tape::recording().training(training).context();
        let r = check_gradients(&inputs, ctx, run).unwrap();
        prop_assert!(r.max_rel_error <= 1e-6, "{:?}", r);
    }
}

/// After backward, nothing of the storage is left: its buffer and its gradient are freed with
/// the tape, and only the leaf gradients remain.
#[test]
fn storage_and_its_gradient_are_freed_by_the_end_of_backward() {
    let dev = Device::cpu();
    let x = tape::testing::randn_leaf(&[2, 3, 4, 4], DType::F32, &dev, 1);
    let (w, b) = (
        common::leaf(Tensor::ones(&[3], DType::F32, &dev)),
        common::leaf(Tensor::zeros(&[3], DType::F32, &dev)),
    );
    let rs = RunningStats::new(3, DType::F32, &dev).unwrap();
    let before = dev.memory().current();
    let mut tape = Tape::recording();
    let s = BlockStorage::new([2, 8, 4, 4], DType::F32, &dev).unwrap();
    s.append(&mut tape, &x).unwrap();
    let h = ops::batch_norm_relu_prefix(&mut tape, &s, 3, &w, &b, &rs, BatchNormOptions::default())
        .unwrap();
    drop(s);
    let loss = ops::sum(&mut tape, &h).unwrap();
    let grads = tape.backward(&loss).unwrap();
    drop((h, loss));
    let leaf_grads: usize = [&x, &w, &b]
        .iter()
        .map(|t| grads.get(t).unwrap().size_in_bytes())
        .sum();
    assert_eq!(grads.len(), 3);
    assert_eq!(dev.memory().current(), before + leaf_grads);
}

#[test]
fn bad_arguments_are_errors() {
    let dev = Device::cpu();
    let s = BlockStorage::new([2, 4, 3, 3], DType::F32, &dev).unwrap();
    let mut t = Tape::no_grad();
    let x = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &dev).unwrap();
    let shape_err =
        |r: tape::Result<usize>| assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    shape_err(s.append(&mut t, &x(&[2, 5, 3, 3]))); // over capacity
    shape_err(s.append(&mut t, &x(&[1, 2, 3, 3]))); // batch
    shape_err(s.append(&mut t, &x(&[2, 2, 3, 4]))); // image size
    assert!(s
        .append(
            &mut t,
            &Tensor::zeros(&[2, 2, 3, 3], DType::F64, &dev).unwrap()
        )
        .is_err());
    assert!(s.append(&mut t, &x(&[2, 3])).is_err());
    assert!(s.gather(&mut t, 1).is_err(), "nothing appended yet");
    s.append(&mut t, &x(&[2, 2, 3, 3])).unwrap();
    assert!(s.gather(&mut t, 3).is_err(), "past the filled channels");
    assert!(s.gather(&mut t, 0).is_err());
    assert!(s.read(1, 2).is_err());
    let (w, b) = (x(&[3]), x(&[3]));
    let rs = RunningStats::new(3, DType::F32, &dev).unwrap();
    let opts = BatchNormOptions::default();
    assert!(ops::batch_norm_relu_prefix(&mut t, &s, 3, &w, &b, &rs, opts).is_err());
    let rs2 = RunningStats::new(2, DType::F32, &dev).unwrap();
    assert!(
        ops::batch_norm_relu_prefix(&mut t, &s, 2, &w, &b, &rs2, opts).is_err(),
        "affine of 3 for 2 channels"
    );
}

mod on_gpu {
    use tape::ops::{self, BatchNormOptions};
    use tape::testing::*;
    use tape::BlockStorage;
    use tape::Tape;

    /// Appends, two prefixes through the fused op (cuDNN over a strided channel prefix, its
    /// input gradient added into the storage's gradient) and a gather, against the CPU.
    #[test]
    fn block_storage_matches_cpu() {
        compare_two_parts("block storage", |t, x, dtype| {
            let d = x[0].device();
            let opts = BatchNormOptions::default();
            let s = BlockStorage::new([3, 6, 4, 4], dtype, d)?;
            // The fused op over the first `c` channels, its weight and bias from `seed`.
            let prefix = |t: &mut Tape, c: usize, seed: u64| {
                let w = randn(&[c], dtype, seed).to_device(d)?;
                let b = randn(&[c], dtype, seed + 1).to_device(d)?;
                let rs = running_stats(c, dtype, d);
                ops::batch_norm_relu_prefix(t, &s, c, &w, &b, &rs, opts)
            };
            s.append(t, &x[0])?;
            let h0 = prefix(t, 2, 41)?;
            s.append(t, &x[1])?;
            let h1 = prefix(t, 5, 43)?;
            let all = s.gather(t, 5)?;
            ops::concat(t, &[&h1, &all, &h0])
        });
    }
}
