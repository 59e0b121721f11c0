//! Exact memory accounting. Every buffer and every kernel workspace a device hands out is charged
//! here while it lives, so `peak()` is the high-water mark of bytes the engine held: the number
//! the memory benchmarks and tests use.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Current and peak bytes of one device, with an optional limit that makes allocations fail with
/// [`Error::OutOfMemory`] (a real limit on a GPU, a simulated one on the CPU).
#[derive(Debug)]
pub struct MemoryStats {
    name: String,
    current: AtomicUsize,
    peak: AtomicUsize,
    limit: AtomicUsize,
    allocations: AtomicUsize,
}

impl MemoryStats {
    pub(crate) fn new(name: String) -> Self {
        MemoryStats {
            name,
            current: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
            allocations: AtomicUsize::new(0),
        }
    }

    /// Bytes held right now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }

    /// The most bytes held at once since creation or the last [`MemoryStats::reset_peak`].
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Starts a new peak measurement from the bytes held now.
    pub fn reset_peak(&self) {
        self.peak.store(self.current(), Ordering::SeqCst);
    }

    /// Number of allocations made so far (buffers and workspaces).
    pub fn allocations(&self) -> usize {
        self.allocations.load(Ordering::SeqCst)
    }

    /// Sets (or with `None` clears) the most bytes this device may hold at once.
    pub fn set_limit(&self, limit: Option<usize>) {
        self.limit
            .store(limit.unwrap_or(usize::MAX), Ordering::SeqCst);
    }

    /// The limit set by [`MemoryStats::set_limit`], if any.
    pub fn limit(&self) -> Option<usize> {
        match self.limit.load(Ordering::SeqCst) {
            usize::MAX => None,
            l => Some(l),
        }
    }

    /// Charges `bytes`, failing without side effect if that would pass the limit.
    pub(crate) fn charge(&self, bytes: usize) -> Result<()> {
        let before = self.current.fetch_add(bytes, Ordering::SeqCst);
        let now = before + bytes;
        let limit = self.limit.load(Ordering::SeqCst);
        if now > limit {
            self.current.fetch_sub(bytes, Ordering::SeqCst);
            return Err(Error::OutOfMemory {
                device: self.name.clone(),
                requested: bytes,
                in_use: before,
                limit,
            });
        }
        self.allocations.fetch_add(1, Ordering::SeqCst);
        self.peak.fetch_max(now, Ordering::SeqCst);
        Ok(())
    }

    /// Returns `bytes` charged earlier.
    pub(crate) fn release(&self, bytes: usize) {
        self.current.fetch_sub(bytes, Ordering::SeqCst);
    }
}

/// Bytes held against a device's accounting until dropped: kernels use it for workspaces
/// (im2col columns, ...) that are not tensors but still count.
#[derive(Debug)]
pub struct Reservation {
    stats: Arc<MemoryStats>,
    bytes: usize,
}

impl Reservation {
    pub(crate) fn new(stats: Arc<MemoryStats>, bytes: usize) -> Result<Self> {
        stats.charge(bytes)?;
        Ok(Reservation { stats, bytes })
    }

    /// The reserved byte count.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.stats.release(self.bytes);
    }
}

/// The peak bytes of a device unit by unit, between the marks a forward pass puts down
/// ([`crate::Tape::mark`]): where the memory peaks, in forward and in backward.
///
/// Forward: each mark notes the peak since the previous mark under the previous mark's label
/// (that unit's forward) and restarts the measurement; the last unit stays open (a final mark,
/// such as one before the loss, closes it). Backward meets a mark after the backward of
/// everything recorded after it and before the next mark; it notes the peak since the previous
/// note under the mark's label and restarts the peak measurement (so the first note, at the last
/// mark, also covers the end of the forward pass).
#[derive(Clone, Debug)]
pub struct UnitPeaks {
    device: crate::Device,
    notes: Arc<std::sync::Mutex<Notes>>,
}

/// What [`UnitPeaks`] has noted.
#[derive(Debug, Default)]
struct Notes {
    forward: Vec<(String, usize)>,
    /// The unit whose forward is running.
    open: Option<String>,
    backward: Vec<(String, usize)>,
}

impl UnitPeaks {
    /// Peaks of `device`'s accounting.
    pub fn new(device: &crate::Device) -> Self {
        UnitPeaks {
            device: device.clone(),
            notes: Arc::default(),
        }
    }

    fn notes(&self) -> std::sync::MutexGuard<'_, Notes> {
        self.notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The peak since the last restart; restarts the measurement.
    fn peak_and_restart(&self) -> usize {
        let memory = self.device.memory();
        let peak = memory.peak();
        memory.reset_peak();
        peak
    }

    /// Forward reached the mark `label`: notes the open unit's forward peak, opens `label`.
    pub(crate) fn note_forward(&self, label: String) {
        let peak = self.peak_and_restart();
        let mut notes = self.notes();
        if let Some(open) = notes.open.replace(label) {
            notes.forward.push((open, peak));
        }
    }

    /// Backward reached the mark `label`: notes the peak since the previous note under it.
    pub(crate) fn note_backward(&self, label: String) {
        let peak = self.peak_and_restart();
        self.notes().backward.push((label, peak));
    }

    /// The forward notes so far, in forward order (the unit still open not included), and
    /// clears them.
    pub fn take_forward(&self) -> Vec<(String, usize)> {
        std::mem::take(&mut self.notes().forward)
    }

    /// The backward notes so far, in the order backward met the marks (the reverse of the
    /// forward order), and clears them.
    pub fn take_backward(&self) -> Vec<(String, usize)> {
        std::mem::take(&mut self.notes().backward)
    }
}
