//! Names, weights files, typed errors, a finite-difference check of one block, generation and
//! the dataset.

mod common;

use common::{batch, config, model};
use gpt::data::{CharTokenizer, Split, TextDataset};
use gpt::generate::{generate, Sampling};
use gpt::train::{adam, forward_backward, train_step};
use gpt::{Block, Gpt, GptConfig, GptError, Recompute, Selective, TokenBatch};
use tape::gradcheck::check_gradients;
use tape::nn::{self, Init};
use tape::{DType, Device, Parameter, Tape, Tensor};

#[test]
fn parameter_names_are_nanogpts() {
    let m = model(config(2, 2, 4), DType::F32, 0, Recompute::Naive);
    let names: Vec<String> = nn::state_dict(&m)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut want = vec![
        "transformer.wte.weight".to_string(),
        "transformer.wpe.weight".into(),
    ];
    for i in 0..2 {
        for s in [
            "ln_1.weight",
            "ln_1.bias",
            "attn.c_attn.weight",
            "attn.c_attn.bias",
            "attn.c_proj.weight",
            "attn.c_proj.bias",
            "ln_2.weight",
            "ln_2.bias",
            "mlp.c_fc.weight",
            "mlp.c_fc.bias",
            "mlp.c_proj.weight",
            "mlp.c_proj.bias",
        ] {
            want.push(format!("transformer.h.{i}.{s}"));
        }
    }
    want.extend([
        "transformer.ln_f.weight".into(),
        "transformer.ln_f.bias".into(),
    ]);
    want.push("lm_head.weight".into());
    assert_eq!(names, want);
    let params = m.parameters();
    assert_eq!(params[4].name(), "transformer.h.0.attn.c_attn.weight");
    assert_eq!(params[4].tensor().shape(), [24, 8]);
    // GPT-2 init: residual projections scaled by 1/sqrt(2 n_layer), zero biases.
    let std = |t: &Tensor| {
        let v = t.to_f64_vec();
        (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt()
    };
    let big = model(config(2, 4, 16), DType::F64, 0, Recompute::Naive);
    let p = big.parameters();
    let (fc, proj) = (std(p[10].tensor()), std(p[12].tensor()));
    assert!((fc - 0.02).abs() < 0.002, "{fc}");
    assert!((proj - 0.01).abs() < 0.001, "{proj}");
    assert!(p[5].tensor().to_f64_vec().iter().all(|&x| x == 0.0));
}

#[test]
fn weights_round_trip_through_a_file() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("gpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gpt.safetensors");
    let a = model(config(2, 2, 4), DType::F32, 1, Recompute::Naive);
    nn::save(&a, &path).unwrap();
    let mut b = model(config(2, 2, 4), DType::F32, 2, Recompute::Naive);
    let tokens = batch(11, 2, 5, 0);
    assert_ne!(
        a.logits(&tokens.inputs, 2, 5).unwrap().to_f64_vec(),
        b.logits(&tokens.inputs, 2, 5).unwrap().to_f64_vec()
    );
    nn::load(&mut b, &path).unwrap();
    assert_eq!(
        a.logits(&tokens.inputs, 2, 5).unwrap().to_f64_vec(),
        b.logits(&tokens.inputs, 2, 5).unwrap().to_f64_vec()
    );
    // Another architecture's file is a typed error and leaves the model untouched.
    let mut c = model(config(1, 2, 4), DType::F32, 2, Recompute::Naive);
    let before = c.logits(&tokens.inputs, 2, 5).unwrap().to_f64_vec();
    let err = nn::load(&mut c, &path).map_err(GptError::from).unwrap_err();
    assert!(matches!(err, GptError::State(_)), "{err}");
    assert_eq!(c.logits(&tokens.inputs, 2, 5).unwrap().to_f64_vec(), before);
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_configs_and_tokens_are_typed_errors() {
    let dev = Device::cpu();
    let good = config(2, 2, 4);
    let bad = [
        GptConfig {
            n_embd: 7,
            ..good.clone()
        },
        GptConfig {
            n_head: 0,
            ..good.clone()
        },
        GptConfig {
            vocab_size: 0,
            ..good.clone()
        },
        GptConfig {
            n_layer: 0,
            ..good.clone()
        },
        GptConfig {
            block_size: 0,
            ..good.clone()
        },
        GptConfig {
            dropout: 1.0,
            ..good.clone()
        },
        GptConfig {
            dropout: f64::NAN,
            ..good.clone()
        },
    ];
    for c in bad {
        assert!(matches!(c.validate(), Err(GptError::Config(_))), "{c:?}");
        assert!(matches!(
            Gpt::new(c, DType::F32, &dev, 0),
            Err(GptError::Config(_))
        ));
    }
    let m = model(good, DType::F32, 0, Recompute::PerBlock);
    let cases = [
        (vec![0; 9], vec![0; 9], 1, 9),  // longer than the context (8)
        (vec![11, 0], vec![0, 0], 1, 2), // input id outside the vocabulary
        (vec![0, 0], vec![0, 99], 1, 2), // target id outside the vocabulary
    ];
    for (inputs, targets, b, t) in cases {
        let tb = TokenBatch::new(inputs, targets, b, t).unwrap();
        let err = forward_backward(&m, &tb, 0).err().unwrap();
        assert!(matches!(err, GptError::Batch(_)), "{err}");
    }
    assert!(matches!(
        TokenBatch::new(vec![0; 3], vec![0; 4], 1, 3),
        Err(GptError::Batch(_))
    ));
    assert!(matches!(
        TokenBatch::new(vec![], vec![], 0, 3),
        Err(GptError::Batch(_))
    ));
    assert!(matches!(
        m.logits(&[1, 2, 3], 2, 2),
        Err(GptError::Batch(_))
    ));
    assert!(matches!(
        generate(&m, &[], 3, Sampling::Greedy),
        Err(GptError::Batch(_))
    ));
    assert!(matches!(
        generate(
            &m,
            &[1],
            3,
            Sampling::Temperature {
                temperature: 0.0,
                seed: 0
            }
        ),
        Err(GptError::Batch(_))
    ));
    assert!(matches!(
        generate(&m, &[12], 3, Sampling::Greedy),
        Err(GptError::Batch(_))
    ));
}

#[test]
fn one_block_passes_the_gradient_check_and_is_causal() {
    let cfg = GptConfig {
        dropout: 0.0,
        ..config(2, 2, 3)
    };
    let dev = Device::cpu();
    let template = Block::new(&cfg, &mut Init::new(DType::F64, &dev, 5)).unwrap();
    // Random values everywhere (layer norm scales and biases included).
    let mut inputs: Vec<Tensor> = nn::parameters(&template)
        .iter()
        .enumerate()
        .map(|(i, p)| Tensor::randn(p.tensor().shape(), DType::F64, &dev, 50 + i as u64).unwrap())
        .collect();
    let (b, t, c) = (2, 4, cfg.n_embd);
    inputs.push(Tensor::randn(&[b, t, c], DType::F64, &dev, 7).unwrap());
    let run = |tape: &mut Tape, xs: &[Tensor]| {
        let mut block = Block::new(&cfg, &mut Init::new(DType::F64, &dev, 5))?;
        for (p, x) in nn::parameters_mut(&mut block).into_iter().zip(xs) {
            *p = Parameter::new(p.name().to_string(), x.clone());
        }
        block.forward(tape, &xs[xs.len() - 1])
    };
    let report = check_gradients(&inputs, Tape::recording().context(), run).unwrap();
    assert!(report.max_rel_error <= 1e-6, "{report:?}");
    // Changing position 2 of the first sequence leaves positions 0..2 alone, changes 2.
    let out = |xs: &[Tensor]| run(&mut Tape::no_grad(), xs).unwrap().to_f64_vec();
    let a = out(&inputs);
    let mut x = inputs.last().unwrap().to_f64_vec();
    x[2 * c] += 1.0;
    let n = inputs.len();
    inputs[n - 1] = Tensor::from_f64(&x, &[b, t, c], DType::F64, &dev).unwrap();
    let bb = out(&inputs);
    assert_eq!(a[..2 * c], bb[..2 * c]);
    assert_ne!(a[2 * c..3 * c], bb[2 * c..3 * c]);
    assert_eq!(a[t * c..], bb[t * c..]);
}

#[test]
fn training_lowers_the_loss_and_generation_is_deterministic() {
    let text = "fn main() { println!(\"hello\"); }\n".repeat(40);
    let data = TextDataset::from_text(&text).unwrap();
    let tok = &data.tokenizer;
    assert_eq!(
        tok.decode(&tok.encode("fn main").unwrap()).unwrap(),
        "fn main"
    );
    assert!(matches!(tok.encode("é"), Err(GptError::Data(_))));
    assert_eq!(
        data.batch(Split::Train, 2, 8, 3).unwrap(),
        data.batch(Split::Train, 2, 8, 3).unwrap()
    );
    assert_ne!(
        data.batch(Split::Train, 2, 8, 3).unwrap(),
        data.batch(Split::Train, 2, 8, 4).unwrap()
    );
    let cfg = GptConfig {
        vocab_size: tok.vocab_size(),
        block_size: 16,
        ..config(2, 2, 8)
    };
    let mut m = Gpt::new(cfg, DType::F32, &Device::cpu(), 0)
        .unwrap()
        .with_recompute(Recompute::Selective(Selective::ComputeBound))
        .unwrap();
    let mut opt = adam(3e-3).unwrap();
    let val = data.batch(Split::Val, 4, 16, 99).unwrap();
    let before = forward_backward(&m, &val, 0).unwrap().loss_value().unwrap();
    for step in 0..30 {
        let b = data.batch(Split::Train, 4, 16, step).unwrap();
        train_step(&mut m, &mut opt, &b, step).unwrap();
    }
    let after = forward_backward(&m, &val, 0).unwrap().loss_value().unwrap();
    assert!(after < before - 0.5, "{before} -> {after}");
    let prompt = tok.encode("fn ").unwrap();
    let g1 = generate(&m, &prompt, 20, Sampling::Greedy).unwrap();
    assert_eq!(g1, generate(&m, &prompt, 20, Sampling::Greedy).unwrap());
    assert_eq!(g1.len(), prompt.len() + 20);
    let s = |seed| {
        generate(
            &m,
            &prompt,
            20,
            Sampling::Temperature {
                temperature: 1.0,
                seed,
            },
        )
        .unwrap()
    };
    assert_eq!(s(1), s(1));
    // A NaN weight: the step fails typed, naming it, and the update is skipped.
    let w = m.parameters()[0].tensor().clone();
    let nan = Tensor::full(w.shape(), f64::NAN, DType::F32, &Device::cpu()).unwrap();
    m.parameters_mut()[0].assign(&nan).unwrap();
    let others = m.parameters()[1].tensor().to_f64_vec();
    let b = data.batch(Split::Train, 4, 16, 1).unwrap();
    let err = train_step(&mut m, &mut opt, &b, 101).err().unwrap();
    assert!(
        matches!(&err, GptError::NonFinite(n) if n.step == 101),
        "{err}"
    );
    assert_eq!(m.parameters()[1].tensor().to_f64_vec(), others);
}

#[test]
fn the_dataset_reads_this_crates_sources() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = TextDataset::from_rust_sources(dir, 20_000).unwrap();
    assert!(data.tokenizer.vocab_size() > 40);
    assert!(data.tokens(Split::Train).len() > 10_000);
    let empty = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpt-empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(matches!(
        TextDataset::from_rust_sources(&empty, 10),
        Err(GptError::Data(_))
    ));
    let _ = CharTokenizer::from_text("x").unwrap();
}

/// A recompute setting the GPT does not run is a typed error naming the ones it does; the
/// setting stays as it was.
#[test]
fn an_unsupported_recompute_setting_is_a_typed_error() {
    let mut m = model(config(2, 2, 4), DType::F32, 0, Recompute::PerBlock);
    for other in ["bottleneck", "layer"] {
        let err = m.set_recompute(other.parse().unwrap()).unwrap_err();
        match &err {
            GptError::Recompute(gpt::RecomputeError::Unsupported { supported, .. }) => {
                assert_eq!(
                    supported,
                    &[
                        "naive",
                        "per-block",
                        "selective",
                        "selective-linear",
                        "budget:SIZE",
                        "plan"
                    ]
                )
            }
            e => panic!("wrong error {e}"),
        }
    }
    assert_eq!(m.recompute(), Recompute::PerBlock);
    m.set_recompute(Recompute::Selective(Selective::Linear))
        .unwrap();
    assert_eq!(m.recompute().to_string(), "selective-linear");
}
