//! Buffers and tensors on a GPU: what [`crate::storage`] and [`crate::Tensor`] need from the CUDA
//! side (upload, download, copy, overwrite, free), and the device slices CUDA kernels work on.

use super::{alloc_err, driver_err, CudaData, CudaElem};
use crate::device::Device;
use crate::dtype::CpuData;
use crate::error::{Error, Result};
use crate::storage::{Buffer, Storage};
use crate::tensor::Tensor;
use cudarc::driver::CudaSlice;

/// `len` uninitialised elements of `T` from the GPU's pool (not charged: the caller charges).
fn alloc<T: CudaElem>(device: &Device, len: usize) -> Result<CudaSlice<T>> {
    let cu = device.cuda_handle("alloc")?;
    cu.backend
        .alloc::<T>(len)
        .map_err(|e| alloc_err(device, &cu.backend, len * std::mem::size_of::<T>(), e))
}

fn upload_t<T: CudaElem>(device: &Device, values: &[T]) -> Result<CudaData> {
    let mut s = alloc::<T>(device, values.len())?;
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
        CpuData::F32(v) => upload_t::<f32>(device, v),
        CpuData::F64(v) => upload_t::<f64>(device, v),
    }
}

fn copy_t<T: CudaElem>(device: &Device, src: &CudaSlice<T>, len: usize) -> Result<CudaData> {
    let mut dst = alloc::<T>(device, len)?;
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
    match data {
        CudaData::F32(s) => copy_t(device, s, len),
        CudaData::F64(s) => copy_t(device, s, len),
    }
}

fn download_t<T: CudaElem>(device: &Device, s: &CudaSlice<T>, len: usize) -> Result<Vec<T>> {
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
    Ok(match data {
        CudaData::F32(s) => CpuData::F32(download_t(device, s, len)?),
        CudaData::F64(s) => CpuData::F64(download_t(device, s, len)?),
    })
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
        Storage::Cuda(CudaData::F32(s)) => {
            let host: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            stream.memcpy_htod(&host, &mut s.slice_mut(0..n))
        }
        Storage::Cuda(CudaData::F64(s)) => stream.memcpy_htod(values, &mut s.slice_mut(0..n)),
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

impl Tensor {
    /// A new tensor of `shape` on a CUDA device whose elements are not initialised: the caller's
    /// kernel must write every one of them.
    pub(crate) fn cuda_uninit<T: CudaElem>(shape: &[usize], device: &Device) -> Result<Self> {
        let len = shape.iter().product();
        let buf = Buffer::charged(device, T::DTYPE, len, || {
            alloc::<T>(device, len).map(|s| Storage::Cuda(T::wrap_cuda(s)))
        })?;
        Ok(Tensor::from_buffer(buf, shape))
    }

    /// The device slice of a CUDA tensor of `T` (at least one element long, whatever the shape).
    pub(crate) fn cuda_slice<T: CudaElem>(&self) -> Result<&CudaSlice<T>> {
        match &self.buffer().data {
            Storage::Cuda(d) => T::cuda(d).ok_or(Error::DType {
                op: "cuda_slice",
                expected: T::DTYPE,
                got: self.dtype(),
            }),
            Storage::Cpu(_) | Storage::Meta(_) => Err(Error::Device {
                op: "cuda_slice",
                lhs: self.device().to_string(),
                rhs: "a CUDA device".into(),
            }),
        }
    }

    /// The mutable device slice of a CUDA tensor, copying the buffer first if it is shared (the
    /// id stays).
    pub(crate) fn cuda_slice_mut<T: CudaElem>(&mut self) -> Result<&mut CudaSlice<T>> {
        let (dtype, device) = (self.dtype(), self.device().to_string());
        match &mut self.buffer_mut()?.data {
            Storage::Cuda(d) => T::cuda_mut(d).ok_or(Error::DType {
                op: "cuda_slice_mut",
                expected: T::DTYPE,
                got: dtype,
            }),
            Storage::Cpu(_) | Storage::Meta(_) => Err(Error::Device {
                op: "cuda_slice_mut",
                lhs: device,
                rhs: "a CUDA device".into(),
            }),
        }
    }
}
