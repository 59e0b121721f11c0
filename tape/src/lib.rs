//! `tape`: the engine of the workspace. Tensors with run-time shapes, dtypes and devices; a
//! recording autodiff [`Tape`] of backward closures with gradients keyed by tensor id; the ops a
//! CNN or a transformer needs ([`ops`]), modules with named state and its safetensors I/O
//! ([`nn`]), optimizers ([`optim`]), exact per-device memory accounting
//! ([`MemoryStats`]) and per-device work counters ([`Counters`]: kernel launches, allocations,
//! host synchronisations).
//!
//! With the cargo feature `cuda`, `Device::cuda(0)` runs every op on an NVIDIA GPU (cuDNN,
//! cuBLAS and NVRTC kernels, loaded at run time); without it, `Device::cuda` returns an error
//! saying so. `Device::meta()` runs no kernel and holds no values, but charges exactly what the
//! CPU would: a step's memory in milliseconds. [`MemoryStats::start_recording`] and
//! [`MemoryStats::report`] say what is alive at the peak and why ([`MemoryReport`]). Ops reach device kernels through one interface (see the `backend` module);
//! tensors move between devices with [`Tensor::to_device`].
//!
//! ```
//! use tape::{ops, DType, Device, Tape, Tensor};
//! let dev = Device::cpu();
//! let x = Tensor::randn(&[2, 3], DType::F32, &dev, 0).unwrap().with_requires_grad(true);
//! let mut tape = Tape::recording();
//! let y = ops::relu(&mut tape, &x).unwrap();
//! let loss = ops::sum(&mut tape, &y).unwrap();
//! let grads = tape.backward(&loss).unwrap();
//! assert_eq!(grads.get(&x).unwrap().shape(), &[2, 3]);
//! ```

/// Runs `$body` with `$T` bound to the Rust element type of `$dtype`, an [`crate::dtype::Elem`] (`f32`
/// or `f64`); a 16-bit dtype returns [`crate::Error::UnsupportedDType`] from the enclosing
/// function (ops compute on those in `f32`: see [`crate::ops::cast`]).
macro_rules! dispatch_float {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::dtype::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::dtype::DType::F64 => {
                type $T = f64;
                $body
            }
            dtype @ ($crate::dtype::DType::BF16 | $crate::dtype::DType::F16) => {
                return Err($crate::error::Error::UnsupportedDType {
                    op: "an f32/f64 kernel",
                    dtype,
                }
                .into())
            }
        }
    };
}

/// Runs `$body` with `$T` bound to the Rust element type of `$dtype`, a [`crate::dtype::Scalar`] of
/// any dtype (for kernels that move elements without arithmetic, and for conversions).
macro_rules! dispatch_scalar {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::dtype::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::dtype::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::dtype::DType::BF16 => {
                type $T = $crate::dtype::bf16;
                $body
            }
            $crate::dtype::DType::F16 => {
                type $T = $crate::dtype::f16;
                $body
            }
        }
    };
}

/// Runs `$half` with `$S` bound to the Rust type of a 16-bit `$dtype` (`bf16`, `f16`), and
/// [`dispatch_float!`]'s `$float` with `$T` for `f32`/`f64`: for kernels that stage 16-bit
/// values in `f32` themselves.
macro_rules! dispatch_split {
    ($dtype:expr, half $S:ident => $half:expr, float $T:ident => $float:expr) => {
        match $dtype {
            $crate::dtype::DType::BF16 => {
                type $S = $crate::dtype::bf16;
                $half
            }
            $crate::dtype::DType::F16 => {
                type $S = $crate::dtype::f16;
                $half
            }
            _ => dispatch_float!($dtype, $T => $float),
        }
    };
}

mod backend;
mod block_storage;
pub mod context;
pub mod counters;
pub mod device;
pub mod dtype;
pub mod error;
pub mod gradcheck;
pub mod gradients;
pub mod host_cache;
pub mod labels;
pub mod memory;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod param;
pub mod precision;
mod primitives;
pub mod profile;
pub mod rng;
pub mod simd;
pub mod tape;
pub mod tensor;
pub mod testing;
mod unit_peaks;

pub use block_storage::BlockStorage;
pub use context::Phase;
pub use counters::Counters;
pub use device::{CudaOptions, Device, DeviceKind};
pub use dtype::{DType, Elem, Scalar};
pub use error::{Error, Result};
pub use gradients::{GradKey, GradObserver, Gradients};
pub use labels::Labels;
pub use memory::{MemoryReport, MemoryStats, Reservation, Role, Warning};
pub use param::Parameter;
pub use precision::Precision;
pub use tape::{Context, Tape};
pub use tensor::{Tensor, TensorId};
pub use unit_peaks::UnitPeaks;
