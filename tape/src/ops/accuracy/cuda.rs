//! CUDA kernel of the accuracy count: one block over all rows (a thread per row finds its
//! top-1 class; the hits are summed in the block), no synchronisation. Compiled by NVRTC, not
//! yet run on a GPU.

use super::AccuracyKernels;
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{launch, per_row, CudaElem};
use crate::error::Result;
use crate::labels::Labels;
use crate::tensor::Tensor;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        CorrectCount = "correct_count",
    }
}

fn count<T: CudaElem>(logits: &Tensor, labels: &Labels) -> Result<Tensor> {
    let dev = logits.device();
    let be = &dev.cuda_handle(super::OP)?.backend;
    let indices = &labels.indices(super::OP)?.0;
    let (n, classes) = (labels.len() as u64, logits.shape()[1] as u64);
    let mut out = Tensor::cuda_uninit::<T>(&[1], dev)?;
    let xs = logits.cuda_slice::<T>()?;
    let o = out.cuda_slice_mut::<T>()?;
    launch!(be, K::CorrectCount, T::DTYPE, per_row(1); xs, &indices.buf, &n, &classes, o)?;
    Ok(out)
}

impl AccuracyKernels for CudaKernels {
    fn correct_count(&self, logits: &Tensor, labels: &Labels) -> Result<Tensor> {
        dispatch_float!(logits.dtype(), T => count::<T>(logits, labels))
    }
}
