//! Mixed precision: the precision policy of a run, PyTorch's autocast semantics.
//!
//! Under [`Precision::Bf16`] or [`Precision::F16`] parameters and optimizer state stay `f32`
//! (master weights), and the ops choose their dtype as autocast does:
//!
//! - **Low-precision ops** cast their `f32` inputs to the policy's dtype (a recorded
//!   [`crate::ops::cast`]: the parameter's gradient arrives in `f32`) and run there with `f32`
//!   accumulation: [`crate::ops::conv2d`], [`crate::ops::conv2d_into_storage`],
//!   [`crate::ops::linear`], [`crate::ops::matmul`]. (PyTorch's CPU and CUDA lists: `conv*`,
//!   `linear`, `matmul`, `bmm`, `baddbmm`, `addmm`, ... ; ours are the ones the engine has.)
//! - **`f32` ops** cast 16-bit inputs to `f32`: [`crate::ops::cross_entropy`],
//!   [`crate::ops::softmax`], [`crate::ops::log_softmax`], [`crate::ops::sum`],
//!   [`crate::ops::mean`], [`crate::ops::layer_norm`]. These follow PyTorch's CUDA `fp32` list
//!   (`softmax`, `log_softmax`, `cross_entropy`, `layer_norm`, `sum`, ...) on every device; its
//!   CPU list keeps only the losses in `f32` (`docs/mixed_precision.md` has the comparison).
//! - **Batch norm** keeps its input's dtype: statistics in `f32` from a 16-bit input, `f32`
//!   parameters and running statistics, a 16-bit output (PyTorch's cuDNN batch norm does the
//!   same for half inputs with float weights).
//! - **Everything else** runs in its input's dtype (ReLU, pooling, dropout, GELU, concatenation,
//!   views); binary ops ([`crate::ops::add`], [`crate::ops::mul`]) promote to the wider dtype of
//!   their inputs, as autocast's `promote` list.
//!
//! Every kernel that receives a 16-bit tensor computes in `f32` and rounds its result once
//! (on the CPU, whatever the kernel: see `ops::widen`). The policy rides in the tape's
//! [`crate::Context`], which nested tapes copy: a checkpointed segment's recompute runs under
//! the policy of its first pass, so its activations equal the first pass's bit for bit.

use crate::dtype::DType;
use std::fmt;
use std::str::FromStr;

/// The precision policy of a run (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Everything in the tensors' own dtypes (no casts).
    #[default]
    F32,
    /// Low-precision ops in bfloat16.
    Bf16,
    /// Low-precision ops in IEEE half precision (train with a loss scaler: f16's range is
    /// narrow).
    F16,
}

impl Precision {
    /// The dtype low-precision ops run in, or `None` under [`Precision::F32`].
    pub fn low_dtype(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(DType::BF16),
            Precision::F16 => Some(DType::F16),
        }
    }

    /// The flag's spelling: `f32`, `bf16`, `f16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    /// Parses `f32`, `bf16` or `f16` (any case).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" | "fp16" => Ok(Precision::F16),
            other => Err(format!(
                "unknown precision '{other}': expected f32, bf16 or f16"
            )),
        }
    }
}
