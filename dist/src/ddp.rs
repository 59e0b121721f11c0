//! [`Ddp`]: data-parallel gradients. Every rank starts from rank 0's parameters and buffers;
//! after each backward every parameter's gradient is the mean over the ranks.
//!
//! Gradients travel in buckets of about [`DdpOptions::bucket_bytes`] (25 MiB, the first one
//! 1 MiB, as PyTorch's DDP).
//! A bucket is launched (an all-reduce started on the communication thread) as soon as every
//! gradient in it is final, while backward goes on. A gradient is final when it has received
//! all its contributions: the first step counts them per parameter ([`Tape::observe_gradients`]
//! sees each one) and notes the order in which the gradients became final; from then on the
//! buckets are cut in that order (rank 0's, broadcast, so that every rank has the same buckets)
//! and a gradient is final at its counted contribution. Under checkpointing a segment's
//! parameters become final when its recompute is done, in recompute order, whatever their
//! declaration order: the buckets follow. Buckets are launched in their order on every rank
//! (collectives are matched by order), a ready bucket waiting for the ones before it. The first
//! step reduces every bucket after backward.

use crate::buffer::{Buf, Pending};
use crate::error::{DistError, Result};
use crate::group::{ProcessGroup, ReduceOp};
use crate::module_sync::broadcast_module;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tape::nn::{self, Module};
use tape::{DType, Device, Gradients, Tape, Tensor, TensorId};

/// How [`Ddp`] cuts and sends gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DdpOptions {
    /// A bucket closes when it holds at least this many bytes of gradients (25 MiB by default,
    /// PyTorch DDP's `bucket_cap_mb`).
    pub bucket_bytes: usize,
    /// The same for the first bucket, the first gradients to become final (1 MiB by default,
    /// as DDP's first bucket): small, so that communication starts early in backward.
    pub first_bucket_bytes: usize,
}

impl Default for DdpOptions {
    fn default() -> Self {
        DdpOptions {
            bucket_bytes: 25 * 1024 * 1024,
            first_bucket_bytes: 1024 * 1024,
        }
    }
}

impl DdpOptions {
    /// Every bucket, the first included, closing at `bytes`.
    pub fn uniform(bytes: usize) -> Self {
        DdpOptions {
            bucket_bytes: bytes,
            first_bucket_bytes: bytes,
        }
    }
}

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
struct Slot {
    id: TensorId,
    name: String,
    shape: Vec<usize>,
    numel: usize,
    device: Device,
}

/// The buckets, learned in the first step.
struct Layout {
    /// Slots per bucket, in bucket order.
    buckets: Vec<Vec<usize>>,
    /// Per slot: its bucket and its offset in the bucket.
    place: Vec<(usize, usize)>,
    /// Per bucket: its number of elements.
    lens: Vec<usize>,
    /// Per slot: contributions its gradient receives in a step.
    counts: Vec<u32>,
}

/// One step's state, shared with the gradient observer.
struct StepState {
    layout: Option<Arc<Layout>>,
    dtype: DType,
    /// Per slot: contributions seen this step.
    seen: Vec<u32>,
    /// Per slot: the contribution sequence number of its last contribution (first step).
    last: Vec<u64>,
    /// Per slot: whether its gradient is staged in its bucket.
    staged_slot: Vec<bool>,
    contributions: usize,
    /// Per bucket: gradients still to become final, and its staged values.
    remaining: Vec<usize>,
    staged: Vec<Option<Buf>>,
    next_launch: usize,
    pending: Vec<(usize, Pending<Buf>)>,
    launches: Vec<BucketLaunch>,
    error: Option<DistError>,
}

/// Data-parallel gradient averaging over a [`ProcessGroup`] (see the module docs).
pub struct Ddp {
    group: ProcessGroup,
    options: DdpOptions,
    slots: Arc<Vec<Slot>>,
    index: Arc<HashMap<TensorId, usize>>,
    dtype: DType,
    layout: Mutex<Option<Arc<Layout>>>,
    last: Mutex<StepComm>,
}

impl Ddp {
    /// Reduces `model`'s gradients over `group`; first overwrites its parameters and buffers
    /// with rank 0's. The parameters must share one dtype.
    pub fn new<M: Module + ?Sized>(
        group: ProcessGroup,
        model: &mut M,
        options: DdpOptions,
    ) -> Result<Self> {
        broadcast_module(&group, model, 0)?;
        let params = nn::parameters(model);
        let dtype = params.first().map_or(DType::F32, |p| p.tensor().dtype());
        if let Some(p) = params.iter().find(|p| p.tensor().dtype() != dtype) {
            return Err(DistError::Invalid {
                op: "Ddp::new",
                msg: format!("parameter '{}' is not {dtype:?} like the first", p.name()),
            });
        }
        let slots: Vec<Slot> = params
            .iter()
            .map(|p| Slot {
                id: p.tensor().id(),
                name: p.name().to_string(),
                shape: p.tensor().shape().to_vec(),
                numel: p.tensor().numel(),
                device: p.tensor().device().clone(),
            })
            .collect();
        let index = slots.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
        Ok(Ddp {
            group,
            options,
            slots: Arc::new(slots),
            index: Arc::new(index),
            dtype,
            layout: Mutex::new(None),
            last: Mutex::new(StepComm::default()),
        })
    }

