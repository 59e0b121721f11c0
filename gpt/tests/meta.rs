//! The meta device predicts a GPT training step's memory without running it: two Adam steps on
//! a meta device charge exactly what the CPU charges (the same peak, byte for byte, and the
//! same launches and allocations) in every fixed recompute setting, with dropout, f32 and f64; a
//! budget run on meta stays within its budget. The queued anomaly check (`train_step_queued`)
//! makes no host sync in a steady-state step, on the CPU and meta.

mod common;

use common::batch;
use gpt::train::{adam, train_step, train_step_queued};
use gpt::{Gpt, GptConfig, Recompute, Selective};
use tape::{DType, Device};
use trainer::anomaly::AnomalyGuard;

/// The second step's peak and counts, and the bytes held after it.
fn two_steps(dev: &Device, mode: Recompute, dtype: DType) -> [u64; 4] {
    let cfg = GptConfig {
        vocab_size: 16,
        block_size: 8,
        n_layer: 3,
        n_head: 2,
        n_embd: 16,
        dropout: 0.1,
    };
    let mut model = Gpt::new(cfg, dtype, dev, 0)
        .unwrap()
        .with_recompute(mode)
        .unwrap();
    let mut opt = adam(1e-3).unwrap();
    let b = batch(16, 3, 8, 0);
    train_step(&mut model, &mut opt, &b, 0).unwrap();
    dev.memory().reset_peak();
    let before = dev.counters();
    train_step(&mut model, &mut opt, &b, 1).unwrap();
    let counts = dev.counters().since(before);
    [
        dev.memory().peak() as u64,
        dev.memory().current() as u64,
        counts.launches,
        counts.allocs,
    ]
}

#[test]
fn meta_step_charges_what_the_cpu_step_charges() {
    for dtype in [DType::F32, DType::F64] {
        for mode in [
            Recompute::Naive,
            Recompute::PerBlock,
            Recompute::Selective(Selective::ComputeBound),
            Recompute::Selective(Selective::Linear),
        ] {
            let cpu = two_steps(&Device::cpu(), mode, dtype);
            let meta = two_steps(&Device::meta(), mode, dtype);
            assert_eq!(meta, cpu, "{mode:?} {dtype:?}");
        }
    }
}

#[test]
fn a_budget_planned_on_meta_holds_on_meta() {
    let naive = two_steps(&Device::meta(), Recompute::Naive, DType::F32)[0];
    let per_block = two_steps(&Device::meta(), Recompute::PerBlock, DType::F32)[0];
    let budget = (naive + per_block) / 2;
    let peak = two_steps(&Device::meta(), Recompute::Budget(budget), DType::F32)[0];
    assert!(peak <= budget, "peak {peak} over budget {budget}");
}

/// The memory report of a step in every mode adds up to the peak, and none of the GPT's own
/// checkpointing (per block, selective, budget) draws a warning.
#[test]
fn the_gpt_memory_report_adds_up_and_warns_of_nothing() {
    for mode in [
        Recompute::Naive,
        Recompute::PerBlock,
        Recompute::Selective(Selective::ComputeBound),
        Recompute::Selective(Selective::Linear),
    ] {
        let dev = Device::meta();
        dev.memory().start_recording();
        two_steps(&dev, mode, DType::F32);
        let report = dev.memory().report().unwrap();
        let sum: usize = report.entries.iter().map(|e| e.bytes).sum();
        assert_eq!(sum, report.peak_bytes, "{mode:?}");
        assert_eq!(report.warnings(), vec![], "{mode:?}: {}", report.render(10));
    }
}

#[test]
fn queued_steps_make_no_host_sync() {
    let cfg = GptConfig {
        vocab_size: 16,
        block_size: 8,
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        dropout: 0.0,
    };
    for dev in [Device::cpu(), Device::meta()] {
        let mut model = Gpt::new(cfg.clone(), DType::F32, &dev, 0).unwrap();
        let mut opt = adam(1e-3).unwrap();
        let b = batch(16, 3, 8, 0);
        let mut guard = AnomalyGuard::new();
        for step in 0..3 {
            let (r, c) =
                dev.count(|| train_step_queued(&mut model, &mut opt, &mut guard, &b, step));
            r.unwrap();
            assert_eq!(c.syncs, 0, "{dev} step {step}: {c}");
        }
        let (r, c) = dev.count(|| guard.finish(&model));
        r.unwrap();
        assert_eq!(c.syncs, 0, "{dev}: finish");
    }
}
