//! The main job: the seed project's Performance table for this engine. DenseNet-BC-100, naive vs
//! each memory-efficient mode: peak bytes (the engine's accounting, process peak RSS beside it),
//! median seconds per training step (forward + backward + SGD) and the step's work counts
//! (kernel launches, buffers allocated, host syncs); then a depth sweep with the fitted growth
//! exponent of memory against depth, and an SVG chart of memory vs depth.
//!
//! `cargo run --release --example benchmark` (CPU); `-- --quick` finishes in about a minute on
//! two cores; `-- --json` prints one JSON object per case. On a GPU (a build with
//! `--features cuda`): `-- --device cuda`; the GPU's used bytes (`cuMemGetInfo`) are printed beside
//! the engine's peak. `-- --imagenet` adds DenseNet-121 on 224x224 images (batch 64).
//!
//! Data parallel (a build with `--features mpi`): `mpirun -np 2 target/release/examples/benchmark
//! --dist mpi --batch 32` measures each rank's step on its shard (`--batch` per process); rank 0
//! prints one row per rank and the step's communication (bytes all-reduced, buckets, seconds
//! communicating and seconds exposed after backward). The depth sweep is skipped. `--sync-bn`
//! synchronises the batch norms (statistics of the global batch).

use clap::Parser;
use densenet::{DenseNetConfig, Recompute, Selective};
use densenet_suite::densenet_bench::{
    explain_training_step, measure_training_step, measure_training_step_ddp, profile_training_step,
};
use densenet_suite::CaseSetting;
use dist::{DdpOptions, DistKind, ProcessGroup};
use harness::{
    fitted_exponent, open_device_with, print_case, print_dist_cases, print_header,
    print_memory_report, print_profile, svg_chart, CaseResult, DistCaseResult, Setting,
};
use std::path::PathBuf;
use std::process::ExitCode;
use tape::{Device, Precision};

#[derive(Parser, Debug)]
#[command(about = "Naive vs memory-efficient DenseNet: peak memory and step time")]
struct Args {
    /// Device: cpu, meta (exact memory without computing: shapes and accounting only, in
    /// milliseconds), cuda or cuda:N (needs a build with the `cuda` feature and an NVIDIA GPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The main table's network instead of DenseNet-BC-100 (k=12): densenet121, densenet169,
    /// densenet201, densenet264, densenet161, densenet_bc_190_k40, ...
    #[arg(long)]
    preset: Option<String>,
    /// Add the planner's run for a memory budget (bytes, or e.g. 480MB, 16GB: the same as
    /// `budget:SIZE` in --recompute) to the main table and print the plan it chose for each
    /// dense block.
    #[arg(long)]
    budget: Option<String>,
    /// On a GPU, allow TF32 tensor-core math (default: strict fp32).
    #[arg(long)]
    tf32: bool,
    /// On a GPU, choose convolution algorithms by measuring them (cuDNN's Find, once per shape)
    /// instead of cuDNN's heuristics.
    #[arg(long)]
    cudnn_find: bool,
    /// On a GPU, give all convolutions one workspace kept for the run (charged once) instead of
    /// one per call.
    #[arg(long)]
    persistent_workspace: bool,
    /// Batch size of the main table.
    #[arg(long)]
    batch: Option<usize>,
    /// Square image size.
    #[arg(long, default_value_t = 32)]
    image: usize,
    /// Measured steps per case (default 3 on the CPU, 20 on a GPU; after 1 warm-up step on
    /// the CPU, 5 on a GPU).
    #[arg(long)]
    iters: Option<usize>,
    /// Small batch and sweep: finishes in about a minute on two CPU cores.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object per case instead of tables.
    #[arg(long)]
    json: bool,
    /// Recompute settings of the main table: naive, bottleneck, layer, budget:SIZE (e.g.
    /// budget:480MB), or budget:auto (the planner with a budget halfway between the layer and
    /// bottleneck peaks measured before it).
    #[arg(
        long,
        visible_alias = "modes",
        value_delimiter = ',',
        default_value = "naive,bottleneck,layer,budget:auto"
    )]
    recompute: Vec<Setting>,
    /// Depths of the sweep (CIFAR DenseNet-BC, k=12).
    #[arg(long, value_delimiter = ',')]
    depths: Option<Vec<usize>>,
    /// Batch size of the depth sweep.
    #[arg(long)]
    sweep_batch: Option<usize>,
    /// Where to write the memory-vs-depth chart.
    #[arg(long, default_value = "target/benchmark/memory_vs_depth.svg")]
    svg: PathBuf,
    /// Precision policies of the main table, each with every mode: f32, bf16, f16 (16-bit
    /// activations and f32 master weights; the ratios are to the f32 naive row when it ran).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    precision: Vec<Precision>,
    /// Skip the depth sweep.
    #[arg(long)]
    no_sweep: bool,
    /// Skip the main table (DenseNet-BC-100).
    #[arg(long)]
    no_main: bool,
    /// Also measure the ImageNet case: DenseNet-121 on 224x224 images, same modes as the main
    /// table.
    #[arg(long)]
    imagenet: bool,
    /// Batch size of the ImageNet case.
    #[arg(long, default_value_t = 64)]
    imagenet_batch: usize,
    /// After each case, profile one more step: time per op kind, split into forward, recompute,
    /// backward and optimizer, with call counts and share of the step.
    #[arg(long)]
    profile: bool,
    /// After each case, explain its peak: every buffer alive at it by role (parameter,
    /// gradient, optimizer state, activation, recomputed, block storage, workspace), the totals
    /// per role and the 15 largest buffers with the module that made them.
    #[arg(long)]
    explain: bool,
    /// Data parallel: `mpi` joins the world `mpirun -np N` started (a build with `--features
    /// mpi`); `--batch` is per process.
    #[arg(long, default_value = "none")]
    dist: DistKind,
    /// With --dist: gradient bucket size in MB (the first bucket: at most 1 MiB), as DDP's
    /// `bucket_cap_mb`.
    #[arg(long, default_value_t = 25.0)]
    bucket_mb: f64,
    /// With --dist: synchronised batch norm (statistics of the global batch, reduced once per
    /// layer in the forward pass and reused by every recompute); without it each rank
    /// normalises its own shard (PyTorch's default). CPU only for now.
    #[arg(long)]
    sync_bn: bool,
}

