//! CUDA kernel of `permute` (NVRTC, `kernels.cu`): one thread per output element, which finds
//! its input element from the output shape and the permuted input strides (passed by value).
//!
//! Not yet run on a GPU: the kernel compiles with NVRTC, nothing more is known.

use super::{layout, PermuteKernels, MAX_PERMUTE_DIMS};
use crate::backend::CudaKernels;
use crate::device::cuda::nvrtc_program;
use crate::device::cuda::{grid, launch, CudaScalar};
use crate::error::Result;
use crate::tensor::Tensor;
use cudarc::driver::DeviceRepr;

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu`.
    pub(crate) enum K from include_str!("kernels.cu") => {
        Permute = "permute",
    }
}

/// The output shape and the input stride of each output dimension, padded to [`MAX_PERMUTE_DIMS`]
/// (the layout of `PermDims` in `kernels.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PermDims {
    shape: [u64; MAX_PERMUTE_DIMS],
    stride: [u64; MAX_PERMUTE_DIMS],
}

// SAFETY: `PermDims` is `#[repr(C)]` plain data (two arrays of 8 u64) with the exact layout of
// the kernel's `struct PermDims`.
unsafe impl DeviceRepr for PermDims {}

impl PermuteKernels for CudaKernels {
    fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
        dispatch_scalar!(x.dtype(), T => permute_t::<T>(x, perm))
    }
}

fn permute_t<T: CudaScalar>(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let dev = x.device();
    let cu = dev.cuda_handle("permute")?;
    let (shape, strides) = layout(x.shape(), perm);
    let mut out = Tensor::cuda_uninit::<T>(&shape, dev)?;
    let n = out.numel() as u64;
    if n > 0 {
        let mut dims = PermDims::default();
        for (i, (&s, &st)) in shape.iter().zip(&strides).enumerate() {
            dims.shape[i] = s as u64;
            dims.stride[i] = st as u64;
        }
        let rank = shape.len() as u64;
        let xs = x.cuda_slice::<T>()?;
        let o = out.cuda_slice_mut::<T>()?;
        launch!(&cu.backend, K::Permute, T::DTYPE, grid(n as usize); o, xs, &dims, &rank, &n)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perm_dims_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<PermDims>(), 2 * 8 * MAX_PERMUTE_DIMS);
        assert_eq!(std::mem::align_of::<PermDims>(), 8);
    }
}
