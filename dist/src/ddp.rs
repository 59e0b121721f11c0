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

use crate::bucket_state::{Layout, Slot, StepComm, StepState};
use crate::error::{DistError, Result};
use crate::group::ProcessGroup;
use crate::module_sync::broadcast_module;
use crate::sync_bn::{SyncBatchNorm, SyncBnStats};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tape::nn::{self, Module};
use tape::{DType, Gradients, Tape, Tensor, TensorId};

/// How [`Ddp`] cuts and sends gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DdpOptions {
    /// A bucket closes when it holds at least this many bytes of gradients (25 MiB by default,
    /// PyTorch DDP's `bucket_cap_mb`).
    pub bucket_bytes: usize,
    /// The same for the first bucket, the first gradients to become final (1 MiB by default,
    /// as DDP's first bucket): small, so that communication starts early in backward.
    pub first_bucket_bytes: usize,
    /// Synchronise the model's batch norms over the group ([`SyncBatchNorm`]: statistics of
    /// the global batch; `--sync-bn` in the examples). Off by default: each rank normalises
    /// its own shard, as under PyTorch's DDP.
    pub sync_batch_norm: bool,
}

impl Default for DdpOptions {
    fn default() -> Self {
        DdpOptions {
            bucket_bytes: 25 * 1024 * 1024,
            first_bucket_bytes: 1024 * 1024,
            sync_batch_norm: false,
        }
    }
}

impl DdpOptions {
    /// Every bucket, the first included, closing at `bytes`.
    pub fn uniform(bytes: usize) -> Self {
        DdpOptions {
            bucket_bytes: bytes,
            first_bucket_bytes: bytes,
            sync_batch_norm: false,
        }
    }

    /// These options with the model's batch norms synchronised (`on`) or not.
    pub fn with_sync_batch_norm(mut self, on: bool) -> Self {
        self.sync_batch_norm = on;
        self
    }
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
    sync_bn: Option<SyncBatchNorm>,
}

impl Ddp {
    /// Reduces `model`'s gradients over `group`; first overwrites its parameters and buffers
    /// with rank 0's. The parameters must share one dtype. With
    /// [`DdpOptions::sync_batch_norm`], also synchronises the model's batch norms.
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
        if dtype.is_half() {
            return Err(DistError::Invalid {
                op: "Ddp::new",
                msg: format!("parameters are {dtype:?}: keep them in F32 (master weights) and run the model under a 16-bit precision policy"),
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
        let sync_bn = options.sync_batch_norm.then(|| {
            let sync = SyncBatchNorm::new(&group);
            sync.convert(model);
            sync
        });
        Ok(Ddp {
            group,
            options,
            slots: Arc::new(slots),
            index: Arc::new(index),
            dtype,
            layout: Mutex::new(None),
            last: Mutex::new(StepComm::default()),
            sync_bn,
        })
    }

    /// What the synchronised batch norms have reduced so far, if they are synchronised
    /// ([`DdpOptions::sync_batch_norm`]).
    pub fn sync_batch_norm(&self) -> Option<SyncBnStats> {
        self.sync_bn.as_ref().map(SyncBatchNorm::stats)
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
        let state = Arc::new(Mutex::new(self.fresh_state(layout)?));
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
            st.start_step(layout)?;
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

    fn fresh_state(&self, layout: Option<Arc<Layout>>) -> Result<StepState> {
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
            st.start_step(layout)?;
        }
        Ok(st)
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
        let elem = self.dtype.size_in_bytes();
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

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| DistError::Reducer("a lock was poisoned by a panic".into()))
}