/// One model's table: every mode, one training step each.
struct Table<'c> {
    name: &'c str,
    config: &'c DenseNetConfig,
    batch: usize,
    image: usize,
    precisions: &'c [Precision],
}

impl Table<'_> {
    fn run(
        &self,
        modes: &[Setting],
        (warmup, iters): (usize, usize),
        json: bool,
        (profile, explain): (bool, bool),
        device: &dyn Fn() -> Result<Device, String>,
        group: Option<(&ProcessGroup, DdpOptions)>,
    ) -> Result<(), String> {
        let mut done: Vec<CaseResult> = Vec::new();
        let mut naive_rows: Vec<DistCaseResult> = Vec::new();
        let runs = self
            .precisions
            .iter()
            .flat_map(|&p| modes.iter().map(move |&m| (p, m)));
        for (precision, mode) in runs {
            let mode = match mode {
                Setting::Fixed(m) => m,
                Setting::AutoBudget => {
                    let peak = |m: Recompute| {
                        done.iter()
                            .find(|r| r.mode == m.to_string() && r.precision == precision.name())
                            .map(|r| r.measured.peak_bytes)
                    };
                    match (
                        peak(Recompute::Selective(Selective::Layer)),
                        peak(Recompute::Selective(Selective::Bottleneck)),
                    ) {
                        (Some(l), Some(b)) => Recompute::Budget((l + b) / 2),
                        _ => return Err(
                            "budget:auto needs the layer and bottleneck modes measured before it"
                                .into(),
                        ),
                    }
                }
            };
            let setting = CaseSetting { mode, precision };
            if let Some((group, options)) = group {
                let (case, comm) = measure_training_step_ddp(
                    &device()?,
                    self.name,
                    self.config,
                    setting,
                    self.batch,
                    self.image,
                    warmup,
                    iters,
                    group,
                    options,
                )
                .map_err(|e| e.to_string())?;
                let row = DistCaseResult {
                    case: case.clone(),
                    world_size: group.world_size(),
                    rank: group.rank(),
                    comm,
                };
                let rows = print_dist_cases(group, &row, json, &naive_rows)?;
                if mode == Recompute::Naive && naive_rows.is_empty() {
                    naive_rows = rows;
                }
                done.push(case);
                continue;
            }
            let r = measure_training_step(
                &device()?,
                self.name,
                self.config,
                setting,
                self.batch,
                self.image,
                warmup,
                iters,
            )
            .map_err(|e| e.to_string())?;
            let naive = done.iter().find(|r| r.mode == Recompute::Naive.to_string());
            print_case(&r, json, naive);
            if let (Recompute::Budget(_), false) = (mode, json) {
                print_plan(
                    &device()?,
                    self.config,
                    setting,
                    [self.batch, self.config.in_channels, self.image, self.image],
                )?;
            }
            if profile {
                let report =
                    profile_training_step(&device()?, self.config, setting, self.batch, self.image)
                        .map_err(|e| e.to_string())?;
                print_profile(&r.model, &r.label(), &report, json);
            }
            if explain {
                let report =
                    explain_training_step(&device()?, self.config, setting, self.batch, self.image)
                        .map_err(|e| e.to_string())?;
                print_memory_report(&r.model, &r.label(), &report, 15, json);
            }
            done.push(r);
        }
        Ok(())
    }
}

