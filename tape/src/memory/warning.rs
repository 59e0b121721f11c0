//! [`Warning`]: why memory was not saved where it might have been, each naming the scope it is
//! about: a tensor alive at the peak that nothing in the step read again, a checkpointed
//! segment that keeps as much as it saves, a recompute policy that keeps every output.

use std::fmt;
use std::sync::Arc;

/// A diagnostic of a memory report ([`crate::MemoryReport::warnings`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Warning {
    /// An activation alive at the peak and still held when the report was made: the step did
    /// not need it again, and the caller kept it (the usual reason memory is not saved).
    HeldByCaller {
        /// The module that made it, if named.
        scope: Option<Arc<str>>,
        /// The op that made it.
        op: Option<&'static str>,
        /// Its bytes.
        bytes: usize,
    },
    /// A checkpointed segment that keeps inputs as large as what recording it would have kept:
    /// the recompute costs time and saves no memory.
    CheckpointSavesNothing {
        /// The module scope (or the segment's name) it ran in.
        scope: Option<Arc<str>>,
        /// Bytes of the inputs (and output) the segment keeps.
        kept_bytes: usize,
        /// Bytes its recorded recompute keeps for its backward.
        saved_bytes: usize,
    },
    /// A selective checkpoint whose policy kept the output of every op of the segment: nothing
    /// is recomputed and nothing saved.
    PolicyKeepsEverything {
        /// The module scope (or the segment's name) it ran in.
        scope: Option<Arc<str>>,
        /// The ops of the segment.
        ops: usize,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |s: &Option<Arc<str>>| s.as_deref().unwrap_or("(unnamed)").to_string();
        let mb = |b: usize| b as f64 / 1e6;
        match self {
            Warning::HeldByCaller { scope, op, bytes } => write!(
                f,
                "{}: {:.1} MB made by {} in forward is alive at the peak and still held after \
                 it; nothing in the step read it again (drop it before backward)",
                name(scope),
                mb(*bytes),
                op.unwrap_or("an op")
            ),
            Warning::CheckpointSavesNothing {
                scope,
                kept_bytes,
                saved_bytes,
            } => write!(
                f,
                "{}: a checkpointed segment keeps {:.1} MB of inputs to save {:.1} MB: it costs \
                 a recompute and saves nothing (checkpoint a longer segment)",
                name(scope),
                mb(*kept_bytes),
                mb(*saved_bytes)
            ),
            Warning::PolicyKeepsEverything { scope, ops } => write!(
                f,
                "{}: the recompute policy keeps the output of all {ops} ops of the segment: \
                 nothing is recomputed or saved (keep fewer ops, or do not checkpoint)",
                name(scope)
            ),
        }
    }
}
