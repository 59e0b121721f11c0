//! Backends: the one interface through which ops reach device kernels.
//!
//! Every op validates its arguments, decides what to save and records its backward closure
//! exactly once, in `ops/<op>/mod.rs`; the arithmetic runs in device kernels behind a small
//! trait declared beside the op (`ReluKernels`, `Conv2dKernels`, ...). The CPU implements each
//! trait in `ops/<op>/cpu.rs` for [`Cpu`], CUDA in `ops/<op>/cuda.rs` for
//! `cuda::CudaKernels`; [`Kernels`] gathers them, and [`kernels`] hands out a device's set.
//!
//! A device's set is its backend's kernels wrapped in [`Counted`], which counts every kernel
//! call as one launch in the device's [`crate::counters`] before passing it on: the one place
//! launches are counted, so no op counts by hand. The list at the end of this file names every
//! kernel trait and method once: it defines [`Kernels`] and the counting wrapper both, so a new
//! kernel trait or method needs only its lines there.
//!
//! The cargo feature `cuda` is decided here alone: with it, [`cuda`] is the real backend
//! (cuDNN, cuBLAS, NVRTC through `cudarc`, libraries loaded at run time); without it, a stub
//! with the same names whose `open` fails with "built without the cuda feature", so no CUDA
//! device, buffer or kernel can ever be reached and the rest of the engine needs no `cfg`.

use crate::counters::CounterCells;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::Result;
use crate::labels::Labels;
use crate::ops::{
    AccuracyKernels, BatchNormKernels, BatchNormReluKernels, BlockStorageKernels, BnBackward,
    BnForward, BnGrads, BnReluBackward, BnReluForward, BnReluGrads, BnStats, ConcatKernels,
    Conv2dGrads, Conv2dKernels, CrossEntropyKernels, Dims, DropoutKernels, ElementwiseKernels,
    FiniteKernels, Geometry, LinearKernels, PoolKernels, PoolMode, ReduceKernels, ReluKernels,
    Window,
};
use crate::ops::{
    EmbeddingKernels, GeluApproximation, GeluKernels, Groups, LayerNormKernels, LnDims, MatmulDims,
    MatmulKernels, NarrowKernels, PermuteKernels, RowStats, Rows, Slice, SoftmaxKernels,
};
use crate::optim::{AdamConfig, AdamSlot, OptimKernels, SgdConfig, SgdSlot};
use crate::tensor::Tensor;
use std::sync::Arc;

#[cfg(feature = "cuda")]
pub(crate) mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_stub.rs"]
pub(crate) mod cuda;

/// The CPU backend: host memory, `gemm` + `rayon` kernels.
pub(crate) struct Cpu;

/// The meta backend: no memory, no arithmetic; each kernel makes its outputs' shapes and
/// charges what the CPU's kernel would (`ops/<op>/meta.rs`).
pub(crate) struct Meta;

/// The kernels of `device`'s backend, counting each call in the device's counters.
pub(crate) fn kernels(device: &Device) -> Result<Arc<dyn Kernels>> {
    Ok(device.kernel_set().clone())
}

/// The kernel set of a new CPU device: the CPU kernels, counted in `counters`.
pub(crate) fn cpu_kernels(counters: Arc<CounterCells>) -> Arc<dyn Kernels> {
    Arc::new(Counted {
        inner: &Cpu,
        counters,
    })
}

/// The kernel set of a new meta device: the meta kernels, counted in `counters`.
pub(crate) fn meta_kernels(counters: Arc<CounterCells>) -> Arc<dyn Kernels> {
    Arc::new(Counted {
        inner: &Meta,
        counters,
    })
}

/// The kernel set of a new CUDA device: the CUDA kernels, counted in `counters`.
pub(crate) fn cuda_kernels(counters: Arc<CounterCells>) -> Result<Arc<dyn Kernels>> {
    Ok(Arc::new(Counted {
        inner: cuda::kernels()?,
        counters,
    }))
}

