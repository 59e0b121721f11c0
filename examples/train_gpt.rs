//! Trains the small GPT on this workspace's own Rust sources (read at run time, character
//! level) with the shared training loop ([`trainer::fit`]): an "epoch" is `--every` steps, after
//! which the validation loss is measured and, with `--out DIR`, the weights, the Adam state and
//! `DIR/state.json` are saved atomically (`--resume` continues from them); then it prints a
//! generated sample.
//!
//! `cargo run --release --example train_gpt [-- --steps 500 --recompute selective --out DIR]`
//!
//! Data parallel (a build with `--features mpi`): `mpirun -np 2 target/release/examples/train_gpt
//! --dist mpi --batch 8`; `--batch` is per process, rank `r` of `N` takes window `index * N + r`
//! of the text at step `index`, rank 0 alone prints and writes `--out`.

use clap::Parser;
use dist::{Ddp, DdpOptions, DistKind, ProcessGroup};
use gpt::data::{Split, TextDataset};
use gpt::generate::{generate, Sampling};
use gpt::train::{adam, train_step_ddp, train_step_queued};
use gpt::{Gpt, GptConfig, GptError, Recompute};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tape::nn::Module;
use tape::optim::{Adam, Optimizer};
use tape::{ops, DType, Precision, Tape};
use trainer::anomaly::AnomalyGuard;
use trainer::{fit, Eval, FitOptions, Queued, RunDir, Schedule, Task};

#[derive(Parser, Debug)]
#[command(about = "Train a small character-level GPT on this workspace's Rust sources")]
struct Args {
    /// Device: cpu, meta (a dry run: the peaks of one step and one evaluation batch, no values),
    /// cuda or cuda:N (needs a build with the `cuda` feature and an NVIDIA GPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Training steps.
    #[arg(long, default_value_t = 500)]
    steps: u64,
    /// Steps per "epoch": the training loss is summed and the validation loss measured (and
    /// the run saved, with --out) every this many steps.
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
    /// Recompute setting: naive, per-block, selective, selective-linear or budget:SIZE (e.g.
    /// budget:200MB).
    #[arg(long, visible_alias = "mode", default_value = "selective")]
    recompute: Recompute,
    /// Precision policy: f32, bf16 or f16 (16-bit activations and f32 master weights).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Characters of source text to use at most.
    #[arg(long, default_value_t = 1_000_000)]
    max_chars: usize,
    /// Characters to generate after training.
    #[arg(long, default_value_t = 300)]
    sample: usize,
    /// Run directory: model.safetensors, optimizer.safetensors and state.json, saved
    /// atomically every --every steps.
    #[arg(long, default_value = "target/train_gpt")]
    out: PathBuf,
    /// Continue from --out's saved state at the next "epoch".
    #[arg(long)]
    resume: bool,
    /// Data parallel: `mpi` joins the world `mpirun -np N` started (a build with `--features
    /// mpi`); `--batch` is per process.
    #[arg(long, default_value = "none")]
    dist: DistKind,
}

/// Prints on rank 0 only.
macro_rules! say {
    ($root:expr, $($t:tt)*) => {
        if $root {
            println!($($t)*);
        }
    };
}

/// The GPT on the source text as the training loop sees it.
struct GptTask {
    model: Gpt,
    opt: Adam,
    data: TextDataset,
    batch: usize,
    seq: usize,
    steps: u64,
    every: u64,
    config: GptConfig,
    group: ProcessGroup,
    /// The gradient reducer of a data-parallel run (`--dist`).
    ddp: Option<Ddp>,
}

impl Task for GptTask {
    type Error = GptError;

    fn steps(&self, epoch: usize) -> usize {
        let start = epoch as u64 * self.every;
        self.every.min(self.steps.saturating_sub(start)) as usize
    }

    fn samples(&self, epoch: usize) -> usize {
        self.steps(epoch) * self.batch * self.seq
    }

    fn train_step(
        &mut self,
        _epoch: usize,
        _step: usize,
        index: u64,
        guard: &mut AnomalyGuard,
    ) -> gpt::Result<Queued> {
        // Each rank its own window of the text: the world's windows of step `index` together.
        let (rank, world) = (self.group.rank() as u64, self.group.world_size() as u64);
        let window = index * world + rank;
        let b = self
            .data
            .batch(Split::Train, self.batch, self.seq, window)?;
        // One process checks for non-finite values through the loop's guard (no host sync per
        // step); a data-parallel run checks every step at once, across ranks.
        let (model, opt) = (&mut self.model, &mut self.opt);
        let out = match &self.ddp {
            Some(ddp) => train_step_ddp(model, opt, &b, index, ddp)?,
            None => train_step_queued(model, opt, guard, &b, index)?,
        };
        Ok(Queued {
            loss: out.loss.clone(),
            correct: None,
            samples: self.batch * self.seq,
        })
    }

