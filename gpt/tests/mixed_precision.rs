//! The GPT under a 16-bit precision policy trains like f32: the convergence bar (final
//! loss within 3% of the f32 run's).

use gpt::data::{Split, TextDataset};
use gpt::train::{adam, train_step};
use gpt::{Gpt, GptConfig};
use tape::{DType, Device, Precision};

/// The mean training loss of the last 10 of 60 Adam steps of a small GPT on a repeated text.
fn final_loss(precision: Precision) -> f64 {
    let text = "fn main() { let x = vec![1, 2, 3]; println!(\"{:?}\", x.iter().sum::<i32>()); }\n"
        .repeat(40);
    let data = TextDataset::from_text(&text).unwrap();
    let cfg = GptConfig {
        vocab_size: data.tokenizer.vocab_size(),
        block_size: 16,
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        dropout: 0.0,
    };
    let mut model = Gpt::new(cfg, DType::F32, &Device::cpu(), 1)
        .unwrap()
        .with_precision(precision);
    let mut opt = adam(3e-3).unwrap();
    let losses: Vec<f64> = (0..60)
        .map(|step| {
            let b = data.batch(Split::Train, 8, 16, step).unwrap();
            let out = train_step(&mut model, &mut opt, &b, step).unwrap();
            out.loss.to_f64_vec()[0]
        })
        .collect();
    assert!(
        losses[59] < 0.8 * losses[0],
        "{precision}: no learning: {losses:?}"
    );
    losses[50..].iter().sum::<f64>() / 10.0
}

#[test]
fn bf16_training_reaches_the_f32_loss_within_3_percent() {
    let (f32_loss, bf16_loss) = (final_loss(Precision::F32), final_loss(Precision::Bf16));
    assert!(
        (bf16_loss - f32_loss).abs() <= 0.03 * f32_loss,
        "bf16 final loss {bf16_loss} vs f32 {f32_loss}"
    );
}
