//! Counted buffers: the one place memory is charged to and released from a device.

use crate::device::Device;
use crate::dtype::DType;
use crate::error::Result;

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

/// A buffer charged to its device's accounting for as long as it lives.
#[derive(Debug)]
pub(crate) struct Buffer {
    pub(crate) data: CpuData,
    pub(crate) device: Device,
    bytes: usize,
}

impl Buffer {
    pub(crate) fn new(device: &Device, data: CpuData) -> Result<Self> {
        let bytes = data.len() * data.dtype().size_in_bytes();
        device.memory().charge(bytes)?;
        Ok(Buffer {
            data,
            device: device.clone(),
            bytes,
        })
    }

    /// A new, separately charged copy (copy-on-write of shared buffers).
    pub(crate) fn try_clone(&self) -> Result<Self> {
        Buffer::new(&self.device, self.data.clone())
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.device.memory().release(self.bytes);
    }
}
