//! Devices. A [`Device`] is a run-time value (a flag picks it, not a type parameter); each one owns
//! its memory accounting. Every `Device::cpu()` call makes a new accounting domain, so tests and
//! benchmarks measure their own bytes even when they run side by side.

use crate::error::{Error, Result};
use crate::memory::{MemoryStats, Reservation};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What kind of hardware a device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// Host memory and CPU kernels (`gemm` + `rayon`).
    Cpu,
}

#[derive(Debug)]
struct Inner {
    kind: DeviceKind,
    serial: u64,
    memory: Arc<MemoryStats>,
}

/// A device handle; cheap to clone. Two handles are the same device when they come from the same
/// constructor call.
#[derive(Clone, Debug)]
pub struct Device(Arc<Inner>);

static SERIAL: AtomicU64 = AtomicU64::new(0);

impl Device {
    /// A new CPU device with its own memory accounting.
    pub fn cpu() -> Self {
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let memory = Arc::new(MemoryStats::new(format!("cpu#{serial}")));
        Device(Arc::new(Inner {
            kind: DeviceKind::Cpu,
            serial,
            memory,
        }))
    }

    /// The kind of hardware.
    pub fn kind(&self) -> DeviceKind {
        self.0.kind
    }

    /// This device's memory accounting.
    pub fn memory(&self) -> &MemoryStats {
        &self.0.memory
    }

    /// Holds `bytes` against this device's accounting until the reservation is dropped.
    pub fn reserve(&self, bytes: usize) -> Result<Reservation> {
        Reservation::new(self.0.memory.clone(), bytes)
    }

    /// Whether both handles name the same device.
    pub fn same(&self, other: &Device) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Fails with [`Error::Device`] unless both handles name the same device.
    pub fn check_same(&self, other: &Device, op: &'static str) -> Result<()> {
        if self.same(other) {
            Ok(())
        } else {
            Err(Error::Device {
                op,
                lhs: self.to_string(),
                rhs: other.to_string(),
            })
        }
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        self.same(other)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.kind {
            DeviceKind::Cpu => write!(f, "cpu#{}", self.0.serial),
        }
    }
}
