//! Trains the small GPT on this workspace's own Rust sources (read at run time, character
//! level), printing the training loss every few steps and the validation loss at the end,
//! saves the weights atomically, and prints a generated sample.
//!
//! `cargo run --release --example train_gpt [-- --steps 500 --mode selective --out PATH]`

use clap::Parser;
use gpt::data::{Split, TextDataset};
use gpt::generate::{generate, Sampling};
use gpt::train::{adam, forward_backward, train_step};
use gpt::{Gpt, GptConfig, MemoryMode};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use tape::DType;

#[derive(Parser, Debug)]
#[command(about = "Train a small character-level GPT on this workspace's Rust sources")]
struct Args {
    /// Device: cpu, cuda or cuda:N (needs a build with the `cuda` feature and an NVIDIA GPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Training steps.
    #[arg(long, default_value_t = 500)]
    steps: u64,
    /// Print the training loss every this many steps.
    #[arg(long, default_value_t = 50)]
    every: u64,
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Tokens per sequence (the context length).
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Decoder blocks.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Embedding width.
    #[arg(long, default_value_t = 64)]
    embd: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Memory mode: naive, per-block or selective.
    #[arg(long, default_value = "selective")]
    mode: String,
    /// Characters of source text to use at most.
    #[arg(long, default_value_t = 1_000_000)]
    max_chars: usize,
    /// Characters to generate after training.
    #[arg(long, default_value_t = 300)]
    sample: usize,
    /// Where to save the weights (safetensors).
    #[arg(long, default_value = "target/train_gpt/gpt.safetensors")]
    out: PathBuf,
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mode = match a.mode.as_str() {
        "naive" => MemoryMode::Naive,
        "per-block" => MemoryMode::PerBlock,
        "selective" => MemoryMode::Selective,
        m => return Err(format!("unknown mode '{m}' (naive, per-block, selective)").into()),
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = TextDataset::from_rust_sources(root, a.max_chars)?;
    let tok = &data.tokenizer;
    println!(
        "data: {} train / {} val characters of the Rust sources under {}, vocabulary {}",
        data.tokens(Split::Train).len(),
        data.tokens(Split::Val).len(),
        root.display(),
        tok.vocab_size()
    );
    let cfg = GptConfig {
        vocab_size: tok.vocab_size(),
        block_size: a.seq,
        n_layer: a.layers,
        n_head: a.heads,
        n_embd: a.embd,
        dropout: 0.0,
    };
    let dev = harness::open_device(&a.device, false)?;
    let mut model = Gpt::new(cfg, DType::F32, &dev, 0)?.with_memory_mode(mode);
    println!(
        "model: {} blocks, width {}, {} heads, {} parameters, mode {mode:?}",
        a.layers,
        a.embd,
        a.heads,
        tape::nn::num_parameters(&model)
    );
    let mut opt = adam(a.lr)?;
    let t0 = Instant::now();
    for step in 0..a.steps {
        let b = data.batch(Split::Train, a.batch, a.seq, step)?;
        let out = train_step(&mut model, &mut opt, &b, step)?;
        if step % a.every.max(1) == 0 || step + 1 == a.steps {
            println!(
                "step {step:>5}  loss {:.4}  ({:.1} s)",
                out.loss_value()?,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let mut val = 0.0;
    for k in 0..4 {
        let b = data.batch(Split::Val, a.batch, a.seq, 1_000_000 + k)?;
        val += forward_backward(&model, &b, 0)?.loss_value()? / 4.0;
    }
    println!("validation loss {val:.4}");
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    tape::nn::save(&model, &a.out)?;
    println!("weights saved to {}", a.out.display());
    let prompt = tok.encode("fn ")?;
    let sampling = Sampling::Temperature {
        temperature: 0.8,
        seed: 1,
    };
    let text = tok.decode(&generate(&model, &prompt, a.sample, sampling)?)?;
    println!("sample:\n{text}");
    Ok(())
}

fn main() -> ExitCode {
    let a = Args::parse();
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
