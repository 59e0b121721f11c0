//! Helpers shared by the engine's integration tests (each test binary uses some of them).
#![allow(dead_code)]

use proptest::prelude::ProptestConfig;
use tape::{ops, Context, DType, Device, Phase, Tape, Tensor};

/// A proptest configuration of `cases` cases that writes no failure-persistence files.
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

/// The forward phase of training, with seed and counter 0.
pub const TRAIN: Context = Context {
    training: true,
    phase: Phase::Forward,
    seed: 0,
    counter: 0,
};

/// An `f64` leaf (requires a gradient) with the values `data`.
pub fn leaf_f64(data: &[f64], shape: &[usize], dev: &Device) -> Tensor {
    Tensor::from_f64(data, shape, DType::F64, dev)
        .unwrap()
        .with_requires_grad(true)
}

/// Standard normal `f64` values on the CPU times `scale`.
pub fn scaled_randn(shape: &[usize], scale: f64, seed: u64) -> tape::Result<Tensor> {
    let x = Tensor::randn(shape, DType::F64, &Device::cpu(), seed)?;
    ops::scale(&mut Tape::no_grad(), &x, scale)
}

/// `t` (which must have been made) as a leaf that requires a gradient.
pub fn leaf(t: tape::Result<Tensor>) -> Tensor {
    t.unwrap().with_requires_grad(true)
}
