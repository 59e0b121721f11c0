//! The small GPT's recompute settings side by side: peak bytes (the engine's accounting, process
//! peak RSS beside it), median seconds per training step (forward + backward + Adam) and the
//! step's work counts, for `naive`, `per-block`, `selective`, `selective-linear` and a planner
//! budget (`budget:auto`: halfway between the chain's least feasible and naive predicted peaks;
//! `--recompute` picks the settings); then the planner's front of predicted
//! peak against recompute for the block chain. Each case runs on a fresh device.
//!
//! `cargo run --release --example gpt_benchmark` (CPU); `-- --quick` finishes in about a minute
//! on two cores; `-- --json` prints one JSON object per case. On a GPU (a build with
//! `--features cuda`): `-- --device cuda`. Data parallel (a build with `--features mpi`):
//! `mpirun -np 2 target/release/examples/gpt_benchmark --dist mpi --batch 16`, `--batch` per
//! process (each rank its own tokens); rank 0 prints every rank's row and its communication.

use checkpoint::planner::{Plan, PlanOptions};
use clap::Parser;
use dist::{Ddp, DdpOptions, DistKind, ProcessGroup};
use gpt::train::{adam, train_step, train_step_ddp, train_step_queued};
use gpt::{Gpt, GptConfig, Recompute, TokenBatch};
use harness::{
    open_device, print_case, print_dist_cases, print_front, print_header, print_profile,
    CaseResult, DistCaseResult, Setting, StepCommStats,
};
use std::process::ExitCode;
use tape::{DType, Device, Precision};
use trainer::anomaly::AnomalyGuard;

#[derive(Parser, Debug)]
#[command(about = "Small GPT: peak memory and step time of each recompute setting")]
struct Args {
    /// Device: cpu, meta (memory without computing), cuda or cuda:N (needs a build with the
    /// `cuda` feature and an NVIDIA GPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Sequences per batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per sequence (also the context length).
    #[arg(long)]
    seq: Option<usize>,
    /// Decoder blocks.
    #[arg(long)]
    layers: Option<usize>,
    /// Embedding width.
    #[arg(long, default_value_t = 128)]
    embd: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Measured steps per case (after one warm-up step).
    #[arg(long)]
    iters: Option<usize>,
    /// Small sizes: finishes in about a minute on two CPU cores.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object per case instead of tables.
    #[arg(long)]
    json: bool,
    /// Recompute settings to measure: naive, per-block, selective, selective-linear,
    /// budget:SIZE (e.g. budget:20MB), or budget:auto (the planner with a budget halfway between
    /// the chain's least feasible peak and its naive peak, as the planner predicts them).
    #[arg(
        long,
        visible_alias = "modes",
        value_delimiter = ',',
        default_value = "naive,per-block,selective,selective-linear,budget:auto"
    )]
    recompute: Vec<Setting>,
    /// Precision policies, each with every recompute setting: f32, bf16, f16 (16-bit
    /// activations, f32 master weights; ratios are to the first row).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    precision: Vec<Precision>,
    /// Data parallel: `mpi` joins the world `mpirun -np N` started (a build with `--features
    /// mpi`); `--batch` is per process.
    #[arg(long, default_value = "none")]
    dist: DistKind,
    /// After each case, profile one more step: time per op kind, split into forward,
    /// recompute, backward and optimizer, with call counts and share of the step.
    #[arg(long)]
    profile: bool,
}

const VOCAB: usize = 96;

fn config(a: &Args, seq: usize, layers: usize) -> GptConfig {
    GptConfig {
        vocab_size: VOCAB,
        block_size: seq,
        n_layer: layers,
        n_head: a.heads,
        n_embd: a.embd,
        dropout: 0.0,
    }
}

/// A batch of tokens; `shard` (a rank) shifts them, so that each rank has its own.
fn tokens(batch: usize, seq: usize, shard: usize) -> gpt::Result<TokenBatch> {
    let ids = |k: usize| {
        (0..batch * seq)
            .map(|i| (i * 31 + k + 7 * shard) % VOCAB)
            .collect()
    };
    TokenBatch::new(ids(0), ids(1), batch, seq)
}

