//! `--device meta` on a training program: a dry run. A meta device charges exactly the bytes the
//! CPU would without computing anything, so one training step and one evaluation batch say how
//! much memory the run needs in milliseconds; training itself needs values and does not start.

use tape::Device;

/// The peak bytes of `train` (one training step of the program's state `s`) and then of `eval`
/// (one evaluation batch) on `device`, each measured from what the device holds when it starts
/// (the model; for the evaluation also the gradients and optimizer state the step left).
pub fn dry_run_peaks<S, E>(
    device: &Device,
    s: &mut S,
    train: impl FnOnce(&mut S) -> Result<(), E>,
    eval: impl FnOnce(&mut S) -> Result<(), E>,
) -> Result<(usize, usize), E> {
    let memory = device.memory();
    memory.reset_peak();
    train(s)?;
    let train_peak = memory.peak();
    memory.reset_peak();
    eval(s)?;
    Ok((train_peak, memory.peak()))
}

/// What a training program prints after a dry run.
pub fn dry_run_line(train_peak: usize, eval_peak: usize) -> String {
    format!(
        "meta device (shapes and exact accounting, no values): one training step peaks at {:.1} MB, \
         one evaluation batch at {:.1} MB; training needs values, so it stops here",
        train_peak as f64 / 1e6,
        eval_peak as f64 / 1e6
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tape::{DType, Tensor};

    /// Each phase's peak counts what the device held when it started plus what it allocated,
    /// not the other phase's transient bytes.
    #[test]
    fn each_phase_peaks_from_what_it_starts_with() -> tape::Result<()> {
        let dev = Device::meta();
        let _model = Tensor::zeros(&[1000], DType::F32, &dev)?;
        let (train, eval) = dry_run_peaks(
            &dev,
            &mut (),
            |_| Tensor::zeros(&[500], DType::F32, &dev).map(drop),
            |_| Tensor::zeros(&[250], DType::F32, &dev).map(drop),
        )?;
        assert_eq!((train, eval), (4000 + 2000, 4000 + 1000));
        Ok(())
    }
}
