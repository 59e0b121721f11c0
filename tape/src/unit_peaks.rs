//! [`UnitPeaks`]: a device's peak bytes unit by unit, between the marks a forward pass puts down.

use crate::device::Device;
use std::sync::Arc;

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
    device: Device,
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
    pub fn new(device: &Device) -> Self {
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
