//! The optimal planner: exact Pareto dynamic programming over recursive (multi-level) schedules,
//! in the model of the module docs.
//!
//! A sub-problem is "process layers `s..t` with `h_s` alive": forward, then (after whatever comes
//! later has run) backward. `top` says whether `t` ends the chain (the loss follows) or a
//! recomputed segment (the checkpoint holds `h_t` and `δ_t` throughout, and if the last layer
//! cannot reuse its output, a second copy of it lives to the segment's end); `loose` says whether
//! `h_s` dies once nothing in `s..t` holds it (the layer before keeps no output). Each sub-problem
//! maps to the staircase of (peak above what was alive as it started, cost of every forward run
//! in it), and the options are:
//!
//! - record layer `s`: `peak = max(fwd_s, u + peak(s+1..t), u + exit(s+1..t) + bwd_s)`, where `u`
//!   is what layer `s` leaves alive and `exit` what the rest leaves (gradients);
//! - checkpoint `s..s'` (a first pass keeping `h_s'`), then `s'..t`, then `s..s'` as a recompute:
//!   `peak = max(first pass, |h_s'| + peak(s'..t), E + peak(recompute s..s'))`, where `E` is what
//!   is alive when the checkpoint's backward starts: `h_s'`, the gradients `s'..t` made, and the
//!   loss value (at the top) or a second copy of `h_t` (in a recompute, if any);
//! - the last layer alone: its forward, the loss (value, seed, gradient) or the held output,
//!   its backward.
//!
//! Each term depends on the sub-plans only through their peaks, so merging the sub-problems'
//! staircases is exact. Costs are summed as integers (whole costs as they are, others in units of
//! 2^-32 of the chain's forward cost), so that plans of equal cost tie exactly and the one of
//! lower peak is kept.

use crate::error::{Error, Result};
use crate::{ChainModel, Plan, Segment};
use std::collections::HashMap;

/// Options of [`ChainModel::plan_with`] and [`ChainModel::front`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// The most levels of checkpoints (1: a checkpointed segment's recompute records every
    /// layer, as `checkpoint_sequential` does; 2: it may have checkpoints of its own; ...).
    /// `None`: as many as pay off.
    pub max_depth: Option<usize>,
}

/// One plan of the time-memory front: no other plan has both a lower peak and a lower cost.
#[derive(Clone, Debug, PartialEq)]
pub struct FrontPoint {
    /// Predicted peak bytes.
    pub peak: u64,
    /// Predicted extra forward cost.
    pub extra_cost: f64,
    /// Layer forwards run again.
    pub recomputed_layers: usize,
    /// The plan.
    pub plan: Plan,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    s: usize,
    t: usize,
    top: bool,
    loose: bool,
    /// Levels of checkpoints still allowed (`usize::MAX`: no limit).
    depth: usize,
}

/// How a point of a staircase was made: indices into the sub-problems' staircases.
#[derive(Clone, Copy, Debug)]
enum How {
    Last,
    Record { rest: u32 },
    Checkpoint { mid: u32, rest: u32, inner: u32 },
}

#[derive(Clone, Copy, Debug)]
struct Point {
    peak: u64,
    cost: u64,
    how: How,
}

struct Solver<'m> {
    m: &'m ChainModel,
    /// `a[j]`: bytes of `h_j`, the input of layer `j` (`a[0]` unused).
    a: Vec<u64>,
    /// Forward cost per layer, as integers.
    q: Vec<u64>,
    /// Prefix sums of `q` and of parameter-gradient bytes.
    q_sum: Vec<u64>,
    pg_sum: Vec<u64>,
    fronts: Vec<Vec<Point>>,
    index: HashMap<Key, usize>,
    /// Peaks above this (relative to a sub-problem's start) fit no budget asked: dropped.
    cap: u64,
}

/// The staircase of two lists sorted by peak (not necessarily by cost), up to `cap`: by
/// increasing peak, each point strictly cheaper than every one before.
fn merge(a: &[Point], b: &[Point], cap: u64) -> Vec<Point> {
    let mut out: Vec<Point> = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut k) = (0, 0);
    while i < a.len() || k < b.len() {
        let take_a =
            k == b.len() || (i < a.len() && (a[i].peak, a[i].cost) <= (b[k].peak, b[k].cost));
        let p = if take_a {
            i += 1;
            a[i - 1]
        } else {
            k += 1;
            b[k - 1]
        };
        if p.peak > cap {
            break;
        }
        match out.last() {
            Some(l) if p.cost >= l.cost => continue,
            Some(l) if p.peak == l.peak => {
                out.pop();
            }
            _ => {}
        }
        out.push(p);
    }
    out
}

