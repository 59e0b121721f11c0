//! Checkpointing a plain chain of conv3x3/BN/ReLU layers (64 by default): peak bytes (engine
//! accounting) beside the planner's prediction, and median step time, for the naive run, equal
//! segments (sqrt(n) and one per layer among them) and the planner's plans across budgets,
//! nested (recursive) and single-level; then whether any equal-segment schedule beats a planner
//! plan on both peak and recompute, and the time-memory front as an SVG chart.
//!
//! `cargo run --release --example checkpoint_chain [-- --layers 64 --batch 16 --json --svg PATH]`

use checkpoint::planner::{engine_error, profile_chain, ChainModel, Plan, PlanOptions};
use checkpoint::{run_plan, OpKind, Stage};
use clap::Parser;
use harness::{median, svg_chart};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use tape::ops::{self, BatchNormOptions, Conv2dOptions, RunningStats};
use tape::{DType, Device, Tape, Tensor};

#[derive(Parser)]
#[command(about = "Peak memory, prediction and time of a checkpointed conv/BN/ReLU chain")]
struct Args {
    /// Layers in the chain.
    #[arg(long, default_value_t = 64)]
    layers: usize,
    /// Batch size.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Channels of every layer.
    #[arg(long, default_value_t = 16)]
    channels: usize,
    /// Square image size.
    #[arg(long, default_value_t = 32)]
    image: usize,
    /// Timed steps per plan, in rounds that run every plan once (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// The planner's budgets, as fractions of the naive run's predicted peak.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.75,0.5,0.35,0.25,0.2,0.15"
    )]
    budgets: Vec<f64>,
    /// Print one JSON object per plan instead of tables.
    #[arg(long)]
    json: bool,
    /// Where to write the time-memory chart.
    #[arg(long, default_value = "target/checkpoint_chain/front.svg")]
    svg: PathBuf,
}

/// One measured plan.
#[derive(Serialize)]
struct Row {
    /// What the plan is.
    plan: String,
    /// "naive", "equal segments", "planner" (nested allowed) or "planner, single level".
    family: &'static str,
    /// The planner's budget.
    budget_bytes: Option<u64>,
    /// Top-level segments.
    segments: usize,
    /// Levels of checkpoints.
    depth: usize,
    /// Layer forwards run again in backward.
    recomputed_layers: usize,
    /// Measured peak (engine accounting).
    peak_bytes: u64,
    /// The model's prediction.
    predicted_bytes: u64,
    /// Median seconds per step.
    median_s: f64,
    /// The plan's segments, nested ones in brackets.
    layout: String,
}

/// A batch norm's weight, bias and running statistics.
type BatchNorm = (Tensor, Tensor, RunningStats);

/// A chain's parameters (conv weights, batch norms) on `dev`.
fn parameters(a: &Args, dev: &Device) -> tape::Result<(Vec<Tensor>, Vec<BatchNorm>)> {
    let c = a.channels;
    let (mut convs, mut bns) = (Vec::new(), Vec::new());
    for i in 0..a.layers {
        let std = (2.0 / (9 * c) as f64).sqrt();
        let w = Tensor::randn(&[c, c, 3, 3], DType::F32, dev, i as u64)?;
        let v: Vec<f64> = w.to_f64_vec().iter().map(|v| v * std).collect();
        convs.push(Tensor::from_f64(&v, w.shape(), DType::F32, dev)?.with_requires_grad(true));
        bns.push((
            Tensor::ones(&[c], DType::F32, dev)?.with_requires_grad(true),
            Tensor::zeros(&[c], DType::F32, dev)?.with_requires_grad(true),
            RunningStats::new(c, DType::F32, dev)?,
        ));
    }
    Ok((convs, bns))
}

