//! Trains a DenseNet-BC on CIFAR-10 with the seed project's recipe: SGD with Nesterov momentum
//! 0.9, weight decay 1e-4, batch 64, learning rate 0.1 divided by 10 at 50% and 75% of the
//! epochs, 300 epochs, 4-pixel padded random crops and horizontal flips, per-channel
//! normalisation. The loop is the shared one ([`trainer::fit`]): test accuracy is measured after
//! every epoch; with `--out DIR` the weights (`DIR/model.safetensors`, torchvision names), the
//! SGD momentum (`DIR/optimizer.safetensors`) and `DIR/state.json` are saved atomically after
//! every epoch, and `--resume` continues from them. `--device cuda:0` trains on a GPU (a build
//! with `--features cuda`).
//!
//! With `--dist mpi` (a build with `--features mpi`) it joins the world `mpirun -np N` started:
//! data-parallel training, `--batch` per process, rank 0 alone printing and writing `--out`.
//! `--sync-bn` normalises with the global batch's statistics (synchronised batch norm).
//!
//! ```text
//! cargo run --release --example train_cifar -- --data ~/cifar-10-batches-bin --out runs/bc100
//! cargo run --release --example train_cifar            # no data: a quick SYNTHETIC run
//! mpirun -np 2 target/release/examples/train_cifar --dist mpi --batch 32
//! mpirun -np 2 target/release/examples/train_cifar --dist mpi --batch 32 --sync-bn
//! ```

use clap::Parser;
use densenet::data::{
    epoch_order, load_cifar10, synthetic, Augment, Dataset, CIFAR10_MEAN, CIFAR10_STD,
};
use densenet::train::{
    count_correct, predict, train_step_ddp, train_step_queued, train_step_scaled, StepOptions,
};
use densenet::{DenseNet, DenseNetConfig, DenseNetError, Recompute};
use dist::{Ddp, DdpOptions, DistKind, DistributedSampler, ProcessGroup};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use tape::nn::Module;
use tape::optim::{LossScaler, LossScalerConfig, Optimizer, Sgd, SgdConfig};
use tape::rng::mix64;
use tape::{DType, Device, Precision};
use trainer::anomaly::AnomalyGuard;
use trainer::{fit, Eval, FitOptions, Queued, RunDir, Schedule, Task};

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
    /// Recompute setting: naive, bottleneck (the seed's efficient=True), layer, or budget:SIZE
    /// (e.g. budget:480MB).
    #[arg(long, visible_alias = "mode", default_value = "bottleneck")]
    recompute: Recompute,
    /// Precision policy: f32, bf16 or f16 (16-bit activations and f32 master weights; f16
    /// trains with dynamic loss scaling, its state saved with the run).
    #[arg(long, default_value = "f32")]
    precision: Precision,
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
    /// Device: cpu, meta (a dry run: the peaks of one step and one evaluation batch, no values),
    /// cuda or cuda:N (a build with the `cuda` feature and an NVIDIA GPU); with
    /// --dist, `cuda` is `cuda:<local rank>`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Worker threads of the CPU kernels [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Train without random crops and flips.
    #[arg(long)]
    no_augment: bool,
    /// Data-parallel training: `mpi` joins the world `mpirun -np N` started (a build with
    /// `--features mpi`; without mpirun, a world of one). `--batch` is per process.
    #[arg(long, default_value = "none")]
    dist: DistKind,
    /// With --dist: synchronised batch norm (statistics of the global batch, reduced once per
    /// layer in the forward pass and reused by every recompute; running statistics the same on
    /// every rank); without it each rank normalises its own shard (PyTorch's default). CPU only
    /// for now.
    #[arg(long)]
    sync_bn: bool,
    /// Fault injection for tests: RANK:STEP makes that rank's training step STEP (0-based over
    /// the run) fail as bad data would.
    #[arg(long, hide = true, value_name = "RANK:STEP")]
    fail_at: Option<String>,
}

/// Prints on rank 0 only.
macro_rules! say {
    ($root:expr, $($t:tt)*) => {
        if $root {
            println!($($t)*);
        }
    };
}

