//! Measurement helpers shared by the benchmark example and the criterion bench: one training
//! step's peak bytes (the engine's accounting, with the process's peak RSS beside it, and on a
//! GPU the driver's used bytes), median time and work counts (kernel launches, allocations,
//! host syncs: [`tape::counters`]), the fitted growth exponent of memory against depth, and an
//! SVG chart.

use crate::config::{DenseNetConfig, Efficiency};
use crate::error::Result;
use crate::model::DenseNet;
use crate::train::{seed_sgd_config, train_step};
use std::time::Instant;
use tape::optim::Sgd;
use tape::{DType, Device, Tensor};

/// One measured case.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseResult {
    /// Model name (`densenet_bc_100_k12`, `bc-40`, ...).
    pub model: String,
    /// Efficiency mode.
    pub mode: String,
    /// Device name.
    pub device: String,
    /// Batch size.
    pub batch: usize,
    /// Square image size.
    pub image: usize,
    /// Depth of the network.
    pub depth: usize,
    /// Peak bytes of the engine's accounting over the measured steps (parameters, optimizer
    /// state, activations, gradients, workspaces).
    pub peak_bytes: u64,
    /// The process's peak resident set over the measured steps, if the OS tells.
    pub rss_peak_bytes: Option<u64>,
    /// On a GPU: bytes in use on the whole GPU after the measured steps, as `cuMemGetInfo` tells
    /// (total - free: includes the CUDA context, library workspaces and the memory pool's cached
    /// blocks, so it is at least the pool's high-water mark). Absent on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_used_bytes: Option<u64>,
    /// Bytes the device's allocator holds after the steps, in use or cached for reuse (the host
    /// cache on the CPU, the memory pool on a GPU; `None` where it cannot say).
    pub reserved_bytes: Option<u64>,
    /// Median seconds per training step (forward + backward + SGD).
    pub median_s: f64,
    /// Kernel launches of one training step (the last measured one; steady-state steps count
    /// the same): one per engine kernel call, counted the same way on every device.
    pub launches: u64,
    /// Buffers allocated by one training step.
    pub allocs: u64,
    /// Host synchronisations (reads of tensor values back to the host) of one training step.
    pub syncs: u64,
    /// Every measured step time.
    pub times_s: Vec<f64>,
}

/// The process's resident-set high-water mark (Linux: VmHWM, resettable through clear_refs).
pub mod rss {
    /// Returns the host cache's unused memory to the OS ([`tape::host_cache::release`]), then
    /// restarts the peak-RSS measurement from the current resident set; false where the OS does
    /// not allow it.
    pub fn reset_peak() -> bool {
        tape::host_cache::release();
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }

