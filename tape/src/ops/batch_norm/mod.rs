//! 2-d batch normalisation over NCHW tensors, with running statistics that a model borrowed
//! immutably can update ([`RunningStats`]). Training normalises with the batch statistics and
//! updates the running ones in the forward phase only (never while a checkpointed segment is
//! recomputed); eval normalises with the running statistics. Backward saves only `x`, the
//! per-channel mean and `invstd` and (for the input gradient) the weight.

use super::checks::check_grad;
use super::widen::{narrow, wide, wide_for, wide_opt, wide_opt_for};
use crate::backend::{kernel_trait, kernels};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::param::assign_values;
use crate::tape::{Phase, Tape};
use crate::tensor::Tensor;
use std::sync::{Mutex, MutexGuard, PoisonError};

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub(crate) mod kept;
pub(crate) mod meta;
pub(crate) mod sync;

use kept::{BatchPlan, KeptBatches};
use std::sync::Arc;
use sync::SyncBn;
pub use sync::{BatchStatsReducer, SyncPass};

const OP: &str = "batch_norm2d";

/// The per-channel statistics a batch norm's backward reads: the mean used and
/// `invstd = 1 / sqrt(var + eps)`, `C` values each.
#[derive(Clone, Debug)]
pub(crate) enum BnStats {
    /// Computed on the host (the CPU, and a meta device as the CPU would): one `[2, C]` `f64`
    /// buffer, the means then the `invstd`s.
    Host(Tensor),
    /// cuDNN's: two `[C]` buffers of the data's dtype.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Device { mean: Tensor, invstd: Tensor },
}

impl BnStats {
    /// Host statistics from per-channel `mean` and `invstd`, in one buffer on `device`.
    pub(crate) fn host(mut mean: Vec<f64>, invstd: Vec<f64>, device: &Device) -> Result<Self> {
        let c = mean.len();
        mean.extend(invstd);
        Ok(BnStats::Host(Tensor::from_vec(mean, &[2, c], device)?))
    }

    /// `(mean, invstd)` as host values.
    pub(crate) fn values(&self) -> Result<(Vec<f64>, Vec<f64>)> {
        match self {
            BnStats::Host(t) => {
                let mut mean = t.try_to_f64_vec()?;
                let invstd = mean.split_off(mean.len() / 2);
                Ok((mean, invstd))
            }
            BnStats::Device { mean, invstd } => {
                Ok((mean.try_to_f64_vec()?, invstd.try_to_f64_vec()?))
            }
        }
    }

    /// cuDNN's `(mean, invstd)` buffers.
    #[cfg(feature = "cuda")]
    pub(crate) fn on_device(&self) -> Result<(&Tensor, &Tensor)> {
        match self {
            BnStats::Device { mean, invstd } => Ok((mean, invstd)),
            BnStats::Host(_) => Err(Error::Backward(
                "batch norm statistics made on the host reached a GPU kernel (engine bug)".into(),
            )),
        }
    }
}

/// The arguments of a batch-norm forward kernel (checked by the caller).
pub(crate) struct BnForward<'a> {
    pub(crate) x: &'a Tensor,
    pub(crate) weight: &'a Tensor,
    pub(crate) bias: &'a Tensor,
    pub(crate) running: &'a RunningStats,
    pub(crate) opts: BatchNormOptions,
    /// Batch statistics (training) or the running ones (eval).
    pub(crate) training: bool,
    /// Fold the batch into `running` (training, forward phase only).
    pub(crate) update_running: bool,
    /// Return the statistics backward needs.
    pub(crate) want_stats: bool,
    /// The batch statistics to normalise with, kept by the first pass of a recomputed segment
    /// (training, recompute phase): no statistics pass, the first pass's output bit for bit.
    pub(crate) given: Option<&'a BnStats>,
}

