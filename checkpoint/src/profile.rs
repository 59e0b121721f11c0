//! Dry-run profiling of a chain on real tensors: every quantity of a [`LayerProfile`] from the
//! device's memory accounting, and each layer's forward time.

use crate::sequential::Stage;
use recompute_planner::{ChainModel, LayerProfile};
use std::time::Instant;
use tape::{Context, Error, MemoryStats, Phase, Result, Tape, Tensor};

/// Timed no-grad forwards per layer (the fastest is its cost).
const TIMED_RUNS: usize = 3;

/// Runs each layer of `layers` on its real input (the previous layer's output, `x` for the
/// first) a few times and measures, from the device's memory accounting, every quantity the
/// model needs ([`LayerProfile`]): what a recorded forward keeps, whether it keeps its input and
/// output, the peaks of its recorded and no-grad forwards and of its backward (with its output
/// and output gradient held by others or not), and its gradients; its cost is the fastest of a
/// few no-grad forwards, in seconds (layers that match in every forward byte count get the
/// median of their times, so that timing noise does not tell identical layers apart). The runs use the recompute phase (batch norm's running
/// statistics are not touched) and the context of `tape_context` otherwise; they reset the
/// device's peak counter and free everything they allocate. `base_bytes` is what the device
/// holds as a step starts whatever the plan (typically `x.device().memory().current()` with the
/// parameters and the input allocated); the loss is taken to be a scalar of the output's dtype.
///
/// Fails with [`Error::InvalidArgument`] for an empty chain, and with any error a layer returns.
pub fn profile_chain<'a>(
    tape_context: &Tape<'a>,
    layers: &'a [Stage<'a>],
    x: &Tensor,
    base_bytes: u64,
) -> Result<ChainModel> {
    if layers.is_empty() {
        return Err(Error::invalid("profile_chain", "the chain has no layers"));
    }
    let mut ctx = tape_context.context();
    ctx.phase = Phase::Recompute;
    ctx.training = true;
    let memory = x.device().memory();
    let mut profiles = Vec::with_capacity(layers.len());
    let mut h = x.clone();
    for (i, layer) in layers.iter().enumerate() {
        // A later layer's input is a recorded output: it wants a gradient.
        let input = if i == 0 {
            x.clone()
        } else {
            h.detach().with_requires_grad(true)
        };
        let (profile, y) = profile_layer(ctx, layer, &input, memory)?;
        profiles.push(profile);
        h = y;
    }
    same_work_same_cost(&mut profiles);
    Ok(ChainModel {
        layers: profiles,
        base_bytes,
        loss_bytes: h.dtype().size_in_bytes() as u64,
    })
}

/// Timing noise must not steer the planner between layers that do the same work: layers whose
/// forwards match in every byte (output, saved bytes, peaks, parameter gradients) get the median
/// of their measured times.
fn same_work_same_cost(profiles: &mut [LayerProfile]) {
    let key = |l: &LayerProfile| {
        (
            l.output_bytes,
            l.saved_bytes,
            l.keeps_input,
            l.keeps_output,
            l.forward_peak,
            l.nograd_peak,
            l.param_grad_bytes,
        )
    };
    let mut groups: std::collections::HashMap<_, Vec<usize>> = std::collections::HashMap::new();
    for (i, l) in profiles.iter().enumerate() {
        groups.entry(key(l)).or_default().push(i);
    }
    for members in groups.values() {
        let mut costs: Vec<f64> = members.iter().map(|&i| profiles[i].cost).collect();
        costs.sort_by(f64::total_cmp);
        let median = costs[costs.len() / 2];
        for &i in members {
            profiles[i].cost = median;
        }
    }
}

/// Bytes held now above `before`.
fn above(memory: &MemoryStats, before: usize) -> u64 {
    memory.current().saturating_sub(before) as u64
}

/// Peak bytes since the last reset above `before`.
fn peak_above(memory: &MemoryStats, before: usize) -> u64 {
    memory.peak().saturating_sub(before) as u64
}

