//! `resnet`: ResNet-18/34/50 on the `tape` engine, with torchvision's parameter names, run
//! naive or memory-efficient through the `checkpoint` crate.
//!
//! - [`ResNetConfig`]: depth preset, stem (CIFAR or ImageNet), width, classes.
//! - [`ResNet`]: the model, built of `tape::nn` modules ([`block`] holds the residual blocks);
//!   weights save and load with [`tape::nn::save`] / [`tape::nn::load`].
//! - [`Recompute`]: the `checkpoint` crate's run setting (`naive`, `per-block`: every block
//!   checkpointed, or `budget:SIZE`: the planner's plan for a byte budget), set on the model
//!   ([`ResNet::set_recompute`]) and applied by a [`Runner`].
//! - [`train`]: one training step and prediction.

pub mod block;
pub mod config;
pub mod error;
pub mod model;
pub mod train;

pub use block::{BasicBlock, Block, Bottleneck, Downsample};
pub use checkpoint::{Recompute, RecomputeError};
pub use config::{BlockKind, ResNetConfig, Stem};
pub use error::{ResNetError, Result};
pub use model::{ResNet, Runner};
