//! Device data of one buffer ([`CudaData`]) and the element types the CUDA side takes: every
//! dtype is a [`CudaScalar`] (a buffer's elements: uploads, copies, fills, casts, the NVRTC
//! kernels, cuDNN and cuBLAS with 16-bit descriptors), and `f32` / `f64` are also
//! [`CudaElem`]s (the kernels written against [`Elem`] arithmetic).

use crate::dtype::{bf16, f16, DType, Elem, Scalar};
use cudarc::cudnn::CudnnDataType;
use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

/// The elements of one CUDA buffer, tagged by dtype.
#[derive(Debug)]
pub(crate) enum CudaData {
    /// `f32` elements.
    F32(CudaSlice<f32>),
    /// `f64` elements.
    F64(CudaSlice<f64>),
    /// `bf16` elements (2 bytes each).
    BF16(CudaSlice<bf16>),
    /// `f16` elements (2 bytes each).
    F16(CudaSlice<f16>),
}

/// Runs `$body` with `$s` bound to the slice of a [`CudaData`] (`&` or `&mut`, as `$data` is)
/// and `$T` to its element type, whichever dtype it holds.
macro_rules! with_cuda_slice {
    ($data:expr, $s:ident: $T:ident => $body:expr) => {
        match $data {
            $crate::device::cuda::CudaData::F32($s) => {
                #[allow(dead_code)]
                type $T = f32;
                $body
            }
            $crate::device::cuda::CudaData::F64($s) => {
                #[allow(dead_code)]
                type $T = f64;
                $body
            }
            $crate::device::cuda::CudaData::BF16($s) => {
                #[allow(dead_code)]
                type $T = $crate::dtype::bf16;
                $body
            }
            $crate::device::cuda::CudaData::F16($s) => {
                #[allow(dead_code)]
                type $T = $crate::dtype::f16;
                $body
            }
        }
    };
}
pub(crate) use with_cuda_slice;

impl CudaData {
    /// The dtype of the elements.
    pub(crate) fn dtype(&self) -> DType {
        match self {
            CudaData::F32(_) => DType::F32,
            CudaData::F64(_) => DType::F64,
            CudaData::BF16(_) => DType::BF16,
            CudaData::F16(_) => DType::F16,
        }
    }
}

/// An element type a CUDA buffer holds (every dtype): its slice in a [`CudaData`], and what
/// cuDNN needs of it (its data type; scaling factors are `f32` for the 16-bit types).
pub(crate) trait CudaScalar: Scalar + DeviceRepr + ValidAsZeroBits + CudnnDataType {
    /// The element type of cuDNN's batch-norm scale, bias and statistics for data of this type
    /// (the type `cudnnDeriveBNTensorDescriptor` gives): `f32` for the 16-bit types, the type
    /// itself otherwise.
    type Param: CudaElem;

    /// The slice, if `data` holds this type.
    fn cuda(data: &CudaData) -> Option<&CudaSlice<Self>>;
    /// The mutable slice, if `data` holds this type.
    fn cuda_mut(data: &mut CudaData) -> Option<&mut CudaSlice<Self>>;
    /// Tags a slice.
    fn wrap_cuda(s: CudaSlice<Self>) -> CudaData;

    /// `v` as a cuDNN scaling factor (alpha, beta) for data of this type: `f64` for `f64`
    /// data, `f32` for the others (the 16-bit types included).
    fn scaling(v: f64) -> <Self as CudnnDataType>::Scalar {
        Self::of(v).into_scaling_parameter()
    }
}

/// An element type the CUDA kernels written with [`Elem`] arithmetic take (`f32`, `f64`).
pub(crate) trait CudaElem: CudaScalar + Elem + CudnnDataType<Scalar = Self> {}
impl CudaElem for f32 {}
impl CudaElem for f64 {}

macro_rules! impl_cuda_scalar {
    ($t:ty, $variant:ident, $param:ty) => {
        impl CudaScalar for $t {
            type Param = $param;

            fn cuda(data: &CudaData) -> Option<&CudaSlice<Self>> {
                match data {
                    CudaData::$variant(s) => Some(s),
                    _ => None,
                }
            }
            fn cuda_mut(data: &mut CudaData) -> Option<&mut CudaSlice<Self>> {
                match data {
                    CudaData::$variant(s) => Some(s),
                    _ => None,
                }
            }
            fn wrap_cuda(s: CudaSlice<Self>) -> CudaData {
                CudaData::$variant(s)
            }
        }
    };
}
impl_cuda_scalar!(f32, F32, f32);
impl_cuda_scalar!(f64, F64, f64);
impl_cuda_scalar!(bf16, BF16, f32);
impl_cuda_scalar!(f16, F16, f32);
