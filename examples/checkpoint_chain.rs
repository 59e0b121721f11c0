//! Checkpointing a plain chain of 64 conv3x3/BN/ReLU layers: peak bytes (engine accounting) and
//! median step time for the naive run, per-layer checkpoints, sqrt(n) segments and two planner
//! budgets. `cargo run --release --example checkpoint_chain [-- --layers 64 --batch 16]`

use checkpoint::planner::{profile_chain, Plan};
use checkpoint::{run_plan, Layer, OpKind};
use clap::Parser;
use densenet::bench::median;
use std::time::Instant;
use tape::ops::{self, BatchNormOptions, Conv2dOptions, RunningStats};
use tape::{DType, Device, Tape, Tensor};

#[derive(Parser)]
#[command(about = "Peak memory and time of a checkpointed conv/BN/ReLU chain")]
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
    /// Measured steps per plan.
    #[arg(long, default_value_t = 3)]
    iters: usize,
}

struct Params {
    convs: Vec<Tensor>,
    bns: Vec<(Tensor, Tensor, RunningStats)>,
}

fn main() -> tape::Result<()> {
    let a = Args::parse();
    let dev = Device::cpu();
    let c = a.channels;
    let mut p = Params {
        convs: Vec::new(),
        bns: Vec::new(),
    };
    for i in 0..a.layers {
        let std = (2.0 / (9 * c) as f64).sqrt();
        let w = Tensor::randn(&[c, c, 3, 3], DType::F32, &dev, i as u64)?;
        let w = Tensor::from_f64(
            &w.to_f64_vec().iter().map(|v| v * std).collect::<Vec<_>>(),
            w.shape(),
            DType::F32,
            &dev,
        )?;
        p.convs.push(w.with_requires_grad(true));
        p.bns.push((
            Tensor::ones(&[c], DType::F32, &dev)?.with_requires_grad(true),
            Tensor::zeros(&[c], DType::F32, &dev)?.with_requires_grad(true),
            RunningStats::new(c, DType::F32, &dev)?,
        ));
    }
    let layers: Vec<Layer> = (0..a.layers)
        .map(|i| {
            let (w, (g, b, rs)) = (&p.convs[i], &p.bns[i]);
            Layer::new(format!("layer{i}"), OpKind::Other, move |t, x| {
                let h = ops::conv2d(
                    t,
                    x,
                    w,
                    None,
                    Conv2dOptions {
                        stride: 1,
                        padding: 1,
                    },
                )?;
                let h = ops::batch_norm2d(t, &h, g, b, rs, BatchNormOptions::default())?;
                ops::relu(t, &h)
            })
        })
        .collect();
    let x = Tensor::randn(&[a.batch, c, a.image, a.image], DType::F32, &dev, 7)?;
    let param_bytes: usize = p.convs.iter().map(|t| t.size_in_bytes()).sum::<usize>() * 2;
    let model = profile_chain(
        &Tape::recording(),
        &layers,
        &x,
        (dev.memory().current() + param_bytes) as u64,
    )?;
    let n = a.layers;
    let naive_pred = model.predict(&Plan::keep_all(n))?.peak;
    let mut plans = vec![
        ("naive".to_string(), Plan::keep_all(n)),
        ("per-layer".to_string(), Plan::equal_segments(n, n)),
        (
            format!("sqrt(n)={}", (n as f64).sqrt().round()),
            Plan::equal_segments(n, (n as f64).sqrt().round() as usize),
        ),
    ];
    for frac in [0.5, 0.25] {
        let budget = (naive_pred as f64 * frac) as u64;
        match model.plan(budget) {
            Ok(plan) => plans.push((format!("budget {:.1} MB", budget as f64 / 1e6), plan)),
            Err(e) => println!("budget {budget}: {e}"),
        }
    }
    println!(
        "{} conv3x3/BN/ReLU layers, {} channels, batch {}, {}x{}, f32",
        n, c, a.batch, a.image, a.image
    );
    println!(
        "{:<18} {:>9} {:>11} {:>13} {:>15} {:>10} {:>8}",
        "plan", "segments", "recomputed", "peak (MB)", "predicted (MB)", "median s", "x naive"
    );
    let mut naive_time = None;
    for (name, plan) in &plans {
        let mut times = Vec::new();
        dev.memory().reset_peak();
        for _ in 0..a.iters.max(1) {
            let t0 = Instant::now();
            let mut tape = Tape::recording();
            let y = run_plan(&mut tape, &layers, plan, &x)?;
            let loss = ops::mean(&mut tape, &y)?;
            drop(y);
            let grads = tape.backward(&loss)?;
            drop(grads);
            times.push(t0.elapsed().as_secs_f64());
        }
        let t = median(&times);
        let base = *naive_time.get_or_insert(t);
        let recomputed: usize = plan
            .segments()
            .iter()
            .filter(|s| s.checkpointed)
            .map(|s| s.range.len())
            .sum();
        println!(
            "{:<18} {:>9} {:>11} {:>13.2} {:>15.2} {:>10.4} {:>8.2}",
            name,
            plan.segments().len(),
            recomputed,
            dev.memory().peak() as f64 / 1e6,
            model.predict(plan)?.peak as f64 / 1e6,
            t,
            t / base
        );
    }
    if let Some((_, plan)) = plans.last() {
        println!("\nthe tightest plan:\n{}", model.report(plan)?);
    }
    Ok(())
}
