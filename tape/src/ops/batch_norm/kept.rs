//! Batch statistics kept from a checkpointed segment's first pass for its recompute, so that the
//! recompute normalises with them (one element-wise pass, the first pass's output bit for bit)
//! instead of computing them again.
//!
//! Each batch norm call in training takes a key from the step's random stream, as dropout takes
//! its mask's: a recompute replays the stream from the segment's start, so a call meets the key
//! its first pass kept its statistics under. A call keeps its statistics when it runs in the
//! forward phase on a tape that does not record (a segment's first pass: nothing else will
//! keep them); in the recompute phase it finds them, and takes them out when its tape records
//! (the recompute that backward runs; a nested segment's first pass inside an enclosing
//! recompute only reads them). Keeping statistics under a new seed (a new step) drops those of
//! earlier steps that no recompute took.

use super::BnStats;
use crate::tape::{Phase, Tape};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Where a call's statistics are kept: the seed and counter of the step's random stream.
type Key = (u64, u64);

/// A layer's kept statistics (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct KeptBatches(Mutex<Vec<(Key, BnStats)>>);

/// What one batch norm call does with kept statistics.
pub(crate) struct BatchPlan {
    key: Option<Key>,
    /// Statistics its first pass kept, to normalise with.
    pub(crate) given: Option<BnStats>,
    /// Whether to keep the statistics it computes.
    pub(crate) keep: bool,
}

impl KeptBatches {
    fn lock(&self) -> MutexGuard<'_, Vec<(Key, BnStats)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The plan of a call on `tape` (`training`: batch statistics; `synced`: a synchronised
    /// layer, which keeps its statistics whatever the context says, so that no recompute
    /// communicates), taking its key from the tape's random stream in training.
    pub(crate) fn plan(&self, tape: &mut Tape, training: bool, synced: bool) -> BatchPlan {
        if !training {
            return BatchPlan {
                key: None,
                given: None,
                keep: false,
            };
        }
        let key = tape.next_random_stream();
        let (given, keep) = match (tape.phase(), tape.is_recording()) {
            (Phase::Forward, recording) => {
                let wanted = tape.context().keep_batch_stats || synced;
                (None, !recording && wanted)
            }
            (Phase::Recompute, true) => (self.take(key), false),
            (Phase::Recompute, false) => (self.find(key), false),
        };
        BatchPlan {
            key: Some(key),
            given,
            keep,
        }
    }

    /// Keeps `stats` under the plan's key, when it says to.
    pub(crate) fn conclude(&self, plan: &BatchPlan, stats: Option<&BnStats>) {
        if let (true, Some(key), Some(stats)) = (plan.keep, plan.key, stats) {
            let mut kept = self.lock();
            kept.retain(|(k, _)| k.0 == key.0 && *k != key);
            kept.push((key, stats.clone()));
        }
    }

    fn find(&self, key: Key) -> Option<BnStats> {
        let kept = self.lock();
        kept.iter().find(|(k, _)| *k == key).map(|(_, s)| s.clone())
    }

    fn take(&self, key: Key) -> Option<BnStats> {
        let mut kept = self.lock();
        let at = kept.iter().position(|(k, _)| *k == key)?;
        Some(kept.swap_remove(at).1)
    }
}
