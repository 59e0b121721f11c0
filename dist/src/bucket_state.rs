//! The state of one step's gradient reduction, which [`crate::Ddp`]'s gradient observer updates
//! during backward: the learned bucket layout, each gradient's contributions so far, the staged
//! buckets and the all-reduces started; [`StepState::finish`] waits for them after backward and
//! reports what was done ([`StepComm`], [`BucketLaunch`]).

use crate::buffer::{Buf, Pending};
use crate::error::{DistError, Result};
use crate::group::ProcessGroup;
use crate::transport::ReduceOp;
use std::sync::Arc;
use std::time::Instant;
use tape::{DType, Device, Gradients, Tensor, TensorId};

/// One bucket's all-reduce, as it was launched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketLaunch {
    /// The bucket's index.
    pub bucket: usize,
    /// Its parameters' names, in bucket order.
    pub params: Vec<String>,
    /// Contributions to parameter gradients backward had made when it was launched.
    pub contributions_before: usize,
    /// Whether it was launched while backward still ran (not after it).
    pub during_backward: bool,
}

/// What one step's gradient reduction did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepComm {
    /// Bytes this rank sent into all-reduces.
    pub bytes: u64,
    /// Buckets all-reduced.
    pub buckets: usize,
    /// Seconds the all-reduces ran on the communication thread.
    pub comm_s: f64,
    /// Seconds this rank waited for them after backward (communication not overlapped).
    pub exposed_s: f64,
    /// Contributions to parameter gradients during backward.
    pub contributions: usize,
    /// The launches, in order.
    pub launches: Vec<BucketLaunch>,
}

/// A parameter as the reducer knows it.
pub(crate) struct Slot {
    pub(crate) id: TensorId,
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) numel: usize,
    pub(crate) device: Device,
}

/// The buckets, learned in the first step.
pub(crate) struct Layout {
    /// Slots per bucket, in bucket order.
    pub(crate) buckets: Vec<Vec<usize>>,
    /// Per slot: its bucket and its offset in the bucket.
    pub(crate) place: Vec<(usize, usize)>,
    /// Per bucket: its number of elements.
    pub(crate) lens: Vec<usize>,
    /// Per slot: contributions its gradient receives in a step.
    pub(crate) counts: Vec<u32>,
}

/// One step's state, shared with the gradient observer.
pub(crate) struct StepState {
    pub(crate) layout: Option<Arc<Layout>>,
    pub(crate) dtype: DType,
    /// Per slot: contributions seen this step.
    pub(crate) seen: Vec<u32>,
    /// Per slot: the contribution sequence number of its last contribution (first step).
    pub(crate) last: Vec<u64>,
    /// Per slot: whether its gradient is staged in its bucket.
    pub(crate) staged_slot: Vec<bool>,
    pub(crate) contributions: usize,
    /// Per bucket: gradients still to become final, and its staged values.
    pub(crate) remaining: Vec<usize>,
    pub(crate) staged: Vec<Option<Buf>>,
    pub(crate) next_launch: usize,
    pub(crate) pending: Vec<(usize, Pending<Buf>)>,
    pub(crate) launches: Vec<BucketLaunch>,
    pub(crate) error: Option<DistError>,
}

impl StepState {
    /// Sets up a step over `layout`'s buckets (what has been seen so far stays counted).
    pub(crate) fn start_step(&mut self, layout: Arc<Layout>) -> Result<()> {
        self.remaining = layout.buckets.iter().map(Vec::len).collect();
        self.staged = layout
            .lens
            .iter()
            .map(|&len| Buf::zeros(self.dtype, len).map(Some))
            .collect::<Result<_>>()?;
        self.layout = Some(layout);
        Ok(())
    }

    /// A contribution to slot `slot`'s gradient, `g` the sum so far.
    pub(crate) fn observe(
        &mut self,
        slot: usize,
        g: &Tensor,
        slots: &[Slot],
        group: &ProcessGroup,
    ) {
        self.contributions += 1;
        self.seen[slot] += 1;
        self.last[slot] = self.contributions as u64;
        let Some(layout) = self.layout.clone() else {
            return;
        };
        let (seen, want) = (self.seen[slot], layout.counts[slot]);
        if seen > want {
            self.error.get_or_insert(DistError::Reducer(format!(
                "the gradient of '{}' got contribution {seen} after its bucket was reduced \
                 (the first step counted {want}): the graph changed between steps",
                slots[slot].name
            )));
            return;
        }
        if seen < want {
            return;
        }
        let (bucket, at) = layout.place[slot];
        if let Some(buf) = self.staged[bucket].as_mut() {
            if let Err(e) = buf.write_at(at, g) {
                self.error.get_or_insert(e);
                return;
            }
        }
        self.staged_slot[slot] = true;
        self.remaining[bucket] -= 1;
        self.launch_ready(slots, group, true);
    }

    /// Launches the buckets from the next one on that are complete, in order.
    pub(crate) fn launch_ready(
        &mut self,
        slots: &[Slot],
        group: &ProcessGroup,
        during_backward: bool,
    ) {
        let Some(layout) = self.layout.clone() else {
            return;
        };
        while self.next_launch < layout.buckets.len() && self.remaining[self.next_launch] == 0 {
            self.launch(self.next_launch, &layout, slots, group, during_backward);
        }
    }

    fn launch(
        &mut self,
        bucket: usize,
        layout: &Layout,
        slots: &[Slot],
        group: &ProcessGroup,
        during_backward: bool,
    ) {
        if let Some(buf) = self.staged[bucket].take() {
            self.pending
                .push((bucket, group.start_all_reduce(buf, ReduceOp::Mean)));
            self.launches.push(BucketLaunch {
                bucket,
                params: layout.buckets[bucket]
                    .iter()
                    .map(|&s| slots[s].name.clone())
                    .collect(),
                contributions_before: self.contributions,
                during_backward,
            });
        }
        self.next_launch = bucket + 1;
    }

    /// After backward: stages what is not yet staged (a gradient that got fewer contributions
    /// than counted, or none: zeros), launches the remaining buckets, waits for all and writes
    /// the means into `grads`.
    pub(crate) fn finish(
        &mut self,
        grads: &mut Gradients,
        slots: &[Slot],
        group: &ProcessGroup,
    ) -> Result<StepComm> {
        let layout = self
            .layout
            .clone()
            .ok_or_else(|| DistError::Reducer("no bucket layout".into()))?;
        let t0 = Instant::now();
        for (slot, &(bucket, at)) in layout.place.iter().enumerate() {
            if self.staged_slot[slot] {
                continue;
            }
            let staged = self.staged[bucket].as_mut();
            if let (Some(buf), Some(g)) = (staged, grads.get_id(slots[slot].id)) {
                buf.write_at(at, g)?;
            }
        }
        let start = self.next_launch;
        for bucket in start..layout.buckets.len() {
            self.launch(bucket, &layout, slots, group, false);
        }
        let mut comm = StepComm {
            contributions: self.contributions,
            ..StepComm::default()
        };
        for (bucket, pending) in std::mem::take(&mut self.pending) {
            let (buf, secs) = pending.wait_timed()?;
            comm.comm_s += secs;
            comm.bytes += buf.bytes() as u64;
            comm.buckets += 1;
            for &slot in &layout.buckets[bucket] {
                let s = &slots[slot];
                let t = buf.tensor(layout.place[slot].1, &s.shape, &s.device)?;
                grads.take(s.id);
                grads.accumulate_id(s.id, t)?;
            }
        }
        comm.exposed_s = t0.elapsed().as_secs_f64();
        comm.launches = std::mem::take(&mut self.launches);
        Ok(comm)
    }
}
