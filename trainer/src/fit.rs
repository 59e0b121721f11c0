//! [`fit`]: the epoch loop over a [`Task`].

use crate::anomaly::AnomalyGuard;
use crate::eval::Eval;
use crate::progress::Progress;
use crate::run_dir::{LossScalerRecord, RunDir, RunState, ScalerStateError};
use crate::schedule::Schedule;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Instant;
use tape::nn::{LoadOptions, Module, StateError};
use tape::ops::PendingScalar;
use tape::optim::{LossScaler, Optimizer};
use tape::Tensor;

/// A queued training step's results, still on the device: copied to the host asynchronously
/// ([`PendingScalar`]) and added up by the loop once there, with no wait (the epoch's end waits
/// for the last ones). A meta device holds no values: its results read as 0.
#[derive(Clone, Debug)]
pub struct Queued {
    /// The step's mean loss (one element).
    pub loss: Tensor,
    /// The step's number of correct predictions (one element), where the task counts them.
    pub correct: Option<Tensor>,
    /// Samples in the step's batch.
    pub samples: usize,
}

/// One model's training, as [`fit`] drives it.
pub trait Task {
    /// The task's error (a training step that diverged, a bad batch, ...).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Number of steps (batches) of 0-based `epoch`.
    fn steps(&self, epoch: usize) -> usize;

    /// Number of training samples of `epoch` (the progress total).
    fn samples(&self, epoch: usize) -> usize;

    /// Queues training step `step` of `epoch`; `index` numbers the steps of the whole run from
    /// 0 (a resumed run continues the numbering). The optimizer's learning rate is already set.
    /// `guard` is the run's queued anomaly check: pass the step's update through
    /// [`AnomalyGuard::step`] (then a non-finite step fails when the next one queues its update,
    /// or at the epoch's end, where [`fit`] checks the last step before evaluating and saving),
    /// or check synchronously and leave it alone.
    fn train_step(
        &mut self,
        epoch: usize,
        step: usize,
        index: u64,
        guard: &mut AnomalyGuard,
    ) -> Result<Queued, Self::Error>;

    /// Evaluates the model in eval mode, or `None` without an evaluation set.
    fn evaluate(&mut self) -> Result<Option<Eval>, Self::Error>;

    /// The module and the optimizer whose state a run directory saves and restores.
    fn state(&mut self) -> (&mut dyn Module, &mut dyn Optimizer);

    /// What a run directory records about the task (its model's configuration, say): a run
    /// resumes only from a directory that records the same.
    fn describe(&self) -> serde_json::Value;

    /// The loss scaler the task's steps use ([`LossScaler::backward`] and
    /// [`LossScaler::step`] in [`Task::train_step`]), if any: a run directory records its
    /// settings and state after every epoch and a resumed run restores them
    /// ([`RunDir::restore_loss_scaler`]). The default: none.
    fn loss_scaler(&mut self) -> Option<&mut LossScaler> {
        None
    }
}

/// What can stop [`fit`].
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A training step or an evaluation failed (e.g. the loss became non-finite).
    #[error("epoch {epoch}, step {step}: {source}")]
    Step {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step of the epoch that failed (0 for the evaluation after it). A non-finite
        /// step of the queued check ([`AnomalyGuard`]) is the step that diverged, although it
        /// is found when the next step queues its update or at the epoch's end check; the
        /// source names its run index.
        step: usize,
        /// The task's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Saving or restoring the run directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The engine failed (reading a queued loss).
    #[error(transparent)]
    Engine(#[from] tape::Error),
    /// `--resume` from a directory written for another task or model.
    #[error("cannot resume from {dir}: it was written for {saved}, this run is {current}")]
    OtherRun {
        /// The run directory.
        dir: String,
        /// What it records.
        saved: String,
        /// What this task says.
        current: String,
    },
    /// The run directory's loss scaler entry is missing or bad.
    #[error(transparent)]
    LossScaler(#[from] ScalerStateError),
    /// Summing the epoch's results over the ranks failed.
    #[error(transparent)]
    Dist(#[from] dist::DistError),
    /// Bad options (zero epochs, a negative learning rate).
    #[error("{0}")]
    Options(String),
}

/// How [`fit`] runs.
#[derive(Clone, Debug)]
pub struct FitOptions {
    /// Epochs of the whole run (a resumed run counts the ones done).
    pub epochs: usize,
    /// Base learning rate.
    pub lr: f64,
    /// Learning rate per epoch.
    pub schedule: Schedule,
    /// Where to save after every epoch, if anywhere.
    pub run_dir: Option<RunDir>,
    /// Continue from `run_dir` at the epoch after the one it records.
    pub resume: bool,
    /// On resume, ignore tensors of the weights file the model does not have.
    pub lenient: bool,
    /// Print a line per epoch (and progress).
    pub verbose: bool,
    /// The processes of a data-parallel run ([`dist::ProcessGroup::single`] by default): only
    /// rank 0 prints and writes the run directory, every rank resumes from it, and the epoch's
    /// training loss and accuracy are summed over the ranks.
    pub group: dist::ProcessGroup,
}

impl FitOptions {
    /// `epochs` epochs at base rate `lr` under `schedule`, nothing saved, printing.
    pub fn new(epochs: usize, lr: f64, schedule: Schedule) -> Self {
        FitOptions {
            epochs,
            lr,
            schedule,
            run_dir: None,
            resume: false,
            lenient: false,
            verbose: true,
            group: dist::ProcessGroup::single(),
        }
    }
}

/// One epoch's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Its learning rate.
    pub lr: f64,
    /// Mean training loss over its samples.
    pub train_loss: f64,
    /// Training accuracy, where the task counts hits.
    pub train_accuracy: Option<f64>,
    /// Evaluation after it.
    pub eval: Option<Eval>,
    /// Training samples per second.
    pub samples_per_s: f64,
    /// Seconds for the epoch (training and evaluation).
    pub seconds: f64,
}

impl std::fmt::Display for EpochReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lr {:.4}  train loss {:.4}", self.lr, self.train_loss)?;
        if let Some(a) = self.train_accuracy {
            write!(f, " acc {:.2}%", 100.0 * a)?;
        }
        if let Some(e) = &self.eval {
            write!(f, "  eval loss {:.4}", e.loss)?;
            if let Some(a) = e.accuracy {
                write!(f, " acc {:.2}%", 100.0 * a)?;
            }
        }
        write!(
            f,
            "  {:.1} samples/s  {:.1} s",
            self.samples_per_s, self.seconds
        )
    }
}