/// One training step (forward, mean, backward) under `plan`.
fn step(layers: &[Stage<'_>], plan: &Plan, x: &Tensor) -> tape::Result<()> {
    let mut tape = Tape::recording();
    let y = run_plan(&mut tape, layers, plan, x)?;
    let loss = ops::mean(&mut tape, &y)?;
    drop(y);
    drop(tape.backward(&loss)?);
    Ok(())
}

/// Peak bytes and median seconds per step of each plan, over `iters` rounds that each run every
/// plan once (a busy spell on a shared machine then slows every plan alike).
fn measure(
    dev: &Device,
    layers: &[Stage<'_>],
    plans: &[&Plan],
    x: &Tensor,
    iters: usize,
) -> tape::Result<Vec<(u64, f64)>> {
    let mut peaks = vec![0u64; plans.len()];
    let mut times = vec![Vec::new(); plans.len()];
    for _ in 0..iters.max(1) {
        for (i, plan) in plans.iter().enumerate() {
            dev.memory().reset_peak();
            let t0 = Instant::now();
            step(layers, plan, x)?;
            times[i].push(t0.elapsed().as_secs_f64());
            peaks[i] = peaks[i].max(dev.memory().peak() as u64);
        }
    }
    Ok(peaks
        .into_iter()
        .zip(times.iter().map(|t| median(t)))
        .collect())
}

/// A plan to measure: its name, family, the planner's budget and the plan.
type Candidate = (String, &'static str, Option<u64>, Plan);

/// The plans to measure: naive, equal segments, the planner's at each budget (nested and single
/// level) and at the least peak of any plan; and notes on budgets no plan of a family fits.
fn plans(a: &Args, model: &ChainModel) -> tape::Result<(Vec<Candidate>, Vec<String>)> {
    let n = a.layers;
    let sqrt = ((n as f64).sqrt().round() as usize).max(1);
    let mut out = vec![("naive".to_string(), "naive", None, Plan::keep_all(n))];
    let mut ks: Vec<usize> = [2, 4, sqrt, 16, 32, n]
        .into_iter()
        .filter(|&k| k <= n)
        .collect();
    ks.sort_unstable();
    ks.dedup();
    for k in ks {
        let name = match k {
            k if k == n => format!("per layer ({n} segments)"),
            k if k == sqrt => format!("sqrt(n) = {k} segments"),
            k => format!("{k} segments"),
        };
        out.push((name, "equal segments", None, Plan::equal_segments(n, k)));
    }
    let naive = model
        .predict(&Plan::keep_all(n))
        .map_err(engine_error)?
        .peak;
    let families = [("planner", None), ("planner, single level", Some(1))];
    let mut least = Vec::new();
    for (_, depth) in families {
        least.push(
            model
                .least_peak(PlanOptions { max_depth: depth })
                .map_err(engine_error)?,
        );
    }
    let pct = |b: u64| 100.0 * b as f64 / naive as f64;
    let mut budgets: Vec<(String, u64)> = a
        .budgets
        .iter()
        .map(|f| (format!("{:.0}%", 100.0 * f), (naive as f64 * f) as u64))
        .collect();
    budgets.push((format!("least peak ({:.1}%)", pct(least[0])), least[0]));
    budgets.push((
        format!("single-level least ({:.1}%)", pct(least[1])),
        least[1],
    ));
    let mut notes = Vec::new();
    for (what, budget) in &budgets {
        let mb = *budget as f64 / 1e6;
        for ((family, depth), &least) in families.into_iter().zip(&least) {
            if *budget < least {
                notes.push(format!(
                    "{family} at {what}, {mb:.1} MB: no plan fits (least peak {:.2} MB)",
                    least as f64 / 1e6
                ));
                continue;
            }
            let plan = model
                .plan_with(*budget, PlanOptions { max_depth: depth })
                .map_err(engine_error)?;
            let name = format!("{family} at {what}, {mb:.1} MB");
            out.push((name, family, Some(*budget), plan));
        }
    }
    Ok((out, notes))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let dev = Device::cpu();
    let (convs, bns) = parameters(&a, &dev)?;
    let layers: Vec<Stage> = (0..a.layers)
        .map(|i| {
            let (w, (g, b, rs)) = (&convs[i], &bns[i]);
            Stage::new(format!("layer{i}"), OpKind::Other, move |t, x| {
                let opts = Conv2dOptions {
                    stride: 1,
                    padding: 1,
                };
                let h = ops::conv2d(t, x, w, None, opts)?;
                let h = ops::batch_norm2d(t, &h, g, b, rs, BatchNormOptions::default())?;
                ops::relu(t, &h)
            })
        })
        .collect();
    let x = Tensor::randn(
        &[a.batch, a.channels, a.image, a.image],
        DType::F32,
        &dev,
        7,
    )?;
    let model = profile_chain(
        &Tape::recording(),
        &layers,
        &x,
        dev.memory().current() as u64,
    )?;
    let n = a.layers;
    step(&layers, &Plan::keep_all(n), &x)?; // warm-up
    let mut rows = Vec::new();
    let (candidates, notes) = plans(&a, &model)?;
    let all: Vec<&Plan> = candidates.iter().map(|c| &c.3).collect();
    let measured = measure(&dev, &layers, &all, &x, a.iters)?;
    for ((name, family, budget, plan), (peak, t)) in candidates.into_iter().zip(measured) {
        let p = model.predict(&plan)?;
        rows.push(Row {
            plan: name,
            family,
            budget_bytes: budget,
            segments: plan.segments().len(),
            depth: plan.depth(),
            recomputed_layers: p.recomputed_layers,
            peak_bytes: peak,
            predicted_bytes: p.peak,
            median_s: t,
            layout: plan.to_string(),
        });
    }
    report(&a, &rows)?;
    if !a.json {
        notes.iter().for_each(|n| println!("{n}"));
    }
    let fixed = equal_segment_peaks(&dev, &layers, &x, n)?;
    check_fixed_schedules(&a, &rows, &fixed);
    let smallest = a.budgets.iter().copied().fold(f64::INFINITY, f64::min);
    let naive = model
        .predict(&Plan::keep_all(n))
        .map_err(engine_error)?
        .peak;
    if let (false, Ok(plan)) = (a.json, model.plan((naive as f64 * smallest) as u64)) {
        println!(
            "\nthe plan at {:.0}% of the naive peak:\n{}",
            100.0 * smallest,
            model.report(&plan)?
        );
    }
    chart(&a, &rows)
}

/// The table (or JSON lines).
fn report(a: &Args, rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    if a.json {
        for r in rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!(
        "{} conv3x3/BN/ReLU layers, {} channels, batch {}, {}x{}, f32",
        a.layers, a.channels, a.batch, a.image, a.image
    );
    println!(
        "{:<50} {:>5} {:>5} {:>6} {:>9} {:>9} {:>6} {:>8} {:>7}",
        "plan", "segs", "depth", "recomp", "peak MB", "pred. MB", "err %", "median s", "x naive"
    );
    let naive = rows.first().map_or(1.0, |r| r.median_s);
    for r in rows {
        println!(
            "{:<50} {:>5} {:>5} {:>6} {:>9.2} {:>9.2} {:>+6.2} {:>8.4} {:>7.2}",
            r.plan,
            r.segments,
            r.depth,
            r.recomputed_layers,
            r.peak_bytes as f64 / 1e6,
            r.predicted_bytes as f64 / 1e6,
            100.0 * (r.predicted_bytes as f64 - r.peak_bytes as f64) / r.peak_bytes as f64,
            r.median_s,
            r.median_s / naive
        );
    }
    Ok(())
}

/// Measured peak and recomputed layers of every equal-segment schedule (1 to n segments).
fn equal_segment_peaks(
    dev: &Device,
    layers: &[Stage<'_>],
    x: &Tensor,
    n: usize,
) -> tape::Result<Vec<(usize, u64, usize)>> {
    (1..=n)
        .map(|k| {
            let plan = Plan::equal_segments(n, k);
            let (peak, _) = measure(dev, layers, &[&plan], x, 1)?[0];
            Ok((k, peak, plan.recomputed_layers()))
        })
        .collect()
}

/// Whether an equal-segment schedule beats a planner plan on both measured peak and recomputed
/// layers (no worse on either, better on one): it then fits the plan's budget too.
fn check_fixed_schedules(a: &Args, rows: &[Row], fixed: &[(usize, u64, usize)]) {
    let mut beaten = Vec::new();
    for r in rows.iter().filter(|r| r.budget_bytes.is_some()) {
        for &(k, peak, rec) in fixed {
            let no_worse = peak <= r.peak_bytes && rec <= r.recomputed_layers;
            if no_worse && (peak < r.peak_bytes || rec < r.recomputed_layers) {
                beaten.push(format!(
                    "{} segments ({peak} bytes, {rec} recomputed) beat {} ({} bytes, {} recomputed)",
                    k, r.plan, r.peak_bytes, r.recomputed_layers
                ));
            }
        }
    }
    if a.json {
        let line = serde_json::json!({ "check": "equal segments vs planner", "beaten": beaten });
        println!("{line}");
    } else if beaten.is_empty() {
        println!(
            "\nno equal-segment schedule (1..={} segments, measured) beats a planner plan on both \
             peak and recomputed layers",
            a.layers
        );
    } else {
        println!("\nequal-segment schedules that beat a planner plan:");
        for b in beaten {
            println!("  {b}");
        }
    }
}

/// The time-memory front as an SVG chart: measured peak against median time per step.
fn chart(a: &Args, rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    let series: Vec<(String, Vec<(f64, f64)>)> = [
        ("planner (nested allowed)", "planner"),
        ("planner, single level", "planner, single level"),
        (
            "equal segments (2, 4, sqrt(n), 16, 32, per layer)",
            "equal segments",
        ),
        ("naive", "naive"),
    ]
    .iter()
    .map(|(label, family)| {
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.family == *family)
            .map(|r| (r.peak_bytes as f64 / 1e6, 1e3 * r.median_s))
            .collect();
        pts.sort_by(|p, q| p.0.total_cmp(&q.0));
        (label.to_string(), pts)
    })
    .collect();
    let title = format!(
        "Time-memory front: {} conv3x3/BN/ReLU layers, batch {}",
        a.layers, a.batch
    );
    let svg = svg_chart(&title, "measured peak MB", "median ms per step", &series);
    if let Some(dir) = a.svg.parent() {
        std::fs::create_dir_all(dir)?;
    }
    densenet::weights::write_atomic(&a.svg, svg.as_bytes())?;
    if !a.json {
        println!("chart written to {}", a.svg.display());
    }
    Ok(())
}
