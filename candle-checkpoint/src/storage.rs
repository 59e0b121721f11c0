//! Storage helpers for the adapter's custom ops: a copy of a tensor's elements into a fresh
//! storage (the checkpoint's output), and a one-element zero (the links' outputs), on whatever
//! backend the tensor lives.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{DType, Layout, Result, Shape, Storage, Tensor};

/// A contiguous copy of `src` (read through `layout`) on its own device.
fn copy_of<S, D>(src: &S, layout: &Layout) -> Result<(S, Shape)>
where
    S: BackendStorage<Device = D>,
    D: BackendDevice<Storage = S>,
{
    let mut dst = src.device().zeros_impl(layout.shape(), src.dtype())?;
    src.copy_strided_src(&mut dst, 0, layout)?;
    Ok((dst, layout.shape().clone()))
}

/// A copy of `t`'s elements as a CPU storage; fails if `t` is not on the CPU.
pub(crate) fn cpu_copy(t: &Tensor) -> Result<(candle_core::CpuStorage, Shape)> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => copy_of(s, layout),
        _ => Err(mismatch("cpu")),
    }
}

/// A copy of `t`'s elements as a CUDA storage; fails if `t` is not on a CUDA device.
pub(crate) fn cuda_copy(t: &Tensor) -> Result<(candle_core::CudaStorage, Shape)> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) => copy_of(s, layout),
        _ => Err(mismatch("cuda")),
    }
}

/// A copy of `t`'s elements as a Metal storage; fails if `t` is not on a Metal device.
pub(crate) fn metal_copy(t: &Tensor) -> Result<(candle_core::MetalStorage, Shape)> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Metal(s) => copy_of(s, layout),
        _ => Err(mismatch("metal")),
    }
}

/// A zero of `dtype` and shape `()` on the device of `like`.
pub(crate) fn zero_scalar<S, D>(like: &S, dtype: DType) -> Result<(S, Shape)>
where
    S: BackendStorage<Device = D>,
    D: BackendDevice<Storage = S>,
{
    let shape = Shape::from(());
    Ok((like.device().zeros_impl(&shape, dtype)?, shape))
}

/// The error for a checkpoint whose output lives on another backend than its link.
fn mismatch(backend: &str) -> candle_core::Error {
    candle_core::Error::msg(format!(
        "checkpoint: the segment's output is not on the {backend} device its inputs are on"
    ))
}