/// A queued step's results on their way to the host.
struct InFlight {
    loss: PendingScalar,
    correct: Option<PendingScalar>,
    samples: usize,
}

impl InFlight {
    /// Starts the reads of `q`'s results (no wait).
    fn start(q: &Queued) -> tape::Result<InFlight> {
        Ok(InFlight {
            loss: PendingScalar::start(&q.loss)?,
            correct: q.correct.as_ref().map(PendingScalar::start).transpose()?,
            samples: q.samples,
        })
    }

    /// Whether every value is on the host (no wait).
    fn is_ready(&self) -> tape::Result<bool> {
        Ok(self.loss.is_ready()?
            && match &self.correct {
                Some(c) => c.is_ready()?,
                None => true,
            })
    }
}

/// Sums of read-back step results.
#[derive(Clone, Copy, Default)]
struct Tally {
    loss_sum: f64,
    correct: Option<usize>,
    seen: usize,
}

impl Tally {
    fn add(&mut self, q: &InFlight) -> tape::Result<()> {
        self.loss_sum += q.loss.value()? * q.samples as f64;
        if let Some(c) = &q.correct {
            *self.correct.get_or_insert(0) += c.value()? as usize;
        }
        self.seen += q.samples;
        Ok(())
    }

    /// Adds the results of `in_flight` (oldest first) that are on the host, stopping at the
    /// first that is not (no wait); with `wait`, adds them all (waiting where needed).
    fn drain(&mut self, in_flight: &mut VecDeque<InFlight>, wait: bool) -> tape::Result<()> {
        while let Some(q) = in_flight.front() {
            if !wait && !q.is_ready()? {
                break;
            }
            self.add(q)?;
            in_flight.pop_front();
        }
        Ok(())
    }

    /// The sums of every rank (one all-reduce; nothing in a world of one).
    fn global(&self, group: &dist::ProcessGroup) -> Result<Tally, dist::DistError> {
        if group.world_size() == 1 {
            return Ok(*self);
        }
        let any_correct = group.any(self.correct.is_some())?;
        let c = self.correct.unwrap_or(0) as f64;
        let sums = group.sum_f64(&[self.loss_sum, c, self.seen as f64])?;
        Ok(Tally {
            loss_sum: sums[0],
            correct: any_correct.then_some(sums[1] as usize),
            seen: sums[2] as usize,
        })
    }

    fn loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    fn accuracy(&self) -> Option<f64> {
        self.correct.map(|c| c as f64 / self.seen.max(1) as f64)
    }

    fn message(&self, t0: Instant) -> String {
        if self.seen == 0 {
            return "first step queued".into();
        }
        let acc = self
            .accuracy()
            .map(|a| format!(" acc {:.2}%", 100.0 * a))
            .unwrap_or_default();
        format!(
            "loss {:.4}{acc} {:.1} samples/s",
            self.loss(),
            self.seen as f64 / t0.elapsed().as_secs_f64()
        )
    }
}

fn step_error<E: std::error::Error + Send + Sync + 'static>(
    epoch: usize,
    step: usize,
) -> impl FnOnce(E) -> TrainError {
    move |e| TrainError::Step {
        epoch,
        step,
        source: Box::new(e),
    }
}

