//! [`HeldChain`]: the chain model of an engine whose graph holds everything a step's forward
//! kept until its backward ends (candle: the loss owns every tracked tensor through its graph,
//! so nothing a forward kept dies during backward), with single-level plans.
//!
//! A step under a [`Plan`], as the `candle-checkpoint` adapter runs it, with `A` the bytes alive:
//!
//! - **Forward.** A recorded stage `i` runs (peak `A + forward_peak_i`) and keeps `kept_i` (its
//!   output included). A checkpointed segment `s..t` runs its stages once, its graph alive
//!   until its output is made (peak `A + kept_s + ... + kept_{i-1} + forward_peak_i`), then keeps
//!   only a copy of its output (`output_t-1`: the graph's copy and the first pass's output are
//!   both alive for a moment).
//! - The loss keeps [`HeldChain::loss_bytes`]; `A_end` is what is alive then.
//! - **Backward**, in reverse, parameters' gradients `G` accumulating to the end. A recorded
//!   stage `i` peaks at `A_end + G + backward_peak_i` (its output's gradient, its input's,
//!   its parameters' and temporaries all in `backward_peak_i`). A checkpointed segment `s..t`
//!   holds its output's gradient, copies its input, runs its stages again with tracking and
//!   backpropagates the gradient: at stage `i` it peaks at `A_end + G + output_{t-1} + input_s +
//!   (kept_s + ... + kept_{t-1}) + (gradients of parameters of i+1..t) + backward_peak_i`.
//!
//! [`HeldChain::predict`] replays exactly that; [`HeldChain::plan`] finds the cheapest plan whose
//! peak fits a budget, exactly, by a shortest path whose edges are recorded stages and
//! checkpointed segments: every backward term is `A_end` plus a term of the edge alone, and a
//! forward term is bounded by `A_end` plus a term of the edge (the plan may leave some forward
//! headroom unused, never exceed the budget).

use crate::error::{Error, Result};
use crate::pareto::{cheapest_path, Edge};
use crate::{Plan, Segment};

/// What one stage of a chain costs on an engine of the [module's](self) model; bytes are the
/// engine's (a counting allocator's), peaks above what was alive as the pass started.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldStage {
    /// The stage's name.
    pub name: String,
    /// Bytes of its input (copied by a recompute that starts at this stage).
    pub input_bytes: u64,
    /// Bytes of its output.
    pub output_bytes: u64,
    /// Bytes its tracked forward keeps until the step ends (output included).
    pub kept_bytes: u64,
    /// Peak of its tracked forward (kept bytes included).
    pub forward_peak: u64,
    /// Peak of its backward: its output's gradient, its input's and its parameters' gradients
    /// and temporaries.
    pub backward_peak: u64,
    /// Bytes of its parameters' gradients (alive to the end of the step).
    pub param_grad_bytes: u64,
    /// Cost of one forward (seconds, FLOPs, or 1 per identical block).
    pub cost: f64,
}

/// A chain of [`HeldStage`]s and the bytes that do not depend on the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldChain {
    /// The stages, in order.
    pub stages: Vec<HeldStage>,
    /// Bytes alive as the step starts (parameters, input, anything else).
    pub base_bytes: u64,
    /// Bytes the loss keeps from the end of forward to the end of the step.
    pub loss_bytes: u64,
}

/// The terms of one edge of the plan search: kept bytes, forward and backward peaks (above what
/// was alive before, and above `A_end` plus the later gradients).
struct EdgeTerms {
    stored: u64,
    forward: u64,
    backward: u64,
}

impl HeldChain {
    /// Fails for an empty chain or a cost that is negative or not finite.
    fn check(&self, op: &'static str) -> Result<()> {
        if self.stages.is_empty() {
            return Err(Error::invalid(op, "the chain has no layers"));
        }
        if let Some(s) = self
            .stages
            .iter()
            .find(|s| !(s.cost >= 0.0 && s.cost.is_finite()))
        {
            return Err(Error::invalid(
                op,
                format!("stage {} has cost {}", s.name, s.cost),
            ));
        }
        Ok(())
    }

    /// Gradients of the parameters of stages `from..`.
    fn grads_from(&self, from: usize) -> u64 {
        self.stages[from.min(self.stages.len())..]
            .iter()
            .map(|s| s.param_grad_bytes)
            .sum()
    }