/// A backend's kernels, each call counted as one launch of the device whose counters these are
/// (a call made inside another kernel call counts nothing: see [`crate::counters`]).
pub(crate) struct Counted {
    inner: &'static dyn Kernels,
    counters: Arc<CounterCells>,
}

/// From one list of every kernel trait with its methods: [`Kernels`] (every kernel an op may ask
/// of a device: all the traits, implemented by whatever implements them all) and the traits'
/// implementations for [`Counted`], each method entering a counted kernel scope and passing the
/// call on to the backend's own implementation.
macro_rules! counted {
    ($($tr:ident { $(fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;)* })*) => {
        /// Every kernel an op may ask of a device.
        pub(crate) trait Kernels: $($tr +)* Send + Sync {}

        impl<K> Kernels for K where K: $($tr +)* Send + Sync {}

        $(impl $tr for Counted {
            $(fn $name(&self $(, $arg: $ty)*) -> $ret {
                let _scope = self.counters.enter_kernel();
                self.inner.$name($($arg),*)
            })*
        })*
    };
}

counted! {
    ElementwiseKernels {
        fn full(&self, shape: &[usize], value: f64, dtype: DType, device: &Device) -> Result<Tensor>;
        fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
        fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
        fn scale(&self, x: &Tensor, s: f64) -> Result<Tensor>;
        fn add_assign(&self, acc: &mut Tensor, g: &Tensor) -> Result<()>;
    }
    ReluKernels {
        fn relu_forward(&self, x: &Tensor) -> Result<Tensor>;
        fn relu_backward(&self, g: &Tensor, y: &Tensor) -> Result<Tensor>;
    }
    ReduceKernels {
        fn sum_all(&self, x: &Tensor, factor: f64) -> Result<Tensor>;
        fn fill_scaled(&self, shape: &[usize], g: &Tensor, factor: f64) -> Result<Tensor>;
    }
    DropoutKernels {
        fn dropout_mask(&self, x: &Tensor, seed: u64, counter: u64, p: f64) -> Result<Tensor>;
    }
    ConcatKernels {
        fn concat(&self, xs: &[&Tensor], widths: &[usize], outer: usize, shape: &[usize]) -> Result<Tensor>;
        fn concat_split(
            &self,
            g: &Tensor,
            outer: usize,
            widths: &[usize],
            shapes: &[&[usize]],
            wanted: &[bool],
            into: Vec<Option<Tensor>>,
        ) -> Result<Vec<Option<Tensor>>>;
    }
    CrossEntropyKernels {
        fn cross_entropy_forward(&self, logits: &Tensor, labels: &Labels) -> Result<Tensor>;
        fn cross_entropy_backward(&self, logits: &Tensor, labels: &Labels, g: &Tensor) -> Result<Tensor>;
    }
    PoolKernels {
        fn pool_forward(&self, mode: PoolMode, x: &Tensor, win: &Window) -> Result<Tensor>;
        fn pool_backward(
            &self,
            mode: PoolMode,
            saved: Option<(&Tensor, &Tensor)>,
            g: &Tensor,
            win: &Window,
            x_shape: &[usize],
        ) -> Result<Tensor>;
        fn global_avg_forward(&self, x: &Tensor, hw: usize) -> Result<Tensor>;
        fn global_avg_backward(&self, g: &Tensor, hw: usize, x_shape: &[usize]) -> Result<Tensor>;
    }
    LinearKernels {
        fn linear_forward(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, dims: Dims) -> Result<Tensor>;
        fn linear_grad_input(&self, g: &Tensor, w: &Tensor, dims: Dims) -> Result<Tensor>;
        fn linear_grad_weight(&self, g: &Tensor, x: &Tensor, dims: Dims) -> Result<Tensor>;
        fn linear_grad_bias(&self, g: &Tensor, dims: Dims) -> Result<Tensor>;
    }
    Conv2dKernels {
        fn conv2d_forward(&self, geo: &Geometry, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor>;
        fn conv2d_backward(
            &self,
            geo: &Geometry,
            g: &Tensor,
            x: Option<&Tensor>,
            w: Option<&Tensor>,
            want_bias: bool,
        ) -> Result<Conv2dGrads>;
    }
    BatchNormKernels {
        fn batch_norm_forward(&self, a: &BnForward<'_>) -> Result<(Tensor, Option<BnStats>)>;
        fn batch_norm_backward(&self, a: &BnBackward<'_>) -> Result<BnGrads>;
    }
    BatchNormReluKernels {
        fn bn_relu_forward(&self, a: &BnReluForward<'_>) -> Result<(Tensor, Option<BnStats>)>;
        fn bn_relu_backward(&self, a: &BnReluBackward<'_>, into: Vec<Option<Tensor>>) -> Result<BnReluGrads>;
    }
    BlockStorageKernels {
        fn write_channels(&self, dst: &mut Tensor, src: &Tensor, c0: usize) -> Result<()>;
        fn add_channels(&self, dst: &mut Tensor, src: &Tensor, c0: usize) -> Result<()>;
        fn read_channels(&self, src: &Tensor, c0: usize, k: usize) -> Result<Tensor>;
    }
    OptimKernels {
        fn sgd_multi(&self, cfg: &SgdConfig, slots: &mut [SgdSlot<'_>], found_inf: Option<&Tensor>) -> Result<()>;
        fn adam_multi(&self, cfg: &AdamConfig, slots: &mut [AdamSlot<'_>], found_inf: Option<&Tensor>) -> Result<()>;
    }
    AccuracyKernels {
        fn correct_count(&self, logits: &Tensor, labels: &Labels) -> Result<Tensor>;
    }
    FiniteKernels {
        fn non_finite(&self, xs: &[&Tensor]) -> Result<Tensor>;
    }
    MatmulKernels {
        fn matmul_batched(&self, a: &Tensor, b: &Tensor, dims: MatmulDims, out_shape: &[usize]) -> Result<Tensor>;
    }
    SoftmaxKernels {
        fn softmax_forward(&self, x: &Tensor, rows: Rows) -> Result<Tensor>;
        fn softmax_backward(&self, g: &Tensor, y: &Tensor, rows: Rows) -> Result<Tensor>;
    }
    LayerNormKernels {
        fn layer_norm_forward(
            &self,
            x: &Tensor,
            weight: Option<&Tensor>,
            bias: Option<&Tensor>,
            dims: LnDims,
        ) -> Result<(Tensor, RowStats)>;
        fn layer_norm_grad_input(
            &self,
            g: &Tensor,
            x: &Tensor,
            stats: &RowStats,
            weight: Option<&Tensor>,
            dims: LnDims,
        ) -> Result<Tensor>;
        fn layer_norm_grad_affine(
            &self,
            g: &Tensor,
            x: Option<(&Tensor, &RowStats)>,
            want_bias: bool,
            dims: LnDims,
        ) -> Result<(Option<Tensor>, Option<Tensor>)>;
    }
    GeluKernels {
        fn gelu_forward(&self, x: &Tensor, approx: GeluApproximation) -> Result<Tensor>;
        fn gelu_backward(&self, g: &Tensor, x: &Tensor, approx: GeluApproximation) -> Result<Tensor>;
    }
    EmbeddingKernels {
        fn embedding_forward(&self, weight: &Tensor, indices: &[usize], out_shape: &[usize]) -> Result<Tensor>;
        fn embedding_backward(&self, g: &Tensor, groups: &Groups, vocab: usize, d: usize) -> Result<Tensor>;
    }
    PermuteKernels {
        fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor>;
    }
    NarrowKernels {
        fn narrow_forward(&self, x: &Tensor, slice: Slice, shape: &[usize]) -> Result<Tensor>;
        fn narrow_backward(&self, g: &Tensor, slice: Slice, shape: &[usize]) -> Result<Tensor>;
    }
}
