//! Concat along dim 1: values, gradient checks for 1..4 inputs of different channel counts and
//! ranks, no buffers saved for backward, and every error path.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::{ops, DType, Device, Error, Tape, Tensor};

use common::TRAIN;

proptest! {
    #![proptest_config(common::config(4096))]

    #[test]
    fn gradcheck_every_input(
        n in 1usize..4,
        channels in prop::collection::vec(1usize..4, 1..7),
        rest in prop::collection::vec(1usize..4, 0..3),
        seed in 0u64..1 << 62,
    ) {
        let dev = Device::cpu();
        let inputs: Vec<Tensor> = channels
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                let mut shape = vec![n, c];
                shape.extend(&rest);
                Tensor::randn(&shape, DType::F64, &dev, seed + k as u64)
            })
            .collect::<Result<_, _>>()?;
        let report = check_gradients(&inputs, TRAIN, |tape, xs| {
            let refs: Vec<&Tensor> = xs.iter().collect();
            ops::concat(tape, &refs)
        })?;
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }
}

#[test]
fn values_interleave_per_batch_row() {
    let dev = Device::cpu();
    let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 1, 2], &dev).unwrap();
    let b = Tensor::from_vec((10..18).map(|v| v as f32).collect(), &[2, 2, 2], &dev).unwrap();
    let y = ops::concat(&mut Tape::no_grad(), &[&a, &b]).unwrap();
    assert_eq!(y.shape(), &[2, 3, 2]);
    assert_eq!(
        y.to_vec::<f32>().unwrap(),
        vec![1.0, 2.0, 10.0, 11.0, 12.0, 13.0, 3.0, 4.0, 14.0, 15.0, 16.0, 17.0]
    );
    let single = ops::concat(&mut Tape::no_grad(), &[&a]).unwrap();
    assert_eq!(single.to_vec::<f32>().unwrap(), a.to_vec::<f32>().unwrap());
}

#[test]
fn large_inputs_match_a_hand_concat() {
    let dev = Device::cpu();
    let a = Tensor::randn(&[4, 16, 32, 32], DType::F32, &dev, 1).unwrap();
    let b = Tensor::randn(&[4, 8, 32, 32], DType::F32, &dev, 2).unwrap();
    let y = ops::concat(&mut Tape::no_grad(), &[&a, &b]).unwrap();
    let (av, bv, yv) = (
        a.to_vec::<f32>().unwrap(),
        b.to_vec::<f32>().unwrap(),
        y.to_vec::<f32>().unwrap(),
    );
    let (wa, wb) = (16 * 1024, 8 * 1024);
    for i in 0..4 {
        let row = &yv[i * (wa + wb)..(i + 1) * (wa + wb)];
        assert_eq!(&row[..wa], &av[i * wa..(i + 1) * wa]);
        assert_eq!(&row[wa..], &bv[i * wb..(i + 1) * wb]);
    }
}

#[test]
fn backward_saves_no_buffer_and_skips_inputs_without_grad() {
    let dev = Device::cpu();
    let a = tape::testing::randn_leaf(&[2, 3, 4, 4], DType::F64, &dev, 1);
    let b = Tensor::randn(&[2, 5, 4, 4], DType::F64, &dev, 2).unwrap();
    let (a_id, a_bytes) = (a.id(), a.size_in_bytes());
    let mut tape = Tape::recording();
    let y = ops::concat(&mut tape, &[&a, &b]).unwrap();
    let y2 = ops::mul(&mut tape, &y, &y.detach()).unwrap();
    let expected: Vec<f64> = a.to_f64_vec();
    let loss = ops::sum(&mut tape, &y2).unwrap();
    let before = dev.memory().current();
    drop((a, b));
    assert_eq!(dev.memory().current(), before - a_bytes - 2 * 5 * 16 * 8);
    let grads = tape.backward(&loss).unwrap();
    assert_eq!(grads.len(), 1);
    let ga = grads.get_id(a_id).unwrap();
    assert_eq!(ga.shape(), &[2, 3, 4, 4]);
    assert_eq!(ga.to_f64_vec(), expected);
}

