//! DenseNet's benchmark cases on the shared [`harness`]: one fp32 model (trained under a
//! precision policy: `f32`, or 16-bit activations), the seed's SGD and a random batch, measured ([`measure_training_step`]), profiled ([`profile_training_step`]) or
//! explained ([`explain_training_step`]: what is alive at the peak, and why).

use crate::CaseSetting;
use densenet::train::{
    seed_sgd_config, train_step, train_step_ddp, train_step_queued, StepOptions,
};
use densenet::{DenseNet, DenseNetConfig, Result};
use dist::{Ddp, DdpOptions, ProcessGroup};
use harness::CaseResult;
use harness::StepCommStats;
use tape::optim::{Optimizer, Sgd};
use tape::{DType, Device, MemoryReport, Role, Tensor};
use trainer::anomaly::AnomalyGuard;

/// The model (fp32, seed 0), the seed's SGD, one input batch and its labels of a benchmark case.
fn setup(
    dev: &Device,
    config: &DenseNetConfig,
    setting: CaseSetting,
    batch: usize,
    image: usize,
) -> Result<(DenseNet, Sgd, Tensor, Vec<usize>)> {
    let model = DenseNet::new(config.clone(), DType::F32, dev, 0)?
        .with_recompute(setting.mode)?
        .with_precision(setting.precision);
    let opt = Sgd::new(seed_sgd_config())?;
    let (x, labels) =
        harness::image_batch(dev, batch, config.in_channels, image, config.num_classes)?;
    Ok((model, opt, x, labels))
}

/// Profiles one SGD training step of `config` in `setting` on `dev` (after one unprofiled warm-up
/// step): time per op kind and pass ([`tape::profile`]).
pub fn profile_training_step(
    dev: &Device,
    config: &DenseNetConfig,
    setting: CaseSetting,
    batch: usize,
    image: usize,
) -> Result<tape::profile::Report> {
    let (mut model, mut opt, x, labels) = setup(dev, config, setting, batch, image)?;
    harness::profile_step(dev, |i| {
        train_step(&mut model, &mut opt, &x, &labels, i).map(|_| ())
    })
}

/// What was alive at the peak of one SGD training step of `config` in `setting` on `dev` (after one
/// warm-up step), with the parameters, their gradients and the optimizer's state named: the
/// device records its buffers from before the model is made.
pub fn explain_training_step(
    dev: &Device,
    config: &DenseNetConfig,
    setting: CaseSetting,
    batch: usize,
    image: usize,
) -> Result<MemoryReport> {
    dev.memory().start_recording();
    let (mut model, mut opt, x, labels) = setup(dev, config, setting, batch, image)?;
    train_step(&mut model, &mut opt, &x, &labels, 0)?;
    dev.synchronize()?;
    dev.memory().reset_peak();
    let out = train_step(&mut model, &mut opt, &x, &labels, 1)?;
    let mut report = dev.memory().report().ok_or_else(|| {
        tape::Error::Backward("the device stopped recording during the step".into())
    })?;
    dev.memory().stop_recording();
    let params = model.parameters();
    report.classify(
        params.iter().map(|p| (p.name(), p.tensor())),
        Role::Parameter,
    );
    let grads = params
        .iter()
        .filter_map(|p| Some((p.name(), out.grads.get(p.tensor())?)));
    report.classify(grads, Role::ParameterGradient);
    let state = opt.state_dict(&params);
    report.classify(
        state.iter().map(|(n, t)| (n.as_str(), t)),
        Role::OptimizerState,
    );
    Ok(report)
}

/// Measures `iters` SGD training steps (after `warmup` unmeasured ones) of `config` in `setting` on
/// `dev` (pass a fresh device, e.g. `Device::cpu()`, so the accounting holds this case alone).
/// The steps check for non-finite values as a training loop does ([`train_step_queued`]: no
/// host sync per step), the last one after the measured steps.
#[allow(clippy::too_many_arguments)]
pub fn measure_training_step(
    dev: &Device,
    name: &str,
    config: &DenseNetConfig,
    setting: CaseSetting,
    batch: usize,
    image: usize,
    warmup: usize,
    iters: usize,
) -> Result<CaseResult> {
    let (mut model, mut opt, x, labels) = setup(dev, config, setting, batch, image)?;
    // The training loop's queued anomaly check: no host sync per step; the last step's flag is
    // checked after the measured steps.
    let mut guard = AnomalyGuard::new();
    let measured = harness::measure_steps(dev, warmup, iters, |i| {
        let options = StepOptions::new(i, i);
        train_step_queued(&mut model, &mut opt, &mut guard, &x, &labels, options).map(|_| ())
    })?;
    guard.finish(&model)?;
    Ok(CaseResult {
        model: name.to_string(),
        mode: setting.mode.to_string(),
        precision: setting.precision.to_string(),
        device: dev.to_string(),
        batch,
        image: Some(image),
        seq_len: None,
        depth: Some(config.depth()),
        measured,
    })
}

/// [`measure_training_step`] on one rank of a data-parallel run over `group` (every rank calls
/// it): `batch` images per process, gradients averaged in buckets ([`Ddp`]), the anomaly check
/// global. Also returns the step's communication, averaged over the measured steps. The
/// gradient buckets' host staging buffers (the size of the parameters) are outside the
/// engine's accounting.
#[allow(clippy::too_many_arguments)]
pub fn measure_training_step_ddp(
    dev: &Device,
    name: &str,
    config: &DenseNetConfig,
    setting: CaseSetting,
    batch: usize,
    image: usize,
    warmup: usize,
    iters: usize,
    group: &ProcessGroup,
    options: DdpOptions,
) -> Result<(CaseResult, StepCommStats)> {
    let (mut model, mut opt, x, labels) = setup(dev, config, setting, batch, image)?;
    let ddp = Ddp::new(group.clone(), &mut model, options)?;
    let mut comms = Vec::new();
    let measured = harness::measure_steps(dev, warmup, iters, |i| {
        let options = StepOptions::new(i, i);
        train_step_ddp(&mut model, &mut opt, &x, &labels, options, &ddp)?;
        if i as usize >= warmup {
            comms.push(ddp.last_step());
        }
        Ok::<(), densenet::DenseNetError>(())
    })?;
    let case = CaseResult {
        model: name.to_string(),
        mode: setting.mode.to_string(),
        precision: setting.precision.to_string(),
        device: dev.to_string(),
        batch,
        image: Some(image),
        seq_len: None,
        depth: Some(config.depth()),
        measured,
    };
    Ok((case, StepCommStats::mean(&comms)))
}
