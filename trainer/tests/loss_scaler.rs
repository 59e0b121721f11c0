//! `fit` with a task that trains with a loss scaler ([`Task::loss_scaler`]): the scaler's state
//! is saved with the run and restored on resume (bit for bit the run it continues, scale and
//! growth tracker included); a clean run with a power-of-two scale trains bit for bit as the
//! same run without a scaler; a missing or corrupt scaler entry is a typed error.

use std::path::PathBuf;
use tape::nn::{self, Init, Linear, Module, StateError};
use tape::optim::{LossScaleError, LossScaler, LossScalerConfig, Optimizer, Sgd, SgdConfig};
use tape::{ops, DType, Device, Tape, Tensor};
use trainer::anomaly::AnomalyGuard;
use trainer::{fit, Eval, FitOptions, Queued, RunDir, ScalerStateError, Schedule, Task};
use trainer::{LossScalerRecord, TrainError};

mod common;

use common::{batches, TaskError};

struct Scaled {
    model: Linear,
    opt: Sgd,
    scaler: Option<LossScaler>,
    x: Vec<Tensor>,
    y: Vec<Vec<usize>>,
    /// Step indices whose loss is made infinite (an overflow the scaler skips).
    overflow_at: Vec<u64>,
    /// A step index that fails (to interrupt a run).
    fail_at: Option<u64>,
    /// Whether each step's update was applied, in order.
    applied: Vec<bool>,
}

fn scaled(seed: u64, scaler: Option<LossScalerConfig>) -> Scaled {
    let dev = Device::cpu();
    let mut init = Init::new(DType::F32, &dev, seed);
    let mut model = Linear::new(4, 3, &mut init).unwrap();
    nn::name_parameters(&mut model);
    let (x, y) = batches(DType::F32, &dev, 3);
    let opt = Sgd::new(SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        ..SgdConfig::default()
    })
    .unwrap();
    Scaled {
        model,
        opt,
        scaler: scaler.map(|c| LossScaler::new(c).unwrap()),
        x,
        y,
        overflow_at: Vec::new(),
        fail_at: None,
        applied: Vec::new(),
    }
}

