//! Helpers shared by the engine's integration tests (each test binary uses some of them).
#![allow(dead_code)]

use proptest::prelude::*;
use tape::{ops, Context, DType, Device, Error, Phase, Tape, Tensor};

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
    keep_batch_stats: true,
    precision: tape::Precision::F32,
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

/// Whether `r` is a shape error of `op`.
pub fn is_shape_error(r: tape::Result<Tensor>, op: &str) -> bool {
    matches!(r, Err(Error::Shape { op: o, .. }) if o == op)
}

/// Whether `r` is an invalid-argument error of `op`.
pub fn is_invalid_argument(r: tape::Result<Tensor>, op: &str) -> bool {
    matches!(r, Err(Error::InvalidArgument { op: o, .. }) if o == op)
}

/// A shape of rank 1 to 3 (sizes 1 to 4), a scale in `[0.1, 4)` and a seed: a scaled random
/// input (see [`scaled_randn`]).
pub fn shape_scale_seed() -> impl Strategy<Value = (Vec<usize>, f64, u64)> {
    (
        prop::collection::vec(1usize..5, 1..4),
        0.1f64..4.0,
        0u64..1 << 62,
    )
}
