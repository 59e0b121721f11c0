//! `recompute-planner`: an exact planner for gradient checkpointing (segment recompute) of a
//! chain of layers, independent of any autodiff engine.
//!
//! An engine profiles its chain's stages (bytes each keeps, bytes it holds while it runs, cost:
//! one [`LayerProfile`] per stage, in a [`ChainModel`]), asks for a [`Plan`] that fits a memory
//! budget at the least recompute cost, and runs the plan its own way. The crate replays a plan's
//! training step event by event to predict its peak ([`ChainModel::predict`]), computes the
//! exact Pareto front of (peak, recompute cost) over nested (multi-level) schedules
//! ([`ChainModel::front`], [`ChainModel::plan`]) and prints a plan's report
//! ([`ChainModel::report`]). It depends on no engine: the workspace's `checkpoint` crate (over its
//! own `tape` engine) and `candle-checkpoint` (over candle) both use it.
//!
//! [`HeldChain`] is the model of an engine whose graph holds what the forward kept until the end
//! of backward (candle), for single-level plans.
//!
//! # The memory model
//!
//! It follows a training step of a plan run by an engine event by event (the `checkpoint` crate's
//! `run_plan`, for one), as the engine frees memory
//! (a tensor lives while anything holds it: a caller, a recorded op's backward closure, a
//! checkpoint's closure). With `h_i` the input of layer `i` and `δ_i` its gradient:
//!
//! - **Forward**, segment by segment. A recorded layer keeps its [`LayerProfile::saved_bytes`],
//!   its output (if it [keeps it](LayerProfile::keeps_output)) and its input (if it [keeps
//!   it](LayerProfile::keeps_input)); an input that nothing keeps dies once the layer has run. A
//!   checkpointed segment runs once without recording, each intermediate output dying as the next
//!   is made, and keeps only its input and its output.
//! - The loss: the caller drops the chain's output, keeps the loss value
//!   ([`ChainModel::loss_bytes`]) and the loss's backward makes `δ_n`.
//! - **Backward**, segment by segment in reverse. A recorded layer's backward holds what it kept,
//!   the gradient of its output and its own temporaries ([`LayerProfile::backward_peak`]); then
//!   frees what it kept and the output's gradient, and leaves its input's gradient and its
//!   parameters' gradients (these stay to the end of the step). A checkpointed segment's backward
//!   runs its recompute plan as a step of its own (forward, then backward in reverse), with the
//!   segment's input, output and output gradient held by the checkpoint throughout; its last
//!   layer takes the kept output instead of computing it ([`LayerProfile::reuses_output`]) and
//!   its backward runs with its output and output gradient held
//!   ([`LayerProfile::backward_peak_held`]). When it is done, the segment's output, its gradient
//!   and (unless the layer before keeps it) its input die.
//!
//! The peak is the most bytes alive at any moment: [`ChainModel::base_bytes`] (what the device
//! held when the step started: parameters, input) plus the largest of the per-layer peaks over
//! what is alive around them ([`ChainModel::predict`] says where it happens). Every quantity comes
//! from the engine's accounting in a dry run on the real tensors (the `checkpoint` crate's
//! `profile_chain`), so predictions are exact
//! up to what the dry run cannot see (a loss that keeps more than its value and `δ_n`).
//!
//! # The planner
//!
//! A plan is a sequence of recorded layers and checkpointed segments, and a checkpointed
//! segment's recompute may be planned the same way (nested checkpoints: Rotor's and Revolve's
//! multi-level schedules). Processing layers `s..t` with its input held is either: record layer
//! `s`, process `s+1..t`, then run layer `s`'s backward; or run `s..s'` without recording, keep
//! `h_s'`, process `s'..t`, then process `s..s'` again as a recompute. The peak of each choice
//! is a max over terms that depend only on `(s, s', t)` and on the peaks of the two
//! sub-problems, so [`ChainModel::front`] computes, for every sub-problem, the exact Pareto
//! front of (peak, recompute cost) by dynamic programming (`O(n^3)` merges of fronts: about
//! 0.1 s for 64 layers, 1.5 s for 128, 25 s for 256 on two cores), and [`ChainModel::plan`] takes
//! the cheapest plan of the whole chain's front that fits a budget (dropping every point above
//! it on the way). [`PlanOptions::max_depth`] limits the levels (1: single-level segments). Of
//! plans of equal cost the planner keeps the one of lower peak, so no plan (an equal-segment
//! schedule included) is as cheap and as low in the model with one of the two strictly better.
//!
//! [`plan_choices`] solves independent per-unit choices, and [`plan_in_order`] per-unit choices
//! whose kept bytes backward frees in reverse (DenseNet's per-layer modes, modelled in order by
//! `densenet`'s budget mode).

