//! ResNet's benchmark cases on the shared [`harness`]: one fp32 model, SGD and a random batch,
//! measured per [`Recompute`] setting ([`measure_training_step`]), and the planner's front for the
//! same step ([`planner_front`]).

use crate::CaseSetting;
use checkpoint::planner::{FrontPoint, PlanOptions};
use dist::{Ddp, DdpOptions, ProcessGroup};
use harness::CaseResult;
use harness::StepCommStats;
use resnet::train::{sgd_config, train_step, train_step_ddp, train_step_queued};
use resnet::{Recompute, ResNet, ResNetConfig, Result};
use tape::optim::Sgd;
use tape::{DType, Device, Tensor};
use trainer::anomaly::AnomalyGuard;

/// Steps run before the measured ones: the first makes the optimizer's state, the second the
/// budget plan for a device that holds it.
pub const WARMUP: usize = 2;

/// The model (fp32, seed 0), SGD, one input batch and its labels of a benchmark case.
fn setup(
    dev: &Device,
    config: &ResNetConfig,
    setting: CaseSetting,
    batch: usize,
    image: usize,
) -> Result<(ResNet, Sgd, Tensor, Vec<usize>)> {
    let model = ResNet::new(config.clone(), DType::F32, dev, 0)?
        .with_recompute(setting.mode)?
        .with_precision(setting.precision);
    let opt = Sgd::new(sgd_config())?;
    let (x, labels) =
        harness::image_batch(dev, batch, config.in_channels, image, config.num_classes)?;
    Ok((model, opt, x, labels))
}

/// Profiles one SGD training step of `config` under `setting` on `dev` (after one unprofiled
/// warm-up step): time per op kind and pass ([`tape::profile`]).
pub fn profile_training_step(
    dev: &Device,
    config: &ResNetConfig,
    setting: CaseSetting,
    batch: usize,
    image: usize,
) -> Result<tape::profile::Report> {
    let (mut model, mut opt, x, labels) = setup(dev, config, setting, batch, image)?;
    harness::profile_step(dev, |i| {
        train_step(&mut model, &mut opt, &x, &labels, i).map(|_| ())
    })
}

/// Measures `iters` SGD training steps (after [`WARMUP`] unmeasured ones) of `config` under
/// `setting` on `dev` (pass a fresh device so that its accounting holds this case alone).
pub fn measure_training_step(
    dev: &Device,
    config: &ResNetConfig,
    setting: CaseSetting,
    batch: usize,
    image: usize,
    iters: usize,
) -> Result<CaseResult> {
    let (mut model, mut opt, x, labels) = setup(dev, config, setting, batch, image)?;
    // The training loop's queued anomaly check: no host sync per step; the last step's flag is
    // checked after the measured steps.
    let mut guard = AnomalyGuard::new();
    let measured = harness::measure_steps(dev, WARMUP, iters, |i| {
        train_step_queued(&mut model, &mut opt, &mut guard, &x, &labels, i).map(|_| ())
    })?;
    guard.finish(&model)?;
    Ok(CaseResult {
        model: config.name(),
        mode: setting.mode.to_string(),
        precision: setting.precision.to_string(),
        device: dev.to_string(),
        batch,
        image: Some(image),
        seq_len: None,
        depth: Some(config.depth),
        measured,
    })
}

/// [`measure_training_step`] on one rank of a data-parallel run over `group` (every rank calls
/// it): `batch` images per process, gradients averaged in buckets ([`Ddp`] with `options`), the
/// anomaly check global; also the step's communication, averaged over the measured steps.
pub fn measure_training_step_ddp(
    dev: &Device,
    config: &ResNetConfig,
    setting: CaseSetting,
    (batch, image, iters): (usize, usize, usize),
    group: &ProcessGroup,
    options: DdpOptions,
) -> Result<(CaseResult, StepCommStats)> {
    let (mut model, mut opt, x, labels) = setup(dev, config, setting, batch, image)?;
    let ddp = Ddp::new(group.clone(), &mut model, options)?;
    let mut comms = Vec::new();
    let measured = harness::measure_steps(dev, WARMUP, iters, |i| {
        train_step_ddp(&mut model, &mut opt, &x, &labels, i, &ddp)?;
        if i as usize >= WARMUP {
            comms.push(ddp.last_step());
        }
        Ok::<(), resnet::ResNetError>(())
    })?;
    let case = CaseResult {
        model: config.name(),
        mode: setting.mode.to_string(),
        precision: setting.precision.to_string(),
        device: dev.to_string(),
        batch,
        image: Some(image),
        seq_len: None,
        depth: Some(config.depth),
        measured,
    };
    Ok((case, StepCommStats::mean(&comms)))
}

/// The planner's memory-vs-recompute front for a training step of `config` on `dev` (after one
/// step, so that the optimizer's state counts in what the device holds): predicted peak (device
/// bytes in all) against extra forward cost (seconds, measured in the dry run).
pub fn planner_front(
    dev: &Device,
    config: &ResNetConfig,
    batch: usize,
    image: usize,
) -> Result<Vec<FrontPoint>> {
    let (mut model, mut opt, x, labels) = setup(
        dev,
        config,
        CaseSetting::f32(Recompute::Naive),
        batch,
        image,
    )?;
    train_step(&mut model, &mut opt, &x, &labels, 0)?;
    let chain = model.runner().chain_model(&x)?;
    Ok(chain.front(PlanOptions::default())?)
}
