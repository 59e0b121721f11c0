//! The training loop on a tiny task (a linear classifier on fixed random data): schedules, the
//! per-epoch reports, resume continuing a run bit for bit, a diverging step stopping the run
//! with the epoch and step named, and a run directory written for another task refused.

use std::path::PathBuf;
use tape::nn::{self, Init, Linear, Module};
use tape::optim::{Optimizer, Sgd, SgdConfig};
use tape::{ops, DType, Device, Labels, Tape, Tensor};
use trainer::anomaly::AnomalyGuard;
use trainer::{fit, Eval, FitOptions, Queued, RunDir, Schedule, Task, TrainError};

mod common;

use common::{batches, TaskError};

struct Tiny {
    dev: Device,
    model: Linear,
    opt: Sgd,
    x: Vec<Tensor>,
    y: Vec<Vec<usize>>,
    classes: usize,
    /// A step index at which the loss is made NaN (a diverging run).
    poison_at: Option<u64>,
    /// Pick each step's batch from the run's step index (as `train_gpt` picks its batches and
    /// `train_cifar` its dropout seed) instead of the epoch and step.
    by_index: bool,
    /// The step indices `fit` gave, in order.
    indices: Vec<u64>,
    /// Queue each update through `fit`'s anomaly guard (no host read per step) instead of
    /// reading the loss and stepping unconditionally.
    guarded: bool,
    /// The device's counters as each step began.
    counts: Vec<tape::Counters>,
    /// The weights and the optimizer state (momentum buffers) as each step began, for guarded
    /// runs with a poisoned step.
    before: Vec<Snapshot>,
}

/// The weights and the momentum buffers, as host numbers.
type Snapshot = (Vec<Vec<f64>>, Vec<Vec<f64>>);

fn tiny(seed: u64, classes: usize) -> Tiny {
    let dev = Device::cpu();
    let mut init = Init::new(DType::F64, &dev, seed);
    let mut model = Linear::new(4, classes, &mut init).unwrap();
    nn::name_parameters(&mut model);
    let (x, y) = batches(DType::F64, &dev, classes);
    let opt = Sgd::new(SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        nesterov: true,
        ..SgdConfig::default()
    })
    .unwrap();
    Tiny {
        dev,
        model,
        opt,
        x,
        y,
        classes,
        poison_at: None,
        by_index: false,
        indices: Vec::new(),
        guarded: false,
        counts: Vec::new(),
        before: Vec::new(),
    }
}

impl Task for Tiny {
    type Error = TaskError;

    fn steps(&self, _epoch: usize) -> usize {
        self.x.len()
    }

    fn samples(&self, _epoch: usize) -> usize {
        self.x.len() * 5
    }

    fn train_step(
        &mut self,
        epoch: usize,
        step: usize,
        index: u64,
        guard: &mut AnomalyGuard,
    ) -> Result<Queued, TaskError> {
        self.counts.push(self.dev.counters());
        // (Reading them back is a sync: only where a test compares them.)
        if self.guarded && self.poison_at.is_some() {
            let before = (weights(self), momentum(self));
            self.before.push(before);
        }
        // Batches in an order that depends on the epoch only (so a resumed run sees the same).
        let b = match self.by_index {
            // Not a multiple of the epoch's steps: an index off by one picks another batch.
            true => (index as usize * 2 + index as usize / 5) % self.x.len(),
            false => (step + epoch) % self.x.len(),
        };
        self.indices.push(index);
        let mut tape = Tape::recording();
        let logits = self.model.forward(&mut tape, &self.x[b])?;
        let mut loss = ops::cross_entropy(&mut tape, &logits, &self.y[b])?;
        if self.poison_at == Some(index) {
            loss = ops::scale(&mut tape, &loss, f64::NAN)?;
        }
        if self.guarded {
            let grads = tape.backward(&loss)?;
            guard.step(&mut self.model, &mut self.opt, &loss, &grads, index)?;
            return Ok(Queued {
                loss,
                correct: None,
                samples: 5,
            });
        }
        let value = loss.scalar()?;
        if !value.is_finite() {
            return Err(TaskError(format!("the loss is {value}")));
        }
        let grads = tape.backward(&loss)?;
        self.opt
            .step(&mut nn::parameters_mut(&mut self.model), &grads)?;
        let labels = Labels::new(&self.y[b], &self.dev)?;
        let correct = ops::correct_count(&logits, &labels)?;
        Ok(Queued {
            loss,
            correct: Some(correct),
            samples: 5,
        })
    }

    fn evaluate(&mut self) -> Result<Option<Eval>, TaskError> {
        let mut tape = Tape::no_grad();
        let logits = self.model.forward(&mut tape, &self.x[0])?;
        let loss = ops::cross_entropy(&mut tape, &logits, &self.y[0])?;
        Ok(Some(Eval {
            loss: loss.scalar()?,
            accuracy: None,
        }))
    }

