//! Counted buffers: the one place memory is charged to and released from a device, and where
//! allocations and reads back to the host are counted ([`crate::counters`]). A buffer's
//! elements live in host memory or on a GPU; the GPU side goes through [`crate::device::cuda`]
//! (a stub that cannot be reached without the cargo feature `cuda`, since no CUDA device can
//! then be opened).

use crate::device::cuda::{self, CudaData};
use crate::device::{Device, DeviceKind};
use crate::dtype::{CpuData, DType};
use crate::error::{Error, Result};
use crate::memory::Charge;

/// Where a buffer's elements live: host memory, or a GPU.
#[derive(Debug)]
pub(crate) enum Storage {
    /// Host memory.
    Cpu(CpuData),
    /// Device memory of a CUDA GPU.
    Cuda(CudaData),
    /// A meta device's buffer: its dtype, no elements.
    Meta(DType),
}

impl Storage {
    /// The host data, if the buffer is in host memory.
    pub(crate) fn cpu(&self) -> Option<&CpuData> {
        match self {
            Storage::Cpu(d) => Some(d),
            Storage::Cuda(_) | Storage::Meta(_) => None,
        }
    }

    /// The mutable host data, if the buffer is in host memory.
    pub(crate) fn cpu_mut(&mut self) -> Option<&mut CpuData> {
        match self {
            Storage::Cpu(d) => Some(d),
            Storage::Cuda(_) | Storage::Meta(_) => None,
        }
    }

    pub(crate) fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(d) => d.dtype(),
            Storage::Cuda(d) => d.dtype(),
            Storage::Meta(dtype) => *dtype,
        }
    }
}

/// A buffer charged to its device's accounting for as long as it lives.
#[derive(Debug)]
pub(crate) struct Buffer {
    pub(crate) data: Storage,
    pub(crate) device: Device,
    /// Elements (the logical length: a CUDA allocation has at least one element).
    pub(crate) len: usize,
    bytes: usize,
    /// Names the buffer in the memory record ([`crate::memory::MemoryReport`]).
    pub(crate) id: u64,
}

impl Buffer {
    /// `len` elements of `dtype` charged to `device`, their storage made by `make` (released
    /// again if `make` fails).
    pub(crate) fn charged(
        device: &Device,
        dtype: DType,
        len: usize,
        make: impl FnOnce() -> Result<Storage>,
    ) -> Result<Self> {
        let bytes = len * dtype.size_in_bytes();
        device.memory().charge(bytes)?;
        match make() {
            Ok(data) => {
                device.counter_cells().alloc();
                let id = crate::memory::charge_id();
                device
                    .memory()
                    .note_alloc(id, bytes, Charge::Buffer(dtype, len));
                Ok(Buffer {
                    data,
                    device: device.clone(),
                    len,
                    bytes,
                    id,
                })
            }
            Err(e) => {
                device.memory().release(bytes);
                Err(e)
            }
        }
    }

    /// `data` placed on `device`: kept as it is on the CPU, copied to the GPU on a CUDA device,
    /// dropped (only its dtype and length kept) on a meta device.
    pub(crate) fn new(device: &Device, data: CpuData) -> Result<Self> {
        let (dtype, len) = (data.dtype(), data.len());
        Buffer::charged(device, dtype, len, || match device.kind() {
            DeviceKind::Cpu => Ok(Storage::Cpu(data)),
            DeviceKind::Cuda(_) => cuda::upload(device, &data).map(Storage::Cuda),
            DeviceKind::Meta => Ok(Storage::Meta(dtype)),
        })
    }

    /// `len` elements of `dtype` on a meta device: charged, no values.
    pub(crate) fn meta(device: &Device, dtype: DType, len: usize) -> Result<Self> {
        Buffer::charged(device, dtype, len, || Ok(Storage::Meta(dtype)))
    }

    /// A buffer with a dtype and a length but no elements and no bytes: neither charged nor
    /// counted as an allocation (see [`crate::Tensor::stand_in`]).
    pub(crate) fn stand_in(device: &Device, dtype: DType, len: usize) -> Self {
        Buffer {
            data: Storage::Meta(dtype),
            device: device.clone(),
            len,
            bytes: 0,
            id: crate::memory::charge_id(),
        }
    }

    /// Whether the buffer holds values (a meta device's buffer and a stand-in hold none).
    pub(crate) fn has_values(&self) -> bool {
        !matches!(self.data, Storage::Meta(_))
    }

    /// A new, separately charged copy (copy-on-write of shared buffers).
    pub(crate) fn try_clone(&self) -> Result<Self> {
        Buffer::charged(&self.device, self.data.dtype(), self.len, || {
            Ok(match &self.data {
                Storage::Cpu(d) => Storage::Cpu(d.clone()),
                Storage::Cuda(d) => Storage::Cuda(cuda::copy(&self.device, d, self.len)?),
                Storage::Meta(dtype) => Storage::Meta(*dtype),
            })
        })
    }

    /// The elements in host memory (a device-to-host copy for a GPU buffer), counted as a sync
    /// of the buffer's device: every GPU copy, a host copy when host code (no kernel) asks.
    pub(crate) fn to_host(&self) -> Result<CpuData> {
        match &self.data {
            Storage::Cpu(d) => {
                self.device.counter_cells().host_read();
                Ok(d.clone())
            }
            Storage::Cuda(d) => {
                self.device.counter_cells().device_read();
                cuda::download(&self.device, d, self.len)
            }
            Storage::Meta(_) => Err(Error::NoValues {
                op: "read",
                device: self.device.to_string(),
            }),
        }
    }

    /// The host data of a CPU buffer for host code to read, counted as a sync of its device
    /// unless a kernel reads it; `None` for a GPU buffer (read it with [`Buffer::to_host`]).
    pub(crate) fn host_read(&self) -> Option<&CpuData> {
        let d = self.data.cpu()?;
        self.device.counter_cells().host_read();
        Some(d)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.device.memory().note_free(self.id);
        self.device.memory().release(self.bytes);
        if let Storage::Cuda(_) = self.data {
            cuda::before_free(&self.device);
        }
    }
}
