//! The CUDA backend of a build without the cargo feature `cuda`: the same names as the real
//! one, but [`open`] fails with a clear error, so no CUDA device, buffer or handle can exist
//! (their types here have no values) and every other function is unreachable.

use crate::device::storage::Buffer;
use crate::device::{CudaOptions, Device};
use crate::dtype::{CpuData, DType};
use crate::error::{Error, Result};

/// The error of every attempt to use CUDA in this build.
pub(crate) fn not_built() -> Error {
    Error::Backend(
        "CUDA: this build of the engine has no CUDA backend (built without the cargo feature \
         `cuda`); rebuild with `--features cuda` on a machine with an NVIDIA GPU"
            .into(),
    )
}

/// Device data of a GPU buffer: none can exist in this build.
#[derive(Debug)]
pub(crate) enum CudaData {}

impl CudaData {
    pub(crate) fn dtype(&self) -> DType {
        match *self {}
    }
}

/// What a CUDA device holds: none can exist in this build.
#[derive(Clone, Debug)]
pub(crate) enum CudaHandle {}

impl CudaHandle {
    pub(crate) fn options(&self) -> CudaOptions {
        match *self {}
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        match *self {}
    }

    pub(crate) fn mem_get_info(&self) -> Result<(usize, usize)> {
        match *self {}
    }

    pub(crate) fn reserved_bytes(&self) -> Option<usize> {
        match *self {}
    }
}

/// Fails: this build has no CUDA backend.
pub(crate) fn open(_ordinal: usize, _options: CudaOptions) -> Result<CudaHandle> {
    Err(not_built())
}

pub(crate) fn upload(_device: &Device, _data: &CpuData) -> Result<CudaData> {
    Err(not_built())
}

pub(crate) fn copy(_device: &Device, data: &CudaData, _len: usize) -> Result<CudaData> {
    match *data {}
}

pub(crate) fn download(_device: &Device, data: &CudaData, _len: usize) -> Result<CpuData> {
    match *data {}
}

pub(crate) fn overwrite(_device: &Device, _buf: &mut Buffer, _values: &[f64]) -> Result<()> {
    Err(not_built())
}

pub(crate) fn before_free(_device: &Device) {}

/// Class indices on a GPU: none can exist in this build.
pub(crate) enum Indices {}

/// Fails: this build has no CUDA backend.
pub(crate) fn upload_indices(_device: &Device, _values: &[usize]) -> Result<Indices> {
    Err(not_built())
}
