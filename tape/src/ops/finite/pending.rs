//! [`PendingScalar`]: the value of a one-element tensor on its way to the host, read without
//! stopping the host from queueing more work.
//!
//! On the CPU the value is already in host memory when the kernel that made it returns, and a
//! meta device holds no values (its scalars read as 0, so a meta anomaly flag is clear): both
//! are resolved when made. On CUDA, [`PendingScalar::start`] queues a device-to-host copy into
//! pinned host memory on the GPU's stream, after everything queued so far, and records an event
//! after it; [`PendingScalar::value`] waits on that event only if the copy is not done yet.
//! (The CUDA path compiles with `--features cuda` but has not run on a GPU yet.)
//!
//! Syncs ([`crate::counters`]): resolving a pending scalar counts one sync of its device only
//! when it had to wait for the device (a CUDA copy not yet complete); a value that was already
//! on the host (the CPU, meta, a completed copy) counts none. Making one counts none.

use crate::device::{Device, DeviceKind};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[cfg(feature = "cuda")]
use super::cuda::PendingCopy;

/// The value of a one-element tensor, copied to the host asynchronously: cheap to clone (the
/// clones share the copy and its result).
#[derive(Clone, Debug)]
pub struct PendingScalar {
    device: Device,
    state: Arc<Mutex<State>>,
}

/// Where the value is.
#[derive(Debug)]
enum State {
    /// On the host.
    Done(f64),
    /// On its way from a GPU.
    #[cfg(feature = "cuda")]
    Copying(PendingCopy),
}

impl PendingScalar {
    /// Starts reading the one-element tensor `t`: on the CPU and meta the value is taken now
    /// (no sync: it is already in host memory, or there is none), on CUDA an asynchronous copy
    /// is queued (no wait). Fails unless `t` has one element.
    pub fn start(t: &Tensor) -> Result<PendingScalar> {
        if t.numel() != 1 {
            return Err(Error::shape(
                "PendingScalar",
                format!("expected one element, got shape {:?}", t.shape()),
            ));
        }
        let state = if t.device().is_meta() {
            State::Done(0.0)
        } else if matches!(t.device().kind(), DeviceKind::Cpu) {
            State::Done(host_value(t)?)
        } else {
            start_copy(t)?
        };
        Ok(PendingScalar {
            device: t.device().clone(),
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// A value already on the host (for a check made synchronously), of `device`.
    pub fn ready(value: f64, device: &Device) -> PendingScalar {
        PendingScalar {
            device: device.clone(),
            state: Arc::new(Mutex::new(State::Done(value))),
        }
    }

    /// The device the value comes from.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the value is on the host, so that [`PendingScalar::value`] would not wait; never
    /// waits. A device error is an error.
    pub fn is_ready(&self) -> Result<bool> {
        match &*self.lock() {
            State::Done(_) => Ok(true),
            #[cfg(feature = "cuda")]
            State::Copying(c) => c.is_complete(),
        }
    }

    /// The value, waiting for the copy if it is not done yet (then one sync is counted on the
    /// device; none when it was already on the host). A meta tensor's value is 0.
    pub fn value(&self) -> Result<f64> {
        let mut state = self.lock();
        match &mut *state {
            State::Done(v) => Ok(*v),
            #[cfg(feature = "cuda")]
            State::Copying(c) => {
                let (v, waited) = c.finish()?;
                if waited {
                    self.device.counter_cells().device_read();
                }
                *state = State::Done(v);
                Ok(v)
            }
        }
    }

    /// Whether the value, read as an anomaly flag of [`super::non_finite`], is set (non-zero):
    /// [`PendingScalar::value`] `!= 0`.
    pub fn is_set(&self) -> Result<bool> {
        Ok(self.value()? != 0.0)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The value of a one-element CPU tensor, read from host memory (not a sync: no device waits).
fn host_value(t: &Tensor) -> Result<f64> {
    Ok(dispatch_scalar!(t.dtype(), T => crate::Scalar::f64(t.as_slice::<T>()?[0])))
}

/// Queues the copy of a GPU tensor's value.
#[cfg(feature = "cuda")]
fn start_copy(t: &Tensor) -> Result<State> {
    Ok(State::Copying(PendingCopy::start(t)?))
}

/// No GPU tensor exists in a build without CUDA.
#[cfg(not(feature = "cuda"))]
fn start_copy(t: &Tensor) -> Result<State> {
    Err(Error::invalid(
        "PendingScalar",
        format!("no asynchronous read from {} in this build", t.device()),
    ))
}
