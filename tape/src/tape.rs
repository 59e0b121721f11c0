//! The autodiff [`Tape`]. A recording tape keeps one boxed backward closure per op (dfdx's
//! design); a no-grad tape keeps nothing. The tape also carries the step's context: training or
//! eval, forward or recompute phase, and the dropout random stream.
//!
//! `backward` runs the closures in reverse. Each closure (and the tensors it saved) is freed as it
//! runs, and the gradient of an op's output is removed from the map when that op's closure takes
//! it, so a non-leaf gradient lives only until its last consumer has run. Leaf gradients
//! (parameters, inputs) are what remain in the returned [`Gradients`].

use crate::context;
pub use crate::context::Phase;
use crate::error::{Error, Result};
use crate::gradients::{GradObserver, Gradients};
use crate::precision::Precision;
use crate::profile::{self, Pass};
use crate::tensor::{Tensor, TensorId};
use crate::unit_peaks::UnitPeaks;
use std::collections::BTreeMap;

/// The step's context, carried by the tape and copied into nested tapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    /// Training (batch statistics, dropout on) or eval (running statistics, dropout off).
    pub training: bool,
    /// Forward or recompute phase.
    pub phase: Phase,
    /// Seed of the dropout random stream.
    pub seed: u64,
    /// Next counter of the random stream; each dropout call takes one, and so does each batch
    /// norm call in training (the key its statistics are kept under for a recompute).
    pub counter: u64,
    /// Whether batch norm keeps its batch statistics from a checkpointed segment's first pass
    /// for the recompute to normalise with (see `ops::batch_norm2d`); on by default. The
    /// chain planner's runs (`checkpoint::run_plan`) turn it off: their model does not count the
    /// kept bytes (a synchronised batch norm keeps them all the same, so that its recompute
    /// does not communicate).
    pub keep_batch_stats: bool,
    /// The precision policy: which dtype each op runs in (see [`crate::precision`]).
    pub precision: Precision,
}

type BackwardFn<'a> = Box<dyn FnOnce(&Tensor, &mut Gradients) -> Result<()> + 'a>;
type EffectFn<'a> = Box<dyn FnOnce(&mut Gradients) -> Result<()> + 'a>;

/// One recorded step of backward.
enum Node<'a> {
    /// An op's backward: runs with its output's gradient, if that output got one.
    Op {
        output: TensorId,
        backward: BackwardFn<'a>,
    },
    /// A backward step that produces no tensor a gradient could reach (a write into shared
    /// storage): always runs, in its place in reverse order.
    Effect(EffectFn<'a>),
}

/// Records ops for backward (or, as a no-grad tape, records nothing). Closures may borrow for `'a`
/// (a model's parameters, say).
pub struct Tape<'a> {
    recording: bool,
    ctx: Context,
    nodes: Vec<Node<'a>>,
    /// Forward calls of ops started on this tape so far.
    ops_started: usize,
    /// Ops' outputs known in advance, by the op's index among the calls.
    known_outputs: BTreeMap<usize, Tensor>,
    /// Names of the ops whose outputs [`Tape::record`] captures (none when empty).
    capture: Vec<&'static str>,
    /// The outputs captured so far: (the op's index among the calls, the output).
    captured: Vec<(usize, Tensor)>,
    /// Where [`Tape::mark`]s note backward's peaks, if anywhere.
    peaks: Option<UnitPeaks>,
    /// What watches this tape's backward write its gradients, if anything.
    observer: Option<GradObserver>,
}

impl<'a> Tape<'a> {
    /// A recording tape for a training step (training, forward phase, seed 0).
    pub fn recording() -> Self {
        Self::with_context(
            true,
            Context {
                training: true,
                phase: Phase::Forward,
                seed: 0,
                counter: 0,
                keep_batch_stats: true,
                precision: Precision::F32,
            },
        )
    }

