//! Devices. A [`Device`] is a run-time value (a flag picks it, not a type parameter); each one owns
//! its memory accounting. Every `Device::cpu()` call makes a new accounting domain, so tests and
//! benchmarks measure their own bytes even when they run side by side.
//!
//! `Device::cuda(ordinal)` (and `Device::cuda_with` for options) opens an NVIDIA GPU: every call
//! is again a new accounting domain, while the CUDA context, stream, library handles and compiled
//! kernels of one GPU are shared by all of them. A build without the cargo feature `cuda` has the
//! same API; opening a GPU then fails with a clear error (see `device/cuda_stub.rs`).

use crate::counters::{CounterCells, Counters};
use crate::error::{Error, Result};
use crate::memory::{MemoryStats, Reservation};
use cuda::CudaHandle;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[cfg(feature = "cuda")]
pub(crate) mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_stub.rs"]
pub(crate) mod cuda;
pub(crate) mod storage;

/// What kind of hardware a device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// Host memory and CPU kernels (`gemm` + `rayon`).
    Cpu,
    /// An NVIDIA GPU by ordinal: cuDNN, cuBLAS and NVRTC kernels (cargo feature `cuda`).
    Cuda(usize),
    /// No memory and no arithmetic: tensors have shapes and dtypes but no values, and every op
    /// charges the accounting as the CPU does without running a kernel ([`Device::meta`]).
    Meta,
}

/// Default cap on one cuDNN convolution workspace: 64 MiB.
pub const DEFAULT_WORKSPACE_LIMIT: usize = 64 << 20;

/// Options of a CUDA device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    /// Allow TF32 tensor-core math in cuBLAS GEMMs and cuDNN convolutions (faster, about 1e-3
    /// relative error). Off by default: strict fp32 (cuBLAS default math, cuDNN FMA math).
    pub tf32: bool,
    /// Largest workspace one cuDNN convolution may use; the fastest algorithm within it is
    /// chosen (the smallest-workspace one if none fits). Workspaces count in the device's memory
    /// accounting while they live.
    pub workspace_limit_bytes: usize,
    /// Choose each convolution direction's algorithm by running them (cuDNN's `Find`, once per
    /// shape, on the call's own buffers with a workspace of `workspace_limit_bytes`, cached)
    /// rather than by cuDNN's heuristics: the fastest measured algorithm within the limit.
    /// Off by default.
    pub measure_conv_algorithms: bool,
    /// Give every convolution the same workspace, kept for the device's lifetime and grown to
    /// the largest any chosen algorithm asked for (at most `workspace_limit_bytes` unless no
    /// algorithm fits it), and charged to the accounting once, instead of allocating one per
    /// call. Off by default.
    pub persistent_workspace: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            tf32: false,
            workspace_limit_bytes: DEFAULT_WORKSPACE_LIMIT,
            measure_conv_algorithms: false,
            persistent_workspace: false,
        }
    }
}

struct Inner {
    kind: DeviceKind,
    serial: u64,
    memory: Arc<MemoryStats>,
    /// Launches, allocations and host synchronisations ([`crate::counters`]).
    counters: Arc<CounterCells>,
    /// The GPU's shared state and this handle's options (`None` on the CPU).
    cuda: Option<CudaHandle>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("kind", &self.kind)
            .field("serial", &self.serial)
            .field("memory", &self.memory)
            .field("counters", &self.counters)
            .field("cuda", &self.cuda)
            .finish_non_exhaustive()
    }
}

/// A device handle; cheap to clone. Two handles are the same device when they come from the same
/// constructor call.
#[derive(Clone, Debug)]
pub struct Device(Arc<Inner>);

static SERIAL: AtomicU64 = AtomicU64::new(0);

impl Device {
    /// A new CPU device with its own memory accounting.
    pub fn cpu() -> Self {
        crate::host_cache::configure();
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let memory = Arc::new(MemoryStats::new(format!("cpu#{serial}")));
        let counters = Arc::new(CounterCells::default());
        Device(Arc::new(Inner {
            kind: DeviceKind::Cpu,
            serial,
            memory,
            counters,
            cuda: None,
        }))
    }

    /// A new meta device with its own accounting: every op checks its arguments, works out its
    /// shapes, decides what to save, records its backward and charges exactly the bytes (and
    /// counts the launches and allocations) the CPU would, but runs no kernel and holds no
    /// values. Its peak is the CPU's peak, found in a fraction of the time; reading a value
    /// ([`crate::Tensor::scalar`], [`crate::Tensor::to_vec`], ...) is an [`Error::NoValues`].
    pub fn meta() -> Self {
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let memory = Arc::new(MemoryStats::new(format!("meta#{serial}")));
        let counters = Arc::new(CounterCells::default());
        Device(Arc::new(Inner {
            kind: DeviceKind::Meta,
            serial,
            memory,
            counters,
            cuda: None,
        }))
    }

