//! The transformer ops together: a small pre-norm decoder block (token embedding, layer norm,
//! fused q/k/v projection split into heads, causal attention through `matmul` with a transposed
//! operand and a causal softmax, heads merged back, output projection, residuals, and a GELU
//! MLP) passes a finite-difference gradient check in f64 with respect to every parameter.

use tape::gradcheck::check_gradients;
use tape::ops::{self, MatmulOptions, SoftmaxOptions};
use tape::{DType, Device, Result, Tape, Tensor};

const VOCAB: usize = 7;
/// Batch, sequence length, heads, head width.
const B: usize = 2;
const S: usize = 4;
const H: usize = 2;
const DH: usize = 3;
const D: usize = H * DH;

/// `[batch * seq, d] -> [batch, heads, seq, dh]`.
fn heads(t: &mut Tape, x: &Tensor) -> Result<Tensor> {
    let x = ops::reshape(t, x, &[B, S, H, DH])?;
    ops::permute(t, &x, &[0, 2, 1, 3])
}

/// `y = x + mlp(ln2(h)), h = x + attn(ln1(x))` for the embedded tokens.
fn block(t: &mut Tape, p: &[Tensor], tokens: &[usize]) -> Result<Tensor> {
    let [emb, ln1w, ln1b, wqkv, wo, bo, ln2w, ln2b, w1, b1, w2, b2] = p else {
        unreachable!("12 parameters")
    };
    let x = ops::embedding(t, emb, tokens, &[B * S])?; // [B * S, D]
    let h = ops::layer_norm(t, &x, Some(ln1w), Some(ln1b), 1e-5)?;
    let qkv = ops::linear(t, &h, wqkv, None)?; // [B * S, 3 D]
    let qkv = ops::split(t, &qkv, 1, &[D, D, D])?;
    let (q, k, v) = (heads(t, &qkv[0])?, heads(t, &qkv[1])?, heads(t, &qkv[2])?);
    let kt = MatmulOptions {
        transpose_a: false,
        transpose_b: true,
    };
    let scores = ops::matmul_with(t, &q, &k, kt)?; // [B, H, S, S]
    let scores = ops::scale(t, &scores, 1.0 / (DH as f64).sqrt())?;
    let attn = ops::softmax_with(t, &scores, SoftmaxOptions { causal: true })?;
    let ctx = ops::matmul(t, &attn, &v)?; // [B, H, S, DH]
    let ctx = ops::transpose(t, &ctx, 1, 2)?;
    let ctx = ops::reshape(t, &ctx, &[B * S, D])?;
    let a = ops::linear(t, &ctx, wo, Some(bo))?;
    let x = ops::add(t, &x, &a)?;
    let h = ops::layer_norm(t, &x, Some(ln2w), Some(ln2b), 1e-5)?;
    let h = ops::linear(t, &h, w1, Some(b1))?;
    let h = ops::gelu(t, &h)?;
    let h = ops::linear(t, &h, w2, Some(b2))?;
    let y = ops::add(t, &x, &h)?;
    ops::log_softmax(t, &y)
}

#[test]
fn a_decoder_block_passes_the_gradient_check() {
    let dev = Device::cpu();
    let shapes: [&[usize]; 12] = [
        &[VOCAB, D],
        &[D],
        &[D],
        &[3 * D, D],
        &[D, D],
        &[D],
        &[D],
        &[D],
        &[2 * D, D],
        &[2 * D],
        &[D, 2 * D],
        &[D],
    ];
    let params: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Tensor::randn(s, DType::F64, &dev, 100 + i as u64).unwrap())
        .collect();
    let tokens = [3, 1, 4, 1, 5, 2, 6, 0];
    let ctx = Tape::recording().context();
    let report = check_gradients(&params, ctx, |t, p| block(t, p, &tokens)).unwrap();
    assert!(report.max_rel_error <= 1e-6, "{report:?}");

    // Causality: changing the last token of a sequence leaves the other positions' outputs alone.
    let run = |tokens: &[usize]| {
        block(&mut Tape::no_grad(), &params, tokens)
            .unwrap()
            .to_f64_vec()
    };
    let (a, b) = (run(&tokens), run(&[3, 1, 4, 0, 5, 2, 6, 0]));
    assert_eq!(a[..3 * D], b[..3 * D]);
    assert_ne!(a[3 * D..4 * D], b[3 * D..4 * D]);
    assert_eq!(a[4 * D..], b[4 * D..]);
}

