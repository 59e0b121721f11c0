//! cuDNN descriptors: tensors, filters, convolutions and pooling windows, each destroyed when
//! dropped.

use super::super::error::cudnn_err;
use crate::dtype::DType;
use crate::error::{Error, Result};
use cudarc::cudnn::{result, sys};

/// cuDNN's data type of a dtype.
pub(crate) fn data_type(dtype: DType) -> sys::cudnnDataType_t {
    match dtype {
        DType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        DType::F64 => sys::cudnnDataType_t::CUDNN_DATA_DOUBLE,
        DType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        DType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
    }
}

/// The type cuDNN computes a convolution of `dtype` data in: `f64` for `f64`, `f32` for the
/// others (for bf16 / f16 data: products and sums in `f32`, cuDNN's "pseudo half" configs).
pub(crate) fn compute_type(dtype: DType) -> sys::cudnnDataType_t {
    match dtype {
        DType::F64 => sys::cudnnDataType_t::CUDNN_DATA_DOUBLE,
        DType::F32 | DType::BF16 | DType::F16 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
    }
}

/// A dimension as cuDNN's `int`, or an error for a tensor too large for cuDNN.
pub(super) fn dim(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::invalid(op, format!("dimension {v} exceeds cuDNN's int range")))
}

/// Four dimensions as cuDNN's `int`s.
fn dims4(op: &'static str, d: [usize; 4]) -> Result<[i32; 4]> {
    Ok([
        dim(op, d[0])?,
        dim(op, d[1])?,
        dim(op, d[2])?,
        dim(op, d[3])?,
    ])
}

/// A 4-d NCHW tensor descriptor.
#[derive(Debug)]
pub(crate) struct TensorDesc(pub(crate) sys::cudnnTensorDescriptor_t);
/// A 4-d KCRS filter descriptor.
#[derive(Debug)]
pub(crate) struct FilterDesc(pub(crate) sys::cudnnFilterDescriptor_t);
/// A 2-d convolution descriptor.
#[derive(Debug)]
pub(crate) struct ConvDesc(pub(crate) sys::cudnnConvolutionDescriptor_t);
/// A 2-d pooling descriptor.
#[derive(Debug)]
pub(crate) struct PoolDesc(pub(crate) sys::cudnnPoolingDescriptor_t);

// SAFETY: descriptors are host-side parameter blocks; they are only read or changed while the
// owning `Dnn` mutex is held, so no two threads use one at the same time.
unsafe impl Send for TensorDesc {}
unsafe impl Sync for TensorDesc {}
unsafe impl Send for FilterDesc {}
unsafe impl Sync for FilterDesc {}
unsafe impl Send for ConvDesc {}
unsafe impl Sync for ConvDesc {}
unsafe impl Send for PoolDesc {}
unsafe impl Sync for PoolDesc {}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateTensorDescriptor and destroyed only here.
        let _ = unsafe { result::destroy_tensor_descriptor(self.0) };
    }
}
impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateFilterDescriptor and destroyed only here.
        let _ = unsafe { result::destroy_filter_descriptor(self.0) };
    }
}
impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateConvolutionDescriptor and destroyed only here.
        let _ = unsafe { result::destroy_convolution_descriptor(self.0) };
    }
}
impl Drop for PoolDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreatePoolingDescriptor and destroyed only here.
        let _ = unsafe { sys::cudnnDestroyPoolingDescriptor(self.0) };
    }
}

impl TensorDesc {
    /// A new descriptor of `dims` (packed).
    pub(super) fn new(op: &'static str, dtype: DType, dims: [usize; 4]) -> Result<Self> {
        let d = TensorDesc(
            result::create_tensor_descriptor()
                .map_err(|e| cudnn_err("cudnnCreateTensorDescriptor", e))?,
        );
        // SAFETY: `d.0` was just created.
        unsafe {
            result::set_tensor4d_descriptor(
                d.0,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                data_type(dtype),
                dims4(op, dims)?,
            )
        }
        .map_err(|e| cudnn_err("cudnnSetTensor4dDescriptor", e))?;
        Ok(d)
    }

    /// A 4-d descriptor of `dims` with explicit element `strides` (a view into a larger buffer).
    pub(super) fn strided(
        op: &'static str,
        dtype: DType,
        dims: [usize; 4],
        strides: [usize; 4],
    ) -> Result<Self> {
        let d = TensorDesc(
            result::create_tensor_descriptor()
                .map_err(|e| cudnn_err("cudnnCreateTensorDescriptor", e))?,
        );
        // SAFETY: `d.0` was just created.
        unsafe {
            result::set_tensor4d_descriptor_ex(
                d.0,
                data_type(dtype),
                dims4(op, dims)?,
                dims4(op, strides)?,
            )
        }
        .map_err(|e| cudnn_err("cudnnSetTensor4dDescriptorEx", e))?;
        Ok(d)
    }
}

impl FilterDesc {
    /// A new descriptor of `dims` (packed).
    pub(super) fn new(op: &'static str, dtype: DType, dims: [usize; 4]) -> Result<Self> {
        let d = FilterDesc(
            result::create_filter_descriptor()
                .map_err(|e| cudnn_err("cudnnCreateFilterDescriptor", e))?,
        );
        // SAFETY: `d.0` was just created.
        unsafe {
            result::set_filter4d_descriptor(
                d.0,
                data_type(dtype),
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                dims4(op, dims)?,
            )
        }
        .map_err(|e| cudnn_err("cudnnSetFilter4dDescriptor", e))?;
        Ok(d)
    }
}

impl ConvDesc {
    /// The descriptor of a 2-d cross-correlation with `padding` and `stride` on both axes, of
    /// `dtype` data (computing in [`compute_type`]), with math type `math`.
    pub(super) fn new(
        op: &'static str,
        dtype: DType,
        (padding, stride): (usize, usize),
        math: sys::cudnnMathType_t,
    ) -> Result<Self> {
        let conv = ConvDesc(
            result::create_convolution_descriptor()
                .map_err(|e| cudnn_err("cudnnCreateConvolutionDescriptor", e))?,
        );
        let (p, s) = (dim(op, padding)?, dim(op, stride)?);
        // SAFETY: `conv.0` was just created.
        unsafe {
            result::set_convolution2d_descriptor(
                conv.0,
                p,
                p,
                s,
                s,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                compute_type(dtype),
            )
        }
        .map_err(|e| cudnn_err("cudnnSetConvolution2dDescriptor", e))?;
        conv.set_math(math)?;
        Ok(conv)
    }

    /// Sets the math type the next call runs with. Call with the `Dnn` lock held.
    pub(crate) fn set_math(&self, math: sys::cudnnMathType_t) -> Result<()> {
        // SAFETY: the descriptor is alive (owned by `self`) and used under the `Dnn` lock.
        unsafe { result::set_convolution_math_type(self.0, math) }
            .map_err(|e| cudnn_err("cudnnSetConvolutionMathType", e))
    }
}
