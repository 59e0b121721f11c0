//! Exact memory accounting. Every buffer and every kernel workspace a device hands out is charged
//! here while it lives, so `peak()` is the high-water mark of bytes the engine held: the number
//! the memory benchmarks and tests use. A device that records its buffers
//! ([`MemoryStats::start_recording`]) also says what was alive at the peak and why
//! ([`MemoryReport`]).

mod record;
mod report;
mod warning;

pub use report::{Entry, HasBuffer, MemoryReport, Role, HELD_WARNING_SHARE};
pub use warning::Warning;

use crate::error::{Error, Result};
pub(crate) use record::Charge;
use record::Recorder;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Ids of charged buffers and workspaces, for the buffer record.
static NEXT_CHARGE: AtomicU64 = AtomicU64::new(1);

/// A new id for a charged buffer or workspace.
pub(crate) fn charge_id() -> u64 {
    NEXT_CHARGE.fetch_add(1, Ordering::Relaxed)
}

/// Current and peak bytes of one device, with an optional limit that makes allocations fail with
/// [`Error::OutOfMemory`] (a real limit on a GPU, a simulated one on the CPU).
#[derive(Debug)]
pub struct MemoryStats {
    name: String,
    current: AtomicUsize,
    peak: AtomicUsize,
    limit: AtomicUsize,
    allocations: AtomicUsize,
    /// Whether `recorder` is on (checked before taking its lock).
    recording: AtomicBool,
    recorder: Mutex<Option<Recorder>>,
}

impl MemoryStats {
    pub(crate) fn new(name: String) -> Self {
        MemoryStats {
            name,
            current: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
            allocations: AtomicUsize::new(0),
            recording: AtomicBool::new(false),
            recorder: Mutex::new(None),
        }
    }

    fn recorder(&self) -> MutexGuard<'_, Option<Recorder>> {
        self.recorder.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts recording every buffer and workspace charged from now on, with the op, the pass
    /// and the module scope that made it, and the set alive at the peak: what
    /// [`MemoryStats::report`] returns. Bytes already held are reported as one entry; start
    /// right after making the device to have them all itemised. Recording costs a lock and a
    /// map update per buffer (and a copy of the live set at each new peak); without it, one
    /// atomic load.
    pub fn start_recording(&self) {
        let mut r = self.recorder();
        if r.is_none() {
            crate::context::set_recording(true);
        }
        *r = Some(Recorder::new(self.current()));
        self.recording.store(true, Ordering::SeqCst);
    }

    /// Stops recording (the last report is gone with it).
    pub fn stop_recording(&self) {
        if self.recorder().take().is_some() {
            crate::context::set_recording(false);
        }
        self.recording.store(false, Ordering::SeqCst);
    }

    /// Every buffer alive at the peak (since recording started or the last
    /// [`MemoryStats::reset_peak`]), with why it is held; `None` unless recording.
    pub fn report(&self) -> Option<MemoryReport> {
        self.recorder().as_ref().map(Recorder::report)
    }

    /// Whether this device records its buffers ([`MemoryStats::start_recording`]).
    pub fn is_recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    /// Adds `warning` to the report, if recording (once: a repeated warning is kept once).
    /// What checkpointing code uses to say that it saved nothing.
    pub fn warn(&self, warning: Warning) {
        if let Some(r) = self.recorder().as_mut() {
            r.warn(warning);
        }
    }

    /// Notes a charge of `bytes` for `id` in the record, if recording.
    pub(crate) fn note_alloc(&self, id: u64, bytes: usize, charge: Charge) {
        if self.recording.load(Ordering::Relaxed) {
            if let Some(r) = self.recorder().as_mut() {
                r.alloc(id, bytes, charge);
            }
        }
    }

    /// Notes the release of `id` in the record, if recording.
    pub(crate) fn note_free(&self, id: u64) {
        if self.recording.load(Ordering::Relaxed) {
            if let Some(r) = self.recorder().as_mut() {
                r.free(id);
            }
        }
    }

    /// Notes the shape of the tensor made over buffer `id`, if recording.
    pub(crate) fn note_shape(&self, id: u64, shape: &[usize]) {
        if self.recording.load(Ordering::Relaxed) {
            if let Some(r) = self.recorder().as_mut() {
                r.shape(id, shape);
            }
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
        if self.recording.load(Ordering::Relaxed) {
            if let Some(r) = self.recorder().as_mut() {
                r.reset_peak();
            }
        }
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
    id: u64,
}

impl Reservation {
    pub(crate) fn new(stats: Arc<MemoryStats>, bytes: usize) -> Result<Self> {
        stats.charge(bytes)?;
        let id = charge_id();
        stats.note_alloc(id, bytes, Charge::Workspace);
        Ok(Reservation { stats, bytes, id })
    }

    /// The reserved byte count.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.stats.note_free(self.id);
        self.stats.release(self.bytes);
    }
}

impl Drop for MemoryStats {
    fn drop(&mut self) {
        self.stop_recording();
    }
}