    /// A tape that records nothing, in eval mode (inference).
    pub fn no_grad() -> Self {
        Self::with_context(
            false,
            Context {
                training: false,
                phase: Phase::Forward,
                seed: 0,
                counter: 0,
                keep_batch_stats: true,
                precision: Precision::F32,
            },
        )
    }

    /// A tape with an explicit context.
    pub fn with_context(recording: bool, ctx: Context) -> Self {
        Tape {
            recording,
            ctx,
            nodes: Vec::new(),
            ops_started: 0,
            known_outputs: BTreeMap::new(),
            capture: Vec::new(),
            captured: Vec::new(),
            peaks: None,
            observer: None,
        }
    }

    /// Makes [`Tape::mark`] note the peak bytes of each unit's forward and backward in `peaks`.
    pub fn watch_unit_peaks(mut self, peaks: UnitPeaks) -> Self {
        self.peaks = Some(peaks);
        self
    }

    /// Makes this tape's backward call `observer` after every contribution it adds into a
    /// gradient of the returned [`Gradients`] (with the tensor's id and the sum so far): what a
    /// data-parallel reducer needs to see parameter gradients become final while backward still
    /// runs. Only the outermost gradients are seen: a checkpointed segment's recompute adds its
    /// parameters' gradients in one contribution each when it is done. The observer is removed
    /// before backward returns.
    pub fn observe_gradients(&mut self, observer: GradObserver) {
        self.observer = Some(observer);
    }

    /// Marks the start of a unit of the model (a layer, a block) called `label()`: with
    /// [`Tape::watch_unit_peaks`] on, the previous unit's forward peak is noted now, and
    /// backward notes the peak bytes of this unit's backward (everything recorded from this mark
    /// to the next) when it reaches the mark. Without it, or on a tape that does not record,
    /// nothing happens and `label` is not called.
    pub fn mark(&mut self, label: impl FnOnce() -> String) {
        if let (true, Some(peaks)) = (self.recording, &self.peaks) {
            let (peaks, label) = (peaks.clone(), label());
            peaks.note_forward(label.clone());
            self.record_effect("mark", move |_| {
                peaks.note_backward(label);
                Ok(())
            });
        }
    }

    /// Sets training (batch statistics, dropout on) or eval mode.
    pub fn training(mut self, training: bool) -> Self {
        self.ctx.training = training;
        self
    }

