//! Text generation: next tokens one at a time from the model's last-position logits, in eval
//! mode without recording (no dropout), the context cropped to the model's `block_size`.

use crate::data::SplitMix64;
use crate::error::{GptError, Result};
use crate::model::Gpt;

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// A draw from `softmax(logits / temperature)` (temperature > 0) with a seeded generator.
    Temperature {
        /// Divides the logits.
        temperature: f64,
        /// Seed of the draws.
        seed: u64,
    },
}

/// `prompt` (nonempty) followed by `new_tokens` generated tokens.
pub fn generate(
    model: &Gpt,
    prompt: &[usize],
    new_tokens: usize,
    sampling: Sampling,
) -> Result<Vec<usize>> {
    if prompt.is_empty() {
        return Err(GptError::Batch("the prompt is empty".into()));
    }
    if let Sampling::Temperature { temperature, .. } = sampling {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(GptError::Batch(format!(
                "temperature must be positive and finite, got {temperature}"
            )));
        }
    }
    let mut rng = match sampling {
        Sampling::Temperature { seed, .. } => SplitMix64::new(seed),
        Sampling::Greedy => SplitMix64::new(0),
    };
    let ctx = model.config().block_size;
    let v = model.config().vocab_size;
    let mut tokens = prompt.to_vec();
    for _ in 0..new_tokens {
        let window = &tokens[tokens.len().saturating_sub(ctx)..];
        let logits = model.logits(window, 1, window.len())?.try_to_f64_vec()?;
        let last = &logits[(window.len() - 1) * v..];
        let next = match sampling {
            Sampling::Greedy => argmax(last),
            Sampling::Temperature { temperature, .. } => sample(last, temperature, &mut rng),
        };
        tokens.push(next);
    }
    Ok(tokens)
}

fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

fn sample(logits: &[f64], temperature: f64, rng: &mut SplitMix64) -> usize {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits
        .iter()
        .map(|l| ((l - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.next_f64() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    argmax(logits)
}
