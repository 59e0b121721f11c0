//! Training a candle MLP chain (16 blocks of three 1024-wide layers, batch 512: the prototype's
//! size) and a small transformer from candle-nn parts (8 pre-norm blocks) with and without checkpoints:
//! each mode's step peak (bytes allocated above what was alive as the step began, counted by a
//! counting global allocator) and median step time (wall, and the process's CPU time, which
//! other programs' load on a shared machine disturbs less), side by side. Modes: `naive` (no
//! checkpoint), `per_block` (every block but the last checkpointed), `sqrt` (about sqrt(n)
//! equal segments), `planner` (the planner's cheapest plan at a budget halfway between the
//! naive and per-block predicted peaks) and `per_block+fused` (per block, with the SGD step
//! fused into backward by [`candle_checkpoint::fused`]: each checkpointed block's parameters
//! are updated inside its recompute and their gradients dropped there). `above grads` is the
//! peak less the parameters' gradients (the activation-only view), for the modes that hold
//! every gradient.
//!
//! `cargo run --release -p candle-checkpoint --example candle_checkpoint [-- --json --iters 3
//! --model mlp|transformer|all --blocks 16 --batch 512 --width 1024]`

use candle_checkpoint::budget::{profile_chain, tensor_bytes};
use candle_checkpoint::fused::{FusedUpdate, Sgd};
use candle_checkpoint::planner::{HeldChain, Plan};
use candle_checkpoint::{backward, run_plan, CountingAlloc, Stage};
use candle_core::{DType, Device, Module, Result, Tensor, Var, D};
use candle_nn::optim::{Optimizer, SGD};
use candle_nn::Linear;
use std::time::Instant;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

/// Command-line settings.
struct Args {
    json: bool,
    iters: usize,
    model: String,
    blocks: usize,
    batch: usize,
    width: usize,
}