#[allow(clippy::too_many_arguments)]
fn measure(
    a: &Args,
    dev: &Device,
    cfg: &GptConfig,
    (mode, precision): (Recompute, Precision),
    batch: usize,
    seq: usize,
    iters: usize,
    group: Option<&ProcessGroup>,
) -> gpt::Result<(CaseResult, StepCommStats)> {
    let mut model = Gpt::new(cfg.clone(), DType::F32, dev, 0)?
        .with_recompute(mode)?
        .with_precision(precision);
    let mut opt = adam(1e-3)?;
    let b = tokens(batch, seq, group.map_or(0, ProcessGroup::rank))?;
    let ddp = match group {
        Some(g) => Some(Ddp::new(g.clone(), &mut model, DdpOptions::default())?),
        None => None,
    };
    let mut comms = Vec::new();
    // One process checks for non-finite values as a training loop does (no host sync per step;
    // the last step after the measured ones); a data-parallel run checks every step at once.
    let mut guard = AnomalyGuard::new();
    let measured = harness::measure_steps(dev, 1, iters, |i| {
        match &ddp {
            Some(ddp) => {
                train_step_ddp(&mut model, &mut opt, &b, i, ddp)?;
                if i >= 1 {
                    comms.push(ddp.last_step());
                }
            }
            None => {
                train_step_queued(&mut model, &mut opt, &mut guard, &b, i)?;
            }
        }
        Ok::<(), gpt::GptError>(())
    })?;
    guard.finish(&model).map_err(gpt::GptError::from)?;
    let _ = a;
    let case = CaseResult {
        model: format!("gpt_{}x{}", cfg.n_layer, cfg.n_embd),
        mode: mode.to_string(),
        precision: precision.to_string(),
        device: dev.to_string(),
        batch,
        image: None,
        seq_len: Some(seq),
        depth: Some(cfg.n_layer),
        measured,
    };
    Ok((case, StepCommStats::mean(&comms)))
}

/// Profiles one Adam step of `cfg` under `mode` on `dev` (after one unprofiled warm-up step).
fn profile(
    dev: &Device,
    cfg: &GptConfig,
    (mode, precision): (Recompute, Precision),
    batch: usize,
    seq: usize,
) -> gpt::Result<tape::profile::Report> {
    let mut model = Gpt::new(cfg.clone(), DType::F32, dev, 0)?
        .with_recompute(mode)?
        .with_precision(precision);
    let mut opt = adam(1e-3)?;
    let b = tokens(batch, seq, 0)?;
    harness::profile_step(dev, |i| train_step(&mut model, &mut opt, &b, i).map(|_| ()))
}

fn run(a: &Args, group: Option<&ProcessGroup>) -> Result<(), Box<dyn std::error::Error>> {
    let spec = match group {
        Some(g) => harness::rank_device(&a.device, g),
        None => a.device.clone(),
    };
    let batch = a.batch.unwrap_or(if a.quick { 16 } else { 32 });
    let seq = a.seq.unwrap_or(if a.quick { 128 } else { 256 });
    let layers = a.layers.unwrap_or(if a.quick { 8 } else { 12 });
    let iters = a.iters.unwrap_or(if a.quick { 3 } else { 5 });
    let cfg = config(a, seq, layers);
    cfg.validate()?;
    // The budget: halfway between the chain's least feasible peak and its naive peak, as the
    // planner predicts them on a fresh device (bytes held as the chain starts included).
    let (front, budget) = {
        let dev = open_device(&spec, false)?;
        let model = Gpt::new(cfg.clone(), DType::F32, &dev, 0)?;
        let cm = model.chain_model(batch, seq)?;
        let naive = cm.predict(&Plan::keep_all(layers))?.peak;
        let least = cm.least_peak(PlanOptions::default())?;
        (
            cm.front(PlanOptions::default())?,
            least + (naive - least) / 2,
        )
    };
    if !a.json && group.is_none_or(ProcessGroup::is_root) {
        if let Some(g) = group {
            println!(
                "data parallel: {} processes ({}), batch {batch} per process",
                g.world_size(),
                g.backend()
            );
        }
        println!(
            "GPT: {layers} blocks, width {}, {} heads, vocab {VOCAB}, batch {batch} x {seq} tokens, f32 weights, Adam; {iters} measured steps",
            a.embd, a.heads
        );
        print_header(&open_device(&a.device, false)?);
    }
    let modes = a.precision.iter().flat_map(|&p| {
        a.recompute.iter().map(move |s| match *s {
            Setting::Fixed(r) => (r, p),
            Setting::AutoBudget => (Recompute::Budget(budget), p),
        })
    });
    let mut rows: Vec<CaseResult> = Vec::new();
    let mut naive_rows: Vec<DistCaseResult> = Vec::new();
    for mode in modes {
        let dev = open_device(&spec, false)?;
        let (r, comm) = measure(a, &dev, &cfg, mode, batch, seq, iters, group)?;
        if let Some(g) = group {
            let row = DistCaseResult {
                case: r,
                world_size: g.world_size(),
                rank: g.rank(),
                comm,
            };
            let all = print_dist_cases(g, &row, a.json, &naive_rows)?;
            if naive_rows.is_empty() {
                naive_rows = all;
            }
            continue;
        }
        print_case(&r, a.json, rows.first());
        if a.profile {
            let report = profile(&open_device(&spec, false)?, &cfg, mode, batch, seq)?;
            print_profile(&r.model, &r.label(), &report, a.json);
        }
        rows.push(r);
    }
    if group.is_some() {
        return Ok(());
    }
    if !a.json {
        println!();
    }
    print_front(&format!("gpt_{layers}x{}", a.embd), &front, a.json);
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