mod error;
pub mod held;
mod optimal;
mod pareto;
mod plan;
mod policy;
mod report;
mod simulate;

pub use error::{Error, Result};
pub use held::{HeldChain, HeldStage};

pub use optimal::{FrontPoint, PlanOptions};
pub use plan::{Plan, Segment};
pub use policy::{OpKind, Policy};
pub use simulate::{PeakMoment, Prediction, Step};

use pareto::{cheapest_path, Edge};

/// What one layer of a chain costs in memory and compute, as the model of the module docs uses
/// it. Bytes are the engine's accounting; "peak" fields are the most bytes held above what was
/// alive as the pass started.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerProfile {
    /// The layer's name.
    pub name: String,
    /// Bytes of its output.
    pub output_bytes: u64,
    /// Bytes its recorded forward keeps for backward besides its input and output (tensors its
    /// ops save, such as a convolution output a batch norm needs).
    pub saved_bytes: u64,
    /// Whether its recorded ops keep its input until its backward.
    pub keeps_input: bool,
    /// Whether its recorded ops keep its output until its backward.
    pub keeps_output: bool,
    /// Whether, recomputed as the last layer of a checkpointed segment, its last op takes the
    /// output the first pass made instead of allocating it again.
    pub reuses_output: bool,
    /// Peak of its recorded forward (output, saved bytes, temporaries, kernel workspaces).
    pub forward_peak: u64,
    /// Peak of its recorded forward when it reuses its output.
    pub forward_peak_reusing: u64,
    /// Peak of a forward that records nothing (a checkpoint's first pass), output included.
    pub nograd_peak: u64,
    /// Peak of its backward above what is alive as it starts (its output's gradient included),
    /// when nothing else holds its output or that gradient (inside a recorded run).
    pub backward_peak: u64,
    /// Peak of its backward when its output and its output's gradient are held by others
    /// throughout (the last layer of a recomputed segment).
    pub backward_peak_held: u64,
    /// Bytes of the gradient of its input (0 if the input needs none).
    pub input_grad_bytes: u64,
    /// Bytes of its parameters' gradients.
    pub param_grad_bytes: u64,
    /// Cost of running its forward once (seconds when measured, or FLOPs when given).
    pub cost: f64,
}

impl LayerProfile {
    /// A layer whose input is as large as its output, that keeps both, keeps `saved_bytes`
    /// besides, reuses its output, has no temporaries and no parameters: for hand-made models.
    pub fn simple(name: impl Into<String>, output_bytes: u64, saved_bytes: u64, cost: f64) -> Self {
        LayerProfile {
            name: name.into(),
            output_bytes,
            saved_bytes,
            keeps_input: true,
            keeps_output: true,
            reuses_output: true,
            forward_peak: saved_bytes + output_bytes,
            forward_peak_reusing: saved_bytes,
            nograd_peak: output_bytes,
            backward_peak: output_bytes,
            backward_peak_held: output_bytes,
            input_grad_bytes: output_bytes,
            param_grad_bytes: 0,
            cost,
        }
    }
}

/// A chain's layers plus the bytes that do not depend on the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainModel {
    /// The layers, in order.
    pub layers: Vec<LayerProfile>,
    /// Bytes the device holds as the step starts, whatever the plan: parameters, the input,
    /// anything else allocated before.
    pub base_bytes: u64,
    /// Bytes of the loss value, held from the loss to the end of backward (and as many again
    /// for its unit seed while the loss's backward runs): one element for a scalar loss.
    pub loss_bytes: u64,
}

