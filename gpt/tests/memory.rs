//! Measured engine peak of one training step (f32, a deeper config): checkpointing each block
//! keeps least, the selective policy (matmul outputs kept) sits between, naive keeps most.

mod common;

use common::{batch, model};
use gpt::train::forward_backward;
use gpt::{GptConfig, MemoryMode};
use tape::DType;

fn peak(mode: MemoryMode) -> u64 {
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
    let (naive, per_block, selective) = (
        peak(MemoryMode::Naive),
        peak(MemoryMode::PerBlock),
        peak(MemoryMode::Selective),
    );
    assert!(per_block < selective, "{per_block} vs {selective}");
    assert!(selective < naive, "{selective} vs {naive}");
    eprintln!("peaks: naive {naive}, selective {selective}, per block {per_block}");
}
