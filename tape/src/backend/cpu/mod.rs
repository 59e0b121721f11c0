//! Helpers the CPU kernels of many ops share: GEMM calls ([`gemm`]), element maps and
//! uninitialised-output writes ([`map`]), and the SIMD reductions batch norm uses ([`lanes`]).
//! They know no op.

pub(crate) mod gemm;
pub(crate) mod lanes;
pub(crate) mod map;
