//! layer_norm: finite-difference gradient checks with and without weight and bias, values and
//! gradients against PyTorch, normalised rows on several threads, what backward keeps, and
//! every error path.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::ops::{self, layer_norm};
use tape::{DType, Device, Error, Tape, Tensor};

proptest! {
    #![proptest_config(common::config(1024))]

    #[test]
    fn gradcheck_x_weight_bias(
        lead in prop::collection::vec(1usize..4, 0..3),
        d in 1usize..7,
        affine in 0usize..4,
        eps in 1e-5f64..0.1,
        seed in 0u64..1 << 62,
    ) {
        let dev = Device::cpu();
        let mut shape = lead.clone();
        shape.push(d);
        let x = Tensor::randn(&shape, DType::F64, &dev, seed)?;
        let w = Tensor::randn(&[d], DType::F64, &dev, seed ^ 1)?;
        let b = Tensor::randn(&[d], DType::F64, &dev, seed ^ 2)?;
        let (with_w, with_b) = (affine & 1 == 1, affine & 2 == 2);
        let mut inputs = vec![x];
        if with_w { inputs.push(w); }
        if with_b { inputs.push(b); }
        let ctx = Tape::recording().context();
        let report = check_gradients(&inputs, ctx, |tape, t| {
            let w = with_w.then(|| &t[1]);
            let b = with_b.then(|| &t[if with_w { 2 } else { 1 }]);
            layer_norm(tape, &t[0], w, b, eps)
        })?;
        prop_assert!(report.max_rel_error <= 1e-6, "{:?}", report);
    }
}

use common::leaf_f64 as t;

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "[{i}]: {x} vs {y}");
    }
}

#[test]
fn values_and_gradients_match_pytorch() {
    let dev = Device::cpu();
    // torch.nn.functional.layer_norm(x, (3,), w, b, 1e-5) and its backward for upstream g
    // (PyTorch 2.15, float64).
    let x = t(&[1.0, 2.0, 4.0, -1.0, 0.5, 3.0], &[2, 3], &dev);
    let w = t(&[0.5, -1.0, 2.0], &[3], &dev);
    let b = t(&[0.1, 0.2, -0.3], &[3], &dev);
    let g = Tensor::from_f64(&[1.0, -2.0, 0.5, 0.3, 0.7, -1.1], &[2, 3], DType::F64, &dev).unwrap();
    let mut tape = Tape::recording();
    let y = layer_norm(&mut tape, &x, Some(&w), Some(&b), 1e-5).unwrap();
    close(
        &y.to_f64_vec(),
        &[
            -0.43452076572514886,
            0.46726038286257454,
            2.372603828625744,
            -0.4555828790463038,
            0.4020301378350195,
            2.326391791855255,
        ],
        1e-13,
    );
    let grads = tape.backward_from(&y, g).unwrap();
    close(
        &grads.get(&x).unwrap().to_f64_vec(),
        &[
            -0.4581611472191036,
            0.6872408617829473,
            -0.22907971456384335,
            -0.007728341795505023,
            0.012369629071386834,
            -0.004641287275881867,
        ],
        1e-13,
    );
    close(
        &grads.get(&w).unwrap().to_f64_vec(),
        &[-1.40239125887808, 0.3930996692406355, -0.776364528363954],
        1e-13,
    );
    close(
        &grads.get(&b).unwrap().to_f64_vec(),
        &[1.3, -1.3, -0.6],
        1e-13,
    );
}

#[test]
fn rows_are_normalised_on_several_threads_in_f32() {
    let dev = Device::cpu();
    let (rows, d) = (600, 96);
    let x = Tensor::randn(&[4, rows / 4, d], DType::F64, &dev, 1).unwrap();
    let x = ops::scale(&mut Tape::no_grad(), &x, 3.0).unwrap();
    let x32 = x.to_dtype(DType::F32).unwrap();
    let y = layer_norm(&mut Tape::no_grad(), &x32, None, None, 1e-5).unwrap();
    assert_eq!((y.shape(), y.dtype()), (x.shape(), DType::F32));
    let want = layer_norm(
        &mut Tape::no_grad(),
        &x32.to_dtype(DType::F64).unwrap(),
        None,
        None,
        1e-5,
    )
    .unwrap()
    .to_f64_vec();
    let y = y.to_f64_vec();
    close(&y, &want, 1e-6);
    for row in y.chunks(d) {
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
        assert!(
            mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-4,
            "mean {mean} var {var}"
        );
    }
}

#[test]
fn a_constant_row_normalises_to_zero_and_takes_the_bias() {
    let dev = Device::cpu();
    let x = t(&[2.0, 2.0, 2.0], &[1, 3], &dev);
    let b = t(&[0.5, 0.0, -0.5], &[3], &dev);
    let w = t(&[3.0, 3.0, 3.0], &[3], &dev);
    let y = layer_norm(&mut Tape::no_grad(), &x, Some(&w), Some(&b), 1e-5).unwrap();
    assert_eq!(y.to_f64_vec(), vec![0.5, 0.0, -0.5]);
}