/// Trains `task` as `options` say and returns a report per epoch run (none when a resumed run
/// has nothing left to do).
pub fn fit<T: Task>(task: &mut T, options: &FitOptions) -> Result<Vec<EpochReport>, TrainError> {
    if options.epochs == 0 {
        return Err(TrainError::Options("epochs must be at least 1".into()));
    }
    if !(options.lr.is_finite() && options.lr >= 0.0) {
        return Err(TrainError::Options(format!(
            "the learning rate must be finite and >= 0, got {}",
            options.lr
        )));
    }
    let verbose = options.verbose && options.group.is_root();
    let mut start = 0;
    if options.resume {
        let dir = options
            .run_dir
            .as_ref()
            .ok_or_else(|| TrainError::Options("resume needs a run directory".into()))?;
        let saved = dir.read_state()?;
        let current = task.describe();
        if saved.task != current {
            return Err(TrainError::OtherRun {
                dir: dir.path().display().to_string(),
                saved: saved.task.to_string(),
                current: current.to_string(),
            });
        }
        // The scaler first: a missing or bad entry fails before anything is loaded.
        if let Some(scaler) = task.loss_scaler() {
            dir.restore_loss_scaler(&saved, scaler)?;
        }
        let (model, opt) = task.state();
        let load = LoadOptions {
            lenient: options.lenient,
        };
        dir.restore_weights(model, opt, load)?;
        start = saved.epoch;
        if verbose {
            println!(
                "resumed from {} after epoch {start} of {}",
                dir.path().display(),
                options.epochs
            );
        }
    }
    let epochs = options.epochs;
    let mut index: u64 = (0..start.min(epochs)).map(|e| task.steps(e) as u64).sum();
    let mut reports = Vec::new();
    let mut guard = AnomalyGuard::new();
    for epoch in start..epochs {
        let lr = options.schedule.lr_at(options.lr, epoch, epochs);
        task.state().1.set_lr(lr);
        let steps = task.steps(epoch);
        let progress = verbose.then(|| {
            let label = format!("epoch {}/{epochs}", epoch + 1);
            Progress::new(label, task.samples(epoch) as u64, steps as u64)
        });
        let t0 = Instant::now();
        let mut tally = Tally::default();
        let mut in_flight = VecDeque::new();
        for s in 0..steps {
            let queued = match task.train_step(epoch, s, index, &mut guard) {
                Ok(q) => q,
                Err(e) => {
                    if let Some(p) = &progress {
                        p.abandon();
                    }
                    // A report of the previous step (1-based `s`) or a failure of this one.
                    let failed = match guard.take_reported() {
                        Some(_) => s.max(1),
                        None => s + 1,
                    };
                    return Err(step_error(epoch + 1, failed)(e));
                }
            };
            index += 1;
            in_flight.push_back(InFlight::start(&queued)?);
            tally.drain(&mut in_flight, false)?;
            if let Some(p) = &progress {
                let samples = queued.samples as u64;
                p.step(s as u64, samples, tally.seen as u64, &tally.message(t0));
            }
        }
        // The epoch's last step is checked before anything reads its results, evaluates or
        // saves: nothing is saved after an unreported non-finite step.
        let checked = guard.check_now(task.state().0);
        if let Err(e) = checked {
            if let Some(p) = &progress {
                p.abandon();
            }
            return Err(step_error(epoch + 1, steps)(e));
        }
        tally.drain(&mut in_flight, true)?;
        if let Some(p) = &progress {
            p.finish();
        }
        let train_s = t0.elapsed().as_secs_f64();
        let tally = tally.global(&options.group)?;
        let eval = task.evaluate().map_err(step_error(epoch + 1, 0))?;
        let report = EpochReport {
            epoch: epoch + 1,
            lr,
            train_loss: tally.loss(),
            train_accuracy: tally.accuracy(),
            eval,
            samples_per_s: tally.seen as f64 / train_s.max(1e-9),
            seconds: t0.elapsed().as_secs_f64(),
        };
        if verbose {
            println!("epoch {:>3}/{epochs}  {report}", epoch + 1);
        }
        if let (Some(dir), true) = (&options.run_dir, options.group.is_root()) {
            let state = RunState {
                epoch: epoch + 1,
                epochs,
                lr,
                train_loss: report.train_loss,
                train_accuracy: report.train_accuracy,
                eval,
                task: task.describe(),
                loss_scaler: task.loss_scaler().map(|s| LossScalerRecord::of(s)),
            };
            let (model, opt) = task.state();
            dir.save(model, opt, &state)?;
        }
        reports.push(report);
    }
    if verbose && start >= epochs {
        println!("already trained for {start} of {epochs} epochs: nothing to do");
    }
    Ok(reports)
}