#[test]
fn errors() {
    let dev = Device::cpu();
    let t = |shape: &[usize]| Tensor::zeros(shape, DType::F64, &dev).unwrap();
    let cat = |xs: &[&Tensor]| ops::concat(&mut Tape::no_grad(), xs);
    assert!(matches!(cat(&[]), Err(Error::InvalidArgument { .. })));
    assert!(matches!(cat(&[&t(&[3])]), Err(Error::Shape { .. })));
    assert!(matches!(
        cat(&[&t(&[2, 3]), &t(&[3, 3])]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        cat(&[&t(&[2, 3, 4]), &t(&[2, 3, 5])]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        cat(&[&t(&[2, 3, 4]), &t(&[2, 3])]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        cat(&[&t(&[2, 3]), &t(&[2, 3, 1])]),
        Err(Error::Shape { .. })
    ));
    let f32t = Tensor::zeros(&[2, 3], DType::F32, &dev).unwrap();
    assert!(matches!(
        cat(&[&t(&[2, 3]), &f32t]),
        Err(Error::DType { .. })
    ));
    let elsewhere = Tensor::zeros(&[2, 3], DType::F64, &Device::cpu()).unwrap();
    assert!(matches!(
        cat(&[&t(&[2, 3]), &elsewhere]),
        Err(Error::Device { .. })
    ));
    assert_eq!(cat(&[&t(&[2, 0]), &t(&[2, 2])]).unwrap().shape(), &[2, 2]);
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use tape::ops;
    use tape::testing::*;
    use tape::Tensor;

    /// Inputs shared by several concatenations: the later backwards add their pieces into the
    /// existing gradients in place (the `split_add` kernel), fresh pieces and added ones mixed.
    #[test]
    fn concat_adds_into_existing_gradients_as_the_cpu_does() {
        let Some(dev) = gpu() else { return };
        for dtype in DTYPES {
            let inputs = [
                randn(&[2, 3, 4, 5], dtype, 1),
                randn(&[2, 2, 4, 5], dtype, 2),
            ];
            compare(
                &dev,
                "shared concat inputs",
                &inputs,
                &[true, true],
                training(),
                &|t, x| {
                    let a = ops::concat(t, &[&x[0], &x[1]])?;
                    let b = ops::concat(t, &[&x[1], &x[0], &x[1]])?;
                    ops::concat(t, &[&b, &a])
                },
            );
        }
    }

    #[test]
    fn concat_matches_cpu_including_more_than_32_parts() {
        for_gpu_cases(5, 6, |dev, p, case, dtype| {
            let parts = if case == 0 { 41 } else { p.int(1, 6) };
            let (n, h, w) = (p.int(1, 4), p.int(1, 5), p.int(1, 5));
            let inputs: Vec<Tensor> = (0..parts)
                .map(|i| randn(&[n, p.int(1, 4), h, w], dtype, case * 100 + i as u64))
                .collect();
            let mask: Vec<bool> = (0..parts).map(|i| i % 3 != 1).collect();
            compare(
                dev,
                &format!("concat of {parts}"),
                &inputs,
                &mask,
                training(),
                &|t, x| {
                    let refs: Vec<&Tensor> = x.iter().collect();
                    ops::concat(t, &refs)
                },
            );
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(512) })]

    /// Inputs consumed by several concatenations (one of them twice): every backward after the
    /// first adds its piece in place into the gradient the input already has.
    #[test]
    fn gradcheck_inputs_shared_by_several_concats(
        n in 1usize..4,
        c0 in 1usize..4,
        c1 in 1usize..4,
        seed in 0u64..1 << 62,
    ) {
        let dev = Device::cpu();
        let inputs = vec![
            Tensor::randn(&[n, c0, 3], DType::F64, &dev, seed)?,
            Tensor::randn(&[n, c1, 3], DType::F64, &dev, seed + 1)?,
        ];
        let report = check_gradients(&inputs, TRAIN, |tape, xs| {
            let a = ops::concat(tape, &[&xs[0], &xs[1]])?;
            let b = ops::concat(tape, &[&xs[1], &xs[0], &xs[1]])?;
            ops::concat(tape, &[&b, &a])
        })?;
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }
}