impl Task for Scaled {
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
        _guard: &mut AnomalyGuard,
    ) -> Result<Queued, TaskError> {
        if self.fail_at == Some(index) {
            return Err(TaskError(format!("interrupted at step {index}")));
        }
        let b = (step + epoch) % self.x.len();
        let mut tape = Tape::recording();
        let logits = self.model.forward(&mut tape, &self.x[b])?;
        let mut loss = ops::cross_entropy(&mut tape, &logits, &self.y[b])?;
        if self.overflow_at.contains(&index) {
            loss = ops::scale(&mut tape, &loss, f64::INFINITY)?;
        }
        let params = &mut nn::parameters_mut(&mut self.model);
        let applied = match &mut self.scaler {
            Some(scaler) => {
                let mut grads = scaler.backward(tape, &loss)?;
                scaler.step(&mut self.opt, params, &mut grads)?
            }
            None => {
                let grads = tape.backward(&loss)?;
                self.opt.step(params, &grads)?;
                true
            }
        };
        self.applied.push(applied);
        Ok(Queued {
            loss,
            correct: None,
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
        serde_json::json!({ "model": "linear-f32" })
    }

    fn loss_scaler(&mut self) -> Option<&mut LossScaler> {
        self.scaler.as_mut()
    }
}

/// The weights and the momentum buffers, as bits.
fn bits(t: &Scaled) -> Vec<Vec<u64>> {
    let params = nn::parameters(&t.model);
    let mut out = tape::testing::parameter_bits(params.iter().copied());
    for (_, s) in t.opt.state_dict(&params) {
        out.push(s.to_f64_vec().iter().map(|v| v.to_bits()).collect());
    }
    out
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("trainer-scaler-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn quiet(epochs: usize) -> FitOptions {
    FitOptions {
        verbose: false,
        ..FitOptions::new(epochs, 0.1, Schedule::densenet())
    }
}

/// Growth every 2 clean steps from 2^10, overflows at steps 1 and 7.
fn config() -> LossScalerConfig {
    LossScalerConfig {
        init_scale: 1024.0,
        growth_interval: 2,
        ..LossScalerConfig::default()
    }
}

#[test]
fn clean_scaled_run_trains_as_the_unscaled_run() {
    let mut plain = scaled(3, None);
    let mut with = scaled(3, Some(LossScalerConfig::default()));
    let a = fit(&mut plain, &quiet(3)).unwrap();
    let b = fit(&mut with, &quiet(3)).unwrap();
    assert_eq!(bits(&plain), bits(&with));
    for (a, b) in a.iter().zip(&b) {
        assert_eq!((a.train_loss, a.eval), (b.train_loss, b.eval));
    }
    assert!(with.applied.iter().all(|&a| a));
    // 9 clean steps with an interval of 2000: no growth yet.
    let s = with.scaler.as_ref().unwrap();
    assert_eq!((s.scale(), s.growth_tracker()), (65536.0, 9));
}

#[test]
fn scaler_state_survives_save_and_resume() {
    let dir = scratch("resume");
    let overflows = vec![1, 7];
    let mut straight = scaled(7, Some(config()));
    straight.overflow_at = overflows.clone();
    let all = fit(&mut straight, &quiet(4)).unwrap();
    assert_eq!(straight.applied.iter().filter(|&&a| !a).count(), 2);

    let two = FitOptions {
        run_dir: Some(RunDir::new(&dir)),
        ..quiet(4)
    };
    let mut first = scaled(7, Some(config()));
    first.overflow_at = overflows.clone();
    first.fail_at = Some(6);
    assert!(fit(&mut first, &two).is_err());
    let saved = RunDir::new(&dir).read_state().unwrap();
    // Steps 0..6: clean, overflow (2^9, 0), clean, clean (2^10, 0), clean, clean (2^11, 0).
    let record = saved.loss_scaler.unwrap();
    assert_eq!((record.scale, record.growth_tracker), (2048.0, 0));
    assert_eq!(record, LossScalerRecord::of(first.scaler.as_ref().unwrap()));

    // A fresh process with another initial scale: the saved scaler wins.
    let mut resumed = scaled(99, Some(LossScalerConfig::default()));
    resumed.overflow_at = overflows;
    let opts = FitOptions {
        resume: true,
        ..two.clone()
    };
    let rest = fit(&mut resumed, &opts).unwrap();
    assert_eq!(rest.len(), 2);
    for (a, b) in all[2..].iter().zip(&rest) {
        assert_eq!((a.train_loss, a.eval), (b.train_loss, b.eval));
    }
    assert_eq!(bits(&resumed), bits(&straight));
    assert_eq!(resumed.scaler, straight.scaler);
    assert_eq!(resumed.applied, straight.applied[6..]);
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

/// Edits `key` of the `loss_scaler` entry of `dir`'s `state.json`.
fn edit_entry(dir: &RunDir, edit: impl FnOnce(&mut serde_json::Value)) {
    let text = std::fs::read_to_string(dir.state_file()).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut json);
    std::fs::write(dir.state_file(), serde_json::to_vec(&json).unwrap()).unwrap();
}

#[test]
fn missing_or_corrupt_scaler_entry_is_a_typed_error() {
    let path = scratch("corrupt");
    let dir = RunDir::new(&path);
    let save = |scaler: Option<LossScalerConfig>| {
        let _ = std::fs::remove_dir_all(&path);
        let mut t = scaled(5, scaler);
        let opts = FitOptions {
            run_dir: Some(dir.clone()),
            ..quiet(2)
        };
        t.fail_at = Some(3);
        assert!(fit(&mut t, &opts).is_err());
    };
    let resume = || {
        let mut t = scaled(5, Some(config()));
        let before = t.scaler.clone();
        let opts = FitOptions {
            run_dir: Some(dir.clone()),
            resume: true,
            ..quiet(2)
        };
        let e = fit(&mut t, &opts).unwrap_err();
        assert_eq!(t.scaler, before, "a refused entry changes nothing");
        e
    };
    // Saved without a scaler.
    save(None);
    match resume() {
        TrainError::LossScaler(ScalerStateError::Missing { .. }) => {}
        other => panic!("expected a missing entry, got {other}"),
    }
    // Saved with a disabled one.
    save(Some(LossScalerConfig {
        enabled: false,
        ..config()
    }));
    let e = resume();
    assert!(
        matches!(e, TrainError::LossScaler(ScalerStateError::Missing { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("no enabled loss scaler"), "{e}");
    // Out-of-range values.
    let cases: [(&str, serde_json::Value); 4] = [
        ("scale", serde_json::json!(-1.0)),
        ("growth_factor", serde_json::json!(0.5)),
        ("backoff_factor", serde_json::json!(1.5)),
        ("growth_interval", serde_json::json!(0)),
    ];
    for (key, value) in cases {
        save(Some(config()));
        edit_entry(&dir, |j| j["loss_scaler"][key] = value.clone());
        match resume() {
            TrainError::LossScaler(ScalerStateError::Bad { source, .. }) => {
                let config_field =
                    matches!(source, LossScaleError::Config { field, .. } if field == key);
                let state = key == "scale" && matches!(source, LossScaleError::State(_));
                assert!(config_field || state, "{key}: {source}");
            }
            other => panic!("{key}: expected a bad entry, got {other}"),
        }
    }
    // Not a number at all: the state file does not parse.
    save(Some(config()));
    edit_entry(&dir, |j| {
        j["loss_scaler"]["scale"] = serde_json::json!("big")
    });
    match resume() {
        TrainError::State(StateError::File { msg, .. }) => {
            assert!(msg.contains("not a run state file"), "{msg}")
        }
        other => panic!("expected an unreadable state file, got {other}"),
    }
    // A disabled scaler ignores the entry (as PyTorch's).
    save(None);
    let mut t = scaled(
        5,
        Some(LossScalerConfig {
            enabled: false,
            ..config()
        }),
    );
    let opts = FitOptions {
        run_dir: Some(dir.clone()),
        resume: true,
        ..quiet(2)
    };
    fit(&mut t, &opts).unwrap();
    let _ = std::fs::remove_dir_all(&path);
}
