//! Chains of layers: [`checkpoint_sequential`] (equal segments, like PyTorch's), [`run_plan`]
//! (segments chosen by the planner) and [`run_with_policy`] (a per-op policy such as "keep conv
//! outputs, recompute batch norm, ReLU and concat").

use crate::segment::checkpoint;
use recompute_planner::Plan;
use tape::{Error, Result, Tape, Tensor};

pub use recompute_planner::{OpKind, Policy};

/// A stage's forward: works on a tape of any lifetime (the ops it records own what they save).
type StageFn<'a> = dyn for<'t> Fn(&mut Tape<'t>, &Tensor) -> Result<Tensor> + 'a;

/// One stage of a chain (a layer, a block: whatever maps one tensor to the next): a name, its
/// kind and its forward function.
pub struct Stage<'a> {
    name: String,
    kind: OpKind,
    forward: Box<StageFn<'a>>,
}

impl<'a> Stage<'a> {
    /// A stage called `name` of kind `kind` computing `forward`.
    pub fn new(
        name: impl Into<String>,
        kind: OpKind,
        forward: impl for<'t> Fn(&mut Tape<'t>, &Tensor) -> Result<Tensor> + 'a,
    ) -> Self {
        Stage {
            name: name.into(),
            kind,
            forward: Box::new(forward),
        }
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stage's kind.
    pub fn kind(&self) -> OpKind {
        self.kind
    }

    /// Runs the layer.
    pub fn forward(&self, tape: &mut Tape<'_>, x: &Tensor) -> Result<Tensor> {
        (self.forward)(tape, x)
    }
}

/// Runs the layers of `range` recorded normally.
fn run_recorded(
    tape: &mut Tape<'_>,
    layers: &[Stage<'_>],
    range: std::ops::Range<usize>,
    x: &Tensor,
) -> Result<Tensor> {
    let mut h = x.clone();
    for l in &layers[range] {
        h = l.forward(tape, &h)?;
    }
    Ok(h)
}

/// Runs `plan`'s segments (already checked) from `x`: a checkpointed segment's recompute runs
/// its own plan, or records every layer.
fn run_segments<'a>(
    tape: &mut Tape<'a>,
    layers: &'a [Stage<'a>],
    plan: &Plan,
    x: &Tensor,
) -> Result<Tensor> {
    let mut h = x.clone();
    for (i, seg) in plan.segments().iter().enumerate() {
        h = if !seg.checkpointed {
            run_recorded(tape, layers, seg.range.clone(), &h)?
        } else if let Some(inner) = plan.inner(i) {
            let inner = inner.clone();
            checkpoint(tape, &[&h], move |t, xs| {
                run_segments(t, layers, &inner, &xs[0])
            })?
        } else {
            let range = seg.range.clone();
            checkpoint(tape, &[&h], move |t, xs| {
                run_recorded(t, layers, range.clone(), &xs[0])
            })?
        };
    }
    Ok(h)
}

/// Splits `layers` into `segments` nearly equal segments and checkpoints each but the last (whose
/// activations backward needs first anyway), as PyTorch's `checkpoint_sequential` does;
/// `segments = 1` checkpoints the whole chain.
///
/// Fails with [`Error::InvalidArgument`] for an empty chain, `segments = 0` or more segments
/// than layers.
pub fn checkpoint_sequential<'a>(
    tape: &mut Tape<'a>,
    layers: &'a [Stage<'a>],
    segments: usize,
    x: &Tensor,
) -> Result<Tensor> {
    let n = layers.len();
    if n == 0 {
        return Err(Error::invalid(
            "checkpoint_sequential",
            "the chain has no layers",
        ));
    }
    if segments == 0 || segments > n {
        return Err(Error::invalid(
            "checkpoint_sequential",
            format!("segments must be in 1..={n} (one per layer at most), got {segments}"),
        ));
    }
    let plan = Plan::equal_segments(n, segments);
    run_plan(tape, layers, &plan, x)
}

/// Runs `layers` as `plan` says: each segment either recorded normally or checkpointed, and a
/// checkpointed segment's recompute as its own plan says (nested checkpoints), if it has one.
///
/// Fails with [`Error::InvalidArgument`] (see [`Plan::check_covers`]) before running anything
/// unless the plan covers the chain exactly: no gap, overlap, empty segment or segment past the
/// end, as many layers as the chain has, and every nested plan covering its segment likewise.
pub fn run_plan<'a>(
    tape: &mut Tape<'a>,
    layers: &'a [Stage<'a>],
    plan: &Plan,
    x: &Tensor,
) -> Result<Tensor> {
    plan.check_covers(layers.len())
        .map_err(crate::error::engine_error)?;
    // The chain model counts no batch statistics kept from a first pass for its recompute: the
    // plan's recomputes compute them again, as the model predicts.
    let keep = set_keep_batch_stats(tape, false);
    let out = run_segments(tape, layers, plan, x);
    set_keep_batch_stats(tape, keep);
    out
}

/// Sets whether batch norm keeps its statistics for a recompute on `tape`, returning what it was.
fn set_keep_batch_stats(tape: &mut Tape, keep: bool) -> bool {
    let mut ctx = tape.context();
    let was = ctx.keep_batch_stats;
    ctx.keep_batch_stats = keep;
    tape.set_context(ctx);
    was
}

/// Runs `layers` under a per-op [`Policy`].
pub fn run_with_policy<'a>(
    tape: &mut Tape<'a>,
    layers: &'a [Stage<'a>],
    policy: &Policy,
    x: &Tensor,
) -> Result<Tensor> {
    let plan = Plan::from_policy(layers.iter().map(|l| l.kind()), policy);
    run_plan(tape, layers, &plan, x)
}