    fn state(&mut self) -> (&mut dyn Module, &mut dyn Optimizer) {
        (&mut self.model, &mut self.opt)
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "model": "linear", "classes": self.classes })
    }
}

fn weights(t: &Tiny) -> Vec<Vec<f64>> {
    nn::parameters(&t.model)
        .iter()
        .map(|p| p.tensor().to_f64_vec())
        .collect()
}

/// The momentum buffers' values, in parameter order.
fn momentum(t: &Tiny) -> Vec<Vec<f64>> {
    t.opt
        .state_dict(&nn::parameters(&t.model))
        .iter()
        .map(|(_, s)| s.to_f64_vec())
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("trainer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn quiet(epochs: usize, schedule: Schedule) -> FitOptions {
    FitOptions {
        verbose: false,
        ..FitOptions::new(epochs, 0.1, schedule)
    }
}

#[test]
fn schedules_give_the_recipes_rates() {
    let s = Schedule::densenet();
    let rates: Vec<f64> = (0..8).map(|e| s.lr_at(0.1, e, 8)).collect();
    assert_eq!(rates[..4], [0.1; 4]);
    assert!((rates[4] - 0.01).abs() < 1e-15 && (rates[5] - 0.01).abs() < 1e-15);
    assert!((rates[6] - 0.001).abs() < 1e-15 && (rates[7] - 0.001).abs() < 1e-15);
    assert_eq!(s.describe(8), "x0.1 at the start of epochs 5 and 7");
    let c = Schedule::Cosine {
        warmup: 2,
        min_factor: 0.1,
    };
    assert_eq!(c.lr_at(1.0, 0, 10), 0.5);
    assert_eq!(c.lr_at(1.0, 1, 10), 1.0);
    assert_eq!(c.lr_at(1.0, 2, 10), 1.0);
    assert!((c.lr_at(1.0, 9, 10) - 0.1).abs() < 1e-15);
    assert_eq!(Schedule::Constant.lr_at(0.3, 7, 8), 0.3);
}

#[test]
fn a_run_trains_and_reports_every_epoch() {
    let mut t = tiny(1, 3);
    let reports = fit(&mut t, &quiet(4, Schedule::densenet())).unwrap();
    assert_eq!(reports.len(), 4);
    assert_eq!(
        reports.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(reports[2].lr, 0.1 * 0.1);
    assert!(reports.iter().all(|r| r.train_accuracy.is_some()));
    let first = reports[0].eval.unwrap().loss;
    let last = reports[3].eval.unwrap().loss;
    assert!(last < first, "training lowers the loss: {first} -> {last}");
    assert!(fit(&mut t, &quiet(0, Schedule::Constant)).is_err());
}

#[test]
fn a_resumed_run_replays_the_step_indices() {
    let dir = scratch("resume-index");
    let mut straight = tiny(7, 3);
    straight.by_index = true;
    let all = fit(&mut straight, &quiet(4, Schedule::densenet())).unwrap();
    let mut first = tiny(7, 3);
    first.by_index = true;
    first.poison_at = Some(6);
    let two = FitOptions {
        run_dir: Some(RunDir::new(&dir)),
        ..quiet(4, Schedule::densenet())
    };
    assert!(fit(&mut first, &two).is_err());
    let mut resumed = tiny(99, 3);
    resumed.by_index = true;
    let opts = FitOptions {
        resume: true,
        ..two
    };
    let rest = fit(&mut resumed, &opts).unwrap();
    assert_eq!(
        resumed.indices,
        straight.indices[6..],
        "resumed steps keep their indices"
    );
    for (a, b) in all[2..].iter().zip(&rest) {
        assert_eq!((a.train_loss, a.eval), (b.train_loss, b.eval));
    }
    assert_eq!(weights(&resumed), weights(&straight));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_resumed_run_continues_bit_for_bit() {
    let dir = scratch("resume");
    let mut straight = tiny(7, 3);
    let opts = quiet(4, Schedule::densenet());
    let all = fit(&mut straight, &opts).unwrap();

    let mut first = tiny(7, 3);
    let two = FitOptions {
        run_dir: Some(RunDir::new(&dir)),
        ..quiet(4, Schedule::densenet())
    };
    // Stop after 2 of 4 epochs: a run of 2 epochs would use another schedule, so run the
    // 4-epoch run and interrupt it with a step error at the first step of epoch 3.
    first.poison_at = Some(6);
    let err = fit(&mut first, &two).unwrap_err();
    match err {
        TrainError::Step { epoch, step, .. } => assert_eq!((epoch, step), (3, 1)),
        other => panic!("expected a step error, got {other}"),
    }
    // A fresh process: new model (other initial weights), new optimizer, resumed from disk.
    let mut resumed = tiny(99, 3);
    let opts = FitOptions {
        resume: true,
        ..two.clone()
    };
    let rest = fit(&mut resumed, &opts).unwrap();
    assert_eq!(rest.len(), 2);
    for (a, b) in all[2..].iter().zip(&rest) {
        assert_eq!(
            (a.epoch, a.lr, a.train_loss, a.train_accuracy, a.eval),
            (b.epoch, b.lr, b.train_loss, b.train_accuracy, b.eval)
        );
    }
    assert_eq!(weights(&resumed), weights(&straight));
    // Nothing left to do.
    assert!(fit(&mut resumed, &opts).unwrap().is_empty());
    // A directory written for another task is refused.
    let mut other = tiny(1, 4);
    assert!(matches!(
        fit(&mut other, &opts),
        Err(TrainError::OtherRun { .. })
    ));
    let leftovers = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .map(|e| e.file_name().to_string_lossy().contains(".tmp-"))
                .unwrap_or(false)
        })
        .count();
    assert_eq!(leftovers, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_guarded_fit_makes_no_host_sync_per_steady_state_step() {
    let mut t = tiny(3, 3);
    t.guarded = true;
    let reports = fit(&mut t, &quiet(2, Schedule::Constant)).unwrap();
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.train_loss.is_finite()));
    // Steps 1 -> 2 and 2 -> 3 of each epoch: everything one step asks of the device, the loop's
    // reads of the previous step's loss and its anomaly check included.
    for epoch in 0..2 {
        for s in 1..3 {
            let i = epoch * 3 + s;
            let d = t.counts[i].since(t.counts[i - 1]);
            assert_eq!(d.syncs, 0, "epoch {epoch}, step {s}: {d}");
        }
    }
}

#[test]
fn a_non_finite_step_of_a_guarded_fit_fails_naming_it_with_nothing_changed() {
    let mut t = tiny(3, 3);
    t.guarded = true;
    t.poison_at = Some(4);
    let err = fit(&mut t, &quiet(3, Schedule::Constant)).unwrap_err();
    // Found when step 5 (epoch 2, step 3) was about to queue its update; named as step 4
    // (epoch 2, step 2).
    match &err {
        TrainError::Step {
            epoch,
            step,
            source,
        } => {
            assert_eq!((*epoch, *step), (2, 2));
            let msg = source.to_string();
            assert!(msg.contains("training step 4: the loss"), "{msg}");
        }
        other => panic!("expected a step error, got {other}"),
    }
    assert_eq!(t.indices, [0, 1, 2, 3, 4, 5]);
    assert_eq!((weights(&t), momentum(&t)), t.before[4]);
}

#[test]
fn the_last_step_of_an_epoch_is_checked_before_the_epoch_is_saved() {
    let dir = scratch("guard-save");
    let mut t = tiny(3, 3);
    t.guarded = true;
    t.poison_at = Some(5);
    let opts = FitOptions {
        run_dir: Some(RunDir::new(&dir)),
        ..quiet(3, Schedule::Constant)
    };
    let err = fit(&mut t, &opts).unwrap_err();
    match &err {
        TrainError::Step {
            epoch,
            step,
            source,
        } => {
            assert_eq!((*epoch, *step), (2, 3));
            assert!(source.to_string().contains("training step 5"), "{source}");
        }
        other => panic!("expected a step error, got {other}"),
    }
    assert_eq!((weights(&t), momentum(&t)), t.before[5]);
    // Epoch 1 was saved; epoch 2, whose last step diverged, was not.
    let saved = RunDir::new(&dir).read_state().unwrap();
    assert_eq!(saved.epoch, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A guarded run saved after epoch 2, stopped by a non-finite step in epoch 3 and resumed gives
/// the uninterrupted guarded run's weights and optimizer state, bit for bit.
#[test]
fn a_guarded_run_resumes_bit_for_bit() {
    let dir = scratch("guard-resume");
    let mut straight = tiny(7, 3);
    straight.guarded = true;
    let all = fit(&mut straight, &quiet(4, Schedule::densenet())).unwrap();
    let mut first = tiny(7, 3);
    first.guarded = true;
    first.poison_at = Some(6);
    let two = FitOptions {
        run_dir: Some(RunDir::new(&dir)),
        ..quiet(4, Schedule::densenet())
    };
    assert!(fit(&mut first, &two).is_err());
    let mut resumed = tiny(99, 3);
    resumed.guarded = true;
    let opts = FitOptions {
        resume: true,
        ..two
    };
    let rest = fit(&mut resumed, &opts).unwrap();
    assert_eq!(rest.len(), 2);
    for (a, b) in all[2..].iter().zip(&rest) {
        assert_eq!((a.train_loss, a.eval), (b.train_loss, b.eval));
    }
    assert_eq!(
        (weights(&resumed), momentum(&resumed)),
        (weights(&straight), momentum(&straight))
    );
    let _ = std::fs::remove_dir_all(&dir);
}
