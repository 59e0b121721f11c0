//! `harness`: what every model's benchmark shares, whatever the model. [`measure_steps`] times a
//! training step closure and reads the memory it took (the engine's accounting, the process's
//! peak RSS, a GPU's used bytes) and its work counts; [`CaseResult`] is one row of a benchmark
//! table (printed by [`print_case`], or as one JSON object per row); [`print_front`] prints the
//! planner's memory-vs-recompute front; [`open_device`] reads a `--device` flag (a size reads with
//! `checkpoint::parse_bytes`), [`cpu_label`] and [`device_label`] name the machine and [`exit_code`] ends a program
//! with its error ([`exit_or_abort`] every rank of a data-parallel run); [`DistCaseResult`] is a
//! rank's row of a data-parallel benchmark; [`Setting`] is an entry of a benchmark's
//! `--recompute` list; [`median`],
//! [`fitted_exponent`] and [`svg_chart`] summarise and draw.

mod dist_report;
mod dry_run;
mod measure;
mod report;
pub mod rss;
mod settings;
mod stats;
mod svg;

pub use dist_report::{print_dist_cases, DistCaseResult, StepCommStats};
pub use dry_run::{dry_run_line, dry_run_peaks};
pub use measure::{image_batch, measure_steps, profile_step, Measurement};
pub use report::{
    cpu_label, device_label, exit_code, exit_or_abort, open_device, open_device_with, print_case,
    print_front, print_header, print_memory_report, print_profile, rank_device, CaseResult,
};
pub use settings::Setting;
pub use stats::{fitted_exponent, median};
pub use svg::svg_chart;
