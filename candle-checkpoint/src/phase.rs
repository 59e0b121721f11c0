//! The recompute-phase flag: whether the current thread is running a checkpointed segment again
//! inside backward. Modules with side effects consult it (see [`crate::nn::BatchNorm`]); candle's
//! own modules do not, so candle-nn's `BatchNorm` updates its running statistics twice when it
//! sits inside a checkpointed segment.

use std::cell::Cell;

thread_local! {
    /// How many recomputes the current thread is inside (nested checkpoints recompute inside
    /// recomputes).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Whether the current thread is inside a checkpoint's recompute (at any depth).
pub fn is_recomputing() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Marks the current thread as recomputing until dropped.
pub(crate) struct RecomputePhase(());

impl RecomputePhase {
    /// Enters the recompute phase (one level deeper).
    pub(crate) fn enter() -> Self {
        DEPTH.with(|d| d.set(d.get() + 1));
        RecomputePhase(())
    }
}

impl Drop for RecomputePhase {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}
