//! ResNet naive vs memory-efficient: peak bytes (the engine's accounting, process peak RSS
//! beside it), median seconds per training step (forward + backward + SGD) and the step's work
//! counts, for every block recorded (`naive`), every block checkpointed (`per-block`) and the
//! planner's plan for a budget halfway between those two measured peaks (`budget:auto`; the
//! settings measured are `--recompute`'s); then the planner's memory-vs-recompute front for the
//! same step.
//!
//! `cargo run --release --example resnet_benchmark` (ResNet-18, CIFAR stem, 32x32, batch 64, CPU);
//! `-- --quick` finishes in about a minute on two cores; `-- --depth 50 --stem imagenet` for
//! ResNet-50 on 224x224 images; `-- --json` prints one JSON object per row. On a GPU (a build with
//! `--features cuda`): `-- --device cuda`. Data parallel (a build with `--features mpi`):
//! `mpirun -np 2 target/release/examples/resnet_benchmark --dist mpi --batch 32`, `--batch` per
//! process; rank 0 prints every rank's row and its communication; no planner front. `--sync-bn`
//! synchronises the batch norms (statistics of the global batch).

use clap::{Parser, ValueEnum};
use densenet_suite::resnet_bench::{
    measure_training_step, measure_training_step_ddp, planner_front, profile_training_step,
};
use densenet_suite::CaseSetting;
use dist::{DdpOptions, DistKind, ProcessGroup};
use harness::{
    open_device, print_case, print_dist_cases, print_front, print_header, print_profile,
    CaseResult, DistCaseResult, Setting,
};
use resnet::{Recompute, ResNetConfig, Stem};
use std::process::ExitCode;
use tape::Precision;

/// The stem, as the command line names it.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum StemArg {
    /// 3x3 conv, no max pool (32x32 images).
    Cifar,
    /// 7x7/2 conv and 3x3/2 max pool (224x224 images).
    Imagenet,
}

#[derive(Parser, Debug)]
#[command(about = "Naive vs memory-efficient ResNet: peak memory and step time")]
struct Args {
    /// Device: cpu, meta (memory without computing), cuda or cuda:N (needs a build with the `cuda` feature and an NVIDIA GPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// On a GPU, allow TF32 tensor-core math (default: strict fp32).
    #[arg(long)]
    tf32: bool,
    /// 18, 34 or 50.
    #[arg(long, default_value_t = 18)]
    depth: usize,
    /// The stem.
    #[arg(long, value_enum, default_value = "cifar")]
    stem: StemArg,
    /// Width of the stem and first stage.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Batch size (default 64; 8 with --quick).
    #[arg(long)]
    batch: Option<usize>,
    /// Square image size (default 32 for the CIFAR stem, 224 for the ImageNet one; 64 with
    /// --quick).
    #[arg(long)]
    image: Option<usize>,
    /// Measured steps per case (default 3; 1 with --quick), after two warm-up steps.
    #[arg(long)]
    iters: Option<usize>,
    /// Small batch, one measured step: about a minute on two CPU cores.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object per row instead of tables.
    #[arg(long)]
    json: bool,
    /// Recompute settings to measure: naive, per-block, budget:SIZE (e.g. budget:480MB), or
    /// budget:auto (the planner with a budget halfway between the naive and per-block peaks
    /// measured before it).
    #[arg(
        long,
        visible_alias = "modes",
        value_delimiter = ',',
        default_value = "naive,per-block,budget:auto"
    )]
    recompute: Vec<Setting>,
    /// Precision policies, each with every recompute setting: f32, bf16, f16 (16-bit
    /// activations, f32 master weights; ratios are to the first naive row). A data-parallel
    /// run uses the first.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    precision: Vec<Precision>,
    /// Data parallel: `mpi` joins the world `mpirun -np N` started (a build with `--features
    /// mpi`); `--batch` is per process.
    #[arg(long, default_value = "none")]
    dist: DistKind,
    /// With --dist: synchronised batch norm (statistics of the global batch, reduced once per
    /// layer in the forward pass and reused by every recompute); without it each rank
    /// normalises its own shard (PyTorch's default). CPU only for now.
    #[arg(long)]
    sync_bn: bool,
    /// After each case, profile one more step: time per op kind, split into forward,
    /// recompute, backward and optimizer, with call counts and share of the step.
    #[arg(long)]
    profile: bool,
}

/// `budget:auto`'s budget: halfway between the naive and per-block peaks in `peaks` (by setting).
fn auto_budget(peaks: &[(Recompute, u64)]) -> Result<u64, String> {
    let peak = |r: Recompute| peaks.iter().find(|(s, _)| *s == r).map(|(_, p)| *p);
    match (peak(Recompute::Naive), peak(Recompute::PerBlock)) {
        (Some(n), Some(p)) => Ok((n + p) / 2),
        _ => Err("budget:auto needs the naive and per-block settings measured before it".into()),
    }
}