#[test]
fn only_requested_gradients_and_nothing_when_none_is_wanted() {
    let dev = Device::cpu();
    let x = Tensor::randn(&[3, 4], DType::F64, &dev, 2).unwrap();
    let w = Tensor::randn(&[4], DType::F64, &dev, 3).unwrap();
    let b = t(&[0.0; 4], &[4], &dev);
    // Only the bias: its gradient is the column sums of the upstream gradient.
    let mut tape = Tape::recording();
    let y = layer_norm(&mut tape, &x, Some(&w), Some(&b), 1e-5).unwrap();
    let loss = ops::sum(&mut tape, &y).unwrap();
    let g = tape.backward(&loss).unwrap();
    assert_eq!(g.get(&b).unwrap().to_f64_vec(), vec![3.0; 4]);
    assert!(g.get(&x).is_none() && g.get(&w).is_none());
    let mut tape = Tape::recording();
    layer_norm(&mut tape, &x, Some(&w), None, 1e-5).unwrap();
    assert!(tape.is_empty());
}

#[test]
fn empty_rows() {
    let dev = Device::cpu();
    let x = Tensor::zeros(&[3, 0], DType::F64, &dev).unwrap();
    let w = Tensor::zeros(&[0], DType::F64, &dev).unwrap();
    let y = layer_norm(&mut Tape::no_grad(), &x, Some(&w), Some(&w), 1e-5).unwrap();
    assert_eq!(y.shape(), &[3, 0]);
    let x = Tensor::zeros(&[0, 4], DType::F64, &dev).unwrap();
    assert_eq!(
        layer_norm(&mut Tape::no_grad(), &x, None, None, 1e-5)
            .unwrap()
            .shape(),
        &[0, 4]
    );
}

#[test]
fn error_paths() {
    let dev = Device::cpu();
    let z = |s: &[usize]| Tensor::zeros(s, DType::F64, &dev).unwrap();
    let x = z(&[2, 3]);
    let mut tp = Tape::no_grad();
    let shape = |r| common::is_shape_error(r, "layer_norm");
    assert!(shape(layer_norm(&mut tp, &z(&[]), None, None, 1e-5)));
    assert!(shape(layer_norm(&mut tp, &x, Some(&z(&[2])), None, 1e-5)));
    assert!(shape(layer_norm(
        &mut tp,
        &x,
        None,
        Some(&z(&[3, 1])),
        1e-5
    )));
    assert!(shape(layer_norm(
        &mut tp,
        &x,
        Some(&z(&[2, 3])),
        None,
        1e-5
    )));
    for eps in [-1e-5, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            layer_norm(&mut tp, &x, None, None, eps),
            Err(Error::InvalidArgument {
                op: "layer_norm",
                ..
            })
        ));
    }
    let w32 = Tensor::zeros(&[3], DType::F32, &dev).unwrap();
    let other = Device::cpu();
    let w_other = Tensor::zeros(&[3], DType::F64, &other).unwrap();
    // The weight, then the bias, of the wrong dtype or on another device.
    for (w, b) in [(Some(&w32), None), (None, Some(&w32))] {
        let r = layer_norm(&mut tp, &x, w, b, 1e-5);
        assert!(matches!(
            r,
            Err(Error::DType {
                op: "layer_norm",
                ..
            })
        ));
    }
    for (w, b) in [(Some(&w_other), None), (None, Some(&w_other))] {
        let r = layer_norm(&mut tp, &x, w, b, 1e-5);
        assert!(matches!(
            r,
            Err(Error::Device {
                op: "layer_norm",
                ..
            })
        ));
    }
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use tape::ops;
    use tape::testing::*;
    use tape::{Tape, Tensor};

    #[test]
    fn layer_norm_matches_cpu() {
        for_gpu_cases(31, 8, |dev, p, case, dtype| {
            // Rows longer than a block (700) and short ones.
            let d = if case == 0 { 700 } else { p.int(1, 48) };
            let shape = [p.int(1, 3), p.int(1, 9), d];
            let (with_w, with_b) = (p.bool(), p.bool());
            let mut inputs = vec![randn(&shape, dtype, case + 1)];
            if with_w {
                inputs.push(randn(&[d], dtype, case + 2));
            }
            if with_b {
                inputs.push(randn(&[d], dtype, case + 3));
            }
            let mask = vec![true; inputs.len()];
            let f = move |t: &mut Tape, x: &[Tensor]| {
                let w = with_w.then(|| &x[1]);
                let b = with_b.then(|| &x[if with_w { 2 } else { 1 }]);
                ops::layer_norm(t, &x[0], w, b, 1e-5)
            };
            compare(
                dev,
                &format!("layer_norm {shape:?} weight {with_w} bias {with_b}"),
                &inputs,
                &mask,
                training(),
                &f,
            );
        });
    }
}

/// A frozen scale with a trained shift: the shift gets its gradient (the row sums of the output
/// gradient) and the scale none.
#[test]
fn a_frozen_scale_gets_no_gradient_when_the_shift_trains() {
    use tape::{ops, DType, Device, Tape, Tensor};
    let dev = Device::cpu();
    let x = tape::testing::randn_leaf(&[3, 4], DType::F64, &dev, 1);
    let w = Tensor::randn(&[4], DType::F64, &dev, 2).unwrap();
    let b = tape::testing::randn_leaf(&[4], DType::F64, &dev, 3);
    let mut tape = Tape::recording();
    let y = ops::layer_norm(&mut tape, &x, Some(&w), Some(&b), 1e-5).unwrap();
    let grads = tape::testing::grads_of_sum(tape, &y);
    assert!(grads.get(&w).is_none(), "the frozen scale got a gradient");
    assert_eq!(grads.get(&b).unwrap().to_f64_vec(), vec![3.0; 4]);
    assert!(grads.get(&x).is_some());
}
