//! PyTorch parity of one GPT decoder block: the golden files of
//! `tests/pytorch/make_golden_gpt.py` (nanoGPT's `Block` in float64, random weights, dropout
//! 0) are loaded into `gpt::Block` by name; the block's output, the loss `sum(out * r)`, every
//! parameter gradient and the input gradient must match PyTorch's to a norm-relative error
//! `max|a - b| / max|b|` of at most 1e-12, run plainly, checkpointed and under the selective
//! policy.

use checkpoint::{checkpoint, checkpoint_selective, SelectivePolicy};
use gpt::{Block, GptConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tape::nn::{self, Init, Stored};
use tape::{ops, DType, Device, Tape, Tensor};

const TOL: f64 = 1e-12;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gpt_block")
}

fn read(name: &str) -> BTreeMap<String, Stored> {
    nn::load_tensors(&dir().join(name)).expect("golden file (tests/pytorch/make_golden_gpt.py)")
}

fn tensor(map: &BTreeMap<String, Stored>, name: &str) -> Tensor {
    DEVICE.with(|d| map[name].to_tensor(DType::F64, d).unwrap())
}

thread_local! {
    /// One device for the test's tensors (each `Device::cpu()` is a device of its own).
    static DEVICE: Device = Device::cpu();
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err / scale <= TOL,
        "{what}: relative error {:e}",
        err / scale
    );
}

#[derive(Clone, Copy, Debug)]
enum Run {
    Plain,
    Checkpointed,
    Selective,
}

#[test]
fn a_gpt_block_matches_pytorch() {
    let dev = DEVICE.with(Device::clone);
    let batch = read("batch.safetensors");
    let expected = read("expected.safetensors");
    let (x, r) = (tensor(&batch, "x"), tensor(&batch, "r"));
    let c = x.shape()[2];
    let config = GptConfig {
        vocab_size: 1,
        block_size: x.shape()[1],
        n_layer: 1,
        n_head: 2,
        n_embd: c,
        dropout: 0.0,
    };
    let mut block = Block::new(&config, &mut Init::new(DType::F64, &dev, 0)).unwrap();
    nn::name_parameters(&mut block);
    nn::load(&mut block, &dir().join("weights.safetensors")).unwrap();
    let block = &block;
    for run in [Run::Plain, Run::Checkpointed, Run::Selective] {
        let x = x.clone().with_requires_grad(true);
        let mut tape = Tape::recording();
        let out = match run {
            Run::Plain => block.forward(&mut tape, &x),
            Run::Checkpointed => {
                checkpoint(&mut tape, &[&x], move |t, xs| block.forward(t, &xs[0]))
            }
            Run::Selective => checkpoint_selective(
                &mut tape,
                &[&x],
                &SelectivePolicy::compute_bound(),
                move |t, xs| block.forward(t, &xs[0]),
            ),
        }
        .unwrap();
        let weighted = ops::mul(&mut tape, &out, &r).unwrap();
        let loss = ops::sum(&mut tape, &weighted).unwrap();
        let grads = tape.backward(&loss).unwrap();
        let what = |s: &str| format!("{run:?}: {s}");
        assert_close(
            &what("out"),
            &out.to_f64_vec(),
            &tensor(&expected, "out").to_f64_vec(),
        );
        assert_close(
            &what("loss"),
            &loss.to_f64_vec(),
            &tensor(&expected, "loss").to_f64_vec(),
        );
        assert_close(
            &what("grad.x"),
            &grads.get(&x).unwrap().to_f64_vec(),
            &tensor(&expected, "grad.x").to_f64_vec(),
        );
        let params = nn::parameters(block);
        assert_eq!(params.len(), 12);
        for p in params {
            let name = format!("grad.{}", p.name());
            assert_close(
                &what(&name),
                &grads.get(p.tensor()).unwrap().to_f64_vec(),
                &tensor(&expected, &name).to_f64_vec(),
            );
        }
    }
}