    /// The group gradients are averaged over.
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// Backward from `loss` on `tape`, then every parameter's gradient averaged over the
    /// ranks (buckets launched as they become final).
    pub fn backward(&self, tape: Tape, loss: &Tensor) -> Result<Gradients> {
        self.backward_into(tape, loss, Gradients::new())
    }

    /// [`Ddp::backward`] adding into `earlier` (the gradients of micro-batches run with
    /// [`Ddp::backward_no_sync`]): the sum of every micro-batch is averaged over the ranks.
    pub fn backward_into(
        &self,
        mut tape: Tape,
        loss: &Tensor,
        earlier: Gradients,
    ) -> Result<Gradients> {
        let layout = lock(&self.layout)?.clone();
        let state = Arc::new(Mutex::new(self.fresh_state(layout)));
        let (shared, slots, index, group) = (
            state.clone(),
            self.slots.clone(),
            self.index.clone(),
            self.group.clone(),
        );
        tape.observe_gradients(Box::new(move |id, g| {
            if let Some(&slot) = index.get(&id) {
                if let Ok(mut st) = shared.lock() {
                    st.observe(slot, g, &slots, &group);
                }
            }
            Ok(())
        }));
        let mut grads = tape.backward_into(loss, earlier)?;
        let mut st = lock(&state)?;
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        if st.layout.is_none() {
            let layout = Arc::new(self.learn(&st)?);
            *lock(&self.layout)? = Some(layout.clone());
            st.start_step(layout);
        }
        let comm = st.finish(&mut grads, &self.slots, &self.group)?;
        *lock(&self.last)? = comm;
        Ok(grads)
    }

    /// Backward from `loss` adding into `earlier` with no communication (a micro-batch of
    /// gradient accumulation: PyTorch's `no_sync`); the last micro-batch goes through
    /// [`Ddp::backward_into`].
    pub fn backward_no_sync(
        &self,
        tape: Tape,
        loss: &Tensor,
        earlier: Gradients,
    ) -> Result<Gradients> {
        Ok(tape.backward_into(loss, earlier)?)
    }

    /// What the last synchronised backward's reduction did.
    pub fn last_step(&self) -> StepComm {
        self.last.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The bucket sizes in elements, once learned (after the first step).
    pub fn bucket_lens(&self) -> Vec<usize> {
        match self.layout.lock() {
            Ok(l) => l.as_ref().map(|l| l.lens.clone()).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    fn fresh_state(&self, layout: Option<Arc<Layout>>) -> StepState {
        let n = self.slots.len();
        let mut st = StepState {
            layout: None,
            dtype: self.dtype,
            seen: vec![0; n],
            last: vec![0; n],
            staged_slot: vec![false; n],
            contributions: 0,
            remaining: Vec::new(),
            staged: Vec::new(),
            next_launch: 0,
            pending: Vec::new(),
            launches: Vec::new(),
            error: None,
        };
        if let Some(layout) = layout {
            st.start_step(layout);
        }
        st
    }

    /// The buckets from the first step: parameters in the order their gradients became final
    /// (rank 0's order, broadcast), cut at [`DdpOptions::bucket_bytes`].
    fn learn(&self, st: &StepState) -> Result<Layout> {
        let n = self.slots.len();
        let mut order: Vec<usize> = (0..n).collect();
        // Never-seen parameters last, in reverse declaration order.
        order.sort_by_key(|&i| (st.seen[i] == 0, st.last[i], n - i));
        let mut wire: Vec<f64> = order.iter().map(|&i| i as f64).collect();
        self.group.broadcast_f64(&mut wire, 0)?;
        let order: Vec<usize> = wire.iter().map(|&v| v as usize).collect();
        let elem = match self.dtype {
            DType::F32 => 4,
            DType::F64 => 8,
        };
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut lens = Vec::new();
        let mut place = vec![(0, 0); n];
        let mut current: Vec<usize> = Vec::new();
        let mut len = 0;
        for slot in order {
            if slot >= n {
                return Err(DistError::Reducer(format!(
                    "rank 0's bucket order names parameter {slot} of {n}: the ranks' models differ"
                )));
            }
            place[slot] = (buckets.len(), len);
            current.push(slot);
            len += self.slots[slot].numel;
            let cap = match buckets.is_empty() {
                true => self.options.first_bucket_bytes,
                false => self.options.bucket_bytes,
            };
            if len * elem >= cap {
                buckets.push(std::mem::take(&mut current));
                lens.push(std::mem::take(&mut len));
            }
        }
        if !current.is_empty() {
            buckets.push(current);
            lens.push(len);
        }
        Ok(Layout {
            buckets,
            place,
            lens,
            counts: st.seen.clone(),
        })
    }
}

impl StepState {
    /// Sets up a step over `layout`'s buckets (what has been seen so far stays counted).
    fn start_step(&mut self, layout: Arc<Layout>) {
        self.remaining = layout.buckets.iter().map(Vec::len).collect();
        self.staged = layout
            .lens
            .iter()
            .map(|&len| Some(Buf::zeros(self.dtype, len)))
            .collect();
        self.layout = Some(layout);
    }

    /// A contribution to slot `slot`'s gradient, `g` the sum so far.
    fn observe(&mut self, slot: usize, g: &Tensor, slots: &[Slot], group: &ProcessGroup) {
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
    fn launch_ready(&mut self, slots: &[Slot], group: &ProcessGroup, during_backward: bool) {
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
    fn finish(
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

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| DistError::Reducer("a lock was poisoned by a panic".into()))
}
