//! [`Plan`]: which contiguous segments of a chain are recorded and which are recomputed.

use crate::sequential::{OpKind, Policy};
use std::ops::Range;
use tape::{Error, Result};

/// A contiguous run of layers, recorded normally or checkpointed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The layers it covers.
    pub range: Range<usize>,
    /// Whether it is recomputed in backward.
    pub checkpointed: bool,
}

/// Segments covering a chain in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    segments: Vec<Segment>,
}

impl Plan {
    /// A plan from its segments (adjacent recorded segments are merged).
    pub fn new(segments: Vec<Segment>) -> Self {
        let mut merged: Vec<Segment> = Vec::new();
        for s in segments {
            match merged.last_mut() {
                Some(prev) if !prev.checkpointed && !s.checkpointed => prev.range.end = s.range.end,
                _ => merged.push(s),
            }
        }
        Plan { segments: merged }
    }

    /// Everything recorded: the naive run.
    pub fn keep_all(n: usize) -> Self {
        Plan::new(vec![Segment {
            range: 0..n,
            checkpointed: false,
        }])
    }

    /// `k` nearly equal segments, all but the last checkpointed (PyTorch's
    /// `checkpoint_sequential`); `k = 1` checkpoints the whole chain.
    pub fn equal_segments(n: usize, k: usize) -> Self {
        let k = k.clamp(1, n.max(1));
        let mut segments = Vec::with_capacity(k);
        for i in 0..k {
            let range = (i * n / k)..((i + 1) * n / k);
            segments.push(Segment {
                range,
                checkpointed: k == 1 || i + 1 < k,
            });
        }
        Plan::new(segments)
    }

    /// The plan a per-op policy gives for layers of these kinds.
    pub fn from_policy(kinds: impl Iterator<Item = OpKind>, policy: &Policy) -> Self {
        let kinds: Vec<OpKind> = kinds.collect();
        let n = kinds.len();
        match policy {
            Policy::KeepAll => Plan::keep_all(n),
            Policy::RecomputeAll => Plan::equal_segments(n, 1),
            Policy::Keep(kept) => {
                let mut segments = Vec::new();
                let mut start = 0;
                for (i, k) in kinds.iter().enumerate() {
                    if kept.contains(k) || i + 1 == n {
                        segments.push(Segment {
                            range: start..i + 1,
                            checkpointed: true,
                        });
                        start = i + 1;
                    }
                }
                Plan::new(segments)
            }
        }
    }

    /// The segments in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Number of checkpointed segments.
    pub fn checkpointed_count(&self) -> usize {
        self.segments.iter().filter(|s| s.checkpointed).count()
    }

    /// Fails unless the segments cover `0..n` exactly, in order, with none empty.
    pub fn check_covers(&self, n: usize) -> Result<()> {
        let mut next = 0;
        for s in &self.segments {
            if s.range.start != next || s.range.end <= s.range.start {
                return Err(Error::invalid(
                    "plan",
                    format!("segment {:?} does not continue at layer {next}", s.range),
                ));
            }
            next = s.range.end;
        }
        if next != n {
            return Err(Error::invalid(
                "plan",
                format!("the plan covers {next} layers, the chain has {n}"),
            ));
        }
        Ok(())
    }
}
