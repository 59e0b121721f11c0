//! Link ops: one-element tensors that tie a checkpoint's tracked inputs to its output in candle's
//! graph, so that candle's backward reaches each input through an op whose backward hands it the
//! gradient the recompute computed (a custom op has at most three arguments; a chain of links
//! has as many as the segment needs).

use crate::segment::Segment;
use crate::storage::zero_scalar;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, MetalStorage};
use candle_core::{Result, Shape, Tensor};
use std::sync::Arc;

/// The link of input `index` of `segment` (`None`: an anchor that stands for no input).
pub(crate) struct Link {
    pub(crate) segment: Arc<Segment>,
    pub(crate) index: Option<usize>,
}

impl Link {
    /// The gradient the recompute left for this link's input (zeros if it computed none).
    fn input_grad(&self, input: &Tensor) -> Result<Tensor> {
        match self.index {
            Some(i) => match self.segment.take_input_grad(i)? {
                Some(g) => Ok(g),
                None => input.zeros_like(),
            },
            None => input.zeros_like(),
        }
    }
}

/// The first link: a one-element zero made from the first input.
impl CustomOp1 for Link {
    fn name(&self) -> &'static str {
        "checkpoint-link"
    }

    fn cpu_fwd(&self, s: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        zero_scalar(s, self.segment.dtype)
    }

    fn cuda_fwd(&self, s: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        zero_scalar(s, self.segment.dtype)
    }

    fn metal_fwd(&self, s: &MetalStorage, _: &Layout) -> Result<(MetalStorage, Shape)> {
        zero_scalar(s, self.segment.dtype)
    }

    fn bwd(&self, arg: &Tensor, _: &Tensor, _: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.input_grad(arg)?))
    }
}

/// A later link: a one-element zero made from the previous link and one more input.
impl CustomOp2 for Link {
    fn name(&self) -> &'static str {
        "checkpoint-link"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        zero_scalar(s, self.segment.dtype)
    }

    fn cuda_fwd(
        &self,
        s: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        zero_scalar(s, self.segment.dtype)
    }

    fn metal_fwd(
        &self,
        s: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        zero_scalar(s, self.segment.dtype)
    }

    fn bwd(
        &self,
        prev: &Tensor,
        input: &Tensor,
        _: &Tensor,
        _: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(prev.zeros_like()?), Some(self.input_grad(input)?)))
    }
}
