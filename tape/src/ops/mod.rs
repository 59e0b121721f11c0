//! The ops a CNN needs, forward and backward, one folder each. `mod.rs` holds the op's API, its
//! checks, what it saves and its backward rule, written once for every device; the arithmetic
//! runs in device kernels behind the op's kernel trait (`cpu.rs` for the CPU, `cuda.rs` for
//! CUDA; see [`crate::backend`]). Every op takes the tape explicitly and records its backward
//! closure only when the tape records and an input wants a gradient.

mod accuracy;
mod batch_norm;
mod batch_norm_relu;
mod block_storage;
mod checks;
mod concat;
mod conv2d;
mod cpu_gemm;
mod cpu_lanes;
mod cpu_map;
mod cross_entropy;
mod dropout;
mod elementwise;
mod finite;
mod linear;
mod pool;
mod reduce;
mod relu;
mod reshape;

// conv2d, linear, pooling:
pub use conv2d::{conv2d, conv2d_workspace_bytes, Conv2dOptions};
pub use linear::linear;
pub use pool::{avg_pool2d, global_avg_pool, max_pool2d};

// batch norm, dropout, concat, cross-entropy:
pub use batch_norm::{batch_norm2d, BatchNormOptions, RunningStats};
pub use batch_norm_relu::{batch_norm_relu, batch_norm_relu_prefix};
pub use block_storage::BlockStorage;
pub use concat::concat;
pub use cross_entropy::{cross_entropy, cross_entropy_labels};
pub use dropout::dropout;

pub use elementwise::{add, mul, scale};

// Not differentiable, no tape: the step's accuracy count and anomaly flag, kept on the device.
pub use accuracy::correct_count;
pub use finite::non_finite;
pub use reduce::{mean, sum};
pub use relu::relu;
pub use reshape::reshape;

// The kernel traits the backends implement, and the argument types of their methods (the
// backend's counting wrapper names them).
pub(crate) use accuracy::AccuracyKernels;
pub(crate) use batch_norm::{BatchNormKernels, BnBackward, BnForward, BnGrads, BnStats};
pub(crate) use batch_norm_relu::{
    BatchNormReluKernels, BnReluBackward, BnReluForward, BnReluGrads,
};
pub(crate) use block_storage::BlockStorageKernels;
pub(crate) use concat::ConcatKernels;
pub(crate) use conv2d::{Conv2dGrads, Conv2dKernels, Geometry};
pub(crate) use cross_entropy::CrossEntropyKernels;
pub(crate) use dropout::DropoutKernels;
pub(crate) use elementwise::ElementwiseKernels;
pub(crate) use finite::FiniteKernels;
pub(crate) use linear::{Dims, LinearKernels};
pub(crate) use pool::{PoolKernels, PoolMode, Window};
pub(crate) use reduce::ReduceKernels;
pub(crate) use relu::ReluKernels;
