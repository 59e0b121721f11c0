//! Dynamic loss scaling for low-precision training: [`LossScaler`], with the semantics of
//! PyTorch's `torch.amp.GradScaler`.
//!
//! Gradients of a low-precision (f16) model underflow to zero where the loss's gradient is
//! small. A loss scaler multiplies the loss's gradient by a large *scale* before backward (the
//! backward is seeded with `scale` instead of 1, so every gradient arrives multiplied by it),
//! divides the gradients by the scale again before the update, and adapts the scale: a step
//! whose gradients overflowed (an inf or a NaN after unscaling) skips its update and multiplies
//! the scale by `backoff_factor`; after `growth_interval` clean steps in a row the scale is
//! multiplied by `growth_factor`. One step, as [`LossScaler::backward`] and
//! [`LossScaler::step`] run it:
//!
//! 1. backward seeded with `scale` ([`LossScaler::backward`], or [`LossScaler::seed`] for a
//!    caller that runs its own backward);
//! 2. every parameter's gradient multiplied by `1 / scale`, rounded to f32 as PyTorch's
//!    `unscale_` does ([`LossScaler::unscale`], with the existing [`crate::ops::scale`] op);
//! 3. the finiteness flag of [`crate::ops::non_finite`] over the unscaled gradients, and the
//!    update conditional on it on the device ([`Optimizer::step_if_finite`]): a skipped update
//!    leaves the parameters and the optimizer state as they were, bit for bit;
//! 4. the scale and the growth tracker updated on the host ([`LossScaler::update`]), as
//!    PyTorch's `_amp_update_scale_` does: on an overflow the scale is multiplied by
//!    `backoff_factor` and the tracker reset to 0; on a clean step the tracker is incremented,
//!    and when it reaches `growth_interval` the scale is multiplied by `growth_factor` (only if
//!    the result is finite in f32: the scale never grows to inf) and the tracker reset to 0.
//!
//! The scale is an f32 value held on the host as an f64 (every update rounds it to f32, as
//! PyTorch's f32 scale tensor does). With a power-of-two scale (the defaults keep it one)
//! scaling and unscaling are exact in binary floating point, so a clean step updates the
//! parameters bit for bit as the same step without a scaler would (short of gradients that
//! overflow or become subnormal in between).
//!
//! **Host sync.** The scale lives on the host, so [`LossScaler::step`] reads the step's flag
//! there to update it: one blocking host sync per step when a scaler is used (the flag that
//! [`Optimizer::step_if_finite`] reads). PyTorch avoids it by keeping the scale and the
//! tracker on the device and updating them with a one-thread kernel; doing the same here (a
//! device-side scale, the seed and the unscale reading it on the device) is a possible
//! follow-up.
//!
//! **Low-precision dtypes.** The unscale runs the [`crate::ops::scale`] kernel of the
//! gradients' dtype with the factor `1 / scale` (an f32 value); a low-precision dtype's kernel
//! must multiply in f32 and round once (as PyTorch does), since `1 / scale` may not be
//! representable in f16.
//!
//! A disabled scaler ([`LossScalerConfig::enabled`] false) is a no-op: backward is seeded with
//! 1, nothing is unscaled or checked, and [`LossScaler::step`] is [`Optimizer::step`].

use super::Optimizer;
use crate::error::{Error, Result};
use crate::gradients::Gradients;
use crate::param::Parameter;
use crate::tape::Tape;
use crate::tensor::{Tensor, TensorId};
use crate::DType;

/// The settings of a [`LossScaler`]: PyTorch's `GradScaler` arguments and defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScalerConfig {
    /// The scale of the first step (default 65536 = 2^16).
    pub init_scale: f64,
    /// What the scale is multiplied by after `growth_interval` clean steps in a row (default
    /// 2; must be finite and > 1).
    pub growth_factor: f64,
    /// What the scale is multiplied by after a step whose gradients overflowed (default 0.5;
    /// must be > 0 and < 1).
    pub backoff_factor: f64,
    /// Clean steps in a row before the scale grows (default 2000; at least 1).
    pub growth_interval: u64,
    /// Whether the scaler scales at all (default true): a disabled scaler is a no-op.
    pub enabled: bool,
}

