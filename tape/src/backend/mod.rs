//! Backends: the one interface through which ops reach device kernels.
//!
//! Every op validates its arguments, decides what to save and records its backward closure
//! exactly once, in `ops/<op>/mod.rs`; the arithmetic runs in device kernels behind a small
//! trait declared beside the op (`ReluKernels`, `Conv2dKernels`, ...). The CPU implements each
//! trait in `ops/<op>/cpu.rs` for [`Cpu`], CUDA in `ops/<op>/cuda.rs` for
//! `cuda::CudaKernels`; [`Kernels`] gathers them, and [`kernels`] picks a device's set.
//!
//! The cargo feature `cuda` is decided here alone: with it, [`cuda`] is the real backend
//! (cuDNN, cuBLAS, NVRTC through `cudarc`, libraries loaded at run time); without it, a stub
//! with the same names whose `open` fails with "built without the cuda feature", so no CUDA
//! device, buffer or kernel can ever be reached and the rest of the engine needs no `cfg`.

use crate::device::{Device, DeviceKind};
use crate::error::Result;
use crate::ops::{
    BatchNormKernels, BatchNormReluKernels, ConcatKernels, Conv2dKernels, CrossEntropyKernels,
    DropoutKernels, ElementwiseKernels, LinearKernels, PoolKernels, ReduceKernels, ReluKernels,
};
use crate::ops::{
    EmbeddingKernels, GeluKernels, LayerNormKernels, MatmulKernels, NarrowKernels, PermuteKernels,
    SoftmaxKernels,
};
use crate::optim::OptimKernels;

#[cfg(feature = "cuda")]
pub(crate) mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_stub.rs"]
pub(crate) mod cuda;

/// Every kernel an op may ask of a device.
pub(crate) trait Kernels:
    ElementwiseKernels
    + ReluKernels
    + ReduceKernels
    + DropoutKernels
    + ConcatKernels
    + CrossEntropyKernels
    + PoolKernels
    + LinearKernels
    + Conv2dKernels
    + BatchNormKernels
    + BatchNormReluKernels
    + OptimKernels
    + MatmulKernels
    + SoftmaxKernels
    + LayerNormKernels
    + GeluKernels
    + EmbeddingKernels
    + PermuteKernels
    + NarrowKernels
    + Sync
{
}

impl<K> Kernels for K where
    K: ElementwiseKernels
        + ReluKernels
        + ReduceKernels
        + DropoutKernels
        + ConcatKernels
        + CrossEntropyKernels
        + PoolKernels
        + LinearKernels
        + Conv2dKernels
        + BatchNormKernels
        + BatchNormReluKernels
        + OptimKernels
        + MatmulKernels
        + SoftmaxKernels
        + LayerNormKernels
        + GeluKernels
        + EmbeddingKernels
        + PermuteKernels
        + NarrowKernels
        + Sync
{
}

/// The CPU backend: host memory, `gemm` + `rayon` kernels.
pub(crate) struct Cpu;

/// The kernels of `device`'s backend.
pub(crate) fn kernels(device: &Device) -> Result<&'static dyn Kernels> {
    match device.kind() {
        DeviceKind::Cpu => Ok(&Cpu),
        DeviceKind::Cuda(_) => cuda::kernels(),
    }
}