/// Every rank's rows of a data-parallel run, printed by rank 0.
fn run_dist(
    args: &Args,
    group: &ProcessGroup,
    measure: &dyn Fn(Recompute) -> Result<(CaseResult, harness::StepCommStats), String>,
) -> Result<(), String> {
    let row = |memory: Recompute| -> Result<DistCaseResult, String> {
        let (case, comm) = measure(memory)?;
        Ok(DistCaseResult {
            case,
            world_size: group.world_size(),
            rank: group.rank(),
            comm,
        })
    };
    let mut naive: Vec<DistCaseResult> = Vec::new();
    let mut peaks = Vec::new();
    for &setting in &args.recompute {
        let memory = match setting {
            Setting::Fixed(r) => r,
            Setting::AutoBudget => {
                // Every rank the same budget: rank 0's midpoint.
                let mut budget = [auto_budget(&peaks)? as f64];
                group
                    .broadcast_f64(&mut budget, 0)
                    .map_err(|e| e.to_string())?;
                Recompute::Budget(budget[0] as u64)
            }
        };
        let rows = print_dist_cases(group, &row(memory)?, args.json, &naive)?;
        peaks.push((memory, rows[group.rank()].case.measured.peak_bytes));
        if memory == Recompute::Naive {
            naive = rows;
        }
    }
    Ok(())
}

fn run(args: &Args, group: Option<&ProcessGroup>) -> Result<(), String> {
    let spec = match group {
        Some(g) => harness::rank_device(&args.device, g),
        None => args.device.clone(),
    };
    let probe = open_device(&spec, args.tf32)?;
    let device = || open_device(&spec, args.tf32);
    let (stem, classes, default_image) = match args.stem {
        StemArg::Cifar => (Stem::Cifar, 10, 32),
        StemArg::Imagenet => (Stem::ImageNet, 1000, if args.quick { 64 } else { 224 }),
    };
    let config = ResNetConfig {
        depth: args.depth,
        num_classes: classes,
        in_channels: 3,
        stem,
        width: args.width,
    };
    config.validate().map_err(|e| e.to_string())?;
    let batch = args.batch.unwrap_or(if args.quick { 8 } else { 64 });
    let image = args.image.unwrap_or(default_image);
    let iters = args.iters.unwrap_or(if args.quick { 1 } else { 3 });
    let name = config.name();
    if !args.json && group.is_none_or(ProcessGroup::is_root) {
        if let Some(g) = group {
            println!(
                "data parallel: {} processes ({}), batch {batch} per process",
                g.world_size(),
                g.backend()
            );
        }
        println!(
            "{name}, {image}x{image} images, batch {batch}, fp32 weights, one SGD step; {}",
            harness::device_label(&probe)
        );
        print_header(&probe);
    }
    if let Some(g) = group {
        let precision = args.precision.first().copied().unwrap_or_default();
        let measure = |memory: Recompute| {
            let sizes = (batch, image, iters);
            let options = DdpOptions::default().with_sync_batch_norm(args.sync_bn);
            let setting = CaseSetting {
                mode: memory,
                precision,
            };
            measure_training_step_ddp(&device()?, &config, setting, sizes, g, options)
                .map_err(|e| format!("{memory}: {e}"))
        };
        return run_dist(args, g, &measure);
    }
    let measure = |setting: CaseSetting| -> Result<CaseResult, String> {
        measure_training_step(&device()?, &config, setting, batch, image, iters)
            .map_err(|e| format!("{} {}: {e}", setting.mode, setting.precision))
    };
    let mut done: Vec<(CaseSetting, CaseResult)> = Vec::new();
    let runs = args
        .precision
        .iter()
        .flat_map(|&p| args.recompute.iter().map(move |&s| (p, s)));
    for (precision, setting) in runs {
        let memory = match setting {
            Setting::Fixed(r) => r,
            Setting::AutoBudget => {
                let peaks: Vec<_> = done
                    .iter()
                    .filter(|(s, _)| s.precision == precision)
                    .map(|(s, c)| (s.mode, c.measured.peak_bytes))
                    .collect();
                Recompute::Budget(auto_budget(&peaks)?)
            }
        };
        let setting = CaseSetting {
            mode: memory,
            precision,
        };
        let case = measure(setting)?;
        let naive = done.iter().find(|(s, _)| s.mode == Recompute::Naive);
        print_case(&case, args.json, Some(naive.map_or(&case, |(_, c)| c)));
        if args.profile {
            let report = profile_training_step(&device()?, &config, setting, batch, image)
                .map_err(|e| format!("{memory}: {e}"))?;
            print_profile(&case.model, &case.label(), &report, args.json);
        }
        done.push((setting, case));
    }
    if !args.json {
        println!();
    }
    let front = planner_front(&device()?, &config, batch, image).map_err(|e| e.to_string())?;
    print_front(&name, &front, args.json);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let group = match args.dist {
        DistKind::None => None,
        kind => match dist::join(kind) {
            Ok(g) => Some(g),
            Err(e) => return harness::exit_code(Err(e)),
        },
    };
    let result = run(&args, group.as_ref());
    match &group {
        Some(g) => harness::exit_or_abort(result, g),
        None => harness::exit_code(result),
    }
}
