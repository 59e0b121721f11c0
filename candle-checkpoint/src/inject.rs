//! [`Inject`]: the root of a recompute's backward.

use crate::storage::zero_scalar;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Layout, MetalStorage};
use candle_core::{Shape, Tensor};

/// The root of a recompute's backward: a one-element zero made from the packed outputs, whose
/// backward hands them the outputs' gradient `grad` as it came (candle's backward then starts
/// from exactly `grad`, with no product of the outputs and a seed to allocate).
pub(crate) struct Inject {
    /// The outputs' gradient, handed to them as it came.
    pub(crate) grad: Tensor,
    /// The dtype of the one-element output.
    pub(crate) dtype: DType,
}

impl CustomOp1 for Inject {
    fn name(&self) -> &'static str {
        "checkpoint-inject"
    }

    fn cpu_fwd(&self, s: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        zero_scalar(s, self.dtype)
    }

    fn cuda_fwd(&self, s: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        zero_scalar(s, self.dtype)
    }

    fn metal_fwd(
        &self,
        s: &MetalStorage,
        _: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        zero_scalar(s, self.dtype)
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.grad.clone()))
    }
}
