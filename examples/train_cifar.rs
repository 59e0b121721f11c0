//! Trains a DenseNet-BC on CIFAR-10 with the seed project's recipe: SGD with Nesterov momentum
//! 0.9, weight decay 1e-4, batch 64, learning rate 0.1 divided by 10 at 50% and 75% of the
//! epochs, 300 epochs, 4-pixel padded random crops and horizontal flips, per-channel
//! normalisation. Test accuracy is measured after every epoch; with `--out DIR` the weights
//! (`DIR/model.safetensors`, torchvision names) and `DIR/state.json` are saved atomically after
//! every epoch, and `--resume` continues from them.
//!
//! ```text
//! cargo run --release --example train_cifar -- --data ~/cifar-10-batches-bin --out runs/bc100
//! cargo run --release --example train_cifar            # no data: a quick SYNTHETIC run
//! ```

use clap::Parser;
use densenet::data::{
    epoch_batches, load_cifar10, synthetic, Augment, Dataset, CIFAR10_MEAN, CIFAR10_STD,
};
use densenet::train::{count_correct, predict, train_step_with, StepOptions};
use densenet::{weights, DenseNet, DenseNetConfig, DenseNetError, Memory};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use tape::optim::{Optimizer, Sgd, SgdConfig};
use tape::rng::mix64;
use tape::{DType, Device, Tensor};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Synthetic run defaults: small enough to finish in about a minute on two CPU cores.
const SYNTH_TRAIN: usize = 512;
const SYNTH_TEST: usize = 128;
const SYNTH_EPOCHS: usize = 2;
const SYNTH_DEPTH: usize = 16;
const SYNTH_GROWTH: usize = 6;

/// Train a DenseNet-BC on CIFAR-10 (binary version) with the seed project's recipe.
#[derive(Parser, Debug)]
#[command(
    name = "train_cifar",
    after_help = "--resume restores the weights, the batch norm statistics, the SGD momentum \
                  buffers (DIR/optimizer.safetensors) and the epoch (so the learning-rate \
                  schedule). Without --data the run uses a SYNTHETIC dataset (not \
                  CIFAR-10): 512 train / 128 test images, depth 16 / growth 6, 2 epochs unless \
                  given."
)]
struct Args {
    /// Folder with data_batch_1.bin .. data_batch_5.bin and test_batch.bin (CIFAR-10 binary
    /// version, or the folder holding cifar-10-batches-bin). Without it: a SYNTHETIC dataset.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Model preset (densenet_bc_100_k12, densenet_bc_190_k40, densenet_bc_250_k24, densenet121,
    /// ...) [default: densenet_bc_100_k12; depth 16 / growth 6 on synthetic data].
    #[arg(long, conflicts_with_all = ["depth", "growth"])]
    preset: Option<String>,
    /// Depth 6n+4 of a CIFAR DenseNet-BC instead of a preset [default: 100].
    #[arg(long)]
    depth: Option<usize>,
    /// Growth rate k of a CIFAR DenseNet-BC instead of a preset [default: 12].
    #[arg(long)]
    growth: Option<usize>,
    /// Memory mode: naive, bottleneck (the seed's efficient=True), layer, or budget:BYTES.
    #[arg(long, default_value = "bottleneck", value_parser = parse_mode)]
    mode: Memory,
    /// Epochs [default: 300 like the seed; 2 on synthetic data].
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size (training and evaluation).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Initial learning rate (divided by 10 at 50% and 75% of the epochs).
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// L2 weight decay.
    #[arg(long, default_value_t = 1e-4)]
    wd: f64,
    /// Nesterov momentum (0 for plain SGD).
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Seed of the initialisation, shuffling, augmentation and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save DIR/model.safetensors and DIR/state.json after every epoch.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue from --out DIR's model.safetensors, optimizer.safetensors and state.json at the
    /// next epoch.
    #[arg(long, requires = "out")]
    resume: bool,
    /// With --resume: ignore tensors of DIR/model.safetensors that the model does not have (by
    /// default they are an error naming them). Values are checked either way.
    #[arg(long, requires = "resume")]
    lenient: bool,
    /// Use only the first N training images.
    #[arg(long, value_name = "N")]
    limit_train: Option<usize>,
    /// Use only the first N test images.
    #[arg(long, value_name = "N")]
    limit_test: Option<usize>,
    /// Worker threads of the CPU kernels [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Train without random crops and flips.
    #[arg(long)]
    no_augment: bool,
}

fn parse_mode(s: &str) -> Result<Memory, String> {
    s.parse::<Memory>().map_err(|e| e.to_string())
}

