//! The segment-recompute combinator.
//!
//! First pass: the segment runs on a no-grad tape with the caller's context (so batch norm updates
//! its running statistics once, and dropout draws its masks); only the inputs are kept. Backward:
//! the segment re-runs on a recording tape in [`Phase::Recompute`] from the same context (same
//! dropout masks, running statistics untouched; its last op takes the first pass's output
//! instead of computing it again, where the op can), is seeded with the outer gradient of its
//! output,
//! and the gradients of its inputs and of every parameter it used are added into the outer
//! gradients. The inner tape and everything it saved die right after.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tape::{DType, Device, Error, Gradients, Phase, Result, Tape, Tensor};

/// How a segment's recompute gets the first pass's output, which its last op then takes instead
/// of computing it again (where the op can).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KnownOutput {
    /// The segment keeps the output (free when the output lives on anyway, as the next
    /// segment's input).
    #[default]
    Keep,
    /// The last op takes a stand-in without values ([`Tensor::stand_in`]): for a last op whose
    /// backward reads nothing of its output (conv2d, linear, dropout) when the caller keeps the
    /// output elsewhere (copied into a [`tape::BlockStorage`]), so the segment keeps no copy and
    /// its recompute reads none back. A last op whose backward does read its output fails with
    /// [`tape::Error::NoValues`].
    StandIn,
    /// The last op is recomputed too (when it is cheap, an average pool, and keeping its output
    /// is not free).
    Recompute,
}

/// Options of [`checkpoint_with`].
#[derive(Clone, Debug, Default)]
pub struct CheckpointOptions {
    /// A name for error messages.
    pub name: Option<String>,
    /// Debug check: fail if the recomputed output differs (bitwise) from the first pass.
    pub verify_determinism: bool,
    /// How the recompute gets the first pass's output.
    pub known_output: KnownOutput,
    /// A deliberate fault, for negative-control tests only.
    #[doc(hidden)]
    pub fault: Fault,
}

/// Deliberately broken behaviours, so tests can show that the equivalence properties detect
/// them. Never set outside tests.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Correct behaviour.
    #[default]
    None,
    /// Hand back only the inputs' gradients, dropping the parameters'.
    DropParameterGrads,
    /// Recompute in the forward phase (batch norm updates running statistics twice, as the seed
    /// project's code does).
    RecomputeInForwardPhase,
    /// Recompute from another random stream position (dropout draws a different mask).
    FreshRandomStream,
}

/// Runs `segment` on `inputs` with recompute-in-backward (see the module docs). On a no-grad
/// tape, or in eval mode, it is a plain call.
pub fn checkpoint<'a, F>(tape: &mut Tape<'a>, inputs: &[&Tensor], segment: F) -> Result<Tensor>
where
    F: Fn(&mut Tape<'a>, &[Tensor]) -> Result<Tensor> + 'a,
{
    checkpoint_with(tape, inputs, CheckpointOptions::default(), segment)
}

/// [`checkpoint`] with options (a name, the determinism check).
pub fn checkpoint_with<'a, F>(
    tape: &mut Tape<'a>,
    inputs: &[&Tensor],
    options: CheckpointOptions,
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
    let (out, first) = first_pass(tape, &saved, &[], &segment)?;
    let first_print = options.verify_determinism.then(|| fingerprint(&out));
    // The recompute need not run the segment's last op forward again: its output only seeds
    // backward, and the first pass has it (kept alive anyway as the next segment's input). Not
    // under the determinism check, which compares a recomputed output.
    let known = match (first.ops_started().checked_sub(1), first_print) {
        (Some(last), None) => match options.known_output {
            KnownOutput::Keep => Some((last, Known::Kept(out.clone()))),
            KnownOutput::StandIn => Some((last, Known::StandIn(shape_of(&out)))),
            KnownOutput::Recompute => None,
        },
        _ => None,
    };

    let out_device = out.device().clone();
    Ok(
        tape.record_always("checkpoint", out, move |grad_out, grads| {
            let mut ctx = start;
            ctx.phase = Phase::Recompute;
            match options.fault {
                Fault::RecomputeInForwardPhase => ctx.phase = Phase::Forward,
                Fault::FreshRandomStream => ctx.counter += 1000,
                Fault::None | Fault::DropParameterGrads => {}
            }
            let mut inner = Tape::with_context(true, ctx);
            if let Some((last, known)) = known {
                let output = match known {
                    Known::Kept(t) => t,
                    Known::StandIn((shape, dtype, device)) => {
                        Tensor::stand_in(&shape, dtype, &device)
                    }
                };
                inner.set_known_output(last, output);
            }
            let before = out_device.memory().current();
            let out = segment(&mut inner, &saved)?;
            if out_device.memory().is_recording() {
                let recorded = out_device.memory().current().saturating_sub(before);
                warn_if_saves_nothing(&out_device, &saved, recorded, options.name.as_deref());
            }
            if let Some(expected) = first_print {
                if fingerprint(&out) != expected {
                    return Err(Error::Backward(format!(
                    "checkpoint segment '{}': the recomputed output differs from the first pass \
                     (the segment is not deterministic: check for state changed between passes)",
                    options.name.as_deref().unwrap_or("<unnamed>")
                )));
                }
            }
            let mut inner_grads = segment_gradients(inner, &out, &saved, grad_out)?;
            if options.fault == Fault::DropParameterGrads {
                for t in &saved {
                    if let Some(g) = inner_grads.take(t.id()) {
                        grads.accumulate_id(t.id(), g)?;
                    }
                }
                return Ok(());
            }
            grads.merge(inner_grads)
        }),
    )
}