/// Whether `front` (a staircase) has a point no higher than `peak` and no dearer than `cost`.
fn dominated(front: &[Point], peak: u64, cost: u64) -> bool {
    let below = front.partition_point(|p| p.peak <= peak);
    below > 0 && front[below - 1].cost <= cost
}

impl<'m> Solver<'m> {
    /// A solver for `m` that drops plans peaking more than `cap` bytes above the base.
    fn new(m: &'m ChainModel, cap: u64) -> Result<Self> {
        let n = m.layers.len();
        let total = m.forward_cost();
        if let Some(l) = m
            .layers
            .iter()
            .find(|l| !(l.cost >= 0.0 && l.cost.is_finite()))
        {
            return Err(Error::invalid(
                "planner",
                format!(
                    "layer '{}' has cost {}: costs must be finite and >= 0",
                    l.name, l.cost
                ),
            ));
        }
        // Whole costs (FLOPs, counts) are summed as they are, so that equal sums tie exactly;
        // others in units of 2^-32 of the chain's forward cost.
        let whole = m.layers.iter().all(|l| l.cost.fract() == 0.0) && total < 2f64.powi(40);
        let unit = if whole || total == 0.0 {
            1.0
        } else {
            total / 2f64.powi(32)
        };
        let q: Vec<u64> = m
            .layers
            .iter()
            .map(|l| (l.cost / unit).round() as u64)
            .collect();
        let mut a = vec![0; n + 1];
        for (j, l) in m.layers.iter().enumerate() {
            a[j + 1] = l.output_bytes;
        }
        let mut q_sum = vec![0; n + 1];
        let mut pg_sum = vec![0; n + 1];
        for j in 0..n {
            q_sum[j + 1] = q_sum[j] + q[j];
            pg_sum[j + 1] = pg_sum[j] + m.layers[j].param_grad_bytes;
        }
        Ok(Solver {
            m,
            a,
            q,
            q_sum,
            pg_sum,
            fronts: Vec::new(),
            index: HashMap::new(),
            cap,
        })
    }

    /// Gradient bytes processing `s..t` leaves: the input's gradient and the parameters'.
    fn grads(&self, s: usize, t: usize) -> i128 {
        (self.m.layers[s].input_grad_bytes + self.pg_sum[t] - self.pg_sum[s]) as i128
    }

    /// What lives from the last layer's forward to the end of the sub-problem besides
    /// gradients: at the top the loss value; in a recompute ending at `t` a second copy of
    /// `h_t` unless the last layer reuses it.
    fn kept_to_end(&self, top: bool, t: usize) -> i128 {
        if top {
            self.m.loss_bytes as i128
        } else if self.m.layers[t - 1].reuses_output {
            0
        } else {
            self.a[t] as i128
        }
    }

    /// The index of the staircase of `key`, solving it (and its sub-problems) if needed.
    fn solve(&mut self, key: Key) -> usize {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let points = self.options(key);
        let i = self.fronts.len();
        self.fronts.push(points);
        self.index.insert(key, i);
        i
    }