/// What `DIR/state.json` holds.
#[derive(Serialize, Deserialize, Debug)]
struct TrainState {
    /// Completed epochs.
    epoch: usize,
    /// Planned epochs.
    epochs: usize,
    /// Learning rate of the last completed epoch.
    lr: f64,
    seed: u64,
    /// "cifar10" or "synthetic".
    data: String,
    train_loss: f64,
    train_accuracy: f64,
    test_loss: f64,
    test_accuracy: f64,
    /// Whether DIR/optimizer.safetensors holds the SGD momentum buffers.
    optimizer_state_saved: bool,
    config: DenseNetConfig,
}

/// The seed's schedule: `lr` divided by 10 at 50% and again at 75% of `epochs` (0-based epoch).
fn lr_at(lr: f64, epoch: usize, epochs: usize) -> f64 {
    let drops = [0.5, 0.75]
        .iter()
        .filter(|&&m| epoch as f64 >= m * epochs as f64)
        .count();
    lr * 0.1f64.powi(drops as i32)
}

/// Running sums of an epoch's training steps: loss times batch size, hits, samples.
#[derive(Default)]
struct Tally {
    loss_sum: f64,
    correct: usize,
    seen: usize,
}

impl Tally {
    /// Reads one step's loss and hit count (device tensors) for a batch of `n` samples.
    fn add(&mut self, (loss, correct, n): (Tensor, Tensor, usize)) -> AnyResult<()> {
        self.loss_sum += loss.scalar()? * n as f64;
        self.correct += correct.scalar()? as usize;
        self.seen += n;
        Ok(())
    }
}

/// Mean cross-entropy and top-1 accuracy of the model (eval mode) on `ds`, in batches.
fn evaluate(
    model: &DenseNet,
    ds: &Dataset,
    batch: usize,
    device: &Device,
) -> AnyResult<(f64, f64)> {
    if ds.is_empty() {
        return Ok((f64::NAN, f64::NAN));
    }
    let (mut loss, mut correct) = (0.0, 0usize);
    let all: Vec<usize> = (0..ds.len()).collect();
    for idx in all.chunks(batch) {
        let b = ds.batch(idx, DType::F32, device)?;
        let logits = predict(model, &b.images)?;
        correct += count_correct(&logits, &b.labels)?;
        let classes = logits.shape()[1];
        for (row, &label) in logits.to_f64_vec().chunks(classes).zip(&b.labels) {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            loss += lse - row[label];
        }
    }
    Ok((loss / ds.len() as f64, correct as f64 / ds.len() as f64))
}

fn model_config(args: &Args, synthetic_run: bool) -> AnyResult<DenseNetConfig> {
    let config = if let Some(name) = &args.preset {
        DenseNetConfig::preset(name)?
    } else if args.depth.is_some() || args.growth.is_some() || !synthetic_run {
        DenseNetConfig::densenet_bc_cifar(args.depth.unwrap_or(100), args.growth.unwrap_or(12))?
    } else {
        DenseNetConfig::densenet_bc_cifar(SYNTH_DEPTH, SYNTH_GROWTH)?
    };
    Ok(config)
}

fn load_data(args: &Args) -> AnyResult<(Dataset, Dataset, &'static str)> {
    let (mut train, mut test, kind) = match &args.data {
        Some(dir) => {
            let t0 = Instant::now();
            let (train, test) = load_cifar10(dir)?;
            println!(
                "loaded CIFAR-10 from {}: {} train / {} test images in {:.1} s",
                dir.display(),
                train.len(),
                test.len(),
                t0.elapsed().as_secs_f64()
            );
            (train, test, "cifar10")
        }
        None => {
            println!("no --data given: training on a SYNTHETIC dataset (not CIFAR-10)");
            let n_train = args.limit_train.unwrap_or(SYNTH_TRAIN);
            let n_test = args.limit_test.unwrap_or(SYNTH_TEST);
            let (train, test) = synthetic(n_train, n_test, 10, 32, mix64(args.seed ^ 0x5EED));
            (train, test, "synthetic")
        }
    };
    if let Some(n) = args.limit_train {
        train.truncate(n);
    }
    if let Some(n) = args.limit_test {
        test.truncate(n);
    }
    if train.is_empty() {
        return Err("no training images (check --limit-train)".into());
    }
    Ok((train, test, kind))
}

fn read_state(path: &Path) -> AnyResult<TrainState> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("--resume: cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "--resume: {} is not a valid state file: {e}",
            path.display()
        )
        .into()
    })
}

/// The same architecture (the memory mode is a run option, not part of it).
fn same_architecture(a: &DenseNetConfig, b: &DenseNetConfig) -> bool {
    a == b
}

fn progress_bar(len: u64, prefix: String) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {msg}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(prefix);
    pb
}

