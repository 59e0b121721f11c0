//! Element types. Tensors carry their dtype at run time. Every dtype a tensor can hold is a
//! [`Scalar`]: `f32`, `f64`, and the 16-bit `bf16` and `f16` (the `half` crate's types) that
//! mixed precision stores activations in. Kernels are written once, generic over [`Elem`] (the
//! dtypes arithmetic runs in: `f32` for training, `f64` for gradient checks); a 16-bit tensor
//! is computed on in `f32` and rounded back (see [`crate::ops::cast`] and
//! [`crate::precision::Precision`]).

pub use half::{bf16, f16};
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
    /// bfloat16 (f32's 8 exponent bits, 8 significant bits): activations under
    /// [`crate::precision::Precision::Bf16`].
    BF16,
    /// IEEE half precision (5 exponent bits, 11 significant bits): activations under
    /// [`crate::precision::Precision::F16`], with loss scaling against its narrow range.
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// Whether this is a 16-bit dtype (stored in 16 bits, computed on in `f32`).
    pub fn is_half(self) -> bool {
        matches!(self, DType::BF16 | DType::F16)
    }

    /// The unit roundoff `u`: a value rounded to this dtype (round to nearest) is within a
    /// relative `u` of the exact one. `2^-p` for `p` significant bits: f64 2^-53, f32 2^-24,
    /// f16 2^-11, bf16 2^-8. Tests derive their tolerances from it.
    pub fn unit_roundoff(self) -> f64 {
        match self {
            DType::F64 => (2f64).powi(-53),
            DType::F32 => (2f64).powi(-24),
            DType::F16 => (2f64).powi(-11),
            DType::BF16 => (2f64).powi(-8),
        }
    }

    /// The name safetensors and PyTorch give this dtype (`F32`, `F64`, `BF16`, `F16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::BF16 => "BF16",
            DType::F16 => "F16",
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
    /// `bf16` elements.
    BF16(Vec<bf16>),
    /// `f16` elements.
    F16(Vec<f16>),
}

impl CpuData {
    pub(crate) fn dtype(&self) -> DType {
        match self {
            CpuData::F32(_) => DType::F32,
            CpuData::F64(_) => DType::F64,
            CpuData::BF16(_) => DType::BF16,
            CpuData::F16(_) => DType::F16,
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            CpuData::F32(v) => v.len(),
            CpuData::F64(v) => v.len(),
            CpuData::BF16(v) => v.len(),
            CpuData::F16(v) => v.len(),
        }
    }

    /// Drops the elements past the first `len`.
    pub(crate) fn truncate(&mut self, len: usize) {
        match self {
            CpuData::F32(v) => v.truncate(len),
            CpuData::F64(v) => v.truncate(len),
            CpuData::BF16(v) => v.truncate(len),
            CpuData::F16(v) => v.truncate(len),
        }
    }

    /// The first `len` elements converted to `f64` (exact for every dtype).
    pub(crate) fn to_f64(&self, len: usize) -> Vec<f64> {
        dispatch_scalar!(self.dtype(), T => <T as sealed::Storable>::slice(self).unwrap_or_default()[..len].iter().map(|&x| x.f64()).collect())
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

/// A type a tensor's elements can have: one per [`DType`].
pub trait Scalar: Copy + Send + Sync + Debug + Default + sealed::Storable + 'static {
    /// The run-time tag of this type.
    const DTYPE: DType;
    /// Converts from `f64`, rounding to nearest (even).
    fn of(x: f64) -> Self;
    /// Converts to `f64` (exact).
    fn f64(self) -> f64;
    /// Converts from `f32`, rounding to nearest (even); exact for `f32` and `f64`.
    fn of_f32(x: f32) -> Self;
    /// Converts to `f32` (exact for every dtype but `f64`, which rounds).
    fn f32(self) -> f32;
}

/// A float element type the engine's kernels compute in (`f32`, `f64`).
pub trait Elem: Scalar + num_traits::Float + Sum + AddAssign + SubAssign + MulAssign {}

macro_rules! impl_scalar {
    ($t:ty, $variant:ident, $of:expr, $to:expr, $of32:expr, $to32:expr) => {
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
        impl Scalar for $t {
            const DTYPE: DType = DType::$variant;
            fn of(x: f64) -> Self {
                $of(x)
            }
            fn f64(self) -> f64 {
                $to(self)
            }
            fn of_f32(x: f32) -> Self {
                $of32(x)
            }
            fn f32(self) -> f32 {
                $to32(self)
            }
        }
    };
}
impl_scalar!(f32, F32, |x| x as f32, |x| x as f64, |x| x, |x| x);
impl_scalar!(f64, F64, |x| x, |x| x, |x| x as f64, |x| x as f32);
/// `x` rounded to `f32` toward zero, its last bit set when that was inexact ("round to odd"):
/// rounding this to a format at least two bits narrower gives `x` rounded to nearest once.
/// (The `half` crate's own `from_f64` rounds some `f64`s that are `f32`s exactly to the wrong
/// bf16: `-11.781251907` to `-11.75`.)
fn round_to_odd_f32(x: f64) -> f32 {
    let f = x as f32;
    if f as f64 == x || x.is_nan() {
        return f;
    }
    // Inexact: step back toward zero when rounding went away from it (also from infinity to
    // the largest finite `f32`), then mark the lost bits.
    let bits = f.to_bits();
    let toward_zero = if (f as f64).abs() > x.abs() {
        bits - 1
    } else {
        bits
    };
    f32::from_bits(toward_zero | 1)
}

impl_scalar!(
    bf16,
    BF16,
    |x| bf16::from_f32(round_to_odd_f32(x)),
    bf16::to_f64,
    bf16::from_f32,
    bf16::to_f32
);
impl_scalar!(
    f16,
    F16,
    |x| f16::from_f32(round_to_odd_f32(x)),
    f16::to_f64,
    f16::from_f32,
    f16::to_f32
);
impl Elem for f32 {}
impl Elem for f64 {}
