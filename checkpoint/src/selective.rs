//! Selective activation checkpointing: a segment that keeps the outputs of its expensive ops
//! and recomputes only the cheap ones in backward (the per-op policy of PyTorch's selective
//! activation checkpointing, `torch.utils.checkpoint` with a `policy_fn` that saves matmuls).
//!
//! How it works, on `tape`'s public API only:
//!
//! 1. **First pass.** The segment runs on a no-grad tape (nothing recorded, intermediate
//!    tensors die as soon as the next op has used them) that captures the output of every call
//!    of an op the [`SelectivePolicy`] names ([`Tape::capture_outputs_of`]), with the call's
//!    index. The segment keeps its inputs, those outputs and its own output.
//! 2. **Backward.** The segment re-runs on a recording tape in [`Phase::Recompute`] (same
//!    context: dropout replays its masks) with every kept output declared known at its call's
//!    index ([`Tape::set_known_output`]), and the segment's last op's output too. A kept op
//!    records its backward as usual but takes the kept tensor instead of computing it, so its
//!    kernel does not run again; the other ops (layer norm, softmax, GELU, reshapes, copies,
//!    residual adds) run again to rebuild what the backward closures need. Then the inner tape
//!    is seeded with the outer gradient of the output, and the gradients of the inputs and
//!    parameters are added into the outer ones; the inner tape and the kept outputs die.
//!
//! What it keeps between forward and backward: the inputs, the outputs of the kept ops' calls
//! (a linear layer's `[rows, out]`, a matmul's `[.., m, n]`) and the output. What the
//! recompute saves lives only while that segment's backward runs. The segment must compute the
//! same op sequence on both passes (any deterministic function of its inputs does); the kept
//! outputs are then what the ops would compute, so gradients are bitwise those of a plain
//! recorded run.

use crate::segment::{first_pass, scope_name, segment_gradients};
use tape::{Phase, Result, Tape, Tensor};

/// Which ops' outputs a selective checkpoint keeps, by the names the ops record under
/// (`"linear"`, `"matmul"`, `"conv2d"`, ...); every other op is recomputed in backward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectivePolicy {
    keep: Vec<&'static str>,
}

impl SelectivePolicy {
    /// Keeps the outputs of the ops named in `ops`.
    pub fn keep(ops: &[&'static str]) -> Self {
        SelectivePolicy { keep: ops.to_vec() }
    }

    /// Keeps the compute-bound ops' outputs (`linear`, `matmul`, `conv2d`), recomputes the
    /// memory-bound rest: PyTorch's usual SAC policy ("save matmuls").
    pub fn compute_bound() -> Self {
        Self::keep(&["linear", "matmul", "conv2d"])
    }

    /// Keeps nothing but the output: the segment is recomputed whole (like
    /// [`crate::checkpoint`]).
    pub fn recompute_all() -> Self {
        Self::keep(&[])
    }

    /// The names of the ops whose outputs are kept.
    pub fn kept_ops(&self) -> &[&'static str] {
        &self.keep
    }
}

/// Runs `segment` on `inputs` under `policy` (see the module docs): the kept ops' outputs are
/// kept from the first pass, everything else is recomputed in backward. On a no-grad tape, or
/// in eval mode, it is a plain call.
pub fn checkpoint_selective<'a, F>(
    tape: &mut Tape<'a>,
    inputs: &[&Tensor],
    policy: &SelectivePolicy,
    segment: F,
) -> Result<Tensor>
where
    F: Fn(&mut Tape<'a>, &[Tensor]) -> Result<Tensor> + 'a,
{
    let saved: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
    if !tape.is_recording() || !tape.is_training() {
        return segment(tape, &saved);
    }
    let start = tape.context();
    let (out, mut first) = first_pass(tape, &saved, policy.kept_ops(), &segment)?;
    let mut kept = first.take_captured_outputs();
    let ops = first.ops_started();
    if ops > 0 && kept.len() == ops && out.device().memory().is_recording() {
        let scope = scope_name(None);
        let warning = tape::Warning::PolicyKeepsEverything { scope, ops };
        out.device().memory().warn(warning);
    }
    // The last op takes the output (kept anyway as the next segment's input).
    if let Some(last) = first.ops_started().checked_sub(1) {
        if !kept.iter().any(|(i, _)| *i == last) {
            kept.push((last, out.clone()));
        }
    }
    Ok(
        tape.record_always("checkpoint_selective", out, move |grad_out, grads| {
            let mut ctx = start;
            ctx.phase = Phase::Recompute;
            let mut inner = Tape::with_context(true, ctx);
            for (index, t) in kept {
                inner.set_known_output(index, t);
            }
            let out = segment(&mut inner, &saved)?;
            grads.merge(segment_gradients(inner, &out, &saved, grad_out)?)
        }),
    )
}