impl Default for LossScalerConfig {
    fn default() -> Self {
        LossScalerConfig {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            enabled: true,
        }
    }
}

impl LossScalerConfig {
    /// Checks the settings: `init_scale` finite and > 0 (and finite as an f32),
    /// `growth_factor` finite and > 1, `backoff_factor` > 0 and < 1, `growth_interval` >= 1.
    /// A disabled config is checked too (a bad setting is a bug even when unused).
    pub fn validate(&self) -> std::result::Result<(), LossScaleError> {
        let bad = |field: &'static str, value: f64, requirement: &'static str| {
            Err(LossScaleError::Config {
                field,
                value,
                requirement,
            })
        };
        let init = self.init_scale;
        if !(init.is_finite() && init > 0.0 && (init as f32).is_finite() && init as f32 > 0.0) {
            return bad("init_scale", init, "finite and > 0 as an f32");
        }
        let g = self.growth_factor;
        if !(g.is_finite() && g > 1.0) {
            return bad("growth_factor", g, "finite and > 1");
        }
        let b = self.backoff_factor;
        if !(b > 0.0 && b < 1.0) {
            return bad("backoff_factor", b, "> 0 and < 1");
        }
        if self.growth_interval == 0 {
            return bad("growth_interval", 0.0, "at least 1");
        }
        Ok(())
    }
}

/// What a [`LossScaler`] carries from step to step, for checkpoints: the scale and the growth
/// tracker (PyTorch's `scale` and `_growth_tracker` of `GradScaler.state_dict`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScalerState {
    /// The current scale (an f32 value, finite and >= 0).
    pub scale: f64,
    /// Clean steps in a row since the scale last changed or the last overflow (below
    /// `growth_interval`).
    pub growth_tracker: u64,
}

/// What a [`LossScaler`] refuses: bad settings or a bad saved state.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LossScaleError {
    /// A setting of [`LossScalerConfig`] out of range.
    #[error("loss scaler: {field} must be {requirement}, got {value}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Its value (as an f64).
        value: f64,
        /// What it must be.
        requirement: &'static str,
    },
    /// A state for [`LossScaler::load_state`] that this scaler cannot hold.
    #[error("loss scaler state: {0}")]
    State(String),
}

impl From<LossScaleError> for Error {
    fn from(e: LossScaleError) -> Self {
        Error::invalid("LossScaler", e.to_string())
    }
}

/// Dynamic loss scaling (see the [module docs](self)): seeds backward with the scale, unscales
/// the gradients, skips the update of a step whose gradients overflowed and adapts the scale,
/// as PyTorch's `torch.amp.GradScaler` does.
///
/// ```
/// use tape::optim::{LossScaler, LossScalerConfig, Optimizer, Sgd, SgdConfig};
/// use tape::{ops, Device, Parameter, Tape, Tensor};
///
/// let dev = Device::cpu();
/// let mut w = Parameter::new("w", Tensor::from_vec(vec![1.0f32, -2.0], &[2], &dev)?);
/// let mut opt = Sgd::new(SgdConfig { lr: 0.1, ..SgdConfig::default() })?;
/// let mut scaler = LossScaler::new(LossScalerConfig::default())?;
///
/// let mut tape = Tape::recording();
/// let ww = ops::mul(&mut tape, w.tensor(), w.tensor())?;
/// let loss = ops::sum(&mut tape, &ww)?;
/// let mut grads = scaler.backward(tape, &loss)?; // gradients times 65536
/// let applied = scaler.step(&mut opt, &mut [&mut w], &mut grads)?;
/// assert!(applied); // finite gradients: the update was applied
/// assert_eq!(scaler.scale(), 65536.0);
/// assert_eq!(scaler.growth_tracker(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    config: LossScalerConfig,
    state: LossScalerState,
}

impl LossScaler {
    /// A scaler with `config` (checked: [`LossScalerConfig::validate`]), at its initial scale
    /// (rounded to f32) with the growth tracker at 0.
    pub fn new(config: LossScalerConfig) -> std::result::Result<Self, LossScaleError> {
        config.validate()?;
        Ok(LossScaler {
            config,
            state: LossScalerState {
                scale: f64::from(config.init_scale as f32),
                growth_tracker: 0,
            },
        })
    }

