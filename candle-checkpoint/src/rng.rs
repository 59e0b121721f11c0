//! The adapter's replayable random stream (one per thread): a checkpoint notes its state before a
//! segment's first pass and sets it back for the recompute, so that [`crate::nn::Dropout`] draws
//! the same masks twice. (candle's CPU device cannot be reseeded, so candle-nn's dropout cannot
//! replay.)

use std::cell::Cell;

thread_local! {
    /// The splitmix64 state of the current thread.
    static STATE: Cell<u64> = const { Cell::new(0x853c_49e6_748f_ea9b) };
}

/// Sets the current thread's random state (for reproducible runs).
pub fn seed(seed: u64) {
    STATE.with(|s| s.set(seed));
}

/// The current thread's random state.
pub fn state() -> u64 {
    STATE.with(Cell::get)
}

/// The next 64 random bits of the current thread's stream (splitmix64).
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let z = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(z);
        let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A uniform number in `[0, 1)` from the current thread's stream.
pub fn next_f64() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Sets the random state to `at` until dropped, then puts back the state it found.
pub(crate) struct Replay {
    saved: u64,
}

impl Replay {
    /// Replays the stream from `at`.
    pub(crate) fn from(at: u64) -> Self {
        let saved = state();
        seed(at);
        Replay { saved }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        seed(self.saved);
    }
}