/// A segment's first pass: `segment` on a no-grad tape with `tape`'s context, capturing the
/// outputs of the ops named in `capture`; `tape`'s context then moves on as the segment moved
/// it, and inside an enclosing segment's recompute its op count includes this segment's ops (as
/// the enclosing first pass, a plain call, counted them). Returns the output and the first
/// tape (with its captured outputs and op count).
pub(crate) fn first_pass<'a, F>(
    tape: &mut Tape<'a>,
    saved: &[Tensor],
    capture: &[&'static str],
    segment: &F,
) -> Result<(Tensor, Tape<'a>)>
where
    F: Fn(&mut Tape<'a>, &[Tensor]) -> Result<Tensor>,
{
    let mut first = Tape::with_context(false, tape.context());
    first.capture_outputs_of(capture);
    let out = segment(&mut first, saved)?;
    tape.set_context(first.context());
    tape.count_ops_run_elsewhere(first.ops_started());
    Ok((out, first))
}

/// The gradients a recomputed segment adds to the outer ones: backward of `inner` from `out`
/// seeded with `grad_out`, less the seed itself when no recorded op made `out` (a segment that
/// returns one of its inputs `saved` passes it on).
pub(crate) fn segment_gradients(
    inner: Tape,
    out: &Tensor,
    saved: &[Tensor],
    grad_out: &Tensor,
) -> Result<Gradients> {
    let out_id = out.id();
    let mut grads = inner.backward_from(out, grad_out.clone())?;
    if !saved.iter().any(|t| t.id() == out_id) {
        grads.take(out_id);
    }
    Ok(grads)
}

/// Warns on `device`'s memory report when the inputs a segment keeps take as many bytes as its
/// recorded recompute keeps for backward (`recorded`): checkpointing it saved nothing.
fn warn_if_saves_nothing(
    device: &tape::Device,
    kept: &[Tensor],
    recorded: usize,
    name: Option<&str>,
) {
    let kept_bytes: usize = kept.iter().map(Tensor::size_in_bytes).sum();
    if kept_bytes > 0 && kept_bytes >= recorded {
        device.memory().warn(tape::Warning::CheckpointSavesNothing {
            scope: scope_name(name),
            kept_bytes,
            saved_bytes: recorded,
        });
    }
}

/// The name a warning gives a segment: its own, or the module scope it runs in.
pub(crate) fn scope_name(name: Option<&str>) -> Option<Arc<str>> {
    name.map(Arc::from)
        .or_else(|| tape::context::current().name)
}

/// The first pass's output, for the recompute: kept, or a stand-in of its shape, dtype and
/// device.
enum Known {
    Kept(Tensor),
    StandIn((Vec<usize>, DType, Device)),
}

/// What a stand-in for `t` needs.
fn shape_of(t: &Tensor) -> (Vec<usize>, DType, Device) {
    (t.shape().to_vec(), t.dtype(), t.device().clone())
}

/// A hash of the shape and the exact bits of every element.
fn fingerprint(t: &Tensor) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.shape().hash(&mut h);
    for v in t.to_f64_vec() {
        v.to_bits().hash(&mut h);
    }
    h.finish()
}
