//! Element types. Tensors carry their dtype at run time; kernels are written once, generic over
//! [`Elem`], and instantiated for `f32` (training) and `f64` (gradient checks).

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, MulAssign, SubAssign};

/// The run-time element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float: the training dtype.
    F32,
    /// 64-bit IEEE float: used for gradient checks and bit-exact equivalence tests.
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }
}

/// Host data of one buffer, tagged by dtype.
#[derive(Clone, Debug)]
pub enum CpuData {
    /// `f32` elements.
    F32(Vec<f32>),
    /// `f64` elements.
    F64(Vec<f64>),
}

impl CpuData {
    pub(crate) fn dtype(&self) -> DType {
        match self {
            CpuData::F32(_) => DType::F32,
            CpuData::F64(_) => DType::F64,
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            CpuData::F32(v) => v.len(),
            CpuData::F64(v) => v.len(),
        }
    }
}

pub(crate) mod sealed {
    use super::CpuData;

    /// Ties an element type to its storage variant; sealed so only the engine adds dtypes.
    pub trait Storable: Sized {
        fn slice(data: &CpuData) -> Option<&[Self]>;
        fn slice_mut(data: &mut CpuData) -> Option<&mut [Self]>;
        fn wrap(v: Vec<Self>) -> CpuData;
    }
}

/// A float element type the engine's kernels are generic over.
pub trait Elem:
    num_traits::Float
    + Send
    + Sync
    + Debug
    + Default
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + sealed::Storable
    + 'static
{
    /// The run-time tag of this type.
    const DTYPE: DType;
    /// Converts from `f64` (rounding for `f32`).
    fn of(x: f64) -> Self;
    /// Converts to `f64` (exact).
    fn f64(self) -> f64;
}

macro_rules! impl_elem {
    ($t:ty, $variant:ident) => {
        impl sealed::Storable for $t {
            fn slice(data: &CpuData) -> Option<&[Self]> {
                match data {
                    CpuData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(data: &mut CpuData) -> Option<&mut [Self]> {
                match data {
                    CpuData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> CpuData {
                CpuData::$variant(v)
            }
        }
        impl Elem for $t {
            const DTYPE: DType = DType::$variant;
            fn of(x: f64) -> Self {
                x as $t
            }
            fn f64(self) -> f64 {
                self as f64
            }
        }
    };
}
impl_elem!(f32, F32);
impl_elem!(f64, F64);