    /// Sets the seed of the dropout stream (and restarts its counter).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.ctx.seed = seed;
        self.ctx.counter = 0;
        self
    }

    /// Sets the precision policy (see [`crate::precision`]).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.ctx.precision = precision;
        self
    }

    /// The precision policy ops run under.
    pub fn precision(&self) -> Precision {
        self.ctx.precision
    }

    /// Whether ops are recorded.
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// Whether this is a training step.
    pub fn is_training(&self) -> bool {
        self.ctx.training
    }

    /// The phase ops run in.
    pub fn phase(&self) -> Phase {
        self.ctx.phase
    }

    /// The current context (mode, phase, random stream position).
    pub fn context(&self) -> Context {
        self.ctx
    }

    /// Replaces the context (used by checkpointing to move the random stream on).
    pub fn set_context(&mut self, ctx: Context) {
        self.ctx = ctx;
    }

    /// Takes the next (seed, counter) pair of the dropout stream.
    pub fn next_random_stream(&mut self) -> (u64, u64) {
        let c = self.ctx.counter;
        self.ctx.counter += 1;
        (self.ctx.seed, c)
    }

    /// Whether an op over `inputs` must record: the tape records and some input wants a gradient.
    pub fn needs_grad(&self, inputs: &[&Tensor]) -> bool {
        self.recording && inputs.iter().any(|t| t.requires_grad())
    }

    /// Records `backward` for `output` if an op over `inputs` needs a gradient, and returns the
    /// output (marked as requiring a gradient when recorded). `backward` receives the gradient of
    /// `output` and accumulates the gradients of the inputs; it runs at most once and is dropped
    /// unrun if `output` gets no gradient.
    /// `op` names the op in profiles ([`crate::profile`]).
    pub fn record(
        &mut self,
        op: &'static str,
        inputs: &[&Tensor],
        output: Tensor,
        backward: impl FnOnce(&Tensor, &mut Gradients) -> Result<()> + 'a,
    ) -> Tensor {
        self.capture_output(op, &output);
        if !self.needs_grad(inputs) {
            return output;
        }
        self.record_always(op, output, backward)
    }

    /// Records `backward` for `output` whenever the tape records, whatever its inputs: for
    /// composite ops (a checkpointed segment) whose parameters the tape cannot see. `op` names
    /// the op in profiles.
    pub fn record_always(
        &mut self,
        op: &'static str,
        output: Tensor,
        backward: impl FnOnce(&Tensor, &mut Gradients) -> Result<()> + 'a,
    ) -> Tensor {
        if !self.recording {
            return output;
        }
        let output = output.with_requires_grad(true);
        let scope = context::current_name();
        self.nodes.push(Node::Op {
            output: output.id(),
            backward: Box::new(move |g: &Tensor, grads: &mut Gradients| {
                let _scope = context::enter_name(scope);
                profile::timed(op, Pass::Backward, || backward(g, grads))
            }),
        });
        output
    }

    /// Records a backward step that runs unconditionally when backward reaches it (in reverse
    /// order of recording, like every op), for an op whose result no tensor id carries: a write
    /// into [`crate::BlockStorage`], say, whose gradient lives in the storage. Nothing is
    /// recorded on a tape that does not record. `op` names the step in profiles.
    pub fn record_effect(
        &mut self,
        op: &'static str,
        backward: impl FnOnce(&mut Gradients) -> Result<()> + 'a,
    ) {
        if self.recording {
            let scope = context::current_name();
            self.nodes
                .push(Node::Effect(Box::new(move |grads: &mut Gradients| {
                    let _scope = context::enter_name(scope);
                    profile::timed(op, Pass::Backward, || backward(grads))
                })));
        }
    }

    /// Starts one forward call of `op`: counts it, and times it (in this tape's phase) for the
    /// profiler until the returned guard drops.
    pub(crate) fn profile_op(&mut self, op: &'static str) -> profile::Scope {
        self.ops_started += 1;
        profile::scope(op, self.ctx.phase.into())
    }

    /// Forward calls of ops started on this tape so far (each op counts one, whatever it
    /// records), including those counted in by [`Tape::count_ops_run_elsewhere`].
    pub fn ops_started(&self) -> usize {
        self.ops_started
    }

    /// Counts `calls` op calls that ran on another tape on this one's behalf (a nested
    /// checkpoint's first pass runs on its own no-grad tape), so that op indices, as
    /// [`Tape::set_known_output`] takes them, count every op of a segment wherever it ran.
    pub fn count_ops_run_elsewhere(&mut self, calls: usize) {
        self.ops_started += calls;
    }

    /// Declares the output of the op call at `index` (0-based, counted as
    /// [`Tape::ops_started`] counts) known in advance: that op, if it can (its backward needs
    /// nothing its forward computes besides the output: conv2d, linear, ReLU, pooling, dropout,
    /// add, concat, matmul, softmax, GELU, embedding), records its backward as usual but takes
    /// `output` (under a new id) instead of computing it. For recomputing a checkpointed segment,
    /// whose last output (or, under a selective policy, whose kept op outputs) the first pass
    /// already produced: the caller vouches that it is what the op would compute. Several calls
    /// declare several outputs (one per index; a later call for the same index replaces it).
    pub fn set_known_output(&mut self, index: usize, output: Tensor) {
        self.known_outputs.insert(index, output);
    }

    /// The known output of the op call now running, if one was declared for it and has `shape`
    /// and `like`'s dtype and device.
    pub(crate) fn take_known_output(&mut self, shape: &[usize], like: &Tensor) -> Option<Tensor> {
        let index = self.ops_started.checked_sub(1)?;
        let fits = matches!(self.known_outputs.get(&index), Some(t) if t.shape() == shape
            && t.dtype() == like.dtype()
            && t.device().same(like.device()));
        if !fits {
            return None;
        }
        self.known_outputs.remove(&index).map(|t| t.detach())
    }

    /// From now on, keeps the output of every op call named in `ops` (names as the ops give
    /// them to [`Tape::record`] and profiles: `"linear"`, `"matmul"`, `"conv2d"`, ...) with the
    /// call's index, recording or not, until [`Tape::take_captured_outputs`] takes them: what a
    /// selective checkpoint's first pass keeps so that its recompute can hand those outputs back
    /// through [`Tape::set_known_output`]. An empty list stops capturing.
    pub fn capture_outputs_of(&mut self, ops: &[&'static str]) {
        self.capture = ops.to_vec();
    }

    /// The outputs captured so far (see [`Tape::capture_outputs_of`]), in call order, each
    /// with its op call's index; the tape keeps none of them afterwards.
    pub fn take_captured_outputs(&mut self) -> Vec<(usize, Tensor)> {
        std::mem::take(&mut self.captured)
    }

    /// Keeps `output` of the op call now running if its op is captured.
    fn capture_output(&mut self, op: &'static str, output: &Tensor) {
        if self.capture.contains(&op) {
            if let Some(index) = self.ops_started.checked_sub(1) {
                self.captured.push((index, output.clone()));
            }
        }
    }

    /// Number of recorded ops.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Backpropagates from a scalar loss (seed 1).
    pub fn backward(self, loss: &Tensor) -> Result<Gradients> {
        if loss.numel() != 1 {
            return Err(Error::Backward(format!(
                "the loss must have one element, got shape {:?}",
                loss.shape()
            )));
        }
        let seed = Tensor::ones(loss.shape(), loss.dtype(), loss.device())?;
        self.backward_from(loss, seed)
    }

    /// Backpropagates from a scalar loss (seed 1), adding into `grads` (the gradients of earlier
    /// micro-batches, say) instead of starting from none.
    pub fn backward_into(self, loss: &Tensor, grads: Gradients) -> Result<Gradients> {
        if loss.numel() != 1 {
            return Err(Error::Backward(format!(
                "the loss must have one element, got shape {:?}",
                loss.shape()
            )));
        }
        let seed = Tensor::ones(loss.shape(), loss.dtype(), loss.device())?;
        self.run_backward(loss, seed, grads)
    }

    /// Backpropagates from `output` with the given gradient of it (a segment's outer gradient).
    pub fn backward_from(self, output: &Tensor, seed: Tensor) -> Result<Gradients> {
        self.run_backward(output, seed, Gradients::new())
    }

    /// Backward from `output` seeded with `seed`, adding into `grads`.
    fn run_backward(
        mut self,
        output: &Tensor,
        seed: Tensor,
        mut grads: Gradients,
    ) -> Result<Gradients> {
        if seed.shape() != output.shape() {
            return Err(Error::Backward(format!(
                "seed gradient of shape {:?} for an output of shape {:?}",
                seed.shape(),
                output.shape()
            )));
        }
        output.check_compatible(&seed, "backward")?;
        if let Some(observer) = self.observer.take() {
            grads.set_observer(observer);
        }
        grads.accumulate_id(output.id(), seed)?;
        while let Some(node) = self.nodes.pop() {
            match node {
                Node::Op { output, backward } => {
                    if let Some(g) = grads.take(output) {
                        backward(&g, &mut grads)?;
                    }
                }
                Node::Effect(effect) => effect(&mut grads)?,
            }
        }
        grads.take_observer();
        Ok(grads)
    }
}
