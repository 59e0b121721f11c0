//! PyTorch parity of one GPT decoder block: the golden files of
//! `tests/pytorch/make_golden_gpt.py` (nanoGPT's `Block` in float64, random weights, dropout
//! 0) are loaded into `gpt::Block` by name; the block's output, the loss `sum(out * r)`, every
//! parameter gradient and the input gradient must match PyTorch's to a norm-relative error
//! `max|a - b| / max|b|` of at most 1e-12, run plainly, checkpointed and under the selective
//! policy. Under bf16 (the block in f32 under our bf16 policy against PyTorch's CPU autocast,
//! `expected_bf16.safetensors`) the same, within a tolerance derived beside the test.

use checkpoint::{checkpoint, checkpoint_selective, SelectivePolicy};
use gpt::{Block, GptConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tape::nn::{self, Init, Stored};
use tape::{ops, DType, Device, Precision, Tape, Tensor};

const TOL: f64 = 1e-12;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gpt_block")
}

fn read(name: &str) -> BTreeMap<String, Stored> {
    nn::load_tensors(&dir().join(name)).expect("golden file (tests/pytorch/make_golden_gpt.py)")
}

fn tensor(map: &BTreeMap<String, Stored>, name: &str, dtype: DType) -> Tensor {
    DEVICE.with(|d| map[name].to_tensor(dtype, d).unwrap())
}

thread_local! {
    /// One device for the test's tensors (each `Device::cpu()` is a device of its own).
    static DEVICE: Device = Device::cpu();
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err / scale <= tol,
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
    check_block((DType::F64, Precision::F32), "expected.safetensors", TOL);
}

/// Tolerance, norm-relative: both sides round each low-precision op's result to bf16 (unit
/// roundoff `u = 2^-8`) and may land one rounding apart (`2u`) per rounded op on a path; a
/// block's forward rounds at most 12 times on a path (three linear layers and the attention's
/// two products, their scale, GELU, the residual adds), its backward as many again, and
/// PyTorch's CPU autocast also keeps softmax in bf16 where we run it in f32 (a few more
/// roundings on its side): `L = 30`, bound `2u * L`. Measured: 3.2e-3 at worst (the input's
/// gradient), the output and the loss to 1.5e-7.
#[test]
fn a_gpt_block_matches_pytorch_autocast_bf16() {
    let tol = 2.0 * DType::BF16.unit_roundoff() * 30.0;
    check_block(
        (DType::F32, Precision::Bf16),
        "expected_bf16.safetensors",
        tol,
    );
}

/// The block in `dtype` under `precision`, run plainly, checkpointed and selectively, against
/// the golden file `golden`.
fn check_block((dtype, precision): (DType, Precision), golden: &str, tol: f64) {
    let dev = DEVICE.with(Device::clone);
    let batch = read("batch.safetensors");
    let expected = read(golden);
    let (x, r) = (tensor(&batch, "x", dtype), tensor(&batch, "r", dtype));
    let c = x.shape()[2];
    let config = GptConfig {
        vocab_size: 1,
        block_size: x.shape()[1],
        n_layer: 1,
        n_head: 2,
        n_embd: c,
        dropout: 0.0,
    };
    let mut block = Block::new(&config, &mut Init::new(dtype, &dev, 0)).unwrap();
    nn::name_parameters(&mut block);
    nn::load(&mut block, &dir().join("weights.safetensors")).unwrap();
    let block = &block;
    let want = |name: &str| tensor(&expected, name, DType::F64).to_f64_vec();
    for run in [Run::Plain, Run::Checkpointed, Run::Selective] {
        let x = x.clone().with_requires_grad(true);
        let mut tape = Tape::recording().with_precision(precision);
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
        let what = |s: &str| format!("{run:?} {precision}: {s}");
        assert_close(&what("out"), &out.to_f64_vec(), &want("out"), tol);
        assert_close(&what("loss"), &loss.to_f64_vec(), &want("loss"), tol);
        let gx = grads.get(&x).unwrap().to_f64_vec();
        assert_close(&what("grad.x"), &gx, &want("grad.x"), tol);
        let params = nn::parameters(block);
        assert_eq!(params.len(), 12);
        for p in params {
            let name = format!("grad.{}", p.name());
            let g = grads.get(p.tensor()).unwrap().to_f64_vec();
            assert_close(&what(&name), &g, &want(&name), tol);
        }
    }
}
