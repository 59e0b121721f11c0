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
pub use batch_norm::{batch_norm2d, BatchNormOptions, RunningStats};
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
