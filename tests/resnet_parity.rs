//! PyTorch parity of one ResNet block: torchvision's BasicBlock and Bottleneck (each with its
//! stride-2 projection shortcut), one training-mode forward + backward of `sum(out * r)` in f64,
//! against golden files made by `tests/pytorch/make_golden_resnet.py` (run by hand with torch and
//! torchvision; CI only reads the committed files under `tests/data/resnet_block/` and
//! `tests/data/resnet_bottleneck/`).
//!
//! The weights load by torchvision's names; the output, the loss, every parameter gradient, the
//! input gradient and the running statistics (and step counts) after the step must match
//! PyTorch's to a norm-relative error `max|a - b| / max|b|` of 1e-10, run recorded with batch
//! norm and ReLU as two ops, recorded with them fused, and as a checkpointed segment.

use resnet::{BasicBlock, Block, Bottleneck};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tape::nn::{self, Init, Stored};
use tape::testing::rel_diff;
use tape::{ops, DType, Device, Tape, Tensor};

const TOL: f64 = 1e-10;

fn case_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// How the block runs.
#[derive(Clone, Copy, Debug)]
enum Run {
    /// Recorded, batch norm and ReLU as two ops.
    Recorded,
    /// Recorded, batch norm and ReLU fused.
    Fused,
    /// One checkpointed segment (recomputed in backward).
    Checkpointed,
}

/// The block of `dir`'s weights run once as `run`: every result under its golden name.
fn step(dir: &Path, make: &dyn Fn(&mut Init) -> Block, run: Run) -> Vec<(String, Tensor)> {
    let dev = Device::cpu();
    let mut block = make(&mut Init::new(DType::F64, &dev, 0));
    nn::name_parameters(&mut block);
    nn::load(&mut block, &dir.join("weights.safetensors")).unwrap();
    let batch = nn::load_tensors(&dir.join("batch.safetensors")).unwrap();
    let x = batch["input"]
        .to_tensor(DType::F64, &dev)
        .unwrap()
        .with_requires_grad(true);
    let r = batch["r"].to_tensor(DType::F64, &dev).unwrap();

    let mut tape = Tape::recording();
    let out = match run {
        Run::Recorded => block.run(&mut tape, &x, false),
        Run::Fused => block.run(&mut tape, &x, true),
        Run::Checkpointed => block.forward(&mut tape, &x, true),
    }
    .unwrap();
    let weighted = ops::mul(&mut tape, &out, &r).unwrap();
    let loss = ops::sum(&mut tape, &weighted).unwrap();
    let grads = tape.backward(&loss).unwrap();

    let mut results = vec![
        ("output".to_string(), out.clone()),
        ("loss".to_string(), loss.clone()),
        ("grad.input".to_string(), grads.get(&x).unwrap().clone()),
    ];
    for p in nn::parameters(&block) {
        let g = grads
            .get(p.tensor())
            .unwrap_or_else(|| panic!("no gradient for {}", p.name()));
        results.push((format!("grad.{}", p.name()), g.clone()));
    }
    for (name, value) in nn::state_dict(&block).unwrap() {
        if name.contains("running_") || name.ends_with("num_batches_tracked") {
            results.push((name, value));
        }
    }
    results
}

fn check_case(name: &str, make: &dyn Fn(&mut Init) -> Block) {
    let dir = case_dir(name);
    let expected: BTreeMap<String, Stored> =
        nn::load_tensors(&dir.join("expected.safetensors")).unwrap();
    for run in [Run::Recorded, Run::Fused, Run::Checkpointed] {
        let got = step(&dir, make, run);
        assert_eq!(
            got.len(),
            expected.len(),
            "{name} {run:?}: {} results, {} golden tensors",
            got.len(),
            expected.len()
        );
        let mut worst = (0.0f64, String::new());
        for (key, t) in &got {
            let want = expected
                .get(key)
                .unwrap_or_else(|| panic!("{name} {run:?}: '{key}' not in the golden file"));
            assert_eq!(
                t.numel(),
                want.values.len(),
                "{name} {run:?}: size of '{key}'"
            );
            if want.shape.len() > 1 {
                assert_eq!(t.shape(), want.shape.as_slice(), "{name} {run:?}: '{key}'");
            }
            let d = rel_diff(&t.to_f64_vec(), &want.values);
            assert!(
                d <= TOL,
                "{name} {run:?}: '{key}' differs from PyTorch by {d:e} (tolerance {TOL:e})"
            );
            if d > worst.0 {
                worst = (d, key.clone());
            }
        }
        println!("{name} {run:?}: worst {:e} ({})", worst.0, worst.1);
    }
}

#[test]
fn basic_block_matches_pytorch() {
    check_case("resnet_block", &|init| {
        Block::Basic(BasicBlock::new(4, 6, 2, init).unwrap())
    });
}

#[test]
fn bottleneck_matches_pytorch() {
    check_case("resnet_bottleneck", &|init| {
        Block::Bottleneck(Bottleneck::new(6, 3, 2, init).unwrap())
    });
}
