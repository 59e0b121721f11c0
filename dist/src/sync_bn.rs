//! Synchronised batch norm over a [`ProcessGroup`] (PyTorch's `SyncBatchNorm`): [`SyncBatchNorm`]
//! gives every batch norm of a model a reducer that sums its per-channel statistics over the
//! group, so that training normalises with the global batch's mean and variance. The engine
//! calls the reducer twice per layer in the forward pass and once in backward; a checkpointed
//! segment's recompute reuses the forward pass's statistics and calls it never, which
//! [`SyncBnStats`] lets a test count. In a world of one every sum is the identity.

use crate::group::ProcessGroup;
use crate::transport::ReduceOp;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tape::nn::{self, Module};
use tape::ops::{BatchStatsReducer, SyncPass};

/// What the synchronised batch norms of a model have reduced so far (this process's view).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncBnStats {
    /// Reductions in forward passes (two per layer and forward call).
    pub forward_calls: u64,
    /// Reductions in backward (one per layer whose input gradient is wanted).
    pub backward_calls: u64,
    /// Values summed, all reductions together.
    pub values: u64,
}

#[derive(Default)]
struct Counters {
    forward_calls: AtomicU64,
    backward_calls: AtomicU64,
    values: AtomicU64,
}

/// The reducer the engine's batch norms call: an all-reduce (sum) over the group.
struct GroupReducer {
    group: ProcessGroup,
    counters: Counters,
}

impl BatchStatsReducer for GroupReducer {
    fn sum(&self, values: &mut [f64], pass: SyncPass) -> tape::Result<()> {
        let calls = match pass {
            SyncPass::Forward => &self.counters.forward_calls,
            SyncPass::Backward => &self.counters.backward_calls,
        };
        calls.fetch_add(1, Ordering::Relaxed);
        self.counters
            .values
            .fetch_add(values.len() as u64, Ordering::Relaxed);
        self.group
            .all_reduce_f64(values, ReduceOp::Sum)
            .map_err(|e| tape::Error::Backend(format!("synchronised batch norm: {e}")))
    }
}

/// Synchronised batch norm over a group: [`SyncBatchNorm::convert`] makes a model's batch
/// norms train with the statistics of the global batch (`--sync-bn` in the examples). Without
/// it each process normalises its own shard (PyTorch's default under DDP).
#[derive(Clone)]
pub struct SyncBatchNorm {
    reducer: Arc<GroupReducer>,
}

impl std::fmt::Debug for SyncBatchNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SyncBatchNorm({:?}, {:?})",
            self.reducer.group,
            self.stats()
        )
    }
}

impl SyncBatchNorm {
    /// Synchronisation over `group` (not yet applied to any model).
    pub fn new(group: &ProcessGroup) -> Self {
        SyncBatchNorm {
            reducer: Arc::new(GroupReducer {
                group: group.clone(),
                counters: Counters::default(),
            }),
        }
    }

    /// Synchronises every batch norm of `model` (its running statistics included: updated
    /// once per step, from the global batch, identically on every rank); returns how many.
    pub fn convert<M: Module + ?Sized>(&self, model: &M) -> usize {
        let reducer: Arc<dyn BatchStatsReducer> = self.reducer.clone();
        nn::set_batch_norm_sync(model, Some(reducer))
    }

    /// Makes every batch norm of `model` normalise its own process's batch again.
    pub fn release<M: Module + ?Sized>(model: &M) -> usize {
        nn::set_batch_norm_sync(model, None)
    }

    /// What the synchronised batch norms have reduced so far.
    pub fn stats(&self) -> SyncBnStats {
        let c = &self.reducer.counters;
        SyncBnStats {
            forward_calls: c.forward_calls.load(Ordering::Relaxed),
            backward_calls: c.backward_calls.load(Ordering::Relaxed),
            values: c.values.load(Ordering::Relaxed),
        }
    }
}