    fn evaluate(&mut self) -> gpt::Result<Option<Eval>> {
        let mut loss = 0.0;
        for k in 0..4 {
            let b = self
                .data
                .batch(Split::Val, self.batch, self.seq, 1_000_000 + k)?;
            let logits = self.model.logits(&b.inputs, b.batch, b.seq)?;
            let flat = ops::reshape(
                &mut Tape::no_grad(),
                &logits,
                &[b.batch * b.seq, logits.shape()[2]],
            )?;
            loss += ops::cross_entropy(&mut Tape::no_grad(), &flat, &b.targets)?.scalar()? / 4.0;
        }
        Ok(Some(Eval {
            loss,
            accuracy: None,
        }))
    }

    fn state(&mut self) -> (&mut dyn Module, &mut dyn Optimizer) {
        (&mut self.model, &mut self.opt)
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "vocab_size": self.config.vocab_size,
            "block_size": self.config.block_size,
            "n_layer": self.config.n_layer,
            "n_head": self.config.n_head,
            "n_embd": self.config.n_embd,
        })
    }
}

fn run(a: &Args, group: ProcessGroup) -> Result<(), Box<dyn std::error::Error>> {
    let is_root = group.is_root();
    let mode = a.recompute;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = TextDataset::from_rust_sources(root, a.max_chars)?;
    let tok = &data.tokenizer;
    say!(
        is_root,
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
    let dev = harness::open_device(&harness::rank_device(&a.device, &group), false)?;
    let mut model = Gpt::new(cfg.clone(), DType::F32, &dev, 0)?
        .with_recompute(mode)?
        .with_precision(a.precision);
    say!(
        is_root,
        "model: {} blocks, width {}, {} heads, {} parameters, recompute {mode}, precision {}",
        a.layers,
        a.embd,
        a.heads,
        tape::nn::num_parameters(&model),
        a.precision
    );
    if a.every == 0 || a.steps == 0 {
        return Err("--steps and --every must be at least 1".into());
    }
    let epochs = a.steps.div_ceil(a.every) as usize;
    let ddp = match a.dist {
        DistKind::None => None,
        _ => Some(Ddp::new(group.clone(), &mut model, DdpOptions::default())?),
    };
    if ddp.is_some() {
        say!(
            is_root,
            "data parallel: {} processes ({}), batch {} per process",
            group.world_size(),
            group.backend(),
            a.batch
        );
    }
    let mut task = GptTask {
        model,
        opt: adam(a.lr)?,
        data,
        batch: a.batch,
        seq: a.seq,
        steps: a.steps,
        every: a.every,
        config: cfg,
        group: group.clone(),
        ddp,
    };
    if dev.is_meta() {
        let (train_peak, eval_peak) = harness::dry_run_peaks(
            &dev,
            &mut task,
            |task| {
                let mut guard = AnomalyGuard::new();
                task.train_step(0, 0, 0, &mut guard)?;
                guard.finish(&task.model).map_err(GptError::from)
            },
            |task| {
                let b = task
                    .data
                    .batch(Split::Val, task.batch, task.seq, 1_000_000)?;
                task.model.logits(&b.inputs, b.batch, b.seq).map(|_| ())
            },
        )?;
        say!(is_root, "{}", harness::dry_run_line(train_peak, eval_peak));
        return Ok(());
    }
    let options = FitOptions {
        run_dir: Some(RunDir::new(&a.out)),
        resume: a.resume,
        group: group.clone(),
        ..FitOptions::new(epochs, a.lr, Schedule::Constant)
    };
    fit(&mut task, &options)?;
    if !is_root {
        return Ok(());
    }
    println!("run saved in {}", a.out.display());
    let (model, tok) = (&task.model, &task.data.tokenizer);
    let prompt = tok.encode("fn ")?;
    let sampling = Sampling::Temperature {
        temperature: 0.8,
        seed: 1,
    };
    let text = tok.decode(&generate(model, &prompt, a.sample, sampling)?)?;
    println!("sample:\n{text}");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let group = match dist::join(args.dist) {
        Ok(g) => g,
        Err(e) => return harness::exit_code(Err(e)),
    };
    let result = run(&args, group.clone());
    harness::exit_or_abort(result, &group)
}
