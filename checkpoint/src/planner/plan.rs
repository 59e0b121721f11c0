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
    /// A plan from its segments (adjacent recorded segments that touch are merged; anything
    /// else, gaps and overlaps included, is kept as given for [`Plan::check_covers`] to judge).
    pub fn new(segments: Vec<Segment>) -> Self {
        let mut merged: Vec<Segment> = Vec::new();
        for s in segments {
            match merged.last_mut() {
                Some(prev)
                    if !prev.checkpointed
                        && !s.checkpointed
                        && prev.range.end == s.range.start
                        && s.range.start < s.range.end =>
                {
                    prev.range.end = s.range.end
                }
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

    /// Fails with [`Error::InvalidArgument`] unless the segments cover the layers `0..n`
    /// exactly: in order, none empty, no gap, no overlap, none past the end, the last ending at
    /// `n`. The message names the offending segment.
    pub fn check_covers(&self, n: usize) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("plan", msg));
        if n == 0 {
            return bad("the chain has no layers".into());
        }
        if self.segments.is_empty() {
            return bad(format!("the plan has no segment; the chain has {n} layers"));
        }
        let mut next = 0;
        for (i, s) in self.segments.iter().enumerate() {
            let r = &s.range;
            if r.end <= r.start {
                return bad(format!("segment {i} ({r:?}) is empty"));
            }
            if r.start > next {
                return bad(format!(
                    "gap: layers {next}..{} are in no segment (segment {i} starts at {})",
                    r.start, r.start
                ));
            }
            if r.start < next {
                return bad(format!(
                    "segment {i} ({r:?}) overlaps the previous segment, which ends at layer {next}"
                ));
            }
            if r.end > n {
                return bad(format!(
                    "segment {i} ({r:?}) goes past the end of the chain ({n} layers)"
                ));
            }
            next = r.end;
        }
        if next != n {
            return bad(format!(
                "the plan covers layers 0..{next}, the chain has {n} (layers {next}..{n} are in no segment)"
            ));
        }
        Ok(())
    }
}
