//! Every recompute setting computes what Naive computes, bit for bit in f64 (the recomputes run the
//! same kernels on the same values, and kept outputs are the values the ops would compute):
//! loss, logits and every parameter gradient, over random small configs, with and without
//! dropout (replayed in recompute); the Budget mode under a budget whose plan mixes kept and
//! recomputed blocks.

mod common;

use common::{batch, config, mixes, mixing_budget, model, outcome};
use gpt::{Recompute, Selective};
use proptest::prelude::*;
use tape::DType;

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
    #[test]
    fn every_memory_mode_matches_naive(
        n_layer in 2usize..4,
        n_head in 1usize..3,
        head_size in 1usize..4,
        b in 1usize..3,
        seq in 2usize..9,
        dropout in prop_oneof![Just(0.0), Just(0.2)],
        seed in 0u64..1000,
    ) {
        let mut cfg = config(n_layer, n_head, head_size);
        cfg.dropout = dropout;
        let tokens = batch(cfg.vocab_size, b, seq, seed as usize);
        let naive = outcome(&model(cfg.clone(), DType::F64, seed, Recompute::Naive), &tokens, seed);
        for mode in [Recompute::PerBlock, Recompute::Selective(Selective::ComputeBound), Recompute::Selective(Selective::Linear)] {
            let got = outcome(&model(cfg.clone(), DType::F64, seed, mode), &tokens, seed);
            prop_assert_eq!(&got, &naive, "{:?}", mode);
        }
        let m = model(cfg.clone(), DType::F64, seed, Recompute::Naive);
        if let Some(budget) = mixing_budget(&m, b, seq) {
            let m = m.with_recompute(Recompute::Budget(budget)).unwrap();
            let got = outcome(&m, &tokens, seed);
            let plan = m.cached_plan(b, seq).expect("the step planned");
            prop_assert!(mixes(&plan), "{}", plan);
            prop_assert_eq!(&got, &naive, "budget {}", budget);
        }
    }
}

#[test]
fn a_budget_mixes_kept_and_recomputed_blocks_in_a_deeper_model() {
    // The proptest may meet chains too small to mix; this one must.
    let cfg = config(4, 2, 4);
    let tokens = batch(cfg.vocab_size, 2, 8, 1);
    let naive = outcome(
        &model(cfg.clone(), DType::F64, 3, Recompute::Naive),
        &tokens,
        1,
    );
    let m = model(cfg.clone(), DType::F64, 3, Recompute::Naive);
    let budget = mixing_budget(&m, 2, 8).expect("a budget that mixes");
    let m = m.with_recompute(Recompute::Budget(budget)).unwrap();
    assert_eq!(outcome(&m, &tokens, 1), naive);
    let plan = m.cached_plan(2, 8).unwrap();
    assert!(mixes(&plan));
    // The same plan given explicitly (`plan`) runs the same step.
    let explicit = model(cfg.clone(), DType::F64, 3, Recompute::Naive)
        .with_plan(plan)
        .unwrap();
    assert_eq!(explicit.recompute(), Recompute::Plan);
    assert_eq!(outcome(&explicit, &tokens, 1), naive);
    let short = checkpoint::planner::Plan::keep_all(3);
    let err = model(cfg, DType::F64, 3, Recompute::Naive).with_plan(short);
    assert!(matches!(err, Err(gpt::GptError::Engine(_))));
}

/// Under a 16-bit precision policy (f32 weights, 16-bit activations) every recompute setting
/// still computes what Naive computes bit for bit: the recompute runs under the first pass's
/// policy (the tape's context, copied into the recompute's tape), so it casts and rounds the
/// same values. With dropout, replayed; the budget plan mixes.
#[test]
fn every_memory_mode_matches_naive_under_bf16_and_f16() {
    let mut cfg = config(4, 2, 4);
    cfg.dropout = 0.2;
    let tokens = batch(cfg.vocab_size, 2, 8, 5);
    for precision in [tape::Precision::Bf16, tape::Precision::F16] {
        let make = |mode| model(cfg.clone(), DType::F32, 3, mode).with_precision(precision);
        let naive = outcome(&make(Recompute::Naive), &tokens, 9);
        for mode in [
            Recompute::PerBlock,
            Recompute::Selective(Selective::ComputeBound),
            Recompute::Selective(Selective::Linear),
        ] {
            assert_eq!(
                outcome(&make(mode), &tokens, 9),
                naive,
                "{mode:?} {precision}"
            );
        }
        let m = make(Recompute::Naive);
        let budget = mixing_budget(&m, 2, 8).expect("a budget that mixes");
        let m = m.with_recompute(Recompute::Budget(budget)).unwrap();
        assert_eq!(outcome(&m, &tokens, 9), naive, "budget {precision}");
        assert!(mixes(&m.cached_plan(2, 8).unwrap()));
        let f32_run = outcome(
            &model(cfg.clone(), DType::F32, 3, Recompute::Naive),
            &tokens,
            9,
        );
        assert_ne!(f32_run, naive, "the policy changed the arithmetic");
    }
}
