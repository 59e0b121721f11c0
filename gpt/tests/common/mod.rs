//! Shared helpers of the GPT tests.
#![allow(dead_code)]

use checkpoint::planner::{Plan, PlanOptions};
use gpt::train::forward_backward;
use gpt::{Gpt, GptConfig, Recompute, TokenBatch};
use tape::DType;
use tape::Device;

/// A config of the given sizes, vocabulary 11, context 8, no dropout.
pub fn config(n_layer: usize, n_head: usize, head_size: usize) -> GptConfig {
    GptConfig {
        vocab_size: 11,
        block_size: 8,
        n_layer,
        n_head,
        n_embd: n_head * head_size,
        dropout: 0.0,
    }
}

/// A deterministic batch of `batch x seq` tokens below `vocab`.
pub fn batch(vocab: usize, batch: usize, seq: usize, seed: usize) -> TokenBatch {
    let n = batch * seq;
    let ids = |k: usize| (0..n).map(|i| (i * 7 + seed * 3 + k) % vocab).collect();
    TokenBatch::new(ids(0), ids(1), batch, seq).unwrap()
}

/// Loss, logits and every parameter's gradient (named) of one step.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub loss: Vec<f64>,
    pub logits: Vec<f64>,
    pub grads: Vec<(String, Vec<f64>)>,
}

pub fn outcome(model: &Gpt, b: &TokenBatch, seed: u64) -> Outcome {
    let out = forward_backward(model, b, seed).unwrap();
    Outcome {
        loss: out.loss.to_f64_vec(),
        logits: out.logits.to_f64_vec(),
        grads: model
            .parameters()
            .iter()
            .map(|p| {
                let g = out
                    .grads
                    .get(p.tensor())
                    .expect("every parameter has a gradient");
                (p.name().to_string(), g.to_f64_vec())
            })
            .collect(),
    }
}

/// Whether `plan` both keeps (records) some blocks and recomputes others.
pub fn mixes(plan: &Plan) -> bool {
    let segs = plan.segments();
    segs.iter().any(|s| s.checkpointed) && segs.iter().any(|s| !s.checkpointed)
}

/// A budget under which the planner's plan for `model`'s chain mixes kept and recomputed
/// blocks, searched between the least feasible peak and the naive peak of the chain, plus what
/// the model sets aside for the head and the loss ([`Gpt::head_bytes`]).
pub fn mixing_budget(model: &Gpt, batch: usize, seq: usize) -> Option<u64> {
    let cm = model.chain_model(batch, seq).unwrap();
    let n = model.config().n_layer;
    let naive = cm.predict(&Plan::keep_all(n)).unwrap().peak;
    let least = cm.least_peak(PlanOptions::default()).unwrap();
    (1..20)
        .map(|k| least + (naive.saturating_sub(least)) * k / 20)
        .find(|&b| cm.plan(b).map(|p| mixes(&p)).unwrap_or(false))
        .map(|b| b + model.head_bytes(batch, seq))
}

pub fn model(config: GptConfig, dtype: DType, seed: u64, mode: Recompute) -> Gpt {
    Gpt::new(config, dtype, &Device::cpu(), seed)
        .unwrap()
        .with_recompute(mode)
        .unwrap()
}
