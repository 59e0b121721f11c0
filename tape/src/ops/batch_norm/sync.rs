//! Synchronised batch norm, recompute-safe: batch statistics over the global batch of a
//! data-parallel group, through a [`BatchStatsReducer`] that the engine calls without knowing
//! what carries the sums (MPI in the `dist` crate; nothing in a world of one).
//!
//! The forward pass sums per-channel `x` (with the count), then per-channel `(x - mean)^2`
//! about the global mean, over every process (two reductions: the same two-pass statistics as
//! the local kernel, so a world of one gives the unsynchronised bits). The global moments are
//! kept, keyed by the local sums, so that a checkpointed segment's recompute (which sees the
//! same input) finds them again and communicates nothing: only the last [`KEPT`] batches of
//! each layer are kept (`2 x C` values each: 5.5 KB for 342 channels). Backward sums
//! `(sum dy, sum dy * xhat)` over the group for the input gradient, as PyTorch's
//! `SyncBatchNorm` does; the weight and bias gradients stay local (the data-parallel reducer
//! averages them).

use crate::error::{Error, Result};
use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

/// Batches of global statistics each synchronised layer keeps for its recompute.
pub const KEPT: usize = 2;

/// Which pass of a step a synchronised batch norm reduces in (a recompute never does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncPass {
    /// The forward pass: per-channel sums of the input and the count, then the squared
    /// deviations about the global mean.
    Forward,
    /// Backward: per-channel `(sum dy, sum dy * xhat)` and the count, for the input gradient.
    Backward,
}

/// Sums per-channel values over every process of a data-parallel group: what a synchronised
/// batch norm calls, and all the engine knows of the group. Every process calls it in the same
/// order with the same length; a world of one leaves `values` as they are.
pub trait BatchStatsReducer: Send + Sync {
    /// Replaces each of `values` by its sum over every process, in place.
    fn sum(&self, values: &mut [f64], pass: SyncPass) -> Result<()>;
}

/// The global moments of one batch: per-channel mean and biased variance over `count` values.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GlobalMoments {
    pub(crate) mean: Vec<f64>,
    pub(crate) var: Vec<f64>,
    pub(crate) count: f64,
}

/// One kept batch: its key (a hash of the local count and sums) and its global moments.
struct Kept {
    key: u64,
    moments: GlobalMoments,
}

/// A layer's synchronisation: the reducer and the batches kept for the recompute.
pub(crate) struct SyncBn {
    reducer: Arc<dyn BatchStatsReducer>,
    kept: Mutex<VecDeque<Kept>>,
}

impl std::fmt::Debug for SyncBn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        write!(f, "SyncBn({} batches kept)", kept.len())
    }
}

/// A hash of the local count and the bits of the local sums: what finds a batch again.
fn key_of(count: usize, sums: &[f64]) -> u64 {
    let mut h = DefaultHasher::new();
    count.hash(&mut h);
    for s in sums {
        s.to_bits().hash(&mut h);
    }
    h.finish()
}

impl SyncBn {
    /// A layer synchronised through `reducer`, with nothing kept.
    pub(crate) fn new(reducer: Arc<dyn BatchStatsReducer>) -> Self {
        SyncBn {
            reducer,
            kept: Mutex::new(VecDeque::with_capacity(KEPT)),
        }
    }

    /// The reducer (backward calls it too).
    pub(crate) fn reducer(&self) -> Arc<dyn BatchStatsReducer> {
        self.reducer.clone()
    }

    /// The same reducer with nothing kept (a copied model keeps no batches).
    pub(crate) fn fresh(&self) -> Self {
        Self::new(self.reducer.clone())
    }

    /// The global moments of a batch of `count` values per channel on this process: `sums(None)`
    /// gives the local per-channel sums of `x`, `sums(Some(mean))` those of `(x - mean)^2`. In
    /// the forward pass both are summed over the group and the result is kept; in a recompute
    /// (`recompute`) the kept result of the same batch is returned, with no reduction, and a
    /// batch the forward pass did not see is an error.
    pub(crate) fn moments(
        &self,
        op: &'static str,
        recompute: bool,
        count: usize,
        sums: impl Fn(Option<&[f64]>) -> Result<Vec<f64>>,
    ) -> Result<GlobalMoments> {
        let local = sums(None)?;
        let key = key_of(count, &local);
        let kept = || self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if recompute {
            return kept()
                .iter()
                .rev()
                .find(|k| k.key == key)
                .map(|k| k.moments.clone())
                .ok_or_else(|| {
                    Error::invalid(
                        op,
                        "synchronised batch norm: a recompute met a batch whose global \
                         statistics the forward pass did not keep (the recomputed input differs)",
                    )
                });
        }
        let c = local.len();
        let mut buf = local;
        buf.push(count as f64);
        self.reducer.sum(&mut buf, SyncPass::Forward)?;
        let total = buf[c];
        if total < 2.0 {
            return Err(Error::invalid(
                op,
                format!("training needs more than one value per channel, got {total} globally"),
            ));
        }
        buf.truncate(c);
        let mean: Vec<f64> = buf.iter().map(|s| s / total).collect();
        let mut sq = sums(Some(&mean))?;
        self.reducer.sum(&mut sq, SyncPass::Forward)?;
        let var = sq.iter().map(|s| s / total).collect();
        let moments = GlobalMoments {
            mean,
            var,
            count: total,
        };
        // Locked only now: no lock is held across a collective.
        let mut kept = kept();
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(Kept {
            key,
            moments: moments.clone(),
        });
        Ok(moments)
    }
}

/// Backward's global sums: `sum_g[ch]` and `sum_gx[ch]` (`sum dy` and `sum dy * xhat` or, for
/// the fused op, `sum dy * (x - mean)`) summed over the group with the count. Returns the
/// global sums (`sum_g` then `sum_gx`, `2c` values) and the global count.
pub(crate) fn global_grad_sums(
    reducer: &dyn BatchStatsReducer,
    local: &[(f64, f64)],
    count: usize,
) -> Result<(Vec<f64>, f64)> {
    let c = local.len();
    let mut buf: Vec<f64> = local
        .iter()
        .map(|s| s.0)
        .chain(local.iter().map(|s| s.1))
        .chain([count as f64])
        .collect();
    reducer.sum(&mut buf, SyncPass::Backward)?;
    let total = buf[2 * c];
    buf.truncate(2 * c);
    Ok((buf, total))
}
