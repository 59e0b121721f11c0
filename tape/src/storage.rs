//! Counted buffers: the one place memory is charged to and released from a device.

use crate::device::Device;
use crate::dtype::DType;
use crate::error::Result;

#[cfg(feature = "cuda")]
use crate::device::cuda::{self, CudaData, CudaElem};

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

/// Where a buffer's elements live: host memory, or (feature `cuda`) a GPU.
#[derive(Debug)]
pub(crate) enum Storage {
    /// Host memory.
    Cpu(CpuData),
    /// Device memory of a CUDA GPU.
    #[cfg(feature = "cuda")]
    Cuda(CudaData),
}

impl Storage {
    /// The host data, if the buffer is in host memory.
    pub(crate) fn cpu(&self) -> Option<&CpuData> {
        match self {
            Storage::Cpu(d) => Some(d),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => None,
        }
    }

    /// The mutable host data, if the buffer is in host memory.
    pub(crate) fn cpu_mut(&mut self) -> Option<&mut CpuData> {
        match self {
            Storage::Cpu(d) => Some(d),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => None,
        }
    }

    pub(crate) fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(d) => d.dtype(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(d) => d.dtype(),
        }
    }
}

/// A buffer charged to its device's accounting for as long as it lives.
#[derive(Debug)]
pub(crate) struct Buffer {
    pub(crate) data: Storage,
    pub(crate) device: Device,
    /// Elements (the logical length: a CUDA allocation has at least one element).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    len: usize,
    bytes: usize,
}

impl Buffer {
    /// `data` placed on `device`: kept as it is on the CPU, copied to the GPU on a CUDA device.
    pub(crate) fn new(device: &Device, data: CpuData) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if device.is_cuda() {
            return match data {
                CpuData::F32(v) => Buffer::cuda_from_host::<f32>(device, &v),
                CpuData::F64(v) => Buffer::cuda_from_host::<f64>(device, &v),
            };
        }
        let len = data.len();
        let bytes = len * data.dtype().size_in_bytes();
        device.memory().charge(bytes)?;
        Ok(Buffer {
            data: Storage::Cpu(data),
            device: device.clone(),
            len,
            bytes,
        })
    }

    /// A new, separately charged copy (copy-on-write of shared buffers).
    pub(crate) fn try_clone(&self) -> Result<Self> {
        match &self.data {
            Storage::Cpu(d) => Buffer::new(&self.device, d.clone()),
            #[cfg(feature = "cuda")]
            Storage::Cuda(CudaData::F32(s)) => self.cuda_clone::<f32>(s),
            #[cfg(feature = "cuda")]
            Storage::Cuda(CudaData::F64(s)) => self.cuda_clone::<f64>(s),
        }
    }
}

#[cfg(feature = "cuda")]
impl Buffer {
    /// `len` uninitialised elements on a CUDA device, charged first (so a device limit set with
    /// [`crate::MemoryStats::set_limit`] applies exactly as on the CPU).
    pub(crate) fn cuda_uninit<T: CudaElem>(device: &Device, len: usize) -> Result<Self> {
        let cu = device.cuda_handle("alloc")?;
        let bytes = len * std::mem::size_of::<T>();
        device.memory().charge(bytes)?;
        match cu.backend.alloc::<T>(len) {
            Ok(s) => Ok(Buffer {
                data: Storage::Cuda(T::wrap_cuda(s)),
                device: device.clone(),
                len,
                bytes,
            }),
            Err(e) => {
                device.memory().release(bytes);
                Err(cuda::alloc_err(device, &cu.backend, bytes, e))
            }
        }
    }

    /// Host values copied to a new buffer on a CUDA device.
    pub(crate) fn cuda_from_host<T: CudaElem>(device: &Device, values: &[T]) -> Result<Self> {
        let mut b = Buffer::cuda_uninit::<T>(device, values.len())?;
        if !values.is_empty() {
            let cu = device.cuda_handle("htod")?;
            let dst = b.cuda_slice_mut::<T>()?;
            cu.backend
                .stream
                .memcpy_htod(values, dst)
                .map_err(|e| cuda::driver_err("cuMemcpyHtoDAsync", e))?;
        }
        Ok(b)
    }

    fn cuda_clone<T: CudaElem>(&self, src: &cudarc::driver::CudaSlice<T>) -> Result<Self> {
        let mut b = Buffer::cuda_uninit::<T>(&self.device, self.len)?;
        if self.len > 0 {
            let cu = self.device.cuda_handle("dtod")?;
            let dst = b.cuda_slice_mut::<T>()?;
            cu.backend
                .stream
                .memcpy_dtod(&src.slice(0..self.len), &mut dst.slice_mut(0..self.len))
                .map_err(|e| cuda::driver_err("cuMemcpyDtoDAsync", e))?;
        }
        Ok(b)
    }

    /// The device slice, if this is a CUDA buffer of `T`.
    pub(crate) fn cuda_slice<T: CudaElem>(&self) -> Option<&cudarc::driver::CudaSlice<T>> {
        match &self.data {
            Storage::Cuda(d) => T::cuda(d),
            Storage::Cpu(_) => None,
        }
    }

    /// The mutable device slice, if this is a CUDA buffer of `T`.
    pub(crate) fn cuda_slice_mut<T: CudaElem>(
        &mut self,
    ) -> Result<&mut cudarc::driver::CudaSlice<T>> {
        let (dtype, device) = (self.data.dtype(), self.device.to_string());
        match &mut self.data {
            Storage::Cuda(d) => T::cuda_mut(d).ok_or(crate::Error::DType {
                op: "cuda_slice_mut",
                expected: T::DTYPE,
                got: dtype,
            }),
            Storage::Cpu(_) => Err(crate::Error::Device {
                op: "cuda_slice_mut",
                lhs: device,
                rhs: "a CUDA device".into(),
            }),
        }
    }

    /// The elements copied to the host.
    pub(crate) fn cuda_to_host<T: CudaElem>(&self) -> Result<Vec<T>> {
        let s = self.cuda_slice::<T>().ok_or(crate::Error::DType {
            op: "to_host",
            expected: T::DTYPE,
            got: self.data.dtype(),
        })?;
        if self.len == 0 {
            return Ok(Vec::new());
        }
        let cu = self.device.cuda_handle("dtoh")?;
        cu.backend
            .stream
            .clone_dtoh(&s.slice(0..self.len))
            .map_err(|e| cuda::driver_err("cuMemcpyDtoHAsync", e))
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.device.memory().release(self.bytes);
        // The device slice is freed (stream-ordered) right after this: on a thread that never
        // used the GPU the context must be made current first.
        #[cfg(feature = "cuda")]
        if let (Storage::Cuda(_), Some(cu)) = (&self.data, self.device.cuda_handle("drop").ok()) {
            cu.backend.bind_quiet();
        }
    }
}
