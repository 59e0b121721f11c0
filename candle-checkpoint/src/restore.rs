//! [`Restore`]: the checkpoint's op in candle's graph. Its output is a copy of the first pass's
//! packed outputs; its backward recomputes the segment.

use crate::segment::{poisoned, Segment};
use crate::storage::{cpu_copy, cuda_copy, metal_copy};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, MetalStorage};
use candle_core::{Shape, Tensor};
use std::sync::{Arc, Mutex};

/// The checkpoint's op: its output is a copy of the first pass's packed outputs; its backward
/// recomputes the segment.
pub(crate) struct Restore {
    /// The segment to recompute.
    pub(crate) segment: Arc<Segment>,
    /// The first pass's packed outputs, until the forward copies them.
    pub(crate) packed: Mutex<Option<Tensor>>,
}

impl Restore {
    /// Takes the packed outputs (the forward runs once).
    fn take(&self) -> candle_core::Result<Tensor> {
        self.packed
            .lock()
            .map_err(poisoned)?
            .take()
            .ok_or_else(|| candle_core::Error::msg("checkpoint: the output was already made"))
    }
}

impl CustomOp1 for Restore {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_copy(&self.take()?)
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        cuda_copy(&self.take()?)
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        metal_copy(&self.take()?)
    }

    fn bwd(&self, link: &Tensor, _: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        self.segment.recompute(g)?;
        Ok(Some(link.zeros_like()?))
    }
}
