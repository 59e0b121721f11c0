//! 2-d batch normalisation over NCHW tensors, with running statistics that a model borrowed
//! immutably can update ([`RunningStats`]). Training normalises with the batch statistics and
//! updates the running ones in the forward phase only (never while a checkpointed segment is
//! recomputed); eval normalises with the running statistics. Backward saves only `x`, the
//! per-channel mean and `invstd` and (for the input gradient) the weight.

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::param::assign_values;
use crate::tape::{Phase, Tape};
use crate::tensor::Tensor;
use cpu::{InputGradCoef, Layout};
use std::sync::{Mutex, MutexGuard, PoisonError};

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

const OP: &str = "batch_norm2d";

/// Options of [`batch_norm2d`] (PyTorch's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormOptions {
    /// Added to the variance before the square root (finite, `>= 0`).
    pub eps: f64,
    /// Weight of the new batch in the running statistics, in `[0, 1]`.
    pub momentum: f64,
}

impl Default for BatchNormOptions {
    fn default() -> Self {
        BatchNormOptions {
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

impl BatchNormOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(Error::invalid(
                OP,
                format!("eps must be finite and >= 0, got {}", self.eps),
            ));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::invalid(
                OP,
                format!("momentum must lie in [0, 1], got {}", self.momentum),
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
struct Stats {
    mean: Tensor,
    var: Tensor,
    num_batches_tracked: u64,
}

/// The running mean and variance of a batch norm (one value per channel) and the number of
/// batches folded into them. Updates go through a mutex, so a model borrowed immutably (by the
/// closures of a tape, say) can still update them.
#[derive(Debug)]
pub struct RunningStats {
    channels: usize,
    device: Device,
    stats: Mutex<Stats>,
}

impl Clone for RunningStats {
    fn clone(&self) -> Self {
        RunningStats {
            channels: self.channels,
            device: self.device.clone(),
            stats: Mutex::new(self.lock().clone()),
        }
    }
}

impl RunningStats {
    /// Running statistics of `channels` channels: mean 0, variance 1, no batch tracked.
    pub fn new(channels: usize, dtype: DType, device: &Device) -> Result<Self> {
        Ok(RunningStats {
            channels,
            device: device.clone(),
            stats: Mutex::new(Stats {
                mean: Tensor::zeros(&[channels], dtype, device)?,
                var: Tensor::ones(&[channels], dtype, device)?,
                num_batches_tracked: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The device holding the statistics.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The running mean, shape `[channels]` (a snapshot: later updates do not change it).
    pub fn mean(&self) -> Tensor {
        self.lock().mean.clone()
    }

    /// The running (unbiased) variance, shape `[channels]` (a snapshot).
    pub fn var(&self) -> Tensor {
        self.lock().var.clone()
    }

    /// Number of training batches folded into the statistics.
    pub fn num_batches_tracked(&self) -> u64 {
        self.lock().num_batches_tracked
    }

    /// Overwrites mean and variance (shape `[channels]` each, any dtype: converted), keeping
    /// the batch count; used by weight loading.
    pub fn set(&self, mean: &Tensor, var: &Tensor) -> Result<()> {
        for (name, t) in [("mean", mean), ("var", var)] {
            if t.shape() != [self.channels] {
                return Err(Error::shape(
                    "RunningStats::set",
                    format!(
                        "running {name} must have shape [{}], got {:?}",
                        self.channels,
                        t.shape()
                    ),
                ));
            }
        }
        let mut s = self.lock();
        assign_values(&mut s.mean, mean)?;
        assign_values(&mut s.var, var)
    }

    /// Sets the number of tracked batches (weight loading).
    pub fn set_num_batches_tracked(&self, n: u64) {
        self.lock().num_batches_tracked = n;
    }

    /// Folds a batch in: `r = (1 - m) * r + m * batch` for the mean and the unbiased variance.
    pub(crate) fn update(
        &self,
        batch_mean: &[f64],
        batch_var_unbiased: &[f64],
        momentum: f64,
    ) -> Result<()> {
        let mut guard = self.lock();
        let s = &mut *guard;
        for (t, batch) in [(&mut s.mean, batch_mean), (&mut s.var, batch_var_unbiased)] {
            dispatch_float!(t.dtype(), T => {
                for (r, &b) in t.make_mut::<T>()?.iter_mut().zip(batch) {
                    *r = <T as crate::Elem>::of((1.0 - momentum) * crate::Elem::f64(*r) + momentum * b);
                }
            });
        }
        s.num_batches_tracked += 1;
        Ok(())
    }
}

/// Checks that `weight` and `bias` have shape `[c]` and `x`'s dtype and device, and that
/// `running` has `c` channels on `x`'s device.
pub(crate) fn check_affine(
    op: &'static str,
    x: &Tensor,
    c: usize,
    weight: &Tensor,
    bias: &Tensor,
    running: &RunningStats,
) -> Result<()> {
    for (name, p) in [("weight", weight), ("bias", bias)] {
        super::check_vector(op, name, x, p, c)?;
    }
    if running.channels() != c {
        return Err(Error::shape(
            op,
            format!(
                "running statistics have {} channels, the input has {c}",
                running.channels()
            ),
        ));
    }
    x.device().check_same(running.device(), op)
}

/// One step's per-channel normalisation: `y = x * scale + shift`.
pub(crate) struct Normalization {
    /// The mean used (batch or running).
    pub(crate) mean: Vec<f64>,
    /// The unbiased batch variance, for the running update (empty in eval mode).
    pub(crate) unbiased: Vec<f64>,
    /// `1 / sqrt(var + eps)`.
    pub(crate) invstd: Vec<f64>,
    /// `weight * invstd`.
    pub(crate) scale: Vec<f64>,
    /// `bias - mean * scale`.
    pub(crate) shift: Vec<f64>,
}

/// The normalisation of a step: in training from `batch_stats` (per channel `(mean, biased
/// variance)` over `m` values each, which must exceed 1), in eval from `running`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn normalization(
    op: &'static str,
    training: bool,
    m: usize,
    running: &RunningStats,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    batch_stats: impl FnOnce() -> Result<Vec<(f64, f64)>>,
) -> Result<Normalization> {
    let (mean, var, unbiased) = if training {
        if m < 2 {
            return Err(Error::invalid(
                op,
                format!("training needs more than one value per channel, got {m}"),
            ));
        }
        let (mean, var): (Vec<f64>, Vec<f64>) = batch_stats()?.into_iter().unzip();
        let corr = m as f64 / (m - 1) as f64;
        let unbiased = var.iter().map(|v| v * corr).collect();
        (mean, var, unbiased)
    } else {
        (
            running.mean().try_to_f64_vec()?,
            running.var().try_to_f64_vec()?,
            Vec::new(),
        )
    };
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let scale: Vec<f64> = weight
        .try_to_f64_vec()?
        .iter()
        .zip(&invstd)
        .map(|(w, s)| w * s)
        .collect();
    let shift = bias
        .try_to_f64_vec()?
        .iter()
        .zip(scale.iter().zip(&mean))
        .map(|(b, (a, m))| b - m * a)
        .collect();
    Ok(Normalization {
        mean,
        unbiased,
        invstd,
        scale,
        shift,
    })
}

/// What the backward closure keeps: the input (when a gradient needs `xhat`), the per-channel
/// mean and `invstd` (`f64`, on the input's device) and the weight (for the input gradient).
struct Saved {
    x: Option<Tensor>,
    mean: Tensor,
    invstd: Tensor,
    weight: Option<Tensor>,
}

/// Batch normalisation of an NCHW `x` with per-channel `weight` and `bias` (shape `[C]`).
///
/// Training (`tape.is_training()`): normalises with the batch mean and biased variance over
/// `N*H*W` (which must exceed 1) and, in [`Phase::Forward`] only, updates `running` the PyTorch
/// way (unbiased variance, `momentum`) and counts the batch. Eval: normalises with `running`.
pub fn batch_norm2d(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: &RunningStats,
    opts: BatchNormOptions,
) -> Result<Tensor> {
    let [n, c, h, w] = x.dims4(OP)?;
    opts.validate()?;
    check_affine(OP, x, c, weight, bias, running)?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return cuda::batch_norm2d(tape, x, weight, bias, running, opts);
    }
    let l = Layout { n, c, hw: h * w };
    let training = tape.is_training();
    let update_running = training && tape.phase() == Phase::Forward;

    let Normalization {
        mean,
        unbiased,
        invstd,
        scale,
        shift,
    } = normalization(
        OP,
        training,
        l.count(),
        running,
        weight,
        bias,
        opts.eps,
        || Ok(dispatch_float!(x.dtype(), T => cpu::channel_stats::<T>(x.as_slice::<T>()?, l))),
    )?;
    let out = dispatch_float!(x.dtype(), T => Tensor::from_vec(cpu::affine::<T>(x.as_slice::<T>()?, l, &scale, &shift), x.shape(), x.device()))?;

    let saved = if tape.needs_grad(&[x, weight, bias]) {
        let needs_xhat = weight.requires_grad() || (training && x.requires_grad());
        Some(Saved {
            x: needs_xhat.then(|| x.clone()),
            mean: Tensor::from_vec(mean.clone(), &[c], x.device())?,
            invstd: Tensor::from_vec(invstd, &[c], x.device())?,
            weight: x.requires_grad().then(|| weight.clone()),
        })
    } else {
        None
    };
    if update_running {
        running.update(&mean, &unbiased, opts.momentum)?;
    }
    let keys = [GradKey::of(x), GradKey::of(weight), GradKey::of(bias)];
    Ok(tape.record(&[x, weight, bias], out, move |g, grads| {
        let saved = saved.ok_or_else(|| Error::Backward("batch_norm2d saved nothing".into()))?;
        backward(g, grads, &keys, saved, l, training)
    }))
}

/// The gradients of `x`, `weight` and `bias` from the output gradient `g`.
fn backward(
    g: &Tensor,
    grads: &mut crate::Gradients,
    [kx, kw, kb]: &[GradKey; 3],
    saved: Saved,
    l: Layout,
    training: bool,
) -> Result<()> {
    if g.shape() != kx.shape() {
        return Err(Error::Backward(format!(
            "batch_norm2d: gradient of shape {:?} does not fit the output",
            g.shape()
        )));
    }
    let (mean, invstd) = (saved.mean.to_f64_vec(), saved.invstd.to_f64_vec());
    let need_sums = kw.requires_grad() || kb.requires_grad() || training;
    let sums = if !need_sums {
        Vec::new()
    } else {
        dispatch_float!(g.dtype(), T => {
        let xs = match &saved.x {
            Some(x) => Some(x.as_slice::<T>()?),
            None => None,
        };
        cpu::grad_sums::<T>(g.as_slice::<T>()?, xs, l, &mean, &invstd)
        })
    };
    let (sum_g, sum_gx): (Vec<f64>, Vec<f64>) = sums.into_iter().unzip();
    let c = [l.c];
    if kw.requires_grad() {
        grads.accumulate(kw, Tensor::from_f64(&sum_gx, &c, g.dtype(), g.device())?)?;
    }
    if kb.requires_grad() {
        grads.accumulate(kb, Tensor::from_f64(&sum_g, &c, g.dtype(), g.device())?)?;
    }
    if !kx.requires_grad() {
        return Ok(());
    }
    let missing =
        || Error::Backward("batch_norm2d did not save what the input gradient needs".into());
    let weight = saved.weight.as_ref().ok_or_else(missing)?.to_f64_vec();
    let scale: Vec<f64> = weight.iter().zip(&invstd).map(|(w, s)| w * s).collect();
    let gx = if training {
        let x = saved.x.as_ref().ok_or_else(missing)?;
        let m = l.count() as f64;
        let coef: Vec<InputGradCoef> = (0..l.c)
            .map(|ch| InputGradCoef {
                scale: scale[ch],
                mean: mean[ch],
                invstd: invstd[ch],
                mean_g: sum_g[ch] / m,
                mean_gx: sum_gx[ch] / m,
            })
            .collect();
        dispatch_float!(g.dtype(), T => {
            let v = cpu::train_grad_input::<T>(g.as_slice::<T>()?, x.as_slice::<T>()?, l, &coef);
            Tensor::from_vec(v, g.shape(), g.device())
        })?
    } else {
        let zero = vec![0.0; l.c];
        dispatch_float!(g.dtype(), T => Tensor::from_vec(cpu::affine::<T>(g.as_slice::<T>()?, l, &scale, &zero), g.shape(), g.device()))?
    };
    grads.accumulate(kx, gx)
}