    /// A disabled scaler (a no-op), with the default settings otherwise.
    pub fn disabled() -> Self {
        let config = LossScalerConfig {
            enabled: false,
            ..LossScalerConfig::default()
        };
        LossScaler {
            config,
            state: LossScalerState {
                scale: config.init_scale,
                growth_tracker: 0,
            },
        }
    }

    /// The settings.
    pub fn config(&self) -> &LossScalerConfig {
        &self.config
    }

    /// Whether the scaler scales ([`LossScalerConfig::enabled`]).
    pub fn is_enabled(&self) -> bool {
        self.config.enabled
    }

    /// The scale backward is seeded with: the current scale, or 1 when disabled (as PyTorch's
    /// `get_scale`).
    pub fn scale(&self) -> f64 {
        if self.config.enabled {
            self.state.scale
        } else {
            1.0
        }
    }

    /// Clean steps in a row since the scale last changed or the last overflow.
    pub fn growth_tracker(&self) -> u64 {
        self.state.growth_tracker
    }

    /// The state to save with a checkpoint (the scale and the growth tracker; the settings are
    /// [`LossScaler::config`]).
    pub fn state(&self) -> LossScalerState {
        self.state
    }

    /// Restores a state saved by [`LossScaler::state`]: fails, changing nothing, unless the
    /// scale is finite and >= 0 as an f32 (0 is where a run that overflows on every step ends
    /// up, as in PyTorch) and the tracker is below `growth_interval`.
    pub fn load_state(
        &mut self,
        state: LossScalerState,
    ) -> std::result::Result<(), LossScaleError> {
        let s = state.scale;
        if !(s.is_finite() && s >= 0.0 && (s as f32).is_finite()) {
            return Err(LossScaleError::State(format!(
                "the scale must be finite and >= 0 as an f32, got {s}"
            )));
        }
        if state.growth_tracker >= self.config.growth_interval {
            return Err(LossScaleError::State(format!(
                "the growth tracker must be below the growth interval {}, got {}",
                self.config.growth_interval, state.growth_tracker
            )));
        }
        self.state = LossScalerState {
            scale: f64::from(s as f32),
            growth_tracker: state.growth_tracker,
        };
        Ok(())
    }

    /// The gradient to seed backward from `loss` with: `loss`'s shape, dtype and device, every
    /// element [`LossScaler::scale`] (1 when disabled).
    pub fn seed(&self, loss: &Tensor) -> Result<Tensor> {
        Tensor::full(loss.shape(), self.scale(), loss.dtype(), loss.device())
    }

    /// Backpropagates from the scalar `loss` seeded with [`LossScaler::seed`]: every gradient
    /// arrives multiplied by the scale. A disabled scaler runs [`Tape::backward`].
    pub fn backward(&self, tape: Tape, loss: &Tensor) -> Result<Gradients> {
        if !self.config.enabled {
            return tape.backward(loss);
        }
        if loss.numel() != 1 {
            return Err(Error::Backward(format!(
                "the loss must have one element, got shape {:?}",
                loss.shape()
            )));
        }
        tape.backward_from(loss, self.seed(loss)?)
    }

    /// The factor [`LossScaler::unscale`] multiplies by: `1 / scale` computed in f64 and rounded
    /// to f32 (PyTorch's `scale.double().reciprocal().float()`).
    pub fn inv_scale(&self) -> f64 {
        f64::from((1.0 / self.scale()) as f32)
    }