    fn options(&mut self, key: Key) -> Vec<Point> {
        let Key {
            s,
            t,
            top,
            loose,
            depth,
        } = key;
        let l = &self.m.layers[s];
        let a = &self.a;
        let freed_input = if loose && !l.keeps_input { a[s] } else { 0 } as i128;
        let mut points = Vec::new();
        if s + 1 == t {
            let peak = if top {
                let u = (l.saved_bytes + a[t]) as i128 - freed_input;
                let dropped = if l.keeps_output { 0 } else { a[t] as i128 };
                let loss = self.m.loss_bytes as i128;
                let start = u - dropped + a[t] as i128 + loss;
                (l.forward_peak as i128)
                    .max(start + loss)
                    .max(start + l.backward_peak as i128)
            } else {
                let (fwd, out) = if l.reuses_output {
                    (l.forward_peak_reusing, 0)
                } else {
                    (l.forward_peak, a[t])
                };
                let u = (l.saved_bytes + out) as i128 - freed_input;
                (fwd as i128).max(u + l.backward_peak_held as i128)
            };
            points.push(Point {
                peak: peak.max(0) as u64,
                cost: self.q[s],
                how: How::Last,
            });
            return merge(&points, &[], self.cap);
        }
        // Record layer s, then s+1..t.
        let u = (l.saved_bytes + a[s + 1]) as i128 - freed_input;
        let (fwd, bwd, keeps_output, q_s) = (
            l.forward_peak as i128,
            l.backward_peak as i128,
            l.keeps_output,
            self.q[s],
        );
        let rest_exit = self.grads(s + 1, t) + self.kept_to_end(top, t)
            - if keeps_output { 0 } else { a[s + 1] as i128 };
        let floor = fwd.max(u + rest_exit + bwd);
        let rest = self.solve(Key {
            s: s + 1,
            loose: !keeps_output,
            ..key
        });
        for (i, p) in self.fronts[rest].iter().enumerate() {
            points.push(Point {
                peak: floor.max(u + p.peak as i128).max(0) as u64,
                cost: q_s + p.cost,
                how: How::Record { rest: i as u32 },
            });
        }
        let mut acc = merge(&points, &[], self.cap);
        if depth == 0 {
            return acc;
        }
        // Checkpoint s..mid, then mid..t, then recompute s..mid.
        let mut first_pass = 0i128;
        for mid in s + 1..t {
            let j = mid - 1;
            let before = if j > s { self.a[j] } else { 0 };
            first_pass = first_pass.max((before + self.m.layers[j].nograd_peak) as i128);
            let kept = self.a[mid] as i128;
            let start = kept + self.grads(mid, t) + self.kept_to_end(top, t);
            let rest = self.solve(Key {
                s: mid,
                loose: false,
                ..key
            });
            let inner = self.solve(Key {
                s,
                t: mid,
                top: false,
                loose: false,
                depth: if depth == usize::MAX {
                    depth
                } else {
                    depth - 1
                },
            });
            let run = self.q_sum[mid] - self.q_sum[s];
            let (r, q) = (&self.fronts[rest], &self.fronts[inner]);
            let (Some(r_min), Some(q_min)) = (r.first(), q.first()) else {
                continue;
            };
            // Its least peak and least cost: skip it if a plan already found beats both.
            let least_peak = first_pass
                .max(kept + r_min.peak as i128)
                .max(start + q_min.peak as i128);
            let least_cost = run + r[r.len() - 1].cost + q[q.len() - 1].cost;
            if dominated(&acc, least_peak.max(0) as u64, least_cost) {
                continue;
            }
            points.clear();
            // Walk both staircases by increasing peak: each step lowers one side's cost.
            let (mut i, mut k) = (0, 0);
            loop {
                let peak = first_pass
                    .max(kept + r[i].peak as i128)
                    .max(start + q[k].peak as i128);
                points.push(Point {
                    peak: peak.max(0) as u64,
                    cost: run + r[i].cost + q[k].cost,
                    how: How::Checkpoint {
                        mid: mid as u32,
                        rest: i as u32,
                        inner: k as u32,
                    },
                });
                let next_r = r.get(i + 1).map(|p| kept + p.peak as i128);
                let next_q = q.get(k + 1).map(|p| start + p.peak as i128);
                match (next_r, next_q) {
                    (None, None) => break,
                    (Some(_), None) => i += 1,
                    (None, Some(_)) => k += 1,
                    (Some(x), Some(y)) => {
                        if x <= y {
                            i += 1;
                        }
                        if y <= x {
                            k += 1;
                        }
                    }
                }
            }
            acc = merge(&acc, &points, self.cap);
        }
        acc
    }

    /// The segments of the plan behind point `p` of `key`'s staircase.
    fn segments(&self, mut key: Key, mut p: usize) -> Vec<(Segment, Option<Plan>)> {
        let mut out = Vec::new();
        loop {
            let front = &self.fronts[self.index[&key]];
            let s = key.s;
            let record = |range| {
                (
                    Segment {
                        range,
                        checkpointed: false,
                    },
                    None,
                )
            };
            match front[p].how {
                How::Last => {
                    out.push(record(s..s + 1));
                    return out;
                }
                How::Record { rest } => {
                    out.push(record(s..s + 1));
                    key = Key {
                        s: s + 1,
                        loose: !self.m.layers[s].keeps_output,
                        ..key
                    };
                    p = rest as usize;
                }
                How::Checkpoint { mid, rest, inner } => {
                    let (mid, rest, inner) = (mid as usize, rest as usize, inner as usize);
                    let inner_key = Key {
                        s,
                        t: mid,
                        top: false,
                        loose: false,
                        depth: if key.depth == usize::MAX {
                            key.depth
                        } else {
                            key.depth - 1
                        },
                    };
                    let plan = Plan::nested(self.segments(inner_key, inner));
                    let all_recorded = plan.segments().iter().all(|s| !s.checkpointed);
                    out.push((
                        Segment {
                            range: s..mid,
                            checkpointed: true,
                        },
                        (!all_recorded).then_some(plan),
                    ));
                    key = Key {
                        s: mid,
                        loose: false,
                        ..key
                    };
                    p = rest;
                }
            }
        }
    }
}