/// The per-layer modes the planner chose for `setting` (a budget, under its precision policy),
/// one line per dense block: how many layers keep everything (K), recompute the bottleneck (B)
/// or the whole layer (L).
fn print_plan(
    dev: &Device,
    config: &DenseNetConfig,
    setting: CaseSetting,
    input: [usize; 4],
) -> Result<(), String> {
    let model = densenet::DenseNet::new(config.clone(), tape::DType::F32, dev, 0)
        .map_err(|e| e.to_string())?
        .with_recompute(setting.mode)
        .map_err(|e| e.to_string())?
        .with_precision(setting.precision);
    let modes = model.layer_modes(input).map_err(|e| e.to_string())?;
    for (b, block) in modes.iter().enumerate() {
        let code: String = block
            .iter()
            .map(|m| match m {
                densenet::DenseLayerMode::Keep => 'K',
                densenet::DenseLayerMode::RecomputeBottleneck => 'B',
                densenet::DenseLayerMode::RecomputeLayer => 'L',
            })
            .collect();
        println!("    plan, dense block {}: {code}", b + 1);
    }
    Ok(())
}

fn run(args: &Args, group: Option<&ProcessGroup>) -> Result<(), String> {
    let root = group.is_none_or(ProcessGroup::is_root);
    let bucket_bytes = (args.bucket_mb * 1e6) as usize;
    let ddp_options = DdpOptions {
        bucket_bytes,
        first_bucket_bytes: bucket_bytes.min(DdpOptions::default().first_bucket_bytes),
        sync_batch_norm: args.sync_bn,
    };
    let reducer = group.map(|g| (g, ddp_options));
    // Opened once up front so a missing GPU or library fails before any work.
    let options = tape::CudaOptions {
        tf32: args.tf32,
        measure_conv_algorithms: args.cudnn_find,
        persistent_workspace: args.persistent_workspace,
        ..tape::CudaOptions::default()
    };
    let spec = match group {
        Some(g) => harness::rank_device(&args.device, g),
        None => args.device.clone(),
    };
    let probe = open_device_with(&spec, options)?;
    let gpu = probe.is_cuda();
    let device = || open_device_with(&spec, options);
    let batch = args.batch.unwrap_or(if args.quick { 8 } else { 64 });
    // A GPU step is timed as PyTorch benchmarks time it: 5 warm-up steps, then 20.
    let (warmup, default_iters) = match (gpu, args.quick) {
        (true, false) => (5, 20),
        (_, quick) => (1, if quick { 1 } else { 3 }),
    };
    let iters = args.iters.unwrap_or(default_iters);
    let mut modes = args.recompute.clone();
    if let Some(budget) = &args.budget {
        let bytes = checkpoint::parse_bytes(budget)?;
        modes.push(Setting::Fixed(Recompute::Budget(bytes)));
    }
    let (main_name, main_config) = match &args.preset {
        Some(name) => (
            name.clone(),
            DenseNetConfig::preset(name).map_err(|e| e.to_string())?,
        ),
        None => (
            "densenet_bc_100_k12".to_string(),
            DenseNetConfig::densenet_bc_100_k12(),
        ),
    };
    let header = || print_header(&probe);
    if !args.json && !args.no_main && root {
        if let Some(g) = group {
            println!(
                "data parallel: {} processes ({}), batch {} per process, {} in all",
                g.world_size(),
                g.backend(),
                batch,
                batch * g.world_size()
            );
        }
        if gpu {
            println!(
                "{main_name}, {}x{} images, {}, one SGD step; {}",
                args.image,
                args.image,
                if args.tf32 {
                    "fp32 with TF32"
                } else {
                    "strict fp32"
                },
                args.device
            );
        } else {
            println!(
                "{main_name}, {}x{} images, batch {batch}, fp32 weights, one SGD step; {}",
                args.image,
                args.image,
                harness::device_label(&probe)
            );
        }
        header();
    }
    if !args.no_main {
        let table = Table {
            name: &main_name,
            config: &main_config,
            batch,
            image: args.image,
            precisions: &args.precision,
        };
        table.run(
            &modes,
            (warmup, iters),
            args.json,
            (args.profile, args.explain),
            &device,
            reducer,
        )?;
    }
    if args.imagenet {
        if !args.json && root {
            println!(
                "\nImageNet: DenseNet-121 (k=32), 224x224 images, batch {}",
                args.imagenet_batch
            );
            header();
        }
        let config = DenseNetConfig::densenet121();
        let table = Table {
            name: "densenet121",
            config: &config,
            batch: args.imagenet_batch,
            image: 224,
            precisions: &args.precision,
        };
        table.run(
            &modes,
            (warmup, iters),
            args.json,
            (args.profile, args.explain),
            &device,
            reducer,
        )?;
    }
    if args.no_sweep || group.is_some() {
        return Ok(());
    }

    let depths = args.depths.clone().unwrap_or(if args.quick {
        vec![40, 70, 100]
    } else {
        vec![40, 100, 190, 250]
    });
    let sweep_batch = args.sweep_batch.unwrap_or(if args.quick { 2 } else { 4 });
    if !args.json {
        println!("\ndepth sweep: DenseNet-BC k=12, batch {sweep_batch}, one measured step each");
    }
    let sweep_modes = [
        Recompute::Naive,
        Recompute::Selective(Selective::Bottleneck),
        Recompute::Selective(Selective::Layer),
    ];
    let mut series = Vec::new();
    for mode in sweep_modes {
        let mut points = Vec::new();
        let mut first: Option<CaseResult> = None;
        for &d in &depths {
            let config = DenseNetConfig::densenet_bc_cifar(d, 12).map_err(|e| e.to_string())?;
            let r = measure_training_step(
                &device()?,
                &format!("bc-{d}-k12"),
                &config,
                CaseSetting::f32(mode),
                sweep_batch,
                args.image,
                1,
                1,
            )
            .map_err(|e| e.to_string())?;
            points.push((d as f64, r.measured.peak_bytes as f64 / 1e6));
            print_case(&r, args.json, None);
            first.get_or_insert(r);
        }
        let e = fitted_exponent(&points);
        if args.json {
            println!(r#"{{"fit":"memory_vs_depth","mode":"{mode}","exponent":{e:.4}}}"#);
        } else {
            println!("  {mode}: peak memory grows as depth^{e:.2}");
        }
        series.push((format!("{mode} (depth^{e:.2})"), points));
    }
    let svg = svg_chart(
        "Peak training memory vs depth (DenseNet-BC, k=12)",
        "depth",
        "peak MB",
        &series,
    );
    if let Some(dir) = args.svg.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    tape::nn::write_atomic(&args.svg, svg.as_bytes()).map_err(|e| e.to_string())?;
    if !args.json {
        println!("chart written to {}", args.svg.display());
    }
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