/// One layer's profile and its output (from a no-grad run).
fn profile_layer<'a>(
    ctx: Context,
    layer: &Stage<'a>,
    x: &Tensor,
    memory: &MemoryStats,
) -> Result<(LayerProfile, Tensor)> {
    // No-grad forwards: peak and time.
    let (mut cost, mut nograd_peak, mut y) = (f64::INFINITY, 0, None);
    for _ in 0..TIMED_RUNS {
        drop(y.take());
        let before = memory.current();
        memory.reset_peak();
        let mut tape = Tape::with_context(false, ctx);
        let t0 = Instant::now();
        let out = layer.forward(&mut tape, x)?;
        cost = cost.min(t0.elapsed().as_secs_f64());
        nograd_peak = nograd_peak.max(peak_above(memory, before));
        y = Some(out);
    }
    let y = y.ok_or_else(|| Error::invalid("profile_chain", "no run"))?;
    let output_bytes = y.size_in_bytes() as u64;

    // A recorded forward on a private copy of the input: what it keeps, and whether dropping
    // the output and then the input frees them.
    let copy = x.deep_copy()?.with_requires_grad(x.requires_grad());
    let before = memory.current();
    memory.reset_peak();
    let mut tape = Tape::with_context(true, ctx);
    let out = layer.forward(&mut tape, &copy)?;
    let forward_peak = peak_above(memory, before);
    let with_output = above(memory, before);
    let ops = tape.ops_started();
    drop(out);
    let without_output = above(memory, before);
    let keeps_output = without_output == with_output;
    drop(copy);
    let keeps_input = memory.current() as i128 - before as i128 == without_output as i128;
    drop(tape);
    let saved_bytes = with_output.saturating_sub(output_bytes);

    // Backward inside a recorded run: a probe op stands for the layers after it (its backward
    // makes the output's gradient), and nothing else holds the output.
    let mut tape = Tape::with_context(true, ctx);
    let out = layer.forward(&mut tape, x)?;
    let (out_id, shape, dtype, device) = (
        out.id(),
        out.shape().to_vec(),
        out.dtype(),
        out.device().clone(),
    );
    let probe = Tensor::zeros(&[1], dtype, &device)?;
    let probe = tape.record_always("profile_probe", probe, move |_, grads| {
        grads.accumulate_id(out_id, Tensor::ones(&shape, dtype, &device)?)
    });
    drop(out);
    let seed = Tensor::ones(&[1], dtype, probe.device())?;
    // The seed dies once the probe's backward has made the output's gradient.
    let start = memory.current() - seed.size_in_bytes();
    memory.reset_peak();
    let grads = tape.backward_from(&probe, seed)?;
    let backward_peak = peak_above(memory, start).saturating_sub(output_bytes);
    let input_grad_bytes = grads.get_id(x.id()).map_or(0, |g| g.size_in_bytes() as u64);
    let param_grad_bytes = grads
        .iter()
        .filter(|(id, _)| **id != x.id() && **id != out_id)
        .map(|(_, g)| g.size_in_bytes() as u64)
        .sum();
    drop(grads);
    drop(probe);

    // The last layer of a recompute: it takes the first pass's output where its last op can,
    // and its output and output gradient are held by the checkpoint throughout its backward.
    let mut tape = Tape::with_context(true, ctx);
    if let Some(last) = ops.checked_sub(1) {
        tape.set_known_output(last, y.clone());
    }
    let before = memory.current();
    memory.reset_peak();
    let out = layer.forward(&mut tape, x)?;
    let forward_peak_reusing = peak_above(memory, before);
    let reuses_output = out.shares_buffer(&y);
    let grad = Tensor::ones(out.shape(), out.dtype(), out.device())?;
    let start = memory.current();
    memory.reset_peak();
    let grads = tape.backward_from(&out, grad.clone())?;
    let backward_peak_held = peak_above(memory, start);
    drop(grads);

    Ok((
        LayerProfile {
            name: layer.name().to_string(),
            output_bytes,
            saved_bytes,
            keeps_input,
            keeps_output,
            reuses_output,
            forward_peak,
            forward_peak_reusing,
            nograd_peak,
            backward_peak,
            backward_peak_held,
            input_grad_bytes,
            param_grad_bytes,
            cost,
        },
        y,
    ))
}
