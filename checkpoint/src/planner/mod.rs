//! The checkpoint planner: from per-layer memory and cost (measured by a dry run, or given) and a
//! memory budget, choose what to recompute so that the predicted peak fits the budget at the least
//! recompute cost.
//!
//! Memory model of a chain run under a [`Plan`]: a recorded layer keeps `saved_bytes` until its
//! backward; a checkpointed segment keeps only its output (the next segment's input) and, while
//! it is recomputed in backward, holds the saved bytes of all its layers at once. So
//! `peak = base + gradients + sum(kept) + max(recomputed segment)`. [`ChainModel::plan`] finds the
//! exact optimum by Pareto dynamic programming ([`pareto`]); [`plan_choices`] does the same for
//! independent per-unit choices (e.g. an efficiency mode per DenseNet layer), and
//! [`plan_in_order`] for per-unit choices whose bytes are freed in reverse order, as backward
//! frees them.

pub mod pareto;
mod plan;
mod profile;

pub use plan::{Plan, Segment};
pub use profile::profile_chain;

use pareto::{cheapest_path, Edge};
use tape::{Error, Result};

/// What one layer of a chain costs in memory and compute.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerProfile {
    /// The layer's name.
    pub name: String,
    /// Bytes the layer adds when recorded normally (its output and what its backward saves).
    pub saved_bytes: u64,
    /// Bytes of its output (kept when a checkpointed segment ends here).
    pub output_bytes: u64,
    /// Cost of running its forward once (seconds when measured, or FLOPs when given).
    pub cost: f64,
}

/// A chain's layers plus the bytes that do not depend on the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainModel {
    /// The layers, in order.
    pub layers: Vec<LayerProfile>,
    /// Bytes held whatever the plan: parameters, input, parameter gradients.
    pub base_bytes: u64,
    /// Working gradients during backward (about two activation-sized tensors).
    pub grad_bytes: u64,
}

/// The predicted memory and cost of a plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    /// Predicted peak bytes.
    pub peak: u64,
    /// Bytes kept through forward.
    pub stored: u64,
    /// The largest recomputed segment's bytes.
    pub transient: u64,
    /// Extra cost: the forward cost of everything recomputed.
    pub extra_cost: f64,
}

impl ChainModel {
    fn overhead(&self) -> u64 {
        self.base_bytes + self.grad_bytes
    }

    fn segment_edge(&self, from: usize, to: usize, checkpointed: bool) -> Edge {
        let seg = &self.layers[from..to];
        let saved: u64 = seg.iter().map(|l| l.saved_bytes).sum();
        if checkpointed {
            Edge {
                to,
                stored: seg.last().map_or(0, |l| l.output_bytes),
                transient: saved,
                cost: seg.iter().map(|l| l.cost).sum(),
                tag: 1,
            }
        } else {
            Edge {
                to,
                stored: saved,
                transient: 0,
                cost: 0.0,
                tag: 0,
            }
        }
    }

    /// Predicts peak bytes and extra cost of running the chain under `plan`; fails with
    /// [`Error::InvalidArgument`] unless the plan covers the chain exactly
    /// ([`Plan::check_covers`]).
    pub fn predict(&self, plan: &Plan) -> Result<Prediction> {
        plan.check_covers(self.layers.len())?;
        let (mut stored, mut transient, mut extra_cost) = (0, 0, 0.0);
        for s in plan.segments() {
            let e = self.segment_edge(s.range.start, s.range.end, s.checkpointed);
            stored += e.stored;
            transient = transient.max(e.transient);
            extra_cost += e.cost;
        }
        Ok(Prediction {
            peak: self.overhead() + stored + transient,
            stored,
            transient,
            extra_cost,
        })
    }

    /// The plan of least recompute cost whose predicted peak is at most `budget` bytes.
    pub fn plan(&self, budget: u64) -> Result<Plan> {
        let n = self.layers.len();
        if n == 0 {
            return Err(Error::invalid("planner", "the chain has no layers"));
        }
        let free = budget.checked_sub(self.overhead()).ok_or_else(|| {
            Error::invalid(
                "planner",
                format!(
                    "budget {budget} bytes is below the fixed {} bytes (parameters, input, gradients)",
                    self.overhead()
                ),
            )
        })?;
        let path = cheapest_path(n, free, |p| {
            let mut edges = vec![self.segment_edge(p, p + 1, false)];
            edges.extend((p + 1..=n).map(|to| self.segment_edge(p, to, true)));
            edges
        })
        .ok_or_else(|| {
            let floor = self.predict(&Plan::equal_segments(n, 1)).map_or(0, |p| p.peak);
            Error::invalid(
                "planner",
                format!(
                    "no plan fits {budget} bytes (recomputing everything in one segment predicts {floor}; \
                     try a larger budget or a smaller batch)"
                ),
            )
        })?;
        let mut start = 0;
        let segments = path
            .iter()
            .map(|e| {
                let s = Segment {
                    range: start..e.to,
                    checkpointed: e.tag == 1,
                };
                start = e.to;
                s
            })
            .collect();
        Ok(Plan::new(segments))
    }

    /// A human-readable account of `plan`: what is kept, what is recomputed, predicted peak and
    /// extra cost; fails like [`ChainModel::predict`] for a plan that does not fit the chain.
    pub fn report(&self, plan: &Plan) -> Result<String> {
        use std::fmt::Write;
        let p = self.predict(plan)?;
        let total: f64 = self.layers.iter().map(|l| l.cost).sum();
        let mut s = String::new();
        let _ = writeln!(s, "plan for {} layers:", self.layers.len());
        for seg in plan.segments() {
            let first = &self.layers[seg.range.start].name;
            let last = &self.layers[seg.range.end - 1].name;
            let e = self.segment_edge(seg.range.start, seg.range.end, seg.checkpointed);
            let _ = writeln!(
                s,
                "  layers {:>3}..{:<3} ({first} .. {last}): {:<10} keeps {:>12} bytes{}",
                seg.range.start,
                seg.range.end,
                if seg.checkpointed {
                    "recompute"
                } else {
                    "keep"
                },
                e.stored,
                if seg.checkpointed {
                    format!(", recompute holds {} bytes", e.transient)
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(
            s,
            "predicted peak {} bytes = fixed {} + kept {} + largest recompute {}",
            p.peak,
            self.overhead(),
            p.stored,
            p.transient
        );
        let _ = write!(
            s,
            "extra forward cost {:.4} ({:.1}% of one forward)",
            p.extra_cost,
            if total > 0.0 {
                100.0 * p.extra_cost / total
            } else {
                0.0
            }
        );
        Ok(s)
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
