//! [`ChainModel::predict`]: a training step under a plan, replayed event by event on byte counts.
//!
//! The replay follows `run_plan` and `checkpoint` as written: every buffer has a count of what
//! holds it (the running loop, a recorded layer's backward closures, a checkpoint's closure, the
//! gradient map) and dies when the count drops to zero; each layer's forward and backward raise
//! the peak by its measured peak above what was alive as it started.

use crate::error::Result;
use crate::{ChainModel, LayerProfile, Plan};
use std::fmt;
use std::ops::Range;

/// What runs at a moment of the step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A layer's recorded forward.
    Forward,
    /// A layer's forward in a checkpoint's first pass (nothing recorded).
    FirstPass,
    /// The loss's backward making the chain output's gradient.
    LossGradient,
    /// A layer's backward.
    Backward,
}

/// Where a predicted peak happens and what is alive then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeakMoment {
    /// What runs.
    pub step: Step,
    /// The layer it runs (the last layer for [`Step::LossGradient`]).
    pub layer: usize,
    /// The checkpointed segments being recomputed around it, outermost first.
    pub within: Vec<Range<usize>>,
    /// Bytes held by checkpoints (their inputs and outputs) and first-pass outputs.
    pub checkpoint_bytes: u64,
    /// Bytes kept by recorded layers (saved tensors and outputs).
    pub recorded_bytes: u64,
    /// Bytes of activation gradients.
    pub gradient_bytes: u64,
    /// Bytes of parameter gradients made so far.
    pub param_grad_bytes: u64,
    /// The running layer's own bytes above all that (temporaries, workspaces, what it is making).
    pub working_bytes: u64,
}

impl fmt::Display for PeakMoment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.step {
            Step::Forward => "the forward of layer",
            Step::FirstPass => "the first pass of layer",
            Step::LossGradient => "the loss gradient after layer",
            Step::Backward => "the backward of layer",
        };
        write!(f, "{what} {}", self.layer)?;
        for (i, r) in self.within.iter().rev().enumerate() {
            let word = if i == 0 { ", recomputing" } else { " inside" };
            write!(f, "{word} {}..{}", r.start, r.end)?;
        }
        Ok(())
    }
}

/// The predicted memory and cost of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Predicted peak bytes, [`ChainModel::base_bytes`] included.
    pub peak: u64,
    /// Bytes held above the base when forward ends (what backward starts from).
    pub forward_end: u64,
    /// Extra cost: the forward cost of every layer run again.
    pub extra_cost: f64,
    /// Layer forwards run again ([`Plan::recomputed_layers`]).
    pub recomputed_layers: usize,
    /// Where the peak happens.
    pub at: PeakMoment,
}

/// What holds a buffer's bytes, for the account of the peak.
#[derive(Clone, Copy)]
enum Kind {
    Checkpoint = 0,
    Recorded = 1,
    Gradient = 2,
    ParamGrad = 3,
}

type Buf = usize;

/// A forward that backward must undo.
enum Done<'p> {
    Layer {
        layer: usize,
        kept: Buf,
        output: Buf,
        input: Buf,
    },
    Checkpoint {
        range: Range<usize>,
        plan: Option<&'p Plan>,
        input: Buf,
        output: Buf,
    },
}

/// One item of a plan: a recorded layer or a checkpointed segment with its recompute's plan.
enum Part<'p> {
    Layer(usize),
    Checkpoint(Range<usize>, Option<&'p Plan>),
}

fn parts(plan: Option<&Plan>, range: Range<usize>) -> Vec<Part<'_>> {
    let Some(plan) = plan else {
        return range.map(Part::Layer).collect();
    };
    let mut out = Vec::new();
    for (i, s) in plan.segments().iter().enumerate() {
        if s.checkpointed {
            out.push(Part::Checkpoint(s.range.clone(), plan.inner(i)));
        } else {
            out.extend(s.range.clone().map(Part::Layer));
        }
    }
    out
}

