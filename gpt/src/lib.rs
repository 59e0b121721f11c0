//! `gpt`: a small GPT in the nanoGPT / GPT-2 layout on the `tape` engine: token and position
//! embeddings, pre-norm decoder blocks (causal self-attention with a fused q/k/v projection,
//! a GELU MLP), a final layer norm and an untied language-model head, with PyTorch's parameter
//! names (`transformer.h.0.attn.c_attn.weight`, ...).
//!
//! What is recomputed is a run option, the `checkpoint` crate's [`Recompute`] set on the model
//! ([`Gpt::set_recompute`]): every activation recorded (`naive`), each block a checkpointed
//! segment (`per-block`), each block under the selective policy that keeps the matmul outputs
//! and recomputes the rest (`selective`) or only the linear layers' outputs
//! (`selective-linear`), or the blocks as a chain under the planner's plan for a memory budget
//! (`budget:SIZE`). Every setting computes the same loss and gradients.
//!
//! [`train`] has the training step (non-finite check, conditional Adam update), [`generate`]
//! greedy or sampled text, and [`data`] a character-level tokenizer and dataset built from
//! Rust source files.

pub mod config;
pub mod data;
pub mod error;
pub mod generate;
pub mod model;
pub mod train;

pub use checkpoint::{Recompute, RecomputeError, Selective};
pub use config::GptConfig;
pub use error::{GptError, Result};
pub use model::{Block, Gpt, TokenBatch};
