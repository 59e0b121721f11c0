//! One training step's forward + backward of a DenseNet from files, written to safetensors: the
//! Rust side of a PyTorch parity check (see `tests/pytorch/make_golden.py`).
//!
//! ```text
//! cargo run --release --example one_step -- --config cfg.json --weights w.safetensors \
//!     --batch b.safetensors --recompute naive|bottleneck|layer|budget:SIZE --out out.safetensors \
//!     [--f64] [--lenient]
//! ```
//!
//! The config is a JSON `DenseNetConfig` (its serde field names; missing fields take the seed's
//! defaults; `--recompute` overrides its `efficiency`). The output holds `logits`, `loss`,
//! `grad.<param>` for every parameter and the running statistics after the step.

use clap::Parser;
use densenet::weights::LoadOptions;
use densenet::{DenseNetConfig, Recompute};
use densenet_suite::one_step::prepare_with;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tape::{DType, Precision};

/// One DenseNet training step (forward + backward, no update) from files.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// DenseNetConfig as JSON (serde field names, e.g. tests/data/<case>/config.json).
    #[arg(long)]
    config: PathBuf,
    /// Weights in safetensors with torchvision names (parameters and running statistics).
    #[arg(long)]
    weights: PathBuf,
    /// Batch in safetensors: `input` [n, c, h, w] and `labels` [n] (int64 or float).
    #[arg(long)]
    batch: PathBuf,
    /// Recompute setting: naive, bottleneck (alias efficient), layer or budget:SIZE (e.g.
    /// budget:480MB).
    #[arg(long, visible_alias = "mode", default_value = "naive")]
    recompute: Recompute,
    /// Output safetensors file (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Run in f64 instead of f32.
    #[arg(long = "f64")]
    f64: bool,
    /// Precision policy: f32, bf16 or f16 (16-bit activations, weights as loaded).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Ignore tensors of the weights file that the model does not have (by default they are an
    /// error naming them). Values are checked either way.
    #[arg(long)]
    lenient: bool,
}

fn read_config(path: &Path) -> Result<DenseNetConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    let config: DenseNetConfig = serde_json::from_str(&text).map_err(|e| {
        format!(
            "config {} is not a valid DenseNetConfig: {e}",
            path.display()
        )
    })?;
    config
        .validate()
        .map_err(|e| format!("config {}: {e}", path.display()))?;
    Ok(config)
}

fn run(args: &Args) -> Result<(), String> {
    let config = read_config(&args.config)?;
    let dtype = if args.f64 { DType::F64 } else { DType::F32 };
    let load = LoadOptions {
        lenient: args.lenient,
    };
    let out = prepare_with(
        &config,
        &args.weights,
        &args.batch,
        args.recompute,
        dtype,
        load,
    )
    .and_then(|prepared| prepared.with_precision(args.precision).run())
    .and_then(|out| out.save(&args.out).map(|()| out))
    .map_err(|e| e.to_string())?;
    let modes: Vec<String> = out
        .layer_modes
        .iter()
        .map(|block| {
            block
                .iter()
                .map(|m| format!("{m:?}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    println!(
        "mode {} ({dtype:?}, precision {}): loss {:.12}, {} tensors -> {} (layer modes: [{}])",
        args.recompute,
        args.precision,
        out.loss,
        out.tensors.len(),
        args.out.display(),
        modes.join("] [")
    );
    Ok(())
}

fn main() -> ExitCode {
    harness::exit_code(run(&Args::parse()))
}