fn run(args: Args) -> AnyResult<()> {
    if let Some(n) = args.threads {
        if n == 0 {
            return Err("--threads must be at least 1".into());
        }
        // Read by the kernels' thread pool when it starts, which is after this point.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let synthetic_run = args.data.is_none();
    let epochs = args
        .epochs
        .unwrap_or(if synthetic_run { SYNTH_EPOCHS } else { 300 });
    if epochs == 0 {
        return Err("--epochs must be at least 1".into());
    }

    let mut config = model_config(&args, synthetic_run)?;
    let (train, test, data_kind) = load_data(&args)?;
    if config.num_classes != train.num_classes() {
        println!(
            "note: the preset has {} classes; using a {}-way classifier for this dataset",
            config.num_classes,
            train.num_classes()
        );
        config.num_classes = train.num_classes();
    }
    let [c, h, w] = train.image_shape();
    config.validate()?;
    config.validate_image(h, w)?;
    if synthetic_run {
        println!(
            "data: synthetic, {} train / {} test images of {c}x{h}x{w}, {} classes (class colour + stripes + noise)",
            train.len(),
            test.len(),
            train.num_classes()
        );
    } else {
        println!(
            "data: CIFAR-10, {} train / {} test images, normalised with mean {CIFAR10_MEAN:?} std {CIFAR10_STD:?}",
            train.len(),
            test.len()
        );
    }

    let device = Device::cpu();
    let mut model =
        DenseNet::new(config.clone(), DType::F32, &device, args.seed)?.with_memory(args.mode);
    println!(
        "model: DenseNet-BC depth {}, growth {}, blocks {:?}, {} parameters, mode {}, f32 on {}",
        config.depth(),
        config.growth_rate,
        config.block_config,
        model.num_parameters(),
        model.memory(),
        device
    );

    let out = args.out.clone();
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("--out: cannot create {}: {e}", dir.display()))?;
    }
    let nesterov = args.momentum > 0.0;
    let mut opt = Sgd::new(SgdConfig {
        lr: args.lr,
        momentum: args.momentum,
        dampening: 0.0,
        nesterov,
        weight_decay: args.wd,
    })?;
    let mut start_epoch = 0;
    if args.resume {
        let dir = out.as_ref().ok_or("--resume needs --out DIR")?;
        let state = read_state(&dir.join("state.json"))?;
        if !same_architecture(&state.config, &config) {
            return Err(format!(
                "--resume: {} was written for another model ({:?}); pass the same --preset/--depth/--growth",
                dir.join("state.json").display(),
                state.config
            )
            .into());
        }
        weights::load_with(
            &mut model,
            &dir.join("model.safetensors"),
            weights::LoadOptions {
                lenient: args.lenient,
            },
        )?;
        let opt_path = dir.join("optimizer.safetensors");
        let momentum = if state.optimizer_state_saved && opt_path.exists() {
            let stored = weights::load_tensors(&opt_path)?;
            let tensors = stored
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.to_tensor(tape::DType::F64, model.device())?)))
                .collect::<Result<Vec<_>, tape::Error>>()?;
            opt.load_state_dict(&model.parameters(), &tensors)?;
            "SGD momentum restored"
        } else {
            "no optimizer state saved: SGD momentum restarts from zero"
        };
        start_epoch = state.epoch;
        println!(
            "resumed from {} after epoch {} (test accuracy {:.2}%); {momentum}",
            dir.display(),
            state.epoch,
            100.0 * state.test_accuracy
        );
        if start_epoch >= epochs {
            println!("already trained for {start_epoch} of {epochs} epochs: nothing to do (raise --epochs)");
            return Ok(());
        }
    }

    // 1-based epochs where the schedule divides the learning rate by 10.
    let drops: Vec<String> = (1..epochs)
        .filter(|&e| lr_at(1.0, e, epochs) < lr_at(1.0, e - 1, epochs))
        .map(|e| (e + 1).to_string())
        .collect();
    println!(
        "recipe: SGD{} momentum {}, weight decay {}, batch {}, lr {}{}, {} epochs, {}",
        if nesterov { " Nesterov" } else { "" },
        args.momentum,
        args.wd,
        args.batch,
        args.lr,
        if drops.is_empty() {
            String::new()
        } else {
            format!(
                " (/10 at the start of epoch{} {})",
                if drops.len() > 1 { "s" } else { "" },
                drops.join(" and ")
            )
        },
        epochs,
        if args.no_augment {
            "no augmentation"
        } else {
            "random crop (pad 4) + horizontal flip"
        }
    );

    let augment = if args.no_augment {
        Augment {
            pad: 0,
            flip: false,
            seed: 0,
        }
    } else {
        Augment::cifar(mix64(args.seed ^ 0xA116))
    };
    let shuffle_seed = mix64(args.seed ^ 0x5A0F);
    let mut best = (f64::NEG_INFINITY, 0usize);
    for epoch in start_epoch..epochs {
        let lr = lr_at(args.lr, epoch, epochs);
        opt.set_lr(lr);
        let batches = epoch_batches(train.len(), args.batch, shuffle_seed, epoch as u64);
        let pb = progress_bar(train.len() as u64, format!("epoch {}/{epochs}", epoch + 1));
        let log_every = batches.len().div_ceil(10).max(1);
        let t0 = Instant::now();
        let mut tally = Tally::default();
        // The previous step's loss and hit count (device tensors) and batch size: read after the
        // next step is queued, so the host never waits for the step it has just queued.
        let mut pending: Option<(Tensor, Tensor, usize)> = None;
        for (b, idx) in batches.iter().enumerate() {
            let batch = train.augmented_batch(idx, &augment, epoch as u64, DType::F32, &device)?;
            let step_seed = mix64(args.seed ^ mix64(((epoch as u64) << 32) | b as u64));
            // Steps are numbered from 0 over the whole run; the anomaly check (on by default)
            // stops at the first non-finite loss, gradient or parameter, before the update.
            let step_index = (epoch * batches.len() + b) as u64;
            let step = match train_step_with(
                &mut model,
                &mut opt,
                &batch.images,
                &batch.labels,
                StepOptions::new(step_index, step_seed),
            ) {
                Ok(step) => step,
                Err(e @ DenseNetError::NonFinite { .. }) => {
                    pb.abandon();
                    return Err(format!(
                        "epoch {} batch {}: {e} (e.g. --lr below {})",
                        epoch + 1,
                        b + 1,
                        args.lr
                    )
                    .into());
                }
                Err(e) => return Err(e.into()),
            };
            let queued = (
                step.loss_tensor().clone(),
                step.correct_tensor().clone(),
                idx.len(),
            );
            drop(step);
            if let Some(p) = pending.replace(queued) {
                tally.add(p)?;
            }
            let seen = tally.seen;
            let msg = if seen == 0 {
                "first step queued".to_string()
            } else {
                format!(
                    "loss {:.4} acc {:.2}% {:.1} img/s",
                    tally.loss_sum / seen as f64,
                    100.0 * tally.correct as f64 / seen as f64,
                    seen as f64 / t0.elapsed().as_secs_f64()
                )
            };
            pb.inc(idx.len() as u64);
            if pb.is_hidden() && ((b + 1) % log_every == 0 || b + 1 == batches.len()) {
                println!(
                    "  epoch {}/{epochs} [{seen}/{}] {msg}",
                    epoch + 1,
                    train.len()
                );
            }
            pb.set_message(msg);
        }
        if let Some(p) = pending.take() {
            tally.add(p)?;
        }
        pb.finish_and_clear();
        let train_time = t0.elapsed().as_secs_f64();
        let seen = tally.seen;
        let (train_loss, train_acc) = (
            tally.loss_sum / seen as f64,
            tally.correct as f64 / seen as f64,
        );
        let (test_loss, test_acc) = evaluate(&model, &test, args.batch, &device)?;
        if test_acc > best.0 {
            best = (test_acc, epoch + 1);
        }
        println!(
            "epoch {:>3}/{epochs}  lr {lr:.4}  train loss {train_loss:.4} acc {:.2}%  test loss {test_loss:.4} acc {:.2}%  {:.1} img/s  {:.1} s",
            epoch + 1,
            100.0 * train_acc,
            100.0 * test_acc,
            seen as f64 / train_time,
            t0.elapsed().as_secs_f64()
        );
        if let Some(dir) = &out {
            weights::save(&model, &dir.join("model.safetensors"))?;
            weights::save_tensors(
                &dir.join("optimizer.safetensors"),
                &opt.state_dict(&model.parameters()),
            )?;
            let state = TrainState {
                epoch: epoch + 1,
                epochs,
                lr,
                seed: args.seed,
                data: data_kind.to_string(),
                train_loss,
                train_accuracy: train_acc,
                test_loss,
                test_accuracy: test_acc,
                optimizer_state_saved: true,
                config: config.clone(),
            };
            weights::write_atomic(&dir.join("state.json"), &serde_json::to_vec_pretty(&state)?)?;
        }
    }
    if best.0.is_finite() {
        println!(
            "best test accuracy {:.2}% (epoch {})",
            100.0 * best.0,
            best.1
        );
    }
    if let Some(dir) = &out {
        println!(
            "weights: {} (state: {})",
            dir.join("model.safetensors").display(),
            dir.join("state.json").display()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
