//! Helpers the CPU kernels of many ops share: dtype conversions ([`convert`]), GEMM calls ([`gemm`]), element maps and
//! uninitialised-output writes ([`map`]), and the SIMD reductions batch norm uses ([`lanes`]).
//! They know no op.

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
pub(crate) mod convert;
pub(crate) mod gemm;
pub(crate) mod lanes;
pub(crate) mod map;
