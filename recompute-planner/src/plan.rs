//! [`Plan`]: which contiguous segments of a chain are recorded and which are recomputed, and, for
//! a recomputed segment, how its recompute is itself planned (nested checkpoints).

use crate::error::{Error, Result};
use crate::policy::{OpKind, Policy};
use std::fmt;
use std::ops::Range;

/// A contiguous run of layers, recorded normally or checkpointed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The layers it covers.
    pub range: Range<usize>,
    /// Whether it is recomputed in backward.
    pub checkpointed: bool,
}

/// Segments covering a chain (or, for a nested plan, a checkpointed segment) in order. A
/// checkpointed segment may carry a plan of its own for its recompute (see [`Plan::nested`]);
/// without one its recompute records every layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    segments: Vec<Segment>,
    /// Per segment: the plan of its recompute, if it has one.
    inner: Vec<Option<Plan>>,
}

impl Plan {
    /// A plan from its segments (adjacent recorded segments that touch are merged; anything
    /// else, gaps and overlaps included, is kept as given for [`Plan::check_covers`] to judge).
    pub fn new(segments: Vec<Segment>) -> Self {
        Plan::nested(segments.into_iter().map(|s| (s, None)).collect())
    }

    /// A plan from segments each with an optional plan of its recompute, over the same layer
    /// indices as the chain (a checkpointed segment `8..16`'s plan covers `8..16`). Adjacent
    /// recorded segments that touch are merged; [`Plan::check_covers`] judges the rest, nested
    /// plans included.
    pub fn nested(parts: Vec<(Segment, Option<Plan>)>) -> Self {
        let mut segments: Vec<Segment> = Vec::with_capacity(parts.len());
        let mut inner: Vec<Option<Plan>> = Vec::with_capacity(parts.len());
        for (s, p) in parts {
            match (segments.last_mut(), inner.last()) {
                (Some(prev), Some(None))
                    if p.is_none()
                        && !prev.checkpointed
                        && !s.checkpointed
                        && prev.range.end == s.range.start
                        && s.range.start < s.range.end =>
                {
                    prev.range.end = s.range.end
                }
                _ => {
                    segments.push(s);
                    inner.push(p);
                }
            }
        }
        Plan { segments, inner }
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

    /// The plan of segment `i`'s recompute, if it has one (`None` also for a recorded segment
    /// or an index past the end).
    pub fn inner(&self, i: usize) -> Option<&Plan> {
        self.inner.get(i).and_then(|p| p.as_ref())
    }

    /// Number of checkpointed segments at the top level.
    pub fn checkpointed_count(&self) -> usize {
        self.segments.iter().filter(|s| s.checkpointed).count()
    }

    /// Layer forwards run again in backward: each layer of a checkpointed segment once, plus
    /// what its recompute's own plan runs again (a layer under two levels of checkpoints runs
    /// three times in all).
    pub fn recomputed_layers(&self) -> usize {
        self.segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.checkpointed)
            .map(|(i, s)| s.range.len() + self.inner(i).map_or(0, Plan::recomputed_layers))
            .sum()
    }

    /// Levels of checkpoints: 0 for a plan that records everything, 1 for segments whose
    /// recompute records every layer, 2 when a recompute has checkpoints of its own, and so on.
    pub fn depth(&self) -> usize {
        self.segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.checkpointed)
            .map(|(i, _)| 1 + self.inner(i).map_or(0, Plan::depth))
            .max()
            .unwrap_or(0)
    }

    /// Fails with [`Error::InvalidArgument`] unless the segments cover the layers `0..n`
    /// exactly: in order, none empty, no gap, no overlap, none past the end, the last ending at
    /// `n`; and every nested plan covers its checkpointed segment in the same way (only
    /// checkpointed segments have one). The message names the offending segment.
    pub fn check_covers(&self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::invalid("plan", "the chain has no layers"));
        }
        self.check_range(0..n, "")
    }

    /// [`Plan::check_covers`] for the layers `want`; `at` says where a nested plan sits.
    fn check_range(&self, want: Range<usize>, at: &str) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("plan", format!("{at}{msg}")));
        let n = want.end;
        if self.segments.is_empty() {
            return bad(if at.is_empty() {
                format!("the plan has no segment; the chain has {n} layers")
            } else {
                format!("the plan has no segment; the segment is {want:?}")
            });
        }
        let mut next = want.start;
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
                return bad(if at.is_empty() {
                    format!("segment {i} ({r:?}) goes past the end of the chain ({n} layers)")
                } else {
                    format!("segment {i} ({r:?}) goes past the end of the segment ({want:?})")
                });
            }
            if let Some(inner) = self.inner(i) {
                if !s.checkpointed {
                    return bad(format!(
                        "segment {i} ({r:?}) is recorded but has a recompute plan"
                    ));
                }
                inner.check_range(r.clone(), &format!("{at}the recompute plan of {r:?}: "))?;
            }
            next = r.end;
        }
        if next != n {
            let whole = if at.is_empty() {
                format!("the chain has {n}")
            } else {
                format!("the segment is {want:?}")
            };
            return bad(format!(
                "the plan covers layers {}..{next}, {whole} (layers {next}..{n} are in no segment)",
                want.start
            ));
        }
        Ok(())
    }
}

/// `keep 0..4, ckpt 4..8, ckpt 8..16 [ckpt 8..12, keep 12..16]`: each segment, with its
/// recompute's plan in brackets where it has one.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            let kind = if s.checkpointed { "ckpt" } else { "keep" };
            write!(f, "{kind} {}..{}", s.range.start, s.range.end)?;
            if let Some(inner) = self.inner(i) {
                write!(f, " [{inner}]")?;
            }
        }
        Ok(())
    }
}
