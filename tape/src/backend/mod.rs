//! Backends: which device's kernels run an op, and the counting of every kernel call.
//!
//! Every op validates its arguments, decides what to save and records its backward closure
//! exactly once, in `ops/<op>/mod.rs`; the arithmetic runs in device kernels behind a small
//! trait declared beside the op with [`kernel_trait!`] (`ReluKernels`, `Conv2dKernels`, ...).
//! Each backend implements the trait in the op's folder: [`Cpu`] in `cpu.rs`, [`Meta`] in
//! `meta.rs`, [`CudaKernels`] in `cuda.rs` (cargo feature `cuda`). This module knows no op:
//! the macro generates, from the one declaration, the trait and its implementation for
//! [`Kernels`], which counts the call as one launch in the device's [`crate::counters`] and
//! passes it to the device's backend. Adding an op touches its own folder and the one line
//! that declares its module in `ops/mod.rs`.

use crate::counters::CounterCells;
use crate::device::{Device, DeviceKind};
use crate::error::Result;
use std::sync::Arc;

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

/// The CPU backend: host memory, `gemm` + `rayon` kernels.
pub(crate) struct Cpu;

/// The meta backend: no memory, no arithmetic; each kernel makes its outputs' shapes and
/// charges what the CPU's kernel would (`ops/<op>/meta.rs`).
pub(crate) struct Meta;

/// The CUDA backend: cuDNN, cuBLAS and NVRTC kernels on the device's stream (`ops/<op>/cuda.rs`).
#[cfg(feature = "cuda")]
pub(crate) struct CudaKernels;

/// Which backend runs a device's kernels.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    /// [`Cpu`].
    Cpu,
    /// [`Meta`].
    Meta,
    /// [`CudaKernels`].
    #[cfg(feature = "cuda")]
    Cuda,
}

/// A device's kernels: every kernel trait is implemented for this type (by [`kernel_trait!`]),
/// each call counted as one launch in the device's counters (a call made inside another kernel
/// call counts nothing: see [`crate::counters`]) and run by the device's backend. Cheap to
/// clone; backward closures keep one.
#[derive(Clone)]
pub(crate) struct Kernels {
    /// The backend that runs the calls.
    pub(crate) backend: Backend,
    /// The counters of the device the calls run on.
    pub(crate) counters: Arc<CounterCells>,
}

impl Kernels {
    /// Whether the backend's convolution, linear, matrix-product, pooling, batch-norm, `add`,
    /// `mul`, ReLU and GELU kernels take 16-bit operands as they are (CUDA: cuDNN and cuBLAS with bf16 / f16 descriptors and
    /// `f32` compute, NVRTC kernels that compute in `f32` and round once), where the other
    /// backends get `f32` copies from the op (`ops::widen`).
    pub(crate) fn takes_half_operands(&self) -> bool {
        match self.backend {
            Backend::Cpu | Backend::Meta => false,
            #[cfg(feature = "cuda")]
            Backend::Cuda => true,
        }
    }
}

/// The kernels of `device`'s backend, counting each call in the device's counters.
pub(crate) fn kernels(device: &Device) -> Result<Kernels> {
    let backend = match device.kind() {
        DeviceKind::Cpu => Backend::Cpu,
        DeviceKind::Meta => Backend::Meta,
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda(_) => Backend::Cuda,
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda(_) => return Err(crate::device::cuda::not_built()),
    };
    Ok(Kernels {
        backend,
        counters: device.counter_cells().clone(),
    })
}

/// Declares an op's kernel trait and implements it for [`Kernels`]: each method enters a
/// counted kernel scope and calls the same method of the device's backend ([`Cpu`], [`Meta`]
/// or [`CudaKernels`], each of which must implement the trait). Write the trait inside the
/// macro as it would be written without it.
macro_rules! kernel_trait {
    (
        $(#[$attr:meta])*
        $vis:vis trait $tr:ident {
            $(
                $(#[$mattr:meta])*
                fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
            )*
        }
    ) => {
        $(#[$attr])*
        $vis trait $tr {
            $($(#[$mattr])* fn $name(&self $(, $arg: $ty)*) -> $ret;)*
        }

        impl $tr for $crate::backend::Kernels {
            $(fn $name(&self $(, $arg: $ty)*) -> $ret {
                let _scope = self.counters.enter_kernel();
                match self.backend {
                    $crate::backend::Backend::Cpu => $crate::backend::Cpu.$name($($arg),*),
                    $crate::backend::Backend::Meta => $crate::backend::Meta.$name($($arg),*),
                    #[cfg(feature = "cuda")]
                    $crate::backend::Backend::Cuda => {
                        $crate::backend::CudaKernels.$name($($arg),*)
                    }
                }
            })*
        }
    };
}
pub(crate) use kernel_trait;