    /// GPU `ordinal` with the default [`CudaOptions`] (strict fp32, no TF32), as a new accounting
    /// domain. Fails with [`Error::Backend`] (never a panic) when the engine was built without
    /// the cargo feature `cuda`, when the NVIDIA driver or a CUDA library (cuBLAS, cuDNN, NVRTC)
    /// cannot be loaded, or when there is no such GPU; the message names what is missing and how
    /// to fix it.
    pub fn cuda(ordinal: usize) -> Result<Self> {
        Self::cuda_with(ordinal, CudaOptions::default())
    }

    /// GPU `ordinal` with explicit options (TF32, cuDNN workspace limit).
    pub fn cuda_with(ordinal: usize, options: CudaOptions) -> Result<Self> {
        let handle = cuda::open(ordinal, options)?;
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let memory = Arc::new(MemoryStats::new(format!("cuda:{ordinal}#{serial}")));
        let counters = Arc::new(CounterCells::default());
        Ok(Device(Arc::new(Inner {
            kind: DeviceKind::Cuda(ordinal),
            serial,
            memory,
            counters,
            cuda: Some(handle),
        })))
    }

    /// The kind of hardware.
    pub fn kind(&self) -> DeviceKind {
        self.0.kind
    }

    /// Whether this is a CUDA device (always false without the `cuda` feature).
    pub fn is_cuda(&self) -> bool {
        matches!(self.0.kind, DeviceKind::Cuda(_))
    }

    /// Whether this is a meta device ([`Device::meta`]): shapes and accounting, no values.
    pub fn is_meta(&self) -> bool {
        self.0.kind == DeviceKind::Meta
    }

    /// The options of a CUDA device (`None` on the CPU).
    pub fn cuda_options(&self) -> Option<CudaOptions> {
        self.0.cuda.as_ref().map(CudaHandle::options)
    }

    /// The CUDA plumbing of this device, or an error naming `op` for a CPU device.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn cuda_handle(&self, op: &'static str) -> Result<&CudaHandle> {
        self.0.cuda.as_ref().ok_or_else(|| Error::Device {
            op,
            lhs: self.to_string(),
            rhs: "a CUDA device".into(),
        })
    }

    /// Waits until all work queued on the device has finished (a no-op on the CPU, where every
    /// op is synchronous). Timing a GPU step needs it; reading a tensor back synchronises too.
    pub fn synchronize(&self) -> Result<()> {
        match &self.0.cuda {
            Some(c) => c.synchronize(),
            None => Ok(()),
        }
    }

    /// The GPU's `(free, total)` bytes as the driver reports them (`cuMemGetInfo`), for printing
    /// beside the engine's own accounting; `None` on the CPU. The driver's numbers include the
    /// CUDA context, library workspaces and the memory pool's cached blocks.
    pub fn mem_get_info(&self) -> Result<Option<(usize, usize)>> {
        match &self.0.cuda {
            Some(c) => c.mem_get_info().map(Some),
            None => Ok(None),
        }
    }

    /// Bytes the device's allocator holds, in use or cached for reuse (PyTorch's "reserved";
    /// [`Device::memory`] counts what tensors hold, its "allocated"): on the CPU the process's
    /// host allocator ([`crate::host_cache`]), on a GPU the stream-ordered pool. `None` where it
    /// cannot say.
    pub fn reserved_bytes(&self) -> Option<usize> {
        match &self.0.cuda {
            Some(c) => c.reserved_bytes(),
            None => crate::host_cache::reserved_bytes(),
        }
    }

    /// This device's memory accounting.
    pub fn memory(&self) -> &MemoryStats {
        &self.0.memory
    }

    /// This device's work counters (read them with [`Device::counters`]).
    pub(crate) fn counter_cells(&self) -> &Arc<CounterCells> {
        &self.0.counters
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
            DeviceKind::Cuda(ordinal) => write!(f, "cuda:{ordinal}#{}", self.0.serial),
            DeviceKind::Meta => write!(f, "meta#{}", self.0.serial),
        }
    }
}

impl Device {
    /// A snapshot of this device's work counters: kernel launches, buffers allocated and host
    /// synchronisations since the device was made (see [`crate::counters`]). Take two and
    /// subtract ([`Counters::since`]) to count a region, or use [`Device::count`].
    pub fn counters(&self) -> Counters {
        self.counter_cells().snapshot()
    }

    /// Runs `f` and returns its result with what it counted on this device. Work that other
    /// threads do on the same device meanwhile counts too.
    pub fn count<R>(&self, f: impl FnOnce() -> R) -> (R, Counters) {
        let before = self.counters();
        let r = f();
        (r, self.counters().since(before))
    }
}