struct Replay<'m> {
    layers: &'m [LayerProfile],
    /// (bytes, holders, kind) per buffer.
    bufs: Vec<(u64, u32, Kind)>,
    by_kind: [u64; 4],
    cur: u64,
    peak: u64,
    at: PeakMoment,
    within: Vec<Range<usize>>,
    runs: Vec<usize>,
    /// The step and layer of the last spike (what an allocation is part of).
    last: (Step, usize),
}

impl<'m> Replay<'m> {
    fn new(layers: &'m [LayerProfile]) -> Self {
        Replay {
            layers,
            bufs: Vec::new(),
            by_kind: [0; 4],
            cur: 0,
            peak: 0,
            at: PeakMoment {
                step: Step::Forward,
                layer: 0,
                within: Vec::new(),
                checkpoint_bytes: 0,
                recorded_bytes: 0,
                gradient_bytes: 0,
                param_grad_bytes: 0,
                working_bytes: 0,
            },
            within: Vec::new(),
            runs: vec![0; layers.len()],
            last: (Step::Forward, 0),
        }
    }

    /// Bytes alive `extra` above what is held now, while `step` of `layer` runs.
    fn spike(&mut self, extra: u64, step: Step, layer: usize) {
        self.last = (step, layer);
        let now = self.cur + extra;
        if now > self.peak {
            self.peak = now;
            let k = self.by_kind;
            self.at = PeakMoment {
                step,
                layer,
                within: self.within.clone(),
                checkpoint_bytes: k[0],
                recorded_bytes: k[1],
                gradient_bytes: k[2],
                param_grad_bytes: k[3],
                working_bytes: extra,
            };
        }
    }

    fn alloc(&mut self, bytes: u64, kind: Kind) -> Buf {
        self.bufs.push((bytes, 1, kind));
        self.cur += bytes;
        self.by_kind[kind as usize] += bytes;
        let (step, layer) = self.last;
        self.spike(0, step, layer);
        self.bufs.len() - 1
    }

    fn hold(&mut self, b: Buf) {
        self.bufs[b].1 += 1;
    }

    fn holders(&self, b: Buf) -> u32 {
        self.bufs[b].1
    }

    fn release(&mut self, b: Buf) {
        let (bytes, holders, kind) = &mut self.bufs[b];
        *holders -= 1;
        if *holders == 0 {
            self.cur -= *bytes;
            self.by_kind[*kind as usize] -= *bytes;
        }
    }

