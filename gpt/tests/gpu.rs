//! On a GPU: one training step of a small GPT in every recompute setting matches the same step on the
//! CPU (loss, logits and every gradient, f32, relative to each tensor's largest value). Skipped
//! without a usable GPU; fails instead under `TAPE_EXPECT_GPU=1`.

mod common;

use common::{batch, config, outcome};
use gpt::{Gpt, Recompute, Selective};
use tape::testing::{gpu, rel_diff, tol};
use tape::{nn, DType, Device};

#[test]
fn on_gpu_a_training_step_matches_the_cpu() {
    let Some(dev) = gpu() else { return };
    let cfg = config(2, 2, 4);
    let mut cpu = Gpt::new(cfg.clone(), DType::F32, &Device::cpu(), 3).unwrap();
    let mut on_gpu = Gpt::new(cfg, DType::F32, &dev, 4).unwrap();
    let stored = nn::stored_state_dict(&cpu).unwrap();
    nn::load_state_dict(&mut on_gpu, &stored, nn::LoadOptions::default()).unwrap();
    let b = batch(11, 2, 8, 1);
    for mode in [
        Recompute::Naive,
        Recompute::PerBlock,
        Recompute::Selective(Selective::ComputeBound),
        Recompute::Selective(Selective::Linear),
    ] {
        cpu.set_recompute(mode).unwrap();
        on_gpu.set_recompute(mode).unwrap();
        let (a, c) = (outcome(&on_gpu, &b, 0), outcome(&cpu, &b, 0));
        let tol = 10.0 * tol(DType::F32);
        assert!(rel_diff(&a.loss, &c.loss) <= tol, "{mode:?}: loss");
        assert!(rel_diff(&a.logits, &c.logits) <= tol, "{mode:?}: logits");
        for ((name, ga), (_, gc)) in a.grads.iter().zip(&c.grads) {
            assert!(rel_diff(ga, gc) <= tol, "{mode:?}: gradient of {name}");
        }
    }
}
