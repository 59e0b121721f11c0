//! CUDA kernel of the finiteness check: one multi-tensor launch over a device list of addresses
//! and lengths into a zeroed flag, no synchronisation. Compiled by NVRTC, not yet run on a GPU.

use super::FiniteKernels;
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{launch, multi_grid, scratch_from_host, CudaElem};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        NonFiniteMulti = "non_finite_multi",
    }
}

fn flag<T: CudaElem>(xs: &[&Tensor]) -> Result<Tensor> {
    let first = xs
        .first()
        .ok_or_else(|| Error::invalid(super::OP, "no tensor to check"))?;
    let dev = first.device();
    let be = &dev.cuda_handle(super::OP)?.backend;
    let count = xs.len();
    let mut list = vec![0u64; 2 * count];
    for (i, x) in xs.iter().enumerate() {
        list[i] = be.ptr(x.cuda_slice::<T>()?);
        list[count + i] = x.numel() as u64;
    }
    let mut out = Tensor::zeros(&[1], T::DTYPE, dev)?;
    let longest = list[count..].iter().copied().max().unwrap_or(0);
    if longest == 0 {
        return Ok(out);
    }
    let list_d = scratch_from_host::<u64>(dev, &list)?;
    let n = count as u64;
    let o = out.cuda_slice_mut::<T>()?;
    launch!(be, K::NonFiniteMulti, T::DTYPE, multi_grid(longest as usize, count); &list_d.buf, &n, o)?;
    Ok(out)
}

impl FiniteKernels for CudaKernels {
    fn non_finite(&self, xs: &[&Tensor]) -> Result<Tensor> {
        let Some(first) = xs.first() else {
            return Err(Error::invalid(super::OP, "no tensor to check"));
        };
        dispatch_float!(first.dtype(), T => flag::<T>(xs))
    }
}