/// Reads `--flag value` pairs and `--json`.
fn args() -> std::result::Result<Args, String> {
    let mut a = Args {
        json: false,
        iters: 3,
        model: "all".into(),
        blocks: 16,
        batch: 512,
        width: 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--json" {
            a.json = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--iters" => a.iters = num()?.max(1),
            "--blocks" => a.blocks = num()?.max(1),
            "--batch" => a.batch = num()?.max(1),
            "--width" => a.width = num()?.max(1),
            "--model" => a.model = value,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// A linear layer of fresh variables (scaled normal weights, zero bias).
fn linear(inp: usize, out: usize, vars: &mut Vec<Var>) -> Result<Linear> {
    let w = Var::randn(
        0f32,
        (1.0 / inp as f64).sqrt() as f32,
        (out, inp),
        &Device::Cpu,
    )?;
    let b = Var::zeros(out, DType::F32, &Device::Cpu)?;
    let l = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
    vars.push(w);
    vars.push(b);
    Ok(l)
}

/// The MLP chain: `blocks` blocks of three `width`-wide layers, ReLU after each.
fn mlp(blocks: usize, width: usize, vars: &mut Vec<Var>) -> Result<Vec<Stage>> {
    (0..blocks)
        .map(|b| {
            let layers = (0..3)
                .map(|_| linear(width, width, vars))
                .collect::<Result<Vec<_>>>()?;
            Ok(Stage::new(format!("mlp{b}"), move |x| {
                let mut h = x.clone();
                for l in &layers {
                    h = l.forward(&h)?.relu()?;
                }
                Ok(h)
            }))
        })
        .collect()
}

/// Layer normalisation over the last dimension from candle ops, with weight and bias.
/// (candle-nn's `LayerNorm` takes a fused kernel without a backward for contiguous inputs: no
/// gradient would flow through it.)
#[derive(Clone)]
struct Norm {
    w: Tensor,
    b: Tensor,
}

impl Norm {
    fn new(d: usize, vars: &mut Vec<Var>) -> Result<Self> {
        let w = Var::ones(d, DType::F32, &Device::Cpu)?;
        let b = Var::zeros(d, DType::F32, &Device::Cpu)?;
        let n = Norm {
            w: w.as_tensor().clone(),
            b: b.as_tensor().clone(),
        };
        vars.push(w);
        vars.push(b);
        Ok(n)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .broadcast_mul(&self.w)?
            .broadcast_add(&self.b)
    }
}

/// One pre-norm transformer block from candle-nn parts (linear layers, softmax): causal
/// self-attention and a 4x MLP, each with a residual.
#[derive(Clone)]
struct Block {
    ln1: Norm,
    ln2: Norm,
    qkv: Linear,
    proj: Linear,
    up: Linear,
    down: Linear,
    heads: usize,
}

impl Block {
    fn new(d: usize, heads: usize, vars: &mut Vec<Var>) -> Result<Self> {
        let (ln1, ln2) = (Norm::new(d, vars)?, Norm::new(d, vars)?);
        Ok(Block {
            ln1,
            ln2,
            qkv: linear(d, 3 * d, vars)?,
            proj: linear(d, d, vars)?,
            up: linear(d, 4 * d, vars)?,
            down: linear(4 * d, d, vars)?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = self.qkv.forward(&self.ln1.forward(x)?)?;
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, i * d, d)?
                .reshape((b, t, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        let mask: Vec<f32> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), x.device())?;
        // candle-nn's `softmax` from ops: its fused `softmax_last_dim` has no backward.
        let att = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        let x = (x + self.proj.forward(&y)?)?;
        let h = self.up.forward(&self.ln2.forward(&x)?)?.gelu()?;
        x + self.down.forward(&h)?
    }
}

/// The transformer chain.
fn transformer(blocks: usize, d: usize, heads: usize, vars: &mut Vec<Var>) -> Result<Vec<Stage>> {
    (0..blocks)
        .map(|i| {
            let blk = Block::new(d, heads, vars)?;
            Ok(Stage::new(format!("tf{i}"), move |x| blk.forward(x)))
        })
        .collect()
}

/// CPU seconds this process has used (user + system, all threads), from `/proc/self/stat`;
/// `None` where it cannot be read. Less sensitive than wall time to other programs' load on a
/// shared machine.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// How a step applies SGD: candle-nn's after backward, or fused into backward.
enum Update<'a> {
    Store(&'a mut SGD),
    Fused(&'a FusedUpdate),
}

/// Forward under `plan`, mean-square loss to `target`, backward and the SGD step.
fn run_step(
    stages: &[Stage],
    plan: &Plan,
    (x, target): (&Tensor, &Tensor),
    update: &mut Update,
) -> candle_checkpoint::Result<()> {
    match update {
        Update::Store(opt) => {
            let y = run_plan(stages, plan, x)?;
            let loss = (y - target)?.sqr()?.mean_all()?;
            let grads = backward(&loss)?;
            drop(loss);
            opt.step(&grads)?;
        }
        Update::Fused(fused) => {
            let step = fused.begin()?;
            let y = run_plan(stages, plan, x)?;
            let loss = (y - target)?.sqr()?.mean_all()?;
            drop(step.backward(&loss)?);
        }
    }
    Ok(())
}

/// One training step ([`run_step`]); returns its peak above the bytes alive as it began, its
/// wall time and its CPU time.
fn train_step(
    stages: &[Stage],
    plan: &Plan,
    data: (&Tensor, &Tensor),
    update: &mut Update,
) -> candle_checkpoint::Result<(u64, f64, f64)> {
    let base = ALLOC.live();
    ALLOC.reset_peak();
    let cpu = cpu_seconds();
    let start = Instant::now();
    run_step(stages, plan, data, update)?;
    let wall = start.elapsed().as_secs_f64();
    let cpu = match (cpu, cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    Ok((ALLOC.peak().saturating_sub(base), wall, cpu))
}

/// One measured mode.
struct Row {
    model: &'static str,
    mode: &'static str,
    plan: String,
    recomputed_blocks: usize,
    predicted_bytes: u64,
    peak_bytes: u64,
    median_s: f64,
    /// Median CPU seconds per step (NaN where unreadable).
    median_cpu_s: f64,
    /// Whether the SGD step was fused into backward.
    fused: bool,
}

/// Runs each plan of `modes` in turn: a warm-up step, then `iters` timed steps; one row per
/// mode. (Rounds that alternate the modes step by step were tried on the 2-core CPU: per-block
/// steps then took twice the time they take in a row, not understood; the modes run in turn.)
fn measure(
    model: &'static str,
    modes: &[(&'static str, &Plan, bool)],
    stages: &[Stage],
    chain: &HeldChain,
    data: (&Tensor, &Tensor),
    (opt, fused): (&mut SGD, &FusedUpdate),
    iters: usize,
) -> candle_checkpoint::Result<Vec<Row>> {
    let mut peaks = vec![0u64; modes.len()];
    let mut times = vec![Vec::with_capacity(iters); modes.len()];
    let mut cpu = vec![Vec::with_capacity(iters); modes.len()];
    for (i, (_, plan, is_fused)) in modes.iter().enumerate() {
        let mut update = match is_fused {
            true => Update::Fused(fused),
            false => Update::Store(&mut *opt),
        };
        train_step(stages, plan, data, &mut update)?;
        for _ in 0..iters {
            let (p, t, c) = train_step(stages, plan, data, &mut update)?;
            peaks[i] = peaks[i].max(p);
            times[i].push(t);
            cpu[i].push(c);
        }
    }
    let mut rows = Vec::with_capacity(modes.len());
    for (i, (mode, plan, is_fused)) in modes.iter().enumerate() {
        times[i].sort_by(f64::total_cmp);
        cpu[i].sort_by(f64::total_cmp);
        // The model predicts absolute bytes; the rows report bytes above the step's start.
        let predicted = chain.predict(plan)?.saturating_sub(chain.base_bytes);
        rows.push(Row {
            model,
            mode,
            plan: plan.to_string(),
            recomputed_blocks: plan.recomputed_layers(),
            predicted_bytes: predicted,
            peak_bytes: peaks[i],
            median_s: times[i][times[i].len() / 2],
            median_cpu_s: cpu[i][cpu[i].len() / 2],
            fused: *is_fused,
        });
    }
    Ok(rows)
}

/// Every mode on one chain; prints its rows.
fn run_model(
    model: &'static str,
    stages: &[Stage],
    vars: Vec<Var>,
    x: &Tensor,
    target: &Tensor,
    a: &Args,
) -> candle_checkpoint::Result<()> {
    let n = stages.len();
    let grad_bytes: u64 = vars.iter().map(|v| tensor_bytes(v)).sum();
    let fused = FusedUpdate::new(&vars, Sgd::new(1e-4))?;
    let mut opt = SGD::new(vars, 1e-4)?;
    // A warm-up step first, so that the profile sees the allocator caches of a running step.
    let mut update = Update::Store(&mut opt);
    train_step(stages, &Plan::keep_all(n), (x, target), &mut update)?;
    let mut chain = profile_chain(stages, x, |y| (y - target)?.sqr()?.mean_all(), &ALLOC)?;
    for s in &mut chain.stages {
        s.cost = 1.0; // identical blocks: cost counts recomputed blocks
    }
    let naive = Plan::keep_all(n);
    let per_block = Plan::equal_segments(n, n);
    let sqrt = Plan::equal_segments(n, (n as f64).sqrt().round() as usize);
    let budget = (chain.predict(&naive)? + chain.predict(&per_block)?) / 2;
    let planned = chain.plan(budget)?;
    // The cheapest equal-segment schedule whose predicted peak fits the budget.
    let cheapest_equal = (1..=n)
        .map(|k| Plan::equal_segments(n, k))
        .filter(|p| chain.predict(p).is_ok_and(|b| b <= budget))
        .min_by_key(Plan::recomputed_layers);
    let modes = [
        ("naive", &naive, false),
        ("per_block", &per_block, false),
        ("sqrt", &sqrt, false),
        ("planner", &planned, false),
        ("per_block+fused", &per_block, true),
    ];
    let rows = measure(
        model,
        &modes,
        stages,
        &chain,
        (x, target),
        (&mut opt, &fused),
        a.iters,
    )?;
    let budget_rel = budget.saturating_sub(chain.base_bytes);
    if a.json {
        for r in &rows {
            println!(
                "{{\"model\":\"{}\",\"mode\":\"{}\",\"peak_bytes\":{},\"median_s\":{:.4},\"median_cpu_s\":{:.2},\"fused\":{},\"grad_bytes\":{},\"above_grads_bytes\":{},\"predicted_bytes\":{},\"recomputed_blocks\":{},\"budget_bytes\":{},\"plan\":\"{}\"}}",
                r.model,
                r.mode,
                r.peak_bytes,
                r.median_s,
                r.median_cpu_s,
                r.fused,
                grad_bytes,
                above_grads(r, grad_bytes).map_or("null".into(), |b| b.to_string()),
                if r.fused { "null".into() } else { r.predicted_bytes.to_string() },
                r.recomputed_blocks,
                if r.mode == "planner" { budget_rel.to_string() } else { "null".into() },
                r.plan
            );
        }
        return Ok(());
    }
    print_table(&format!("{model}: {n} blocks"), &rows, grad_bytes);
    let planner = &rows[3];
    println!(
        "planner budget {:.1} MB: measured {:.1} MB ({}); cheapest equal-segment schedule that fits: {}",
        budget_rel as f64 / 1e6,
        planner.peak_bytes as f64 / 1e6,
        if planner.peak_bytes <= budget_rel { "meets it" } else { "ABOVE it" },
        match &cheapest_equal {
            Some(p) => format!("{p} ({} recomputed blocks; the planner's: {})", p.recomputed_layers(), planner.recomputed_blocks),
            None => "none".into(),
        }
    );
    Ok(())
}

/// A row's peak less the parameters' gradients (`None` for a fused row, which never holds
/// them all).
fn above_grads(r: &Row, grad_bytes: u64) -> Option<u64> {
    (!r.fused).then(|| r.peak_bytes.saturating_sub(grad_bytes))
}

/// Prints the rows under `title` as a table, ratios against the first (naive) row.
fn print_table(title: &str, rows: &[Row], grad_bytes: u64) {
    println!(
        "== {title} (step peak above the bytes alive as the step began; parameters' gradients {:.1} MB)",
        grad_bytes as f64 / 1e6
    );
    let (p0, t0) = (rows[0].peak_bytes as f64, rows[0].median_s);
    let a0 = above_grads(&rows[0], grad_bytes).unwrap_or(0) as f64;
    let mb = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6));
    let ratio = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.3}", b as f64 / a0));
    println!(
        "{:<16} {:>9} {:>10} {:>7} {:>11} {:>7} {:>9} {:>6} {:>8} {:>6} {:>10}  plan",
        "mode",
        "peak MB",
        "predicted",
        "peak x",
        "above grads",
        "x",
        "median s",
        "time x",
        "cpu s",
        "cpu x",
        "recomputed"
    );
    let c0 = rows[0].median_cpu_s;
    for r in rows {
        let above = above_grads(r, grad_bytes);
        println!(
            "{:<16} {:>9.1} {:>10} {:>7.3} {:>11} {:>7} {:>9.3} {:>6.3} {:>8.2} {:>6.3} {:>10}  {}",
            r.mode,
            r.peak_bytes as f64 / 1e6,
            mb((!r.fused).then_some(r.predicted_bytes)),
            r.peak_bytes as f64 / p0,
            mb(above),
            ratio(above),
            r.median_s,
            r.median_s / t0,
            r.median_cpu_s,
            r.median_cpu_s / c0,
            r.recomputed_blocks,
            r.plan
        );
    }
}

fn main() -> std::process::ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&a) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the models `a` asks for.
fn run(a: &Args) -> candle_checkpoint::Result<()> {
    let dev = Device::Cpu;
    if a.model == "mlp" || a.model == "all" {
        let mut vars = Vec::new();
        let stages = mlp(a.blocks, a.width, &mut vars)?;
        let x = Tensor::randn(0f32, 1.0, (a.batch, a.width), &dev)?;
        let target = Tensor::randn(0f32, 1.0, (a.batch, a.width), &dev)?;
        run_model("mlp", &stages, vars, &x, &target, a)?;
    }
    if a.model == "transformer" || a.model == "all" {
        let (blocks, batch, seq, d, heads) = (8, 8, 128, 256, 4);
        let mut vars = Vec::new();
        let stages = transformer(blocks, d, heads, &mut vars)?;
        let x = Tensor::randn(0f32, 1.0, (batch, seq, d), &dev)?;
        let target = Tensor::randn(0f32, 1.0, (batch, seq, d), &dev)?;
        run_model("transformer", &stages, vars, &x, &target, a)?;
    }
    Ok(())
}
