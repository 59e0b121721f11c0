//! Work counters per device, beside its memory accounting: kernel launches, allocations and host
//! synchronisations. They say how much a training step asks of a device (on a GPU, launches and
//! host round-trips are what bounds a small step) and are counted the same way on every device,
//! so the CPU tests pin the counts a GPU run will see.
//!
//! What counts:
//!
//! - **launches**: one per call of a backend kernel (a method of an op's kernel trait, such as
//!   `relu_forward`, `conv2d_backward`, the fused optimizer update) made by the engine outside
//!   any other kernel call. Every kernel call goes through one counting wrapper, the kernel set
//!   a [`Device`](crate::Device) holds (`backend::Counted`), so no op counts by hand. A kernel that runs
//!   others inside it (the CPU's `fill_scaled` making its output with `full`, a CUDA kernel
//!   zeroing its output first) counts once, so a step counts the same on every device. On a
//!   GPU one kernel call may be several CUDA launches or library calls (cuDNN's batch norm, a
//!   two-stage sum); the count is of engine-level kernel calls.
//! - **allocs**: one per buffer created (`storage::Buffer`: every tensor's storage, copies on
//!   write included). Kernel workspaces and small scratch buffers (im2col columns, cuDNN
//!   workspaces, the GPU's partial sums and argument lists) are charged to the memory
//!   accounting but not counted here, so a GPU may count the same allocations as the CPU
//!   although its kernels use more scratch memory.
//! - **syncs**: one per read of a tensor's values into host memory by host code: the read API
//!   (`Tensor::to_vec`, `to_f64_vec`, `try_to_f64_vec`, `scalar`, `to_dtype`, `to_device`, and
//!   what calls them, such as `Parameter::assign`), counted on the device the values come from,
//!   outside kernels (a CPU kernel reading its own inputs is kernel work, not a sync). On a GPU
//!   such a read is a device-to-host copy, which waits for all queued work: every such copy
//!   counts, whoever makes it. `Tensor::as_slice` (a borrow of host memory, CPU only) and
//!   [`Device::synchronize`](crate::Device::synchronize) (no values read) do not count.
//!   An asynchronous read ([`ops::PendingScalar`](crate::ops::PendingScalar), which the
//!   optimizers' [`queue_if_finite`](crate::optim::Optimizer::queue_if_finite) uses for the
//!   anomaly flag) counts a sync only when resolving it actually had to wait for the device: a
//!   CUDA copy not yet complete when its value is asked for. A value already on the host when
//!   asked (a CPU or meta tensor, whose value is there when the kernel returns; a completed CUDA
//!   copy) counts none, and starting the read counts none. So a GPU run may count fewer syncs
//!   than the CPU's counts only where the host got ahead of the device and had to wait; the CPU
//!   counts are the GPU's when the device keeps up.
//!
//! ```
//! use tape::{ops, DType, Device, Tape, Tensor};
//! let dev = Device::cpu();
//! let x = Tensor::randn(&[2, 3], DType::F32, &dev, 0).unwrap();
//! let before = dev.counters();
//! let y = ops::relu(&mut Tape::no_grad(), &x).unwrap();
//! let _ = y.to_vec::<f32>().unwrap();
//! let d = dev.counters().since(before);
//! assert_eq!((d.launches, d.allocs, d.syncs), (1, 1, 1));
//! ```

use std::cell::Cell;
use std::fmt;
use std::ops::Sub;
use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a device's work counters (see the module docs for what each one counts), or
/// the difference of two snapshots ([`Counters::since`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counters {
    /// Kernel calls (one per kernel-trait call outside another kernel).
    pub launches: u64,
    /// Buffers created.
    pub allocs: u64,
    /// Reads of tensor values into host memory (device-to-host copies on a GPU); an
    /// asynchronous read counts only when resolving it had to wait for the device.
    pub syncs: u64,
}

impl Counters {
    /// What was counted between `earlier` and `self` (two snapshots of one device).
    pub fn since(self, earlier: Counters) -> Counters {
        Counters {
            launches: self.launches.saturating_sub(earlier.launches),
            allocs: self.allocs.saturating_sub(earlier.allocs),
            syncs: self.syncs.saturating_sub(earlier.syncs),
        }
    }
}

impl Sub for Counters {
    type Output = Counters;

    /// [`Counters::since`]: `later - earlier`.
    fn sub(self, earlier: Counters) -> Counters {
        self.since(earlier)
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} launches, {} allocs, {} syncs",
            self.launches, self.allocs, self.syncs
        )
    }
}

/// The live counters of one device (shared by its handles and its kernel set).
#[derive(Debug, Default)]
pub(crate) struct CounterCells {
    launches: AtomicU64,
    allocs: AtomicU64,
    syncs: AtomicU64,
}

thread_local! {
    /// How many kernel calls the calling thread is inside (0: host code).
    static KERNEL_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether the calling thread runs host code (is inside no kernel call).
fn at_host_level() -> bool {
    KERNEL_DEPTH.with(|d| d.get() == 0)
}

/// Marks the calling thread as inside a kernel call until dropped.
pub(crate) struct KernelScope(());

impl Drop for KernelScope {
    fn drop(&mut self) {
        KERNEL_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

impl CounterCells {
    /// The current values.
    pub(crate) fn snapshot(&self) -> Counters {
        Counters {
            launches: self.launches.load(Ordering::Relaxed),
            allocs: self.allocs.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
        }
    }

    /// Enters a kernel call: counts a launch unless the thread is already inside one.
    pub(crate) fn enter_kernel(&self) -> KernelScope {
        KERNEL_DEPTH.with(|d| {
            if d.get() == 0 {
                self.launches.fetch_add(1, Ordering::Relaxed);
            }
            d.set(d.get() + 1);
        });
        KernelScope(())
    }

    /// Counts one buffer created.
    pub(crate) fn alloc(&self) {
        self.allocs.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a host-memory read of tensor values unless a kernel makes it.
    pub(crate) fn host_read(&self) {
        if at_host_level() {
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a device-to-host copy (always: it waits for the device, whoever asks).
    pub(crate) fn device_read(&self) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }
}