impl ChainModel {
    /// Fails with [`Error::InvalidArgument`] for a chain without layers.
    fn check_layers(&self, op: &'static str) -> Result<()> {
        if self.layers.is_empty() {
            return Err(Error::invalid(op, "the chain has no layers"));
        }
        Ok(())
    }

    /// The total forward cost of the chain (one forward of every layer).
    pub fn forward_cost(&self) -> f64 {
        self.layers.iter().map(|l| l.cost).sum()
    }
}

/// One option of a unit in [`plan_choices`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// Bytes kept through forward with this option.
    pub stored: u64,
    /// Bytes alive while this unit is recomputed (0 if nothing is).
    pub transient: u64,
    /// Recompute cost of this option.
    pub cost: f64,
}

/// For units whose options combine independently (kept bytes add up, recompute bytes take the
/// maximum), the option index per unit of least total cost with `sum(stored) + max(transient)`
/// at most `free` bytes. Exact.
pub fn plan_choices(units: &[Vec<Choice>], free: u64) -> Result<Vec<usize>> {
    if let Some(i) = units.iter().position(|u| u.is_empty()) {
        return Err(Error::invalid(
            "plan_choices",
            format!("unit {i} has no options"),
        ));
    }
    let path = cheapest_path(units.len(), free, |p| {
        units[p]
            .iter()
            .enumerate()
            .map(|(tag, c)| Edge {
                to: p + 1,
                stored: c.stored,
                transient: c.transient,
                cost: c.cost,
                tag,
            })
            .collect()
    })
    .ok_or_else(|| {
        Error::invalid(
            "plan_choices",
            format!("no combination of options fits {free} bytes"),
        )
    })?;
    Ok(path.iter().map(|e| e.tag).collect())
}

/// For units run in order and differentiated in reverse (backward reaches unit `i` after every
/// later unit has freed what it kept), the option index per unit of least total cost whose peak
/// `max over i of (stored[0] + ... + stored[i] + transient[i])` is at most `free` bytes: unit
/// `i`'s backward holds what the units up to it keep plus its own transient bytes. Exact: a
/// dynamic programming over the units in order keeps, per unit, the (kept bytes so far, cost)
/// Pareto staircase of the choices that have fitted so far.
pub fn plan_in_order(units: &[Vec<Choice>], free: u64) -> Result<Vec<usize>> {
    if let Some(i) = units.iter().position(|u| u.is_empty()) {
        return Err(Error::invalid(
            "plan_in_order",
            format!("unit {i} has no options"),
        ));
    }
    /// (kept bytes so far, cost so far, label in the previous front, option taken).
    type Label = (u64, f64, usize, usize);
    let mut fronts: Vec<Vec<Label>> = vec![vec![(0, 0.0, 0, 0)]];
    for (i, unit) in units.iter().enumerate() {
        let mut next: Vec<Label> = Vec::new();
        for (li, &(kept, cost, _, _)) in fronts[i].iter().enumerate() {
            for (oi, c) in unit.iter().enumerate() {
                let Some(k) = kept.checked_add(c.stored) else {
                    continue;
                };
                if k.checked_add(c.transient).is_some_and(|peak| peak <= free) {
                    next.push((k, cost + c.cost, li, oi));
                }
            }
        }
        next.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut front: Vec<Label> = Vec::new();
        for l in next {
            if front.last().is_none_or(|f| l.1 < f.1) {
                front.push(l);
            }
        }
        if front.is_empty() {
            return Err(Error::invalid(
                "plan_in_order",
                format!("no combination of options fits {free} bytes (unit {i} cannot)"),
            ));
        }
        fronts.push(front);
    }
    let last = &fronts[units.len()];
    let mut li = (0..last.len())
        .min_by(|&a, &b| last[a].1.total_cmp(&last[b].1))
        .unwrap_or(0);
    let mut picks = vec![0; units.len()];
    for i in (0..units.len()).rev() {
        let (_, _, back, option) = fronts[i + 1][li];
        picks[i] = option;
        li = back;
    }
    Ok(picks)
}
