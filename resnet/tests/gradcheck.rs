//! Finite differences (f64) against the tape's gradients of one BasicBlock and one Bottleneck,
//! both with a projection shortcut of stride 2, with respect to the input and every parameter,
//! in training mode (batch statistics), with batch norm and ReLU as two ops and fused.

use resnet::{BasicBlock, Block, Bottleneck};
use tape::gradcheck::check_gradients;
use tape::nn::{self, Init};
use tape::testing::training;
use tape::{DType, Device, Parameter, Tensor};

/// Checks `make`'s block on an input of `shape`, its parameters drawn at random (batch norm
/// scales and shifts included, so that none is trivially 1 or 0).
fn check(make: impl Fn(&mut Init) -> Block, shape: &[usize]) {
    let dev = Device::cpu();
    let block = make(&mut Init::new(DType::F64, &dev, 11));
    let params: Vec<Tensor> = nn::parameters(&block)
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let t = p.tensor();
            let v = Tensor::randn(t.shape(), DType::F64, &dev, 100 + i as u64).unwrap();
            let scaled: Vec<f64> = v.to_f64_vec().iter().map(|a| 0.5 * a).collect();
            Tensor::from_f64(&scaled, t.shape(), DType::F64, &dev).unwrap()
        })
        .collect();
    assert!(params.len() >= 8, "the block has its parameters");
    let x = Tensor::randn(shape, DType::F64, &dev, 7).unwrap();
    let mut inputs = vec![x];
    inputs.extend(params);
    for fused in [false, true] {
        let report = check_gradients(&inputs, training(), |t, xs| {
            let mut b = make(&mut Init::new(DType::F64, &dev, 11));
            for (p, v) in nn::parameters_mut(&mut b).into_iter().zip(&xs[1..]) {
                *p = Parameter::new(p.name().to_string(), v.clone());
            }
            b.run(t, &xs[0], fused)
        })
        .unwrap();
        assert!(
            report.max_rel_error <= 1e-6,
            "{:?} (fused {fused}, input {} of x and the parameters in order)",
            report,
            report.worst_input
        );
    }
}

#[test]
fn basic_block_with_downsample_matches_finite_differences() {
    check(
        |init| Block::Basic(BasicBlock::new(2, 3, 2, init).unwrap()),
        &[2, 2, 5, 5],
    );
}

#[test]
fn bottleneck_with_downsample_matches_finite_differences() {
    check(
        |init| Block::Bottleneck(Bottleneck::new(4, 2, 2, init).unwrap()),
        &[2, 4, 5, 5],
    );
}
