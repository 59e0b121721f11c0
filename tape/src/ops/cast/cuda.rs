//! CUDA kernels of the cast between any two dtypes (NVRTC, `kernels.cu`): one launch, each
//! value rounded once to nearest even (the CPU's conversions, bit for bit). A range cast reads
//! (or writes) a view of the buffer, so no copy of the range is made first.

use super::{check_range, CastKernels};
use crate::backend::CudaKernels;
use crate::device::cuda::{grid, launch, nvrtc_program, CudaScalar};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::{numel_of, Tensor};

nvrtc_program! {
    /// The NVRTC kernels of this folder's `kernels.cu` (the suffix is the source dtype).
    pub(crate) enum K from include_str!("kernels.cu") => {
        ToF32 = "cast_to_f32",
        ToF64 = "cast_to_f64",
        ToBf16 = "cast_to_bf16",
        ToF16 = "cast_to_f16",
    }
}

/// The kernel that writes `dtype`.
fn to(dtype: DType) -> K {
    match dtype {
        DType::F32 => K::ToF32,
        DType::F64 => K::ToF64,
        DType::BF16 => K::ToBf16,
        DType::F16 => K::ToF16,
    }
}

impl CastKernels for CudaKernels {
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        self.cast_range(x, 0, x.shape(), dtype)
    }

    fn cast_range(
        &self,
        x: &Tensor,
        start: usize,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        check_range(start, numel_of(shape), x.numel())?;
        dispatch_scalar!(x.dtype(), S => dispatch_scalar!(dtype, D => range_t::<S, D>(x, start, shape)))
    }

    fn cast_into(&self, dst: &mut Tensor, start: usize, src: &Tensor) -> Result<()> {
        check_range(start, src.numel(), dst.numel())?;
        dispatch_scalar!(src.dtype(), S => dispatch_scalar!(dst.dtype(), D => into_t::<S, D>(dst, start, src)))
    }
}

/// Elements `start ..` of `x` (as many as `shape` holds) cast to `D`, as a new tensor of `shape`.
fn range_t<S: CudaScalar, D: CudaScalar>(
    x: &Tensor,
    start: usize,
    shape: &[usize],
) -> Result<Tensor> {
    let mut out = Tensor::cuda_uninit::<D>(shape, x.device())?;
    let n = out.numel();
    if n > 0 {
        let cu = x.device().cuda_handle("cast")?;
        let src = x.cuda_slice::<S>()?.slice(start..start + n);
        let dst = out.cuda_slice_mut::<D>()?;
        let len = n as u64;
        launch!(&cu.backend, to(D::DTYPE), S::DTYPE, grid(n); dst, &src, &len)?;
    }
    Ok(out)
}

/// `src` cast to `D`, written over `dst`'s elements `start .. start + src.numel()`.
fn into_t<S: CudaScalar, D: CudaScalar>(
    dst: &mut Tensor,
    start: usize,
    src: &Tensor,
) -> Result<()> {
    let n = src.numel();
    if n == 0 {
        return Ok(());
    }
    let cu = src.device().cuda_handle("cast")?;
    let s = src.cuda_slice::<S>()?;
    let mut d = dst.cuda_slice_mut::<D>()?.slice_mut(start..start + n);
    let len = n as u64;
    launch!(&cu.backend, to(D::DTYPE), S::DTYPE, grid(n); &mut d, s, &len)
}