/// The arguments of a batch-norm backward kernel.
pub(crate) struct BnBackward<'a> {
    /// The output gradient.
    pub(crate) g: &'a Tensor,
    /// The input, when a gradient needs `xhat`.
    pub(crate) x: Option<&'a Tensor>,
    /// The weight, when the input gradient is wanted.
    pub(crate) weight: Option<&'a Tensor>,
    pub(crate) stats: &'a BnStats,
    pub(crate) training: bool,
    /// The forward pass's `eps` (cuDNN asks for it again).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) eps: f64,
    /// Which gradients are wanted: input, weight, bias.
    pub(crate) want: [bool; 3],
    /// A synchronised batch norm's reducer (training): the input gradient's sums are global.
    pub(crate) sync: Option<&'a dyn BatchStatsReducer>,
}

/// The gradients of a batch norm's input, weight and bias (each when wanted).
pub(crate) type BnGrads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

kernel_trait! {
    /// Device kernels of batch normalisation.
    pub(crate) trait BatchNormKernels {
        /// The normalised output and, when asked, the statistics backward needs.
        fn batch_norm_forward(&self, a: &BnForward<'_>) -> Result<(Tensor, Option<BnStats>)>;
        /// The wanted gradients from the output gradient.
        fn batch_norm_backward(&self, a: &BnBackward<'_>) -> Result<BnGrads>;
    }
}

/// Fails unless training has more than one value per channel (`m` of them).
pub(crate) fn check_batch(op: &'static str, training: bool, m: usize) -> Result<()> {
    if training && m < 2 {
        return Err(Error::invalid(
            op,
            format!("training needs more than one value per channel, got {m}"),
        ));
    }
    Ok(())
}

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
///
/// A layer can be synchronised ([`RunningStats::set_sync`]): in training its batch statistics
/// are then those of the global batch of a data-parallel group (see [`BatchStatsReducer`]).
#[derive(Debug)]
pub struct RunningStats {
    channels: usize,
    device: Device,
    stats: Mutex<Stats>,
    sync: Mutex<Option<Arc<SyncBn>>>,
    /// Batch statistics kept for a recompute.
    kept: KeptBatches,
}

impl Clone for RunningStats {
    fn clone(&self) -> Self {
        RunningStats {
            channels: self.channels,
            device: self.device.clone(),
            stats: Mutex::new(self.lock().clone()),
            sync: Mutex::new(self.sync()),
            kept: KeptBatches::default(),
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
            sync: Mutex::new(None),
            kept: KeptBatches::default(),
        })
    }

    /// Synchronises the layer's training statistics over a data-parallel group through
    /// `reducer` (PyTorch's `SyncBatchNorm`), or with `None` goes back to each process's own
    /// batch. A checkpointed segment's recompute normalises with the global statistics its first
    /// pass kept, so it communicates nothing. Supported on the CPU; a CUDA
    /// tensor fails with a typed error.
    pub fn set_sync(&self, reducer: Option<Arc<dyn BatchStatsReducer>>) {
        *self.sync.lock().unwrap_or_else(PoisonError::into_inner) =
            reducer.map(|r| Arc::new(SyncBn::new(r)));
    }

    /// Whether the layer's training statistics are synchronised ([`RunningStats::set_sync`]).
    pub fn is_synced(&self) -> bool {
        self.sync().is_some()
    }

    /// What a call of this layer on `tape` does with batch statistics kept for a recompute
    /// ([`kept`]; a synchronised layer keeps them whatever the tape's context says).
    pub(crate) fn batch_plan(&self, tape: &mut Tape, training: bool) -> BatchPlan {
        self.kept.plan(tape, training, self.is_synced())
    }

    /// Keeps `stats` for the recompute when `plan` says to.
    pub(crate) fn keep_batch(&self, plan: &BatchPlan, stats: Option<&BnStats>) {
        self.kept.conclude(plan, stats);
    }

    pub(crate) fn sync(&self) -> Option<Arc<SyncBn>> {
        self.sync
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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

    /// What an update does to the statistics' buffers without values (a meta device): each
    /// made unique for writing, a shared one copied first.
    pub(crate) fn touch(&self) -> Result<()> {
        let mut guard = self.lock();
        let s = &mut *guard;
        s.mean.buffer_mut()?;
        s.var.buffer_mut()?;
        s.num_batches_tracked += 1;
        Ok(())
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
                    *r = <T as crate::Scalar>::of((1.0 - momentum) * crate::Scalar::f64(*r) + momentum * b);
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
        super::checks::check_param(op, name, x, p, c)?;
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

/// Fails for a synchronised layer training on a device whose kernels cannot synchronise yet
/// (CUDA); the CPU synchronises, a meta device (no values) normalises as usual.
pub(crate) fn check_sync(
    op: &'static str,
    training: bool,
    x: &Tensor,
    running: &RunningStats,
) -> Result<()> {
    if training && x.device().is_cuda() && running.is_synced() {
        return Err(Error::invalid(
            op,
            "synchronised batch norm (--sync-bn) is not supported on cuda yet; train without \
             it (each process normalises its own shard) or on the CPU",
        ));
    }
    Ok(())
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

impl Normalization {
    /// After a host-computed forward pass: folds the batch into `running` when `update_running`,
    /// and returns the statistics backward needs (as `f64` tensors on `device`) when asked.
    pub(crate) fn conclude(
        self,
        running: &RunningStats,
        update_running: bool,
        momentum: f64,
        want_stats: bool,
        device: &Device,
    ) -> Result<Option<BnStats>> {
        if update_running {
            running.update(&self.mean, &self.unbiased, momentum)?;
        }
        if !want_stats {
            return Ok(None);
        }
        Ok(Some(BnStats::host(self.mean, self.invstd, device)?))
    }
}

/// What a host (CPU) forward kernel normalises with: in training each channel's own batch
/// statistics (with these affine parameters and `eps`), in eval a normalisation from the running
/// statistics.
pub(crate) enum HostNorm<'a> {
    /// Training: per-channel weight, bias and `eps`.
    Batch(&'a [f64], &'a [f64], f64),
    /// Eval: the running statistics' scale and shift.
    Running(&'a Normalization),
}

/// The shared part of the CPU forward kernels of batch norm and the fused op: `run` normalises
/// (with [`HostNorm`]) over `m` values per channel and returns the output and, in training,
/// each channel's `(mean, biased variance)`; then the running statistics are updated (training,
/// forward phase) and the statistics backward needs are returned when asked.
///
/// A synchronised layer ([`RunningStats::set_sync`]) in training normalises with the global
/// batch's statistics instead, from the local per-channel sums that `sums` gives (`None`: of
/// `x`; `Some(mean)`: of `(x - mean)^2`).
///
/// With `given` statistics (a recompute's, [`kept`]) it normalises with them: no statistics
/// pass, no reduction, the same scale and shift per channel as the pass that computed them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn host_forward(
    weight: &Tensor,
    bias: &Tensor,
    running: &RunningStats,
    opts: BatchNormOptions,
    (training, update_running, want_stats): (bool, bool, bool),
    given: Option<&BnStats>,
    m: usize,
    device: &Device,
    sums: impl Fn(Option<&[f64]>) -> Result<Vec<f64>>,
    run: impl FnOnce(HostNorm<'_>) -> Result<(Tensor, Vec<(f64, f64)>)>,
) -> Result<(Tensor, Option<BnStats>)> {
    let (w, b) = (weight.try_to_f64_vec()?, bias.try_to_f64_vec()?);
    let eps = opts.eps;
    if let Some(given) = given {
        let norm = Normalization::from_saved(given, &w, &b)?;
        let (out, _) = run(HostNorm::Running(&norm))?;
        return Ok((out, want_stats.then(|| given.clone())));
    }
    let sync = running.sync().filter(|_| training);
    let (out, norm) = if let Some(sync) = sync {
        let g = sync.moments(OP, m, sums)?;
        let norm = Normalization::from_global(g, &w, &b, eps);
        let (out, _) = run(HostNorm::Running(&norm))?;
        (out, norm)
    } else if training {
        let (out, stats) = run(HostNorm::Batch(&w, &b, eps))?;
        (out, Normalization::from_batch(stats, m, &w, &b, eps))
    } else {
        let norm = Normalization::from_running(running, &w, &b, eps)?;
        let (out, _) = run(HostNorm::Running(&norm))?;
        (out, norm)
    };
    let stats = norm.conclude(running, update_running, opts.momentum, want_stats, device)?;
    Ok((out, stats))
}

/// `(invstd, scale, shift)` of one channel with mean `mean` and variance `var`:
/// `invstd = 1 / sqrt(var + eps)`, `scale = weight * invstd`, `shift = bias - mean * scale`.
pub(crate) fn channel_affine(mean: f64, var: f64, weight: f64, bias: f64, eps: f64) -> [f64; 3] {
    let invstd = 1.0 / (var + eps).sqrt();
    let scale = weight * invstd;
    [invstd, scale, bias - mean * scale]
}

impl Normalization {
    /// A training step's normalisation from per-channel batch statistics `(mean, biased
    /// variance)` over `m > 1` values each.
    pub(crate) fn from_batch(
        stats: Vec<(f64, f64)>,
        m: usize,
        weight: &[f64],
        bias: &[f64],
        eps: f64,
    ) -> Self {
        let (mean, var): (Vec<f64>, Vec<f64>) = stats.into_iter().unzip();
        let corr = m as f64 / (m.max(2) - 1) as f64;
        let unbiased = var.iter().map(|v| v * corr).collect();
        Self::from_moments(mean, &var, unbiased, weight, bias, eps)
    }

    /// A synchronised training step's normalisation, from the global batch's moments (the
    /// unbiased variance over the global count, as [`Normalization::from_batch`] takes it).
    pub(crate) fn from_global(
        g: sync::GlobalMoments,
        weight: &[f64],
        bias: &[f64],
        eps: f64,
    ) -> Self {
        let corr = g.count / (g.count.max(2.0) - 1.0);
        let unbiased = g.var.iter().map(|v| v * corr).collect();
        Self::from_moments(g.mean, &g.var, unbiased, weight, bias, eps)
    }

    /// A recompute's normalisation from the statistics its first pass kept: the scale and
    /// shift [`channel_affine`] computed there, from the same mean and `invstd`.
    pub(crate) fn from_saved(stats: &BnStats, weight: &[f64], bias: &[f64]) -> Result<Self> {
        let (mean, invstd) = stats.values()?;
        let scale: Vec<f64> = weight.iter().zip(&invstd).map(|(w, i)| w * i).collect();
        let shift = (0..mean.len())
            .map(|ch| bias[ch] - mean[ch] * scale[ch])
            .collect();
        Ok(Normalization {
            mean,
            unbiased: Vec::new(),
            invstd,
            scale,
            shift,
        })
    }

    /// An eval step's normalisation, from the running statistics.
    pub(crate) fn from_running(
        running: &RunningStats,
        weight: &[f64],
        bias: &[f64],
        eps: f64,
    ) -> Result<Self> {
        let (mean, var) = (
            running.mean().try_to_f64_vec()?,
            running.var().try_to_f64_vec()?,
        );
        Ok(Self::from_moments(
            mean,
            &var,
            Vec::new(),
            weight,
            bias,
            eps,
        ))
    }

    fn from_moments(
        mean: Vec<f64>,
        var: &[f64],
        unbiased: Vec<f64>,
        weight: &[f64],
        bias: &[f64],
        eps: f64,
    ) -> Self {
        let per: Vec<[f64; 3]> = (0..mean.len())
            .map(|ch| channel_affine(mean[ch], var[ch], weight[ch], bias[ch], eps))
            .collect();
        Normalization {
            invstd: per.iter().map(|p| p[0]).collect(),
            scale: per.iter().map(|p| p[1]).collect(),
            shift: per.iter().map(|p| p[2]).collect(),
            mean,
            unbiased,
        }
    }
}

/// What the backward closure keeps, on every device: the input (when a gradient needs `xhat`),
/// the per-channel statistics and the weight (for the input gradient).
struct Saved {
    x: Option<Tensor>,
    stats: BnStats,
    weight: Option<Tensor>,
    /// A synchronised layer's reducer (training only).
    sync: Option<Arc<dyn BatchStatsReducer>>,
}

/// Batch normalisation of an NCHW `x` with per-channel `weight` and `bias` (shape `[C]`).
///
/// Training (`tape.is_training()`): normalises with the batch mean and biased variance over
/// `N*H*W` (which must exceed 1) and, in [`Phase::Forward`] only, updates `running` the PyTorch
/// way (unbiased variance, `momentum`) and counts the batch. Eval: normalises with `running`.
/// A synchronised layer ([`RunningStats::set_sync`]) trains with the global batch's statistics,
/// reduced once in the forward pass and reused by a recompute.
pub fn batch_norm2d(
    tape: &mut Tape,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: &RunningStats,
    opts: BatchNormOptions,
) -> Result<Tensor> {
    let _profile = tape.profile_op(OP);
    let [n, c, h, w] = x.dims4(OP)?;
    opts.validate()?;
    check_affine(OP, x, c, weight, bias, running)?;
    let training = tape.is_training();
    check_batch(OP, training, n * h * w)?;
    check_sync(OP, training, x, running)?;
    let record = tape.needs_grad(&[x, weight, bias]);
    let k = kernels(x.device())?;
    let batch = running.batch_plan(tape, training);
    // 16-bit x as it is where the kernels take it (cuDNN: f32 parameters), else an f32 copy.
    let (wx, ww, wb) = (wide_for(&k, x)?, wide(weight)?, wide(bias)?);
    let (out, stats) = k.batch_norm_forward(&BnForward {
        x: &wx,
        weight: &ww,
        bias: &wb,
        running,
        opts,
        training,
        update_running: training && tape.phase() == Phase::Forward,
        want_stats: record || batch.keep,
        given: batch.given.as_ref(),
    })?;
    let out = narrow(out, x.dtype())?;
    let dtypes = [x.dtype(), weight.dtype(), bias.dtype()];
    running.keep_batch(&batch, stats.as_ref());
    let saved = match stats {
        Some(stats) if record => {
            let needs_xhat = weight.requires_grad() || (training && x.requires_grad());
            Some(Saved {
                x: needs_xhat.then(|| x.clone()),
                stats,
                weight: x.requires_grad().then(|| weight.clone()),
                sync: running.sync().filter(|_| training).map(|s| s.reducer()),
            })
        }
        _ => None,
    };
    let keys = [GradKey::of(x), GradKey::of(weight), GradKey::of(bias)];
    Ok(tape.record(OP, &[x, weight, bias], out, move |g, grads| {
        let saved = saved.ok_or_else(|| Error::Backward("batch_norm2d saved nothing".into()))?;
        check_grad(OP, g, keys[0].shape(), saved.x.as_ref())?;
        if g.dtype() != dtypes[0] {
            return Err(Error::Backward(format!(
                "batch_norm2d: output gradient of dtype {:?}, expected {:?}",
                g.dtype(),
                dtypes[0]
            )));
        }
        let want = [0, 1, 2].map(|i| keys[i].requires_grad());
        let missing =
            || Error::Backward("batch_norm2d did not save what the gradients need".into());
        if (want[1] && saved.x.is_none()) || (want[0] && saved.weight.is_none()) {
            return Err(missing());
        }
        if want[0] && training && saved.x.is_none() {
            return Err(missing());
        }
        let (wg, wx) = (wide_for(&k, g)?, wide_opt_for(&k, saved.x.as_ref())?);
        let ww = wide_opt(saved.weight.as_ref())?;
        let (gx, gw, gb) = k.batch_norm_backward(&BnBackward {
            g: &wg,
            x: wx.as_deref(),
            weight: ww.as_deref(),
            stats: &saved.stats,
            training,
            eps: opts.eps,
            want,
            sync: saved.sync.as_deref(),
        })?;
        for ((key, grad), dtype) in keys.iter().zip([gx, gw, gb]).zip(dtypes) {
            if let Some(grad) = grad {
                grads.accumulate(key, narrow(grad, dtype)?)?;
            }
        }
        Ok(())
    }))
}