/// The top sub-problem's key.
fn top_key(n: usize, options: PlanOptions) -> Key {
    Key {
        s: 0,
        t: n,
        top: true,
        loose: false,
        depth: options.max_depth.unwrap_or(usize::MAX),
    }
}

impl ChainModel {
    /// The plan of least recompute cost whose predicted peak is at most `budget` bytes, with as
    /// many levels of checkpoints as pay off ([`ChainModel::plan_with`]).
    pub fn plan(&self, budget: u64) -> Result<Plan> {
        self.plan_with(budget, PlanOptions::default())
    }

    /// The plan of least recompute cost, among those of at most `options.max_depth` levels,
    /// whose predicted peak ([`ChainModel::predict`]) is at most `budget` bytes; of equal cost,
    /// the one of lowest peak. Fails with [`Error::InvalidArgument`] for a chain without layers,
    /// a layer of negative or non-finite cost, or a budget no plan fits (the message gives the
    /// least peak any plan reaches).
    pub fn plan_with(&self, budget: u64, options: PlanOptions) -> Result<Plan> {
        self.check_layers("planner")?;
        let free = budget.checked_sub(self.base_bytes).ok_or_else(|| {
            Error::invalid(
                "planner",
                format!(
                    "budget {budget} bytes is below the {} bytes held before the step (parameters, input)",
                    self.base_bytes
                ),
            )
        })?;
        let mut solver = Solver::new(self, free)?;
        let key = top_key(self.layers.len(), options);
        let front = solver.solve(key);
        let points = &solver.fronts[front];
        let best = points.len().checked_sub(1).ok_or_else(|| {
            let least = self.least_peak(options).unwrap_or(0);
            let depth = options
                .max_depth
                .map_or("any number of".to_string(), |d| format!("at most {d}"));
            Error::invalid(
                "planner",
                format!(
                    "no plan fits {budget} bytes: the least peak of plans with {depth} levels \
                     of checkpoints is {least} bytes (try a larger budget or a smaller batch)"
                ),
            )
        })?;
        Ok(Plan::nested(solver.segments(key, best)))
    }

    /// The least peak any plan of at most `options.max_depth` levels reaches (the tightest
    /// budget [`ChainModel::plan_with`] can meet). Fails like [`ChainModel::plan_with`] for a
    /// chain without layers or a bad cost.
    pub fn least_peak(&self, options: PlanOptions) -> Result<u64> {
        self.check_layers("planner")?;
        let mut solver = Solver::new(self, u64::MAX)?;
        let front = solver.solve(top_key(self.layers.len(), options));
        Ok(self.base_bytes + solver.fronts[front].first().map_or(0, |p| p.peak))
    }

    /// Every plan of the time-memory front (of at most `options.max_depth` levels), by
    /// increasing peak and decreasing cost, each with its prediction. Fails like
    /// [`ChainModel::plan_with`] for a chain without layers or a bad cost.
    pub fn front(&self, options: PlanOptions) -> Result<Vec<FrontPoint>> {
        self.check_layers("planner")?;
        let mut solver = Solver::new(self, u64::MAX)?;
        let key = top_key(self.layers.len(), options);
        let front = solver.solve(key);
        (0..solver.fronts[front].len())
            .map(|p| {
                let plan = Plan::nested(solver.segments(key, p));
                let pred = self.predict(&plan)?;
                Ok(FrontPoint {
                    peak: pred.peak,
                    extra_cost: pred.extra_cost,
                    recomputed_layers: pred.recomputed_layers,
                    plan,
                })
            })
            .collect()
    }

    /// The peak the planner's model gives the plan it would build for `budget`, as the dynamic
    /// programming computed it (not replayed): for tests that hold the two against each other.
    #[doc(hidden)]
    pub fn planned_peak(&self, budget: u64, options: PlanOptions) -> Result<Option<u64>> {
        self.check_layers("planner")?;
        let mut solver = Solver::new(self, u64::MAX)?;
        let front = solver.solve(top_key(self.layers.len(), options));
        let free = budget.saturating_sub(self.base_bytes);
        Ok(solver.fronts[front]
            .iter()
            .rev()
            .find(|p| p.peak <= free)
            .map(|p| self.base_bytes + p.peak))
    }
}
