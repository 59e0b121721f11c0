//! gelu: finite-difference gradient checks of both forms, values and slopes against PyTorch,
//! f32 on several threads, what backward keeps, and the error path of a bad gradient.

mod common;

use proptest::prelude::*;
use tape::gradcheck::check_gradients;
use tape::ops::{gelu, gelu_with, GeluApproximation};
use tape::{DType, Device, Tape, Tensor};

proptest! {
    #![proptest_config(common::config(1024))]

    #[test]
    fn gradcheck_exact_and_tanh(
        (shape, scale, seed) in common::shape_scale_seed(),
    ) {
        let x = common::scaled_randn(&shape, scale, seed)?;
        let ctx = Tape::recording().context();
        for approx in [GeluApproximation::None, GeluApproximation::Tanh] {
            let report = check_gradients(std::slice::from_ref(&x), ctx, |tape, t| {
                gelu_with(tape, &t[0], approx)
            })?;
            prop_assert!(report.max_rel_error <= 1e-6, "{:?} {:?}", approx, report);
        }
    }
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "[{i}]: {x} vs {y}");
    }
}

const X: [f64; 7] = [-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.5];

/// `torch.nn.functional.gelu(x, approximate=...)` and its slope at `X` (PyTorch 2.15, float64).
fn pytorch(approx: GeluApproximation) -> ([f64; 7], [f64; 7]) {
    match approx {
        GeluApproximation::None => (
            [
                -0.00404969409489031,
                -0.15865525393145702,
                -0.15426876936299344,
                0.0,
                0.34573123063700656,
                0.841344746068543,
                2.4844758366855597,
            ],
            [
                -0.01194564720418392,
                -0.08331547058768635,
                0.13250487534383712,
                0.5,
                0.8674951246561629,
                1.0833154705876864,
                1.037611085908145,
            ],
        ),
        GeluApproximation::Tanh => (
            [
                -0.0036373920817729943,
                -0.15880800939172324,
                -0.15428599017485606,
                0.0,
                0.34571400982514394,
                0.8411919906082768,
                2.484915733910001,
            ],
            [
                -0.011584166630969648,
                -0.08296408384578252,
                0.13263009646535764,
                0.5,
                0.8673699035346424,
                1.0829640838457826,
                1.037951576212666,
            ],
        ),
    }
}

#[test]
fn values_and_slopes_match_pytorch() {
    let dev = Device::cpu();
    for approx in [GeluApproximation::None, GeluApproximation::Tanh] {
        let x = common::leaf(Tensor::from_f64(&X, &[7], DType::F64, &dev));
        let mut tape = Tape::recording();
        let y = gelu_with(&mut tape, &x, approx).unwrap();
        let (want_y, want_g) = pytorch(approx);
        close(&y.to_f64_vec(), &want_y, 1e-15);
        let g = tape::testing::grads_of_sum(tape, &y);
        close(&g.get(&x).unwrap().to_f64_vec(), &want_g, 1e-15);
    }
    // The default is the exact form.
    let x = Tensor::from_f64(&X, &[7], DType::F64, &dev).unwrap();
    let y = gelu(&mut Tape::no_grad(), &x).unwrap();
    close(&y.to_f64_vec(), &pytorch(GeluApproximation::None).0, 1e-15);
}

#[test]
fn f32_on_several_threads_rounds_the_f64_result() {
    let dev = Device::cpu();
    let x = Tensor::randn(&[64, 1024], DType::F32, &dev, 1).unwrap();
    let x64 = x.to_dtype(DType::F64).unwrap();
    for approx in [GeluApproximation::None, GeluApproximation::Tanh] {
        let y = gelu_with(&mut Tape::no_grad(), &x, approx).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        let want: Vec<f64> = gelu_with(&mut Tape::no_grad(), &x64, approx)
            .unwrap()
            .to_f64_vec()
            .iter()
            .map(|&v| v as f32 as f64)
            .collect();
        assert_eq!(y.to_f64_vec(), want);
    }
}

#[test]
fn saves_nothing_without_a_gradient_and_rejects_a_bad_gradient() {
    let dev = Device::cpu();
    let x = Tensor::randn(&[2, 3], DType::F64, &dev, 2).unwrap();
    let mut tape = Tape::recording();
    gelu(&mut tape, &x).unwrap();
    assert!(tape.is_empty());
    let x = x.with_requires_grad(true);
    tape::testing::assert_wrong_dtype_seed_fails(|t| gelu(t, &x));
}

/// On a GPU: the same op against the CPU (the reference). Skipped without a usable GPU; fails
/// instead under `TAPE_EXPECT_GPU=1`.
mod on_gpu {
    use tape::ops::{self, GeluApproximation};
    use tape::testing::*;
    use tape::{Tape, Tensor};

    #[test]
    fn gelu_matches_cpu() {
        for_gpu_cases(41, 6, |dev, p, case, dtype| {
            let shape = [p.int(1, 40), p.int(1, 700)];
            for approx in [GeluApproximation::None, GeluApproximation::Tanh] {
                let f = move |t: &mut Tape, x: &[Tensor]| ops::gelu_with(t, &x[0], approx);
                compare_unary(
                    dev,
                    &format!("gelu {shape:?} {approx:?}"),
                    &randn(&shape, dtype, case + 5),
                    &f,
                );
            }
        });
    }
}
