//! [`measure_steps`]: one benchmark case's numbers from a training-step closure.

use crate::{median, rss};
use std::time::Instant;
use tape::Device;

/// What [`measure_steps`] read over the measured steps.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Measurement {
    /// Peak bytes of the engine's accounting over the measured steps (parameters, optimizer
    /// state, activations, gradients, workspaces).
    pub peak_bytes: u64,
    /// The process's peak resident set over the measured steps, if the OS tells (none on a
    /// meta device, which holds nothing).
    pub rss_peak_bytes: Option<u64>,
    /// On a GPU: bytes in use on the whole GPU after the measured steps, as `cuMemGetInfo` tells
    /// (total - free: includes the CUDA context, library workspaces and the memory pool's cached
    /// blocks, so it is at least the pool's high-water mark). Absent on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_used_bytes: Option<u64>,
    /// Bytes the device's allocator holds after the steps, in use or cached for reuse (the host
    /// cache on the CPU, the memory pool on a GPU; `None` where it cannot say).
    pub reserved_bytes: Option<u64>,
    /// Median seconds per step (on a meta device: the engine's host time alone, no kernel
    /// running).
    pub median_s: f64,
    /// Median seconds until the step's work was queued, before waiting for the device: equal
    /// to `median_s` on the CPU; on a GPU, a host-bound step shows it close to `median_s`.
    #[serde(default)]
    pub median_enqueue_s: f64,
    /// Kernel launches of one step (the last measured one; steady-state steps count the same):
    /// one per engine kernel call, counted the same way on every device.
    pub launches: u64,
    /// Buffers allocated by one step.
    pub allocs: u64,
    /// Host synchronisations (reads of tensor values back to the host) of one step.
    pub syncs: u64,
    /// Every measured step time.
    pub times_s: Vec<f64>,
}

/// Runs `step(i)` for `warmup` unmeasured steps, then `iters` (at least one) measured ones, each
/// timed to its completion on `dev` (the device is synchronised), with the engine's peak and the
/// process's peak RSS restarted before them. Pass a fresh device (e.g. `Device::cpu()`) whose
/// accounting holds this case alone: the model, its optimizer state and its batch.
pub fn measure_steps<E: From<tape::Error>>(
    dev: &Device,
    warmup: usize,
    iters: usize,
    mut step: impl FnMut(u64) -> Result<(), E>,
) -> Result<Measurement, E> {
    for i in 0..warmup {
        step(i as u64)?;
    }
    dev.synchronize()?;
    dev.memory().reset_peak();
    let rss_ok = rss::reset_peak();
    let mut times = Vec::with_capacity(iters);
    let mut enqueued = Vec::with_capacity(iters);
    let mut counts = tape::Counters::default();
    for i in 0..iters.max(1) {
        let t0 = Instant::now();
        let before = dev.counters();
        step((warmup + i) as u64)?;
        counts = dev.counters().since(before);
        enqueued.push(t0.elapsed().as_secs_f64());
        dev.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    let device_used_bytes = dev
        .mem_get_info()?
        .map(|(free, total)| total.saturating_sub(free) as u64);
    Ok(Measurement {
        peak_bytes: dev.memory().peak() as u64,
        rss_peak_bytes: if rss_ok && !dev.is_meta() {
            rss::peak_bytes()
        } else {
            None
        },
        device_used_bytes,
        reserved_bytes: dev.reserved_bytes().map(|b| b as u64),
        median_s: median(&times),
        median_enqueue_s: median(&enqueued),
        launches: counts.launches,
        allocs: counts.allocs,
        syncs: counts.syncs,
        times_s: times,
    })
}

/// Profiles one training step: `step(0)` runs unprofiled (the warm-up: optimizer state,
/// plans), then `step(1)` under [`tape::profile`] (time per op kind and pass), the device
/// synchronised before and after it.
pub fn profile_step<E: From<tape::Error>>(
    dev: &Device,
    mut step: impl FnMut(u64) -> Result<(), E>,
) -> Result<tape::profile::Report, E> {
    step(0)?;
    dev.synchronize()?;
    tape::profile::start();
    let profiled = step(1);
    dev.synchronize()?;
    let report = tape::profile::finish();
    profiled?;
    report.ok_or_else(|| {
        tape::Error::Backward("the profiler was stopped during the step".into()).into()
    })
}

/// A benchmark's input: `batch` random fp32 images of `channels` x `image` x `image` (seed 1)
/// on `dev` and their labels `0, 1, ..` cycling through `classes`.
pub fn image_batch(
    dev: &Device,
    batch: usize,
    channels: usize,
    image: usize,
    classes: usize,
) -> tape::Result<(tape::Tensor, Vec<usize>)> {
    let x = tape::Tensor::randn(&[batch, channels, image, image], tape::DType::F32, dev, 1)?;
    let labels = (0..batch).map(|i| i % classes.max(1)).collect();
    Ok((x, labels))
}

#[cfg(test)]
mod tests {
    use super::profile_step;
    use tape::profile::Pass;
    use tape::{ops, DType, Device, Tape, Tensor};

    /// A "step" of `relu` calls on a recording tape: one call at warm-up, two when profiled.
    fn relu_step(dev: &Device, i: u64) -> tape::Result<()> {
        let x = Tensor::randn(&[64], DType::F32, dev, 1)?;
        let mut tape = Tape::recording();
        for _ in 0..=i {
            ops::relu(&mut tape, &x)?;
        }
        Ok(())
    }

    #[test]
    fn profile_step_profiles_the_second_step_only() {
        let dev = Device::cpu();
        let report = profile_step(&dev, |i| relu_step(&dev, i)).unwrap();
        assert_eq!(report.calls("relu", Pass::Forward), 2);
        assert!(!tape::profile::is_active(), "the profiler is stopped");
    }

    #[test]
    fn profile_step_returns_a_failing_steps_error_and_stops_the_profiler() {
        let dev = Device::cpu();
        let failing = |i: u64| -> tape::Result<()> {
            match i {
                0 => Ok(()),
                _ => Err(tape::Error::invalid("step", "injected")),
            }
        };
        let err = profile_step(&dev, failing).unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert!(!tape::profile::is_active());
    }
}
