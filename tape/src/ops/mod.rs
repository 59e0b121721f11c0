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
mod embedding;
mod finite;
mod gelu;
mod layer_norm;
mod linear;
mod matmul;
mod narrow;
mod permute;
mod pool;
mod reduce;
mod relu;
mod reshape;
mod softmax;

// conv2d, linear, pooling:
pub use conv2d::{
    conv2d, conv2d_pass_workspace_bytes, conv2d_workspace_bytes, Conv2dOptions, Conv2dPass,
};
pub use linear::linear;
pub use pool::{avg_pool2d, global_avg_pool, max_pool2d};

// batch norm, dropout, concat, cross-entropy:
pub use batch_norm::{
    batch_norm2d, BatchNormOptions, BatchStatsReducer, RunningStats, SyncPass, SYNC_KEPT,
};
pub use batch_norm_relu::{batch_norm_relu, batch_norm_relu_prefix};
pub use block_storage::BlockStorage;
pub use concat::concat;
pub use cross_entropy::{cross_entropy, cross_entropy_labels};
pub use dropout::dropout;

pub use elementwise::{add, mul, scale};

// Not differentiable, no tape: the step's accuracy count and anomaly flag, kept on the device.
pub use accuracy::correct_count;
pub use finite::{flag_is_set, non_finite};
pub use reduce::{mean, sum};
pub use relu::relu;
pub use reshape::reshape;

// transformer ops: matmul, softmax, layer norm, GELU, embedding, permute, narrow:
pub use embedding::embedding;
pub use gelu::{gelu, gelu_with, GeluApproximation};
pub use layer_norm::layer_norm;
pub use matmul::{matmul, matmul_with, MatmulOptions};
pub use narrow::{narrow, split};
pub use permute::{permute, transpose, MAX_PERMUTE_DIMS};
pub use softmax::{log_softmax, log_softmax_with, softmax, softmax_with, SoftmaxOptions};

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
pub(crate) use embedding::{EmbeddingKernels, Groups};
pub(crate) use finite::FiniteKernels;
pub(crate) use gelu::GeluKernels;
pub(crate) use layer_norm::{LayerNormKernels, LnDims, RowStats};
pub(crate) use linear::{Dims, LinearKernels};
pub(crate) use matmul::{MatmulDims, MatmulKernels};
pub(crate) use narrow::{NarrowKernels, Slice};
pub(crate) use permute::PermuteKernels;
pub(crate) use pool::{PoolKernels, PoolMode, Window};
pub(crate) use reduce::ReduceKernels;
pub(crate) use relu::ReluKernels;
pub(crate) use softmax::{Rows, SoftmaxKernels};