    /// Divides the gradient of every parameter in `params` (the others are left alone) by the
    /// scale, in place in `grads` (one gradient at a time, so at most one extra gradient is
    /// held): each multiplied by [`LossScaler::inv_scale`] with [`crate::ops::scale`]. Nothing
    /// is checked here ([`LossScaler::step`] checks the unscaled gradients). A disabled scaler
    /// changes nothing.
    pub fn unscale(&self, params: &[&mut Parameter], grads: &mut Gradients) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        let inv = self.inv_scale();
        let mut tape = Tape::no_grad();
        for p in params {
            let id = p.tensor().id();
            let Some(g) = grads.take(id) else { continue };
            let unscaled = crate::ops::scale(&mut tape, &g, inv)?;
            drop(g);
            grads.accumulate_id(id, unscaled)?;
        }
        Ok(())
    }

    /// One optimizer update with loss scaling, from the gradients of a backward seeded with
    /// the scale ([`LossScaler::backward`]): unscales `grads` in place
    /// ([`LossScaler::unscale`]), makes the finiteness flag of the unscaled gradients of
    /// `params` ([`crate::ops::non_finite`]; one flag per gradient dtype), runs
    /// `optimizer`'s [`Optimizer::step_if_finite`] with it (the device skips the update if the
    /// flag is set; the flag is read on the host once: one blocking sync) and updates the scale
    /// ([`LossScaler::update`]). Returns whether the update was applied; a skipped update
    /// (an overflow) is not an error: the parameters and the optimizer state are as they were
    /// and the scale backs off. With no gradient for any of `params`, the (empty) update counts
    /// as clean.
    ///
    /// A disabled scaler runs [`Optimizer::step`] and returns `true`.
    pub fn step(
        &mut self,
        optimizer: &mut dyn Optimizer,
        params: &mut [&mut Parameter],
        grads: &mut Gradients,
    ) -> Result<bool> {
        if !self.config.enabled {
            optimizer.step(params, grads)?;
            return Ok(true);
        }
        self.unscale(params, grads)?;
        let Some(flag) = found_inf(params, grads)? else {
            optimizer.step(params, grads)?;
            self.update(false);
            return Ok(true);
        };
        let applied = optimizer.step_if_finite(params, grads, &flag)?;
        self.update(!applied);
        Ok(applied)
    }

    /// Updates the scale after a step, as PyTorch's `_amp_update_scale_`: with `found_inf`
    /// the scale is multiplied by `backoff_factor` (rounded to f32) and the growth tracker
    /// reset to 0; otherwise the tracker is incremented, and when it reaches `growth_interval`
    /// the scale is multiplied by `growth_factor` (rounded to f32, and kept unchanged if that
    /// is not finite) and the tracker reset to 0. [`LossScaler::step`] calls it; a caller that
    /// runs its own check calls it once per step. A disabled scaler changes nothing.
    pub fn update(&mut self, found_inf: bool) {
        if !self.config.enabled {
            return;
        }
        let s = &mut self.state;
        if found_inf {
            s.scale = f64::from((s.scale * self.config.backoff_factor) as f32);
            s.growth_tracker = 0;
            return;
        }
        let successful = s.growth_tracker + 1;
        if successful >= self.config.growth_interval {
            let grown = (s.scale * self.config.growth_factor) as f32;
            if grown.is_finite() {
                s.scale = f64::from(grown);
            }
            s.growth_tracker = 0;
        } else {
            s.growth_tracker = successful;
        }
    }
}

/// The finiteness flag of the gradients of `params` in `grads`: `None` without any gradient;
/// one [`crate::ops::non_finite`] call when they share a dtype, otherwise one per dtype, read
/// on the host and combined into a flag of the first dtype.
fn found_inf(params: &[&mut Parameter], grads: &Gradients) -> Result<Option<Tensor>> {
    let ids: Vec<TensorId> = params.iter().map(|p| p.tensor().id()).collect();
    let gs: Vec<&Tensor> = ids.iter().filter_map(|id| grads.get_id(*id)).collect();
    let Some(first) = gs.first() else {
        return Ok(None);
    };
    let mut dtypes: Vec<DType> = Vec::new();
    for g in &gs {
        if !dtypes.contains(&g.dtype()) {
            dtypes.push(g.dtype());
        }
    }
    if dtypes.len() == 1 {
        return crate::ops::non_finite(&gs).map(Some);
    }
    let mut any = false;
    for dtype in dtypes {
        let group: Vec<&Tensor> = gs.iter().copied().filter(|g| g.dtype() == dtype).collect();
        any |= crate::ops::flag_is_set(&crate::ops::non_finite(&group)?)?;
    }
    Tensor::full(
        &[1],
        f64::from(u8::from(any)),
        first.dtype(),
        first.device(),
    )
    .map(Some)
}
