//! Benchmark rows and how they print: a table for people, one JSON object per row for scripts.

use crate::Measurement;
use checkpoint::planner::FrontPoint;
use tape::Device;

/// One measured case: which model, mode, device and batch, and what was measured.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CaseResult {
    /// Model name (`densenet_bc_100_k12`, `resnet18_cifar`, `gpt_small`, ...).
    pub model: String,
    /// Recompute setting, as `checkpoint::Recompute` prints it (`naive`, `per-block`,
    /// `bottleneck`, `budget:480000000`, ...).
    pub mode: String,
    /// Precision policy (`f32`, `bf16`, `f16`: `tape::Precision`); `f32` in rows from before
    /// it was recorded.
    #[serde(default = "f32_name")]
    pub precision: String,
    /// Device name.
    pub device: String,
    /// Batch size.
    pub batch: usize,
    /// Square image size, for image models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<usize>,
    /// Sequence length, for sequence models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<usize>,
    /// Depth of the network (layers), where the model has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// The numbers.
    #[serde(flatten)]
    pub measured: Measurement,
}

fn f32_name() -> String {
    "f32".into()
}

impl CaseResult {
    /// The mode column of a table: the mode, and the precision when it is not `f32`.
    pub fn label(&self) -> String {
        match self.precision.as_str() {
            "f32" => self.mode.clone(),
            p => format!("{} {p}", self.mode),
        }
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The table header matching [`print_case`]'s rows on `device`: the third memory column is the
/// GPU's used bytes on a GPU, the process's peak RSS on the CPU; a meta device (no kernels run)
/// has no such column and no step time, but the engine's host time per step and per launch.
pub fn print_header(device: &Device) {
    if device.is_meta() {
        println!(
            "{:<22} {:<16} {:>5} {:>11} {:>7} {:>10} {:>9} {:>8} {:>7} {:>5}",
            "model",
            "mode",
            "batch",
            "peak(eng)",
            "x naive",
            "host ms",
            "us/launch",
            "launches",
            "allocs",
            "syncs"
        );
        return;
    }
    // On a GPU, the host's time to queue the step beside its completion time.
    let enqueue = if device.is_cuda() { "  enqueue s" } else { "" };
    println!(
        "{:<22} {:<16} {:>5} {:>11} {:>7} {:>12} {:>9} {:>7} {:>8} {:>7} {:>5}{enqueue}",
        "model",
        "mode",
        "batch",
        "peak(eng)",
        "x naive",
        if device.is_cuda() {
            "GPU used"
        } else {
            "peak RSS"
        },
        "median s",
        "x naive",
        "launches",
        "allocs",
        "syncs"
    );
}

/// One row: a table line (peak and time also as ratios to `baseline`, the naive row), or the
/// row as one JSON object when `json`.
pub fn print_case(r: &CaseResult, json: bool, baseline: Option<&CaseResult>) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let m = &r.measured;
    let (mem_ratio, time_ratio) = baseline
        .map(|b| {
            (
                m.peak_bytes as f64 / b.measured.peak_bytes as f64,
                m.median_s / b.measured.median_s,
            )
        })
        .unwrap_or((1.0, 1.0));
    if r.device.starts_with("meta") {
        let per_launch = m.median_s * 1e6 / m.launches.max(1) as f64;
        println!(
            "{:<22} {:<16} {:>5} {:>11} {:>7.3} {:>10.2} {:>9.2} {:>8} {:>7} {:>5}",
            r.model,
            r.label(),
            r.batch,
            mb(m.peak_bytes),
            mem_ratio,
            m.median_s * 1e3,
            per_launch,
            m.launches,
            m.allocs,
            m.syncs
        );
        return;
    }
    let enqueue = match r.device.starts_with("cuda") {
        true => format!(" {:>10.3}", m.median_enqueue_s),
        false => String::new(),
    };
    println!(
        "{:<22} {:<16} {:>5} {:>11} {:>7.3} {:>12} {:>9.3} {:>7.3} {:>8} {:>7} {:>5}{enqueue}",
        r.model,
        r.label(),
        r.batch,
        mb(m.peak_bytes),
        mem_ratio,
        m.device_used_bytes
            .or(m.rss_peak_bytes)
            .map(mb)
            .unwrap_or_else(|| "-".into()),
        m.median_s,
        time_ratio,
        m.launches,
        m.allocs,
        m.syncs
    );
}

/// One case's profile ([`tape::profile`]): a table, or one JSON object per row.
pub fn print_profile(model: &str, mode: &str, report: &tape::profile::Report, json: bool) {
    if !json {
        println!("profile of one {mode} step ({model}):\n{report}\n");
        return;
    }
    for row in &report.rows {
        println!(
            r#"{{"profile":"{model}","mode":"{mode}","op":"{}","pass":"{}","calls":{},"seconds":{:.6}}}"#,
            row.op, row.pass, row.calls, row.seconds
        );
    }
}

/// A memory report at a case's peak ([`tape::MemoryReport`]): its text (per-role totals, then
/// the `largest` entries) or, with `json`, one JSON object with the same content.
pub fn print_memory_report(
    model: &str,
    mode: &str,
    report: &tape::MemoryReport,
    largest: usize,
    json: bool,
) {
    if !json {
        println!(
            "memory at the peak of one {mode} step ({model}):\n{}",
            report.render(largest)
        );
        return;
    }
    let totals: serde_json::Map<String, serde_json::Value> = report
        .totals()
        .into_iter()
        .map(|(role, bytes)| (role.name().to_string(), bytes.into()))
        .collect();
    let entries: Vec<serde_json::Value> = report
        .largest(largest)
        .iter()
        .map(|e| {
            serde_json::json!({
                "role": e.role.name(),
                "scope": e.scope.as_deref(),
                "op": e.op,
                "shape": e.shape,
                "dtype": e.dtype.map(|d| format!("{d:?}").to_lowercase()),
                "bytes": e.bytes,
            })
        })
        .collect();
    let row = serde_json::json!({
        "memory_report": model,
        "mode": mode,
        "peak_bytes": report.peak_bytes,
        "peak_pass": report.phase.map(|(_, pass)| pass.to_string()),
        "peak_op": report.phase.map(|(op, _)| op),
        "peak_scope": report.phase_scope.as_deref(),
        "totals": totals,
        "largest": entries,
    });
    println!("{row}");
}

/// The planner's memory-vs-recompute front (the Pareto staircase: each point is the least
/// recompute for which the predicted peak fits), as a table or one JSON object per point.
pub fn print_front(model: &str, front: &[FrontPoint], json: bool) {
    if json {
        for p in front {
            println!(
                r#"{{"front":"{model}","peak_bytes":{},"extra_cost":{:.6},"recomputed_layers":{},"segments":{}}}"#,
                p.peak,
                p.extra_cost,
                p.recomputed_layers,
                p.plan.segments().len()
            );
        }
        return;
    }
    println!("planner front ({model}): predicted peak vs recompute");
    println!(
        "  {:>12} {:>12} {:>11} {:>9}",
        "peak", "extra cost", "recomputed", "segments"
    );
    for p in front {
        println!(
            "  {:>12} {:>12.4} {:>11} {:>9}",
            mb(p.peak),
            p.extra_cost,
            p.recomputed_layers,
            p.plan.segments().len()
        );
    }
}

/// A fresh device (its own memory accounting) of the kind a `--device` flag names: `cpu`,
/// `meta` (shapes and exact accounting, no values: [`Device::meta`]), `cuda` or `cuda:N` (a build with the `cuda` feature and an NVIDIA GPU); `tf32` allows
/// TF32 tensor-core math on the GPU (strict fp32 otherwise).
pub fn open_device(spec: &str, tf32: bool) -> Result<Device, String> {
    let options = tape::CudaOptions {
        tf32,
        ..tape::CudaOptions::default()
    };
    open_device_with(spec, options)
}

/// The device spec of this rank of a data-parallel run: plain `cuda` becomes `cuda:<local
/// rank>` (each process of a machine its own GPU) in a world of more than one; any other spec
/// stays as given.
pub fn rank_device(spec: &str, group: &dist::ProcessGroup) -> String {
    match (spec, group.world_size()) {
        ("cuda", n) if n > 1 => format!("cuda:{}", group.local_rank()),
        _ => spec.to_string(),
    }
}

/// [`open_device`] with every CUDA option given (ignored for `cpu`).
pub fn open_device_with(spec: &str, options: tape::CudaOptions) -> Result<Device, String> {
    match spec {
        "cpu" => return Ok(Device::cpu()),
        "meta" => return Ok(Device::meta()),
        _ => {}
    }
    let ordinal = match spec {
        "cuda" => 0,
        s => s
            .strip_prefix("cuda:")
            .and_then(|o| o.parse::<usize>().ok())
            .ok_or_else(|| format!("unknown device '{s}': use cpu, meta, cuda or cuda:N"))?,
    };
    Device::cuda_with(ordinal, options).map_err(|e| e.to_string())
}

/// The device a benchmark runs on, as its title line names it: the CPU's [`cpu_label`], a GPU
/// by its name, or a meta device, which runs no kernel.
pub fn device_label(device: &Device) -> String {
    if device.is_meta() {
        "meta device: shapes and exact accounting, no kernels run (times are host time)".into()
    } else if device.is_cuda() {
        device.to_string()
    } else {
        cpu_label()
    }
}

/// The CPU a benchmark runs on, as its title line names it: `"{threads} CPU threads, {level}
/// kernels"` (the level of [`tape::simd`] in force).
pub fn cpu_label() -> String {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{threads} CPU threads, {} kernels",
        tape::simd::simd_level()
    )
}

/// [`exit_code`] for one process of a data-parallel run: in a world of more than one, a failure
/// prints `rank R of N: error: <the error>` and ends every rank of the job at once
/// ([`dist::ProcessGroup::abort`], exit code 1), so that no rank waits for this one.
pub fn exit_or_abort<E: std::fmt::Display>(
    result: Result<(), E>,
    group: &dist::ProcessGroup,
) -> std::process::ExitCode {
    match result {
        Err(e) if group.world_size() > 1 => {
            eprintln!(
                "rank {} of {}: error: {e}",
                group.rank(),
                group.world_size()
            );
            group.abort(1)
        }
        other => exit_code(other),
    }
}

/// The exit code of a program whose work returned `result`: success, or failure after printing
/// `error: <the error>` to standard error.
pub fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