    /// The terms of recording stage `i`.
    fn recorded(&self, i: usize) -> EdgeTerms {
        let s = &self.stages[i];
        EdgeTerms {
            stored: s.kept_bytes,
            forward: s.forward_peak,
            backward: self.grads_from(i + 1) + s.backward_peak,
        }
    }

    /// The terms of checkpointing stages `a..b`.
    fn checkpointed(&self, a: usize, b: usize) -> EdgeTerms {
        let seg = &self.stages[a..b];
        let out = seg[b - a - 1].output_bytes;
        let mut forward = 0;
        let mut kept_before = 0;
        for s in seg {
            forward = forward.max(kept_before + s.forward_peak);
            kept_before += s.kept_bytes;
        }
        forward = forward.max(2 * out);
        let held = out + seg[0].input_bytes + kept_before;
        let mut backward = 0;
        let mut inner_grads = 0;
        for s in seg.iter().rev() {
            backward = backward.max(held + inner_grads + s.backward_peak);
            inner_grads += s.param_grad_bytes;
        }
        EdgeTerms {
            stored: out,
            forward,
            backward: self.grads_from(b) + backward,
        }
    }

    /// The terms of segment `seg`, after checking it covers stages of the chain.
    fn terms(&self, seg: &Segment) -> Vec<EdgeTerms> {
        if seg.checkpointed {
            vec![self.checkpointed(seg.range.start, seg.range.end)]
        } else {
            seg.range.clone().map(|i| self.recorded(i)).collect()
        }
    }

    /// The peak bytes of a step under `plan` (single level: a plan with nested recompute plans
    /// is refused), replayed as the [module docs](self) say.
    pub fn predict(&self, plan: &Plan) -> Result<u64> {
        self.check("planner")?;
        plan.check_covers(self.stages.len())?;
        if plan.depth() > 1 {
            return Err(Error::invalid(
                "planner",
                "this model takes single-level plans (no nested recompute plans)",
            ));
        }
        let terms: Vec<EdgeTerms> = plan.segments().iter().flat_map(|s| self.terms(s)).collect();
        let mut alive = self.base_bytes;
        let mut peak = alive;
        for t in &terms {
            peak = peak.max(alive + t.forward);
            alive += t.stored;
        }
        let end = alive + self.loss_bytes;
        peak = peak.max(end);
        for t in &terms {
            peak = peak.max(end + t.backward);
        }
        Ok(peak)
    }

    /// The cheapest single-level plan (least recompute cost) whose peak fits `budget` bytes,
    /// exact up to the forward bound of the [module docs](self); of plans of equal cost, the
    /// search keeps the one with less kept. Fails if no plan fits.
    pub fn plan(&self, budget: u64) -> Result<Plan> {
        self.check("planner")?;
        let n = self.stages.len();
        let fixed = self.base_bytes + self.loss_bytes;
        let free = budget.checked_sub(fixed).ok_or_else(|| {
            Error::invalid(
                "planner",
                format!("a budget of {budget} bytes is below the step's fixed {fixed} bytes"),
            )
        })?;
        let path = cheapest_path(n, free, |p| {
            let mut edges = Vec::with_capacity(n - p + 1);
            let t = self.recorded(p);
            edges.push(Edge {
                to: p + 1,
                stored: t.stored,
                transient: t.forward.max(t.backward),
                cost: 0.0,
                tag: 0,
            });
            let mut cost = 0.0;
            for q in p + 1..=n {
                cost += self.stages[q - 1].cost;
                let t = self.checkpointed(p, q);
                edges.push(Edge {
                    to: q,
                    stored: t.stored,
                    transient: t.forward.max(t.backward),
                    cost,
                    tag: 1,
                });
            }
            edges
        })
        .ok_or_else(|| {
            Error::invalid(
                "planner",
                format!("no single-level plan fits {budget} bytes"),
            )
        })?;
        let mut at = 0;
        let mut segments = Vec::with_capacity(path.len());
        for e in path {
            segments.push(Segment {
                range: at..e.to,
                checkpointed: e.tag == 1,
            });
            at = e.to;
        }
        Ok(Plan::new(segments))
    }
}
