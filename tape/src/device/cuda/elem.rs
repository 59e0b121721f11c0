//! Device data of one buffer ([`CudaData`]) and the element types the CUDA kernels take
//! ([`CudaElem`]: `f32` and `f64`).

use crate::dtype::{DType, Elem};
use cudarc::cudnn::CudnnDataType;
use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

/// The elements of one CUDA buffer, tagged by dtype.
#[derive(Debug)]
pub(crate) enum CudaData {
    /// `f32` elements.
    F32(CudaSlice<f32>),
    /// `f64` elements.
    F64(CudaSlice<f64>),
}

impl CudaData {
    pub(crate) fn dtype(&self) -> DType {
        match self {
            CudaData::F32(_) => DType::F32,
            CudaData::F64(_) => DType::F64,
        }
    }
}

/// An element type with CUDA kernels, cuDNN and cuBLAS support.
pub(crate) trait CudaElem:
    Elem + DeviceRepr + ValidAsZeroBits + CudnnDataType<Scalar = Self>
{
    /// The slice, if `data` holds this type.
    fn cuda(data: &CudaData) -> Option<&CudaSlice<Self>>;
    /// The mutable slice, if `data` holds this type.
    fn cuda_mut(data: &mut CudaData) -> Option<&mut CudaSlice<Self>>;
    /// Tags a slice.
    fn wrap_cuda(s: CudaSlice<Self>) -> CudaData;
}

macro_rules! impl_cuda_elem {
    ($t:ty, $variant:ident) => {
        impl CudaElem for $t {
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
impl_cuda_elem!(f32, F32);
impl_cuda_elem!(f64, F64);
