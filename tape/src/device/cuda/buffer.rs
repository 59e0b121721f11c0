//! Buffers on a GPU: what [`crate::device::storage`] needs from the CUDA side (allocate,
//! upload, download, copy, overwrite, free).

use super::{alloc_err, driver_err, with_cuda_slice, CudaData, CudaScalar};
use crate::device::storage::{Buffer, Storage};
use crate::device::Device;
use crate::dtype::sealed::Storable;
use crate::dtype::{CpuData, Scalar};
use crate::error::{Error, Result};
use cudarc::driver::CudaSlice;

/// `len` uninitialised elements of `T` from the GPU's pool (not charged: the caller charges).
pub(crate) fn alloc_slice<T: CudaScalar>(device: &Device, len: usize) -> Result<CudaSlice<T>> {
    let cu = device.cuda_handle("alloc")?;
    cu.backend
        .alloc::<T>(len)
        .map_err(|e| alloc_err(device, &cu.backend, len * std::mem::size_of::<T>(), e))
}

fn upload_t<T: CudaScalar>(device: &Device, values: &[T]) -> Result<CudaData> {
    let mut s = alloc_slice::<T>(device, values.len())?;
    if !values.is_empty() {
        let cu = device.cuda_handle("htod")?;
        cu.backend
            .stream
            .memcpy_htod(values, &mut s)
            .map_err(|e| driver_err("cuMemcpyHtoDAsync", e))?;
    }
    Ok(T::wrap_cuda(s))
}

/// Host data copied to a new GPU allocation.
pub(crate) fn upload(device: &Device, data: &CpuData) -> Result<CudaData> {
    match data {
        CpuData::F32(v) => upload_t(device, v),
        CpuData::F64(v) => upload_t(device, v),
        CpuData::BF16(v) => upload_t(device, v),
        CpuData::F16(v) => upload_t(device, v),
    }
}

fn copy_t<T: CudaScalar>(device: &Device, src: &CudaSlice<T>, len: usize) -> Result<CudaData> {
    let mut dst = alloc_slice::<T>(device, len)?;
    if len > 0 {
        let cu = device.cuda_handle("dtod")?;
        cu.backend
            .stream
            .memcpy_dtod(&src.slice(0..len), &mut dst.slice_mut(0..len))
            .map_err(|e| driver_err("cuMemcpyDtoDAsync", e))?;
    }
    Ok(T::wrap_cuda(dst))
}

/// The first `len` elements of `data` copied to a new GPU allocation.
pub(crate) fn copy(device: &Device, data: &CudaData, len: usize) -> Result<CudaData> {
    with_cuda_slice!(data, s: T => copy_t(device, s, len))
}

fn download_t<T: CudaScalar>(device: &Device, s: &CudaSlice<T>, len: usize) -> Result<Vec<T>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let cu = device.cuda_handle("dtoh")?;
    cu.backend
        .stream
        .clone_dtoh(&s.slice(0..len))
        .map_err(|e| driver_err("cuMemcpyDtoHAsync", e))
}

/// The first `len` elements of `data` copied to host memory.
pub(crate) fn download(device: &Device, data: &CudaData, len: usize) -> Result<CpuData> {
    with_cuda_slice!(data, s: T => Ok(<T as Storable>::wrap(download_t(device, s, len)?)))
}

/// Overwrites the first `values.len()` elements of a GPU buffer (converted to its dtype).
pub(crate) fn overwrite(device: &Device, buf: &mut Buffer, values: &[f64]) -> Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    let cu = device.cuda_handle("overwrite")?;
    let n = values.len();
    let stream = &cu.backend.stream;
    let r = match &mut buf.data {
        // Each value rounded once (to nearest even) from f64, as the CPU's `Scalar::of`.
        Storage::Cuda(data) => with_cuda_slice!(data, s: T => {
            let host: Vec<T> = values.iter().map(|&v| T::of(v)).collect();
            stream.memcpy_htod(&host, &mut s.slice_mut(0..n))
        }),
        Storage::Cpu(_) | Storage::Meta(_) => {
            return Err(Error::invalid("overwrite", "not a GPU buffer"))
        }
    };
    r.map_err(|e| driver_err("cuMemcpyHtoDAsync", e))
}

/// Called before a GPU buffer of `device` is freed: the free is stream-ordered and needs the
/// context current on the dropping thread (which may never have used the GPU).
pub(crate) fn before_free(device: &Device) {
    if let Ok(cu) = device.cuda_handle("drop") {
        cu.backend.bind_quiet();
    }
}