    /// Peak resident bytes since start or the last reset.
    pub fn peak_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

/// Median of a non-empty slice (0 for an empty one).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// The model (fp32, seed 0), the seed's SGD, one input batch and its labels of a benchmark case.
fn setup(
    dev: &Device,
    config: &DenseNetConfig,
    mode: Efficiency,
    batch: usize,
    image: usize,
) -> Result<(DenseNet, Sgd, Tensor, Vec<usize>)> {
    let model = DenseNet::new(config.clone().with_efficiency(mode), DType::F32, dev, 0)?;
    let opt = Sgd::new(seed_sgd_config())?;
    let x = Tensor::randn(
        &[batch, config.in_channels, image, image],
        DType::F32,
        dev,
        1,
    )?;
    let labels: Vec<usize> = (0..batch).map(|i| i % config.num_classes).collect();
    Ok((model, opt, x, labels))
}

/// Profiles one SGD training step of `config` in `mode` on `dev` (after one unprofiled warm-up
/// step): time per op kind and pass ([`tape::profile`]).
pub fn profile_training_step(
    dev: &Device,
    config: &DenseNetConfig,
    mode: Efficiency,
    batch: usize,
    image: usize,
) -> Result<tape::profile::Report> {
    let (mut model, mut opt, x, labels) = setup(dev, config, mode, batch, image)?;
    train_step(&mut model, &mut opt, &x, &labels, 0)?;
    dev.synchronize()?;
    tape::profile::start();
    let step = train_step(&mut model, &mut opt, &x, &labels, 1);
    dev.synchronize()?;
    let report = tape::profile::finish();
    step?;
    report.ok_or_else(|| {
        tape::Error::Backward("the profiler was stopped during the step".into()).into()
    })
}

/// Measures `iters` SGD training steps (after `warmup` unmeasured ones) of `config` in `mode` on
/// `dev` (pass a fresh device, e.g. `Device::cpu()`, so the accounting holds this case alone).
/// On a GPU every step is timed to its completion (the device is synchronised).
#[allow(clippy::too_many_arguments)]
pub fn measure_training_step(
    dev: &Device,
    name: &str,
    config: &DenseNetConfig,
    mode: Efficiency,
    batch: usize,
    image: usize,
    warmup: usize,
    iters: usize,
) -> Result<CaseResult> {
    let (mut model, mut opt, x, labels) = setup(dev, config, mode, batch, image)?;
    for i in 0..warmup {
        train_step(&mut model, &mut opt, &x, &labels, i as u64)?;
    }
    dev.synchronize()?;
    dev.memory().reset_peak();
    let rss_ok = rss::reset_peak();
    let mut times = Vec::with_capacity(iters);
    let mut counts = tape::Counters::default();
    for i in 0..iters.max(1) {
        let t0 = Instant::now();
        let before = dev.counters();
        train_step(&mut model, &mut opt, &x, &labels, (warmup + i) as u64)?;
        counts = dev.counters().since(before);
        dev.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    let device_used_bytes = dev
        .mem_get_info()?
        .map(|(free, total)| total.saturating_sub(free) as u64);
    Ok(CaseResult {
        model: name.to_string(),
        mode: mode.to_string(),
        device: dev.to_string(),
        batch,
        image,
        depth: config.depth(),
        peak_bytes: dev.memory().peak() as u64,
        rss_peak_bytes: if rss_ok { rss::peak_bytes() } else { None },
        device_used_bytes,
        reserved_bytes: dev.reserved_bytes().map(|b| b as u64),
        median_s: median(&times),
        launches: counts.launches,
        allocs: counts.allocs,
        syncs: counts.syncs,
        times_s: times,
    })
}

/// Least-squares slope of `ln y` against `ln x`: the growth exponent of y in x.
pub fn fitted_exponent(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let xs: Vec<f64> = points.iter().map(|p| p.0.ln()).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.1.ln()).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let num: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// A line chart of named series as a standalone SVG document.
pub fn svg_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    use std::fmt::Write;
    let (w, h, m) = (720.0, 440.0, 70.0);
    let all = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if !x0.is_finite() || x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.05 } else { 1.0 };
    let px = |x: f64| m + (x - x0) / (x1 - x0) * (w - 2.0 * m);
    let py = |y: f64| h - m - y / y1 * (h - 2.0 * m);
    let colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16">{title}</text>"#,
        w / 2.0
    );
    let _ = writeln!(
        s,
        r#"<line x1="{m}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        h - m,
        w - m,
        h - m
    );
    let _ = writeln!(
        s,
        r#"<line x1="{m}" y1="{m}" x2="{m}" y2="{}" stroke="black"/>"#,
        h - m
    );
    for i in 0..=4 {
        let yv = y1 * i as f64 / 4.0;
        let xv = x0 + (x1 - x0) * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#,
            m - 6.0,
            py(yv) + 4.0,
            yv
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{:.0}</text>"#,
            px(xv),
            h - m + 18.0,
            xv
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        w / 2.0,
        h - 20.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{y_label}</text>"#,
        h / 2.0,
        h / 2.0
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                px(x),
                py(y)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{c}">{name}</text>"#,
            m + 10.0,
            m + 16.0 * (i as f64 + 1.0)
        );
    }
    s.push_str("</svg>\n");
    s
}