/// Mean cross-entropy and top-1 accuracy of the model (eval mode) on `ds`, in batches.
fn evaluate(
    model: &DenseNet,
    ds: &Dataset,
    batch: usize,
    device: &Device,
    group: &ProcessGroup,
) -> densenet::Result<(f64, f64)> {
    if ds.is_empty() {
        return Ok((f64::NAN, f64::NAN));
    }
    let (mut loss, mut correct) = (0.0, 0usize);
    // Each rank evaluates every world-th image; the sums are added over the ranks.
    let (rank, world) = (group.rank(), group.world_size());
    let mine: Vec<usize> = (rank..ds.len()).step_by(world).collect();
    for idx in mine.chunks(batch) {
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
    let sums = group.sum_f64(&[loss, correct as f64])?;
    Ok((sums[0] / ds.len() as f64, sums[1] / ds.len() as f64))
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

fn load_data(args: &Args, root: bool) -> AnyResult<(Dataset, Dataset, &'static str)> {
    let (mut train, mut test, kind) = match &args.data {
        Some(dir) => {
            let t0 = Instant::now();
            let (train, test) = load_cifar10(dir)?;
            say!(
                root,
                "loaded CIFAR-10 from {}: {} train / {} test images in {:.1} s",
                dir.display(),
                train.len(),
                test.len(),
                t0.elapsed().as_secs_f64()
            );
            (train, test, "cifar10")
        }
        None => {
            say!(
                root,
                "no --data given: training on a SYNTHETIC dataset (not CIFAR-10)"
            );
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

/// DenseNet on CIFAR-10 (or synthetic data) as the training loop sees it.
struct CifarTask {
    model: DenseNet,
    opt: Sgd,
    train: Dataset,
    test: Dataset,
    batch: usize,
    augment: Augment,
    shuffle_seed: u64,
    seed: u64,
    device: Device,
    config: DenseNetConfig,
    group: ProcessGroup,
    /// The gradient reducer of a data-parallel run (`--dist`).
    ddp: Option<Ddp>,
    /// A step (over the run) at which this rank fails, for fault tests.
    fail_at: Option<u64>,
    /// Dynamic loss scaling of an f16 run (saved with the run, restored on resume).
    scaler: Option<LossScaler>,
}

impl CifarTask {
    /// This rank's share of the epoch (the whole epoch in a world of one), in batches.
    fn sampler(&self) -> DistributedSampler {
        DistributedSampler::new(self.train.len(), self.group.rank(), self.group.world_size())
    }

    fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let order = epoch_order(self.train.len(), self.shuffle_seed, epoch as u64);
        self.sampler().batches(&order, self.batch)
    }
}

impl Task for CifarTask {
    type Error = DenseNetError;

    fn steps(&self, _epoch: usize) -> usize {
        self.sampler().num_samples().div_ceil(self.batch)
    }

    fn samples(&self, _epoch: usize) -> usize {
        self.sampler().num_samples()
    }

    fn train_step(
        &mut self,
        epoch: usize,
        step: usize,
        index: u64,
        guard: &mut AnomalyGuard,
    ) -> densenet::Result<Queued> {
        if self.fail_at == Some(index) {
            return Err(DenseNetError::Data(format!(
                "rank {}: an unreadable batch at step {index} (injected fault)",
                self.group.rank()
            )));
        }
        let idx = &self.batches(epoch)[step];
        let batch = self.train.augmented_batch(
            idx,
            &self.augment,
            epoch as u64,
            DType::F32,
            &self.device,
        )?;
        let step_seed = mix64(self.seed ^ mix64(((epoch as u64) << 32) | step as u64));
        // The anomaly check (on by default) stops at the first non-finite loss, gradient or
        // parameter: its update is skipped on the device. One process checks through the
        // loop's guard (no host sync; step n is reported when step n + 1 queues its update, or
        // at the epoch's end); a data-parallel run checks every step at once, across ranks.
        let (x, y, options) = (
            &batch.images,
            &batch.labels,
            StepOptions::new(index, step_seed),
        );
        let (model, opt) = (&mut self.model, &mut self.opt);
        let out = match (&self.ddp, &mut self.scaler) {
            (Some(ddp), _) => train_step_ddp(model, opt, x, y, options, ddp)?,
            // An f16 step whose gradients overflow is skipped and the scale backs off.
            (None, Some(scaler)) => train_step_scaled(model, opt, scaler, x, y, step_seed)?.0,
            (None, None) => train_step_queued(model, opt, guard, x, y, options)?,
        };
        Ok(Queued {
            loss: out.loss_tensor().clone(),
            correct: Some(out.correct_tensor().clone()),
            samples: idx.len(),
        })
    }

    fn evaluate(&mut self) -> densenet::Result<Option<Eval>> {
        if self.test.is_empty() {
            return Ok(None);
        }
        let (model, test, group) = (&self.model, &self.test, &self.group);
        let (loss, accuracy) = evaluate(model, test, self.batch, &self.device, group)?;
        Ok(Some(Eval {
            loss,
            accuracy: Some(accuracy),
        }))
    }

    fn state(&mut self) -> (&mut dyn Module, &mut dyn Optimizer) {
        (&mut self.model, &mut self.opt)
    }

    fn loss_scaler(&mut self) -> Option<&mut LossScaler> {
        self.scaler.as_mut()
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "densenet": self.config })
    }
}

/// `--device meta`: one training step and one evaluation batch, their peaks printed.
fn dry_run(task: &mut CifarTask, root: bool) -> AnyResult<()> {
    let device = task.device.clone();
    let eval_idx: Vec<usize> = (0..task.batch.min(task.test.len())).collect();
    let (train_peak, eval_peak) = harness::dry_run_peaks(
        &device,
        task,
        |task| {
            let mut guard = AnomalyGuard::new();
            task.train_step(0, 0, 0, &mut guard)?;
            let model = &task.model;
            guard.finish(model).map_err(DenseNetError::from)
        },
        |task| {
            let batch = task.test.batch(&eval_idx, DType::F32, &device)?;
            predict(&task.model, &batch.images).map(|_| ())
        },
    )?;
    say!(root, "{}", harness::dry_run_line(train_peak, eval_peak));
    Ok(())
}

fn run(args: Args, group: ProcessGroup) -> AnyResult<()> {
    let root = group.is_root();
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
    let (train, test, data_kind) = load_data(&args, root)?;
    if config.num_classes != train.num_classes() {
        say!(
            root,
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
        say!(
            root,
            "data: synthetic, {} train / {} test images of {c}x{h}x{w}, {} classes (class colour + stripes + noise)",
            train.len(),
            test.len(),
            train.num_classes()
        );
    } else {
        say!(
            root,
            "data: CIFAR-10, {} train / {} test images, normalised with mean {CIFAR10_MEAN:?} std {CIFAR10_STD:?}",
            train.len(),
            test.len()
        );
    }

    let device = harness::open_device(&harness::rank_device(&args.device, &group), false)?;
    let mut model = DenseNet::new(config.clone(), DType::F32, &device, args.seed)?
        .with_recompute(args.recompute)?
        .with_precision(args.precision);
    say!(
        root,
        "model: DenseNet-BC depth {}, growth {}, blocks {:?}, {} parameters, recompute {}, f32 weights, precision {} on {}",
        config.depth(),
        config.growth_rate,
        config.block_config,
        model.num_parameters(),
        model.recompute(),
        model.precision(),
        device
    );

    let nesterov = args.momentum > 0.0;
    let opt = Sgd::new(SgdConfig {
        lr: args.lr,
        momentum: args.momentum,
        dampening: 0.0,
        nesterov,
        weight_decay: args.wd,
    })?;
    let schedule = Schedule::densenet();
    say!(
        root,
        "recipe: SGD{} momentum {}, weight decay {}, batch {}, lr {} ({}), {} epochs, {}",
        if nesterov { " Nesterov" } else { "" },
        args.momentum,
        args.wd,
        args.batch,
        args.lr,
        schedule.describe(epochs),
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
    let ddp = match args.dist {
        DistKind::None => None,
        _ => {
            let options = DdpOptions::default().with_sync_batch_norm(args.sync_bn);
            Some(Ddp::new(group.clone(), &mut model, options)?)
        }
    };
    if ddp.is_some() {
        say!(
            root,
            "data parallel: {} processes ({}), batch {} per process, {} in all{}",
            group.world_size(),
            group.backend(),
            args.batch,
            args.batch * group.world_size(),
            match args.sync_bn {
                true => ", synchronised batch norm",
                false => "",
            }
        );
    }
    let fail_at = match &args.fail_at {
        Some(spec) => parse_fail_at(spec)?,
        None => None,
    }
    .filter(|(rank, _)| *rank == group.rank())
    .map(|(_, step)| step);
    // f16 trains with dynamic loss scaling (PyTorch's GradScaler defaults); bf16 has f32's
    // range and needs none.
    let scaler = match (args.precision, group.world_size()) {
        (Precision::F16, 1) => Some(LossScaler::new(LossScalerConfig::default())?),
        (Precision::F16, _) => {
            return Err("--precision f16 trains with a loss scaler, which data-parallel runs do not have yet: use bf16".into())
        }
        _ => None,
    };
    let mut task = CifarTask {
        model,
        opt,
        train,
        test,
        batch: args.batch,
        augment,
        shuffle_seed: mix64(args.seed ^ 0x5A0F),
        seed: args.seed,
        device,
        config,
        group: group.clone(),
        ddp,
        fail_at,
        scaler,
    };
    let options = FitOptions {
        run_dir: args.out.clone().map(RunDir::new),
        resume: args.resume,
        lenient: args.lenient,
        group: group.clone(),
        ..FitOptions::new(epochs, args.lr, schedule)
    };
    say!(root, "data: {data_kind}");
    if task.device.is_meta() {
        return dry_run(&mut task, root);
    }
    let reports = fit(&mut task, &options)?;
    let best = reports
        .iter()
        .filter_map(|r| Some((r.eval?.accuracy?, r.epoch)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((acc, epoch)) = best {
        say!(
            root,
            "best test accuracy {:.2}% (epoch {epoch})",
            100.0 * acc
        );
    }
    if let Some(dir) = &options.run_dir {
        say!(
            root,
            "weights: {} (state: {})",
            dir.model_file().display(),
            dir.state_file().display()
        );
    }
    Ok(())
}

/// `RANK:STEP` of `--fail-at`.
fn parse_fail_at(spec: &str) -> AnyResult<Option<(usize, u64)>> {
    let (rank, step) = spec
        .split_once(':')
        .ok_or_else(|| format!("--fail-at wants RANK:STEP, got '{spec}'"))?;
    Ok(Some((rank.parse()?, step.parse()?)))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let group = match dist::join(args.dist) {
        Ok(g) => g,
        Err(e) => return harness::exit_code(Err(e)),
    };
    let result = run(args, group.clone());
    harness::exit_or_abort(result, &group)
}
