//! CUDA kernels of softmax cross-entropy: one block per row (log-sum-exp in `f64`), the row
//! losses summed by the deterministic final-sum kernel; the labels live on the device as `i32`
//! ([`Labels`], copied there once when made).

use super::CrossEntropyKernels;
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{launch, per_row, scratch, CudaElem, Scratch};
use crate::error::Result;
use crate::labels::Labels;
use crate::ops::reduce::cuda::K as ReduceK;
use crate::tensor::Tensor;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        CeLossRows = "ce_loss_rows",
        CeGrad = "ce_grad",
    }
}

impl CrossEntropyKernels for CudaKernels {
    fn cross_entropy_forward(&self, logits: &Tensor, labels: &Labels) -> Result<Tensor> {
        let labels_d = &labels.indices(OP)?.0;
        let (n, classes) = (labels.len(), logits.shape()[1]);
        dispatch_float!(logits.dtype(), T => loss::<T>(logits, labels_d, n, classes))
    }

    fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        labels: &Labels,
        g: &Tensor,
    ) -> Result<Tensor> {
        let labels_d = &labels.indices(OP)?.0;
        let (n, classes) = (labels.len(), logits.shape()[1]);
        dispatch_float!(logits.dtype(), T => grad::<T>(logits, labels_d, g, n, classes))
    }
}

const OP: &str = "cross_entropy";

fn loss<T: CudaElem>(
    logits: &Tensor,
    labels: &Scratch<i32>,
    n: usize,
    classes: usize,
) -> Result<Tensor> {
    let dev = logits.device();
    let be = &dev.cuda_handle("cross_entropy")?.backend;
    let mut rows = scratch::<f64>(dev, n)?;
    let classes_u = classes as u64;
    let xs = logits.cuda_slice::<T>()?;
    launch!(be, K::CeLossRows, T::DTYPE, per_row(n); xs, &labels.buf, &classes_u, &mut rows.buf)?;
    let mut out = Tensor::cuda_uninit::<T>(&[1], dev)?;
    let (count, mul, div) = (n as u64, 1.0f64, n as f64);
    let o = out.cuda_slice_mut::<T>()?;
    launch!(be, ReduceK::SumFinal, T::DTYPE, per_row(1); &rows.buf, &count, &mul, &div, o)?;
    Ok(out)
}

fn grad<T: CudaElem>(
    logits: &Tensor,
    labels: &Scratch<i32>,
    g: &Tensor,
    n: usize,
    classes: usize,
) -> Result<Tensor> {
    let dev = logits.device();
    let be = &dev.cuda_handle("cross_entropy")?.backend;
    let mut gx = Tensor::cuda_uninit::<T>(logits.shape(), dev)?;
    let (classes_u, nf) = (classes as u64, n as f64);
    let (xs, gs) = (logits.cuda_slice::<T>()?, g.cuda_slice::<T>()?);
    let o = gx.cuda_slice_mut::<T>()?;
    launch!(be, K::CeGrad, T::DTYPE, per_row(n); xs, &labels.buf, gs, &classes_u, &nf, o)?;
    Ok(gx)
}
