//! Measured engine peak of one training step (f32, a deeper config): checkpointing each block
//! keeps least, the selective policies sit between (keeping the linear layers' outputs less than
//! keeping every matmul's), naive keeps most.

mod common;

use common::{batch, model};
use gpt::train::forward_backward;
use gpt::{GptConfig, Recompute, Selective};
use tape::DType;

fn peak(mode: Recompute) -> u64 {
    let cfg = GptConfig {
        vocab_size: 32,
        block_size: 32,
        n_layer: 6,
        n_head: 4,
        n_embd: 64,
        dropout: 0.0,
    };
    let m = model(cfg, DType::F32, 0, mode);
    let b = batch(32, 4, 32, 0);
    let dev = m.device().clone();
    drop(forward_backward(&m, &b, 0).unwrap()); // warm-up (and the budget's plan)
    dev.memory().reset_peak();
    let before = dev.memory().current() as u64;
    drop(forward_backward(&m, &b, 1).unwrap());
    dev.memory().peak() as u64 - before
}

#[test]
fn per_block_keeps_less_than_selective_which_keeps_less_than_naive() {
    let (naive, per_block, selective, linear) = (
        peak(Recompute::Naive),
        peak(Recompute::PerBlock),
        peak(Recompute::Selective(Selective::ComputeBound)),
        peak(Recompute::Selective(Selective::Linear)),
    );
    assert!(per_block < linear, "{per_block} vs {linear}");
    assert!(linear < selective, "{linear} vs {selective}");
    assert!(selective < naive, "{selective} vs {naive}");
    eprintln!(
        "peaks: naive {naive}, selective {selective}, linear only {linear}, per block {per_block}"
    );
}

/// A budget between the per-block and the naive peaks holds over several Adam steps (the
/// optimizer's state appears after the first one; the plan is made again then), the head and
/// the loss included: the engine's measured peak of every step stays within it.
#[test]
fn a_budget_holds_over_training_steps() {
    use gpt::train::{adam, train_step};
    let cfg = GptConfig {
        vocab_size: 48,
        block_size: 32,
        n_layer: 6,
        n_head: 4,
        n_embd: 64,
        dropout: 0.0,
    };
    let b = batch(48, 4, 32, 0);
    // Whole-step peaks (everything the device holds) of naive and per-block training.
    let total = |mode: Recompute| {
        let mut m = model(cfg.clone(), DType::F32, 0, mode);
        let mut opt = adam(1e-3).unwrap();
        let dev = m.device().clone();
        for step in 0..2 {
            train_step(&mut m, &mut opt, &b, step).unwrap();
        }
        dev.memory().reset_peak();
        train_step(&mut m, &mut opt, &b, 2).unwrap();
        dev.memory().peak() as u64
    };
    let (naive, per_block) = (total(Recompute::Naive), total(Recompute::PerBlock));
    assert!(per_block < naive);
    for frac in [0.3, 0.7] {
        let budget = per_block + ((naive - per_block) as f64 * frac) as u64;
        let mut m = model(cfg.clone(), DType::F32, 0, Recompute::Budget(budget));
        let mut opt = adam(1e-3).unwrap();
        let dev = m.device().clone();
        dev.memory().reset_peak();
        for step in 0..3 {
            train_step(&mut m, &mut opt, &b, step).unwrap();
            let peak = dev.memory().peak() as u64;
            assert!(
                peak <= budget,
                "step {step}: measured peak {peak} over the budget {budget} (naive {naive}, per \
                 block {per_block})"
            );
        }
    }
}