    /// Layer `i` recorded on input `x`; `known` is the output it may take instead of making one.
    fn record_layer(&mut self, i: usize, x: Buf, known: Option<Buf>) -> Done<'static> {
        let l = &self.layers[i];
        self.runs[i] += 1;
        let reuse = known.filter(|_| l.reuses_output);
        let peak = if reuse.is_some() {
            l.forward_peak_reusing
        } else {
            l.forward_peak
        };
        self.spike(peak, Step::Forward, i);
        let kept = self.alloc(l.saved_bytes, Kind::Recorded);
        let output = match reuse {
            Some(k) => {
                self.hold(k);
                k
            }
            None => self.alloc(l.output_bytes, Kind::Recorded),
        };
        if l.keeps_output {
            self.hold(output);
        }
        if l.keeps_input {
            self.hold(x);
        }
        Done::Layer {
            layer: i,
            kept,
            output,
            input: x,
        }
    }

    /// A checkpoint's first pass over `range` from `x`: returns its output (one holder).
    fn first_pass(&mut self, range: Range<usize>, x: Buf) -> Buf {
        self.hold(x);
        let mut h = x;
        for j in range {
            let l = &self.layers[j];
            self.runs[j] += 1;
            self.spike(l.nograd_peak, Step::FirstPass, j);
            let y = self.alloc(l.output_bytes, Kind::Checkpoint);
            self.release(h);
            h = y;
        }
        h
    }

    /// The forward of `parts` on a recording tape from `x`; `known` is the output the last
    /// layer may take (a recompute). Returns what backward undoes and the output (one holder).
    fn forward<'p>(
        &mut self,
        parts: &[Part<'p>],
        x: Buf,
        known: Option<Buf>,
    ) -> (Vec<Done<'p>>, Buf) {
        self.hold(x);
        let mut h = x;
        let mut done = Vec::with_capacity(parts.len());
        for (k, part) in parts.iter().enumerate() {
            let next = match part {
                Part::Layer(i) => {
                    let last = k + 1 == parts.len();
                    let d = self.record_layer(*i, h, known.filter(|_| last));
                    let Done::Layer { output, .. } = d else {
                        unreachable!("record_layer returns a layer")
                    };
                    done.push(d);
                    output
                }
                Part::Checkpoint(range, plan) => {
                    self.hold(h);
                    let out = self.first_pass(range.clone(), h);
                    self.hold(out);
                    done.push(Done::Checkpoint {
                        range: range.clone(),
                        plan: *plan,
                        input: h,
                        output: out,
                    });
                    out
                }
            };
            self.release(h);
            h = next;
        }
        (done, h)
    }

    /// Backward through `done` in reverse from the gradient `grad` (one holder: the gradient
    /// map); returns the gradient of the input, if any.
    fn backward(&mut self, done: Vec<Done<'_>>, mut grad: Option<Buf>) -> Option<Buf> {
        for d in done.into_iter().rev() {
            match d {
                Done::Layer {
                    layer,
                    kept,
                    output,
                    input,
                } => {
                    let l = &self.layers[layer];
                    let held = self.holders(output) > u32::from(l.keeps_output)
                        || grad.is_some_and(|g| self.holders(g) > 1);
                    let peak = if held {
                        l.backward_peak_held
                    } else {
                        l.backward_peak
                    };
                    self.spike(peak, Step::Backward, layer);
                    let (keeps_output, keeps_input) = (l.keeps_output, l.keeps_input);
                    let (gx, pg) = (l.input_grad_bytes, l.param_grad_bytes);
                    self.release(kept);
                    if keeps_output {
                        self.release(output);
                    }
                    if keeps_input {
                        self.release(input);
                    }
                    if let Some(g) = grad {
                        self.release(g);
                    }
                    grad = (gx > 0).then(|| self.alloc(gx, Kind::Gradient));
                    if pg > 0 {
                        self.alloc(pg, Kind::ParamGrad);
                    }
                }
                Done::Checkpoint {
                    range,
                    plan,
                    input,
                    output,
                } => {
                    self.within.push(range.clone());
                    let inner = parts(plan, range);
                    let (done, out) = self.forward(&inner, input, Some(output));
                    if let Some(g) = grad {
                        self.hold(g); // the recompute's seed shares the outer gradient
                    }
                    let gx = self.backward(done, grad);
                    self.release(out);
                    self.release(input);
                    self.release(output);
                    if let Some(g) = grad {
                        self.release(g);
                    }
                    self.within.pop();
                    grad = gx;
                }
            }
        }
        grad
    }
}

impl ChainModel {
    /// Predicts the peak bytes and extra cost of a training step under `plan` (the memory
    /// model of the module docs, replayed event by event); fails with
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) unless the plan covers the chain exactly
    /// ([`Plan::check_covers`]).
    pub fn predict(&self, plan: &Plan) -> Result<Prediction> {
        plan.check_covers(self.layers.len())?;
        let n = self.layers.len();
        let mut r = Replay::new(&self.layers);
        let input = r.alloc(0, Kind::Checkpoint); // the caller's: counted in the base bytes
        let top = parts(Some(plan), 0..n);
        let (done, y) = r.forward(&top, input, None);
        let forward_end = r.cur;
        r.alloc(self.loss_bytes, Kind::Gradient); // the loss value, to the end
        r.release(y); // the caller drops the output once the loss is computed
        let seed = r.alloc(self.loss_bytes, Kind::Gradient);
        r.spike(self.layers[n - 1].output_bytes, Step::LossGradient, n - 1);
        let grad = r.alloc(self.layers[n - 1].output_bytes, Kind::Gradient);
        r.release(seed);
        r.backward(done, Some(grad));
        let extra_cost = r
            .runs
            .iter()
            .zip(&self.layers)
            .map(|(&runs, l)| runs.saturating_sub(1) as f64 * l.cost)
            .sum();
        Ok(Prediction {
            peak: self.base_bytes + r.peak,
            forward_end,
            extra_cost,
            recomputed_layers: plan.recomputed_layers(),
            at: r.at,
        })
    }
}
