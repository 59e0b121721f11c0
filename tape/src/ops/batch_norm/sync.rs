//! Synchronised batch norm, recompute-safe: batch statistics over the global batch of a
//! data-parallel group, through a [`BatchStatsReducer`] that the engine calls without knowing
//! what carries the sums (MPI in the `dist` crate; nothing in a world of one).
//!
//! The forward pass sums per-channel `x` (with the count), then per-channel `(x - mean)^2`
//! about the global mean, over every process (two reductions: the same two-pass statistics as
//! the local kernel, so a world of one gives the unsynchronised bits). A checkpointed segment's
//! recompute normalises with the statistics its first pass kept, as every batch norm's does
//! ([`super::kept`]): the global ones, so it communicates nothing. Backward sums
//! `(sum dy, sum dy * xhat)` over the group for the input gradient, as PyTorch's
//! `SyncBatchNorm` does; the weight and bias gradients stay local (the data-parallel reducer
//! averages them).

use crate::error::{Error, Result};
use std::sync::Arc;

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

/// A layer's synchronisation: the reducer that carries its sums.
pub(crate) struct SyncBn {
    reducer: Arc<dyn BatchStatsReducer>,
}

impl std::fmt::Debug for SyncBn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncBn(..)")
    }
}

impl SyncBn {
    /// A layer synchronised through `reducer`.
    pub(crate) fn new(reducer: Arc<dyn BatchStatsReducer>) -> Self {
        SyncBn { reducer }
    }

    /// The reducer (backward calls it too).
    pub(crate) fn reducer(&self) -> Arc<dyn BatchStatsReducer> {
        self.reducer.clone()
    }

    /// The global moments of a batch of `count` values per channel on this process: `sums(None)`
    /// gives the local per-channel sums of `x`, `sums(Some(mean))` those of `(x - mean)^2`, each
    /// summed over the group.
    pub(crate) fn moments(
        &self,
        op: &'static str,
        count: usize,
        sums: impl Fn(Option<&[f64]>) -> Result<Vec<f64>>,
    ) -> Result<GlobalMoments> {
        let local = sums(None)?;
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
        Ok(GlobalMoments {
            mean,
            var,
            count: total,
        })
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
