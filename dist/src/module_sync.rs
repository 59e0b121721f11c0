//! Module state across ranks: [`broadcast_module`] makes every rank start from rank 0's
//! parameters and buffers; [`module_fingerprint`] hashes them bit for bit, to check that the
//! ranks agree.

use crate::error::{DistError, Result};
use crate::group::ProcessGroup;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use tape::nn::{self, LoadOptions, Module, Stored};
use tape::Tensor;

/// Overwrites every parameter and buffer (running statistics) of `model` with rank `root`'s:
/// one broadcast of the whole state, in state-dict order. Nothing changes in a world of one.
pub fn broadcast_module<M: Module + ?Sized>(
    group: &ProcessGroup,
    model: &mut M,
    root: usize,
) -> Result<()> {
    if group.world_size() == 1 {
        return Ok(());
    }
    let state = nn::stored_state_dict(model)?;
    let mut flat: Vec<f64> = state.values().flat_map(|s| s.values.clone()).collect();
    group.broadcast_f64(&mut flat, root)?;
    let mut at = 0;
    let mut loaded = BTreeMap::new();
    for (name, s) in state {
        let n = s.values.len();
        let values = flat[at..at + n].to_vec();
        at += n;
        loaded.insert(
            name,
            Stored {
                shape: s.shape,
                values,
            },
        );
    }
    nn::load_state_dict(model, &loaded, LoadOptions::default())
        .map_err(|e| DistError::Reducer(format!("loading the broadcast state: {e}")))
}

/// Overwrites every buffer (batch norm running statistics) of `model` with rank `root`'s, as
/// PyTorch's DDP does before each forward (`broadcast_buffers`): without synchronised batch
/// norm each rank's statistics see only its shard. One broadcast; nothing in a world of one.
pub fn broadcast_buffers<M: Module + ?Sized>(
    group: &ProcessGroup,
    model: &M,
    root: usize,
) -> Result<()> {
    if group.world_size() == 1 {
        return Ok(());
    }
    let stats = nn::running_stats(model);
    let mut flat = Vec::new();
    for (_, rs) in &stats {
        flat.extend(rs.mean().try_to_f64_vec()?);
        flat.extend(rs.var().try_to_f64_vec()?);
    }
    group.broadcast_f64(&mut flat, root)?;
    let mut at = 0;
    for (_, rs) in &stats {
        let (mean, var) = (rs.mean(), rs.var());
        let (m, v) = (mean.numel(), var.numel());
        let mean_t = Tensor::from_f64(&flat[at..at + m], mean.shape(), mean.dtype(), rs.device())?;
        let var_t = Tensor::from_f64(
            &flat[at + m..at + m + v],
            var.shape(),
            var.dtype(),
            rs.device(),
        )?;
        rs.set(&mean_t, &var_t)?;
        at += m + v;
    }
    Ok(())
}

/// A hash of every parameter's and buffer's name, shape and exact bits (state-dict order).
pub fn module_fingerprint<M: Module + ?Sized>(model: &M) -> Result<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, s) in nn::stored_state_dict(model)? {
        name.hash(&mut h);
        s.shape.hash(&mut h);
        for v in s.values {
            v.to_bits().hash(&mut h);
        }
    }
    Ok(h.finish())
}
