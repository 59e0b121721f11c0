//! [`GptConfig`]: the architecture (what a weights file needs besides its tensors).

use crate::error::{GptError, Result};

/// A GPT's architecture, nanoGPT's `GPTConfig` (biases always on, head untied). The memory
/// mode is not part of it: it is a run option ([`crate::Recompute`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GptConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context length: the longest sequence the position embedding covers.
    pub block_size: usize,
    /// Decoder blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Embedding width (a multiple of `n_head`).
    pub n_embd: usize,
    /// Dropout probability (embeddings, attention weights, residual branches), in `[0, 1)`.
    pub dropout: f64,
}

impl GptConfig {
    /// A small character-level model: 4 blocks of width 64 with 4 heads, context 64.
    pub fn small(vocab_size: usize) -> Self {
        GptConfig {
            vocab_size,
            block_size: 64,
            n_layer: 4,
            n_head: 4,
            n_embd: 64,
            dropout: 0.0,
        }
    }

    /// Checks the sizes: all nonzero, `n_embd` divisible by `n_head`, dropout in `[0, 1)`.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("block_size", self.block_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(GptError::Config(format!("{name} must be at least 1")));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(GptError::Config(format!(
                "n_embd ({}) must be divisible by n_head ({})",
                self.n_embd, self.n_head
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(GptError::Config(format!(
                "dropout must lie in [0, 1), got {}",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }
}
