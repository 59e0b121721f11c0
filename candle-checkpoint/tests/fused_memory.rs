//! Counted memory of the fused update (a counting global allocator): a per-block step whose
//! optimizer step is fused into backward peaks below the same step with candle-nn's SGD after
//! backward by about the parameters' gradients.
//!
//! The margin, derived: the per-block step holds every gradient `G` at its peak (end of
//! backward and the SGD step). The fused step holds at most two blocks' gradients at once: the
//! recorded last block's (in candle's store from the start of backward to its end) and those of
//! the block being recomputed (until its update). Both steps keep the same block outputs and
//! recompute one block at a time; what differs besides gradients are the update's temporaries
//! (`g * lr` and `p - g * lr`, one weight each) made at different moments, so the saving is
//! `G - 2 G/blocks` within four weights either side, and never more than `G`.

mod common;

use candle_checkpoint::budget::tensor_bytes;
use candle_checkpoint::fused::{FusedUpdate, Sgd};
use candle_checkpoint::planner::Plan;
use candle_checkpoint::{backward, run_plan, CountingAlloc, Result, Stage};
use candle_core::{DType, Module, Tensor, Var};
use candle_nn::optim::{Optimizer, SGD};
use common::{input, Dense};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

/// Blocks, width and batch of the chain.
const BLOCKS: usize = 8;
const WIDTH: usize = 256;
const BATCH: usize = 64;

/// An MLP chain of `BLOCKS` blocks of three captured candle-nn layers (ReLU after each).
fn mlp() -> (Vec<Var>, Vec<Stage>) {
    let layers: Vec<Dense> = (0..3 * BLOCKS)
        .map(|i| Dense::new(WIDTH, WIDTH, DType::F32, 1 + i as u64).expect("layer"))
        .collect();
    let stages = (0..BLOCKS)
        .map(|b| {
            let mods: Vec<candle_nn::Linear> =
                layers[3 * b..3 * b + 3].iter().map(Dense::linear).collect();
            Stage::new(format!("block{b}"), move |x| {
                let mut h = x.clone();
                for m in &mods {
                    h = m.forward(&h)?.relu()?;
                }
                Ok(h)
            })
        })
        .collect();
    let vars = layers
        .iter()
        .flat_map(|l| [l.w.clone(), l.b.clone()])
        .collect();
    (vars, stages)
}

/// The loss of the chain's output.
fn loss(y: &Tensor) -> candle_core::Result<Tensor> {
    y.sqr()?.sum_all()
}

/// Peak bytes above the start of `step` (run twice: the first warms the allocator up).
fn peak_of(mut step: impl FnMut() -> Result<()>) -> Result<u64> {
    step()?;
    let base = ALLOC.live();
    ALLOC.reset_peak();
    step()?;
    Ok(ALLOC.peak().saturating_sub(base))
}

#[test]
fn the_fused_update_saves_about_the_parameters_gradients() -> Result<()> {
    // On a pool of one thread: candle's matrix products run on the rayon pool, and each
    // thread's first one allocates the `gemm` crate's per-thread packing buffer (the size of
    // the core's L2 cache, above the margin), which stays; with one thread, the warm-up steps
    // make it, not a measured one.
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool")
        .install(fused_update_saves)
}

fn fused_update_saves() -> Result<()> {
    let (vars, stages) = mlp();
    let x = input(BATCH, WIDTH, DType::F32, 2)?;
    let plan = Plan::equal_segments(BLOCKS, BLOCKS);
    let mut opt = SGD::new(vars.clone(), 1e-4)?;
    let per_block = peak_of(|| {
        let grads = backward(&loss(&run_plan(&stages, &plan, &x)?)?)?;
        Ok(opt.step(&grads)?)
    })?;
    let fused = FusedUpdate::new(&vars, Sgd::new(1e-4))?;
    let fused_peak = peak_of(|| {
        let step = fused.begin()?;
        let y = run_plan(&stages, &plan, &x)?;
        drop(step.backward(&loss(&y)?)?);
        Ok(())
    })?;
    let grads: u64 = vars.iter().map(|v| tensor_bytes(v)).sum();
    let block = grads / BLOCKS as u64;
    let weight = (WIDTH * WIDTH * 4) as i64;
    let saved = per_block as i64 - fused_peak as i64;
    let expected = (grads - 2 * block) as i64;
    println!("per block {per_block} B, fused {fused_peak} B, saved {saved} B, gradients {grads} B");
    assert!(
        (saved - expected).abs() <= 4 * weight && saved <= grads as i64,
        "saved {saved} bytes; expected {expected} within {} (gradients {grads})",
        4 * weight
    );
    Ok(())
}
