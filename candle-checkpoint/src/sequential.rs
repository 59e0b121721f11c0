//! Chains of stages over candle: [`checkpoint_sequential`] (equal segments, all but the last
//! checkpointed, like PyTorch's) and [`run_plan`] (a [`Plan`] from the planner, nested
//! checkpoints included).

use crate::checkpoint::checkpoint;
use crate::error::{Error, Result};
use candle_core::{Module, Tensor};
use recompute_planner::Plan;
use std::ops::Range;
use std::sync::Arc;

/// A stage's forward.
type StageFn = dyn Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync;

/// One stage of a chain (a layer, a block): a name and a forward from one tensor to the next.
/// Cloning shares the forward.
#[derive(Clone)]
pub struct Stage {
    name: String,
    forward: Arc<StageFn>,
}

impl Stage {
    /// A stage called `name` computing `forward`.
    pub fn new(
        name: impl Into<String>,
        forward: impl Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync + 'static,
    ) -> Self {
        Stage {
            name: name.into(),
            forward: Arc::new(forward),
        }
    }

    /// A stage running a candle module.
    pub fn module(name: impl Into<String>, m: impl Module + Send + Sync + 'static) -> Self {
        Stage::new(name, move |x| m.forward(x))
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the stage.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        (self.forward)(x)
    }
}

/// Runs the stages of `range` of `stages`, tracked as usual.
fn run_range(stages: &[Stage], range: Range<usize>, x: &Tensor) -> candle_core::Result<Tensor> {
    let mut h = x.clone();
    for s in &stages[range] {
        h = s.forward(&h)?;
    }
    Ok(h)
}

/// Runs `plan` (already checked against the chain) over `stages` from `x`.
fn run_parts(stages: &Arc<Vec<Stage>>, plan: &Plan, x: &Tensor) -> Result<Tensor> {
    let mut h = x.clone();
    for (i, seg) in plan.segments().iter().enumerate() {
        h = if !seg.checkpointed {
            run_range(stages, seg.range.clone(), &h)?
        } else {
            let chain = stages.clone();
            let range = seg.range.clone();
            let inner = plan.inner(i).cloned();
            let out = checkpoint(&[h], move |xs| {
                let x = xs
                    .first()
                    .ok_or_else(|| Error::invalid("run_plan", "a segment got no input"))?;
                match &inner {
                    Some(p) => Ok(vec![run_parts(&chain, p, x)?]),
                    None => Ok(vec![run_range(&chain, range.clone(), x)?]),
                }
            })?;
            out.into_iter()
                .next()
                .ok_or_else(|| Error::invalid("run_plan", "a segment made no output"))?
        };
    }
    Ok(h)
}

/// Runs the chain `stages` from `x` under `plan`: recorded segments run as usual, checkpointed
/// ones through [`checkpoint`] (their recompute under their own plan where they have one).
/// Fails before running anything unless the plan covers the chain exactly.
pub fn run_plan(stages: &[Stage], plan: &Plan, x: &Tensor) -> Result<Tensor> {
    plan.check_covers(stages.len())?;
    run_parts(&Arc::new(stages.to_vec()), plan, x)
}

/// Runs the chain in `segments` nearly equal segments, all but the last checkpointed (one
/// segment checkpoints the whole chain). Fails unless `1 <= segments <= stages.len()`.
pub fn checkpoint_sequential(stages: &[Stage], segments: usize, x: &Tensor) -> Result<Tensor> {
    let n = stages.len();
    if n == 0 {
        return Err(Error::invalid(
            "checkpoint_sequential",
            "the chain has no layers",
        ));
    }
    if segments == 0 || segments > n {
        return Err(Error::invalid(
            "checkpoint_sequential",
            format!("segments must be in 1..={n}, got {segments}"),
        ));
    }
    run_plan(stages, &Plan::equal_segments(n, segments), x)
}
