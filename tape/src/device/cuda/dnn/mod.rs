//! cuDNN: the handle of one GPU and caches of descriptors and convolution plans, all behind one
//! mutex (a cuDNN handle must not be used by two threads at once). Descriptors are created once
//! per shape and reused; a convolution plan also holds the algorithms chosen for its shape.

mod desc;
mod find;
mod plan;

pub(crate) use desc::{PoolDesc, TensorDesc};
pub(crate) use find::{FindArgs, FindContext};
pub(crate) use plan::{ConvKey, ConvPlan};

use super::error::cudnn_err;
use crate::dtype::DType;
use crate::error::Result;
use cudarc::cudnn::{result, sys};
use cudarc::driver::CudaStream;
use desc::dim;
use std::collections::HashMap;
use std::sync::Arc;

/// The cuDNN state of one GPU. Use only with the owning mutex held.
#[derive(Debug)]
pub(crate) struct Dnn {
    pub(crate) handle: sys::cudnnHandle_t,
    tensors: HashMap<(DType, [usize; 4]), Arc<TensorDesc>>,
    strided: HashMap<(DType, [usize; 4], [usize; 4]), Arc<TensorDesc>>,
    bn: HashMap<(DType, [usize; 4]), Arc<TensorDesc>>,
    pools: HashMap<(sys::cudnnPoolingMode_t, usize, usize, usize), Arc<PoolDesc>>,
    convs: HashMap<ConvKey, Arc<ConvPlan>>,
}

// SAFETY: the handle and descriptors are only used while the `Mutex<Dnn>` that owns this value
// is locked, so moving it between threads is sound (cuDNN forbids concurrent use of a handle,
// not use from different threads one after another).
unsafe impl Send for Dnn {}

impl Drop for Dnn {
    fn drop(&mut self) {
        if !self.handle.is_null() {
            // SAFETY: created by cudnnCreate and destroyed only here.
            let _ = unsafe { result::destroy_handle(self.handle) };
        }
    }
}

impl Dnn {
    /// A cuDNN handle that runs its work on `stream`.
    pub(crate) fn new(stream: &CudaStream) -> Result<Self> {
        let handle = result::create_handle().map_err(|e| cudnn_err("cudnnCreate", e))?;
        let dnn = Dnn {
            handle,
            tensors: HashMap::new(),
            strided: HashMap::new(),
            bn: HashMap::new(),
            pools: HashMap::new(),
            convs: HashMap::new(),
        };
        // SAFETY: the handle is valid and the stream outlives it (the backend owns both).
        unsafe { result::set_stream(dnn.handle, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(|e| cudnn_err("cudnnSetStream", e))?;
        Ok(dnn)
    }

    /// The NCHW descriptor of a tensor of `dims`.
    pub(crate) fn tensor(
        &mut self,
        op: &'static str,
        dtype: DType,
        dims: [usize; 4],
    ) -> Result<Arc<TensorDesc>> {
        if let Some(d) = self.tensors.get(&(dtype, dims)) {
            return Ok(d.clone());
        }
        let d = Arc::new(TensorDesc::new(op, dtype, dims)?);
        self.tensors.insert((dtype, dims), d.clone());
        Ok(d)
    }

    /// The descriptor of a strided 4-d view: `dims` with element `strides` (for example a
    /// channel slice `[n, c, h, w]` of an NCHW buffer of `C` channels: strides
    /// `[C*h*w, h*w, w, 1]`).
    pub(crate) fn tensor_strided(
        &mut self,
        op: &'static str,
        dtype: DType,
        dims: [usize; 4],
        strides: [usize; 4],
    ) -> Result<Arc<TensorDesc>> {
        let key = (dtype, dims, strides);
        if let Some(d) = self.strided.get(&key) {
            return Ok(d.clone());
        }
        let d = Arc::new(TensorDesc::strided(op, dtype, dims, strides)?);
        self.strided.insert(key, d.clone());
        Ok(d)
    }

    /// The per-channel (`[1, C, 1, 1]`) parameter descriptor of spatial batch norm over `dims`.
    pub(crate) fn bn_param(
        &mut self,
        op: &'static str,
        dtype: DType,
        dims: [usize; 4],
    ) -> Result<Arc<TensorDesc>> {
        if let Some(d) = self.bn.get(&(dtype, dims)) {
            return Ok(d.clone());
        }
        let x = self.tensor(op, dtype, dims)?;
        let d = TensorDesc(
            result::create_tensor_descriptor()
                .map_err(|e| cudnn_err("cudnnCreateTensorDescriptor", e))?,
        );
        // SAFETY: both descriptors are alive.
        unsafe {
            sys::cudnnDeriveBNTensorDescriptor(
                d.0,
                x.0,
                sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL,
            )
        }
        .result()
        .map_err(|e| cudnn_err("cudnnDeriveBNTensorDescriptor", e))?;
        let d = Arc::new(d);
        self.bn.insert((dtype, dims), d.clone());
        Ok(d)
    }

    /// A square pooling window.
    pub(crate) fn pool(
        &mut self,
        op: &'static str,
        mode: sys::cudnnPoolingMode_t,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Arc<PoolDesc>> {
        let key = (mode, kernel, stride, padding);
        if let Some(d) = self.pools.get(&key) {
            return Ok(d.clone());
        }
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` receives a new descriptor.
        unsafe { sys::cudnnCreatePoolingDescriptor(&mut raw) }
            .result()
            .map_err(|e| cudnn_err("cudnnCreatePoolingDescriptor", e))?;
        let d = PoolDesc(raw);
        let (k, s, p) = (dim(op, kernel)?, dim(op, stride)?, dim(op, padding)?);
        // SAFETY: `d.0` was just created.
        unsafe {
            sys::cudnnSetPooling2dDescriptor(
                d.0,
                mode,
                sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                k,
                k,
                p,
                p,
                s,
                s,
            )
        }
        .result()
        .map_err(|e| cudnn_err("cudnnSetPooling2dDescriptor", e))?;
        let d = Arc::new(d);
        self.pools.insert(key, d.clone());
        Ok(d)
    }

    /// The plan of a convolution shape: descriptors plus the algorithm of each direction, chosen
    /// by cuDNN's heuristics within the workspace limit (strict fp32 unless `key.tf32`).
    pub(crate) fn conv(&mut self, key: ConvKey) -> Result<Arc<ConvPlan>> {
        if let Some(p) = self.convs.get(&key) {
            return Ok(p.clone());
        }
        let plan = Arc::new(ConvPlan::new(self.handle, key)?);
        self.convs.insert(key, plan.clone());
        Ok(plan)
    }
}
