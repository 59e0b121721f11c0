//! Mapping of CUDA driver, cuDNN and cuBLAS status codes to the engine's [`Error`], by name.
//! Out-of-memory statuses of allocations become [`Error::OutOfMemory`] (see `alloc_err`).

use crate::error::Error;
use cudarc::cublas::result::CublasError;
use cudarc::cudnn::result::CudnnError;
use cudarc::driver::DriverError;

/// `CUDA {call}: CUDA_ERROR_... (the driver's description)`.
pub(crate) fn driver_err(call: &str, e: DriverError) -> Error {
    let text = e
        .error_string()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if text.is_empty() {
        Error::Backend(format!("CUDA {call}: {:?}", e.0))
    } else {
        Error::Backend(format!("CUDA {call}: {:?} ({text})", e.0))
    }
}

/// `cuDNN {call}: CUDNN_STATUS_...`.
pub(crate) fn cudnn_err(call: &str, e: CudnnError) -> Error {
    Error::Backend(format!("cuDNN {call}: {:?}", e.0))
}

/// `cuBLAS {call}: CUBLAS_STATUS_...`.
pub(crate) fn cublas_err(call: &str, e: CublasError) -> Error {
    Error::Backend(format!("cuBLAS {call}: {:?}", e.0))
}

/// Whether a driver error is an out-of-memory status.
pub(crate) fn is_oom(e: &DriverError) -> bool {
    e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
}
