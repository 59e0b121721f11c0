//! [`Progress`]: an epoch's progress as a bar on a terminal, or as plain lines elsewhere.

use indicatif::{ProgressBar, ProgressStyle};

/// An epoch's progress: a bar when the output is a terminal; otherwise (a log file, CI) a line
/// at every tenth of the epoch.
pub struct Progress {
    bar: ProgressBar,
    label: String,
    total: u64,
    log_every: u64,
    steps: u64,
}

impl Progress {
    /// Progress over `total` samples in `steps` steps, labelled `label` (`epoch 3/300`).
    pub fn new(label: String, total: u64, steps: u64) -> Self {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.clone());
        Progress {
            bar,
            label,
            total,
            log_every: steps.div_ceil(10).max(1),
            steps,
        }
    }

    /// Step `step` (0-based) done, `samples` of them, with a status message.
    pub fn step(&self, step: u64, samples: u64, seen: u64, msg: &str) {
        self.bar.inc(samples);
        if self.bar.is_hidden()
            && ((step + 1).is_multiple_of(self.log_every) || step + 1 == self.steps)
        {
            println!("  {} [{seen}/{}] {msg}", self.label, self.total);
        }
        self.bar.set_message(msg.to_string());
    }

    /// Removes the bar (the epoch's summary line follows).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Leaves the bar where it stopped (an error follows).
    pub fn abandon(&self) {
        self.bar.abandon();
    }
}