#[test]
fn ops_whose_backward_needs_only_the_output_take_a_known_output() {
    // matmul, softmax, GELU and embedding take a declared output (a recompute's last output)
    // instead of computing it, and their gradients stay the same.
    let dev = Device::cpu();
    let a = tape::testing::randn_leaf(&[2, 3, 4], DType::F64, &dev, 1);
    let b = tape::testing::randn_leaf(&[2, 4, 5], DType::F64, &dev, 2);
    let w = tape::testing::randn_leaf(&[3, 5], DType::F64, &dev, 4);
    type Op<'a> = Box<dyn Fn(&mut Tape) -> Tensor + 'a>;
    let cases: Vec<(&str, Op, Vec<&Tensor>)> = vec![
        (
            "matmul",
            Box::new(|t| ops::matmul(t, &a, &b).unwrap()),
            vec![&a, &b],
        ),
        (
            "softmax",
            Box::new(|t| ops::softmax(t, &a).unwrap()),
            vec![&a],
        ),
        ("gelu", Box::new(|t| ops::gelu(t, &a).unwrap()), vec![&a]),
        (
            "embedding",
            Box::new(|t| ops::embedding(t, &w, &[1, 0, 1], &[3]).unwrap()),
            vec![&w],
        ),
    ];
    for (name, op, inputs) in cases {
        let grads = |known: Option<&Tensor>| {
            let mut tape = Tape::recording();
            if let Some(k) = known {
                tape.set_known_output(0, k.clone());
            }
            let y = op(&mut tape);
            let seed = Tensor::randn(y.shape(), DType::F64, &dev, 3).unwrap();
            let g = tape.backward_from(&y, seed).unwrap();
            let gs: Vec<Vec<f64>> = inputs
                .iter()
                .map(|x| g.get(x).unwrap().to_f64_vec())
                .collect();
            (y, gs)
        };
        let (y, want) = grads(None);
        let (y2, got) = grads(Some(&y));
        assert!(
            y2.shares_buffer(&y),
            "{name}: the known output was not taken"
        );
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn captured_op_outputs_come_back_as_several_known_outputs() {
    // A no-grad pass captures the outputs of its linear and matmul calls; a recording pass
    // handed all of them back takes each one (same buffers) and gives the same gradients.
    let dev = Device::cpu();
    let x = tape::testing::randn_leaf(&[3, 4], DType::F64, &dev, 1);
    let w = tape::testing::randn_leaf(&[4, 4], DType::F64, &dev, 2);
    let f = |t: &mut Tape| {
        let h = ops::linear(t, &x, &w, None).unwrap();
        let h = ops::gelu(t, &h).unwrap();
        let s = ops::matmul_with(
            t,
            &h,
            &h,
            MatmulOptions {
                transpose_a: false,
                transpose_b: true,
            },
        )
        .unwrap();
        let s = ops::softmax(t, &s).unwrap();
        ops::scale(t, &s, 2.0).unwrap()
    };
    let mut first = Tape::no_grad().training(true);
    first.capture_outputs_of(&["linear", "matmul"]);
    f(&mut first);
    let captured = first.take_captured_outputs();
    assert_eq!(captured.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 2]);
    assert!(first.take_captured_outputs().is_empty());
    let grads = |known: &[(usize, Tensor)]| {
        let mut tape = Tape::recording();
        for (i, k) in known {
            tape.set_known_output(*i, k.clone());
        }
        let y = f(&mut tape);
        let g = tape.backward_from(&y, Tensor::ones(y.shape(), DType::F64, &dev).unwrap());
        let g = g.unwrap();
        (y, [&x, &w].map(|p| g.get(p).unwrap().to_f64_vec()))
    };
    let (y0, want) = grads(&[]);
    let (y1, got) = grads(&captured);
    assert_eq!(got, want);
    assert_eq!(y0.to_f64_vec(), y1.to_f64_vec());
}
