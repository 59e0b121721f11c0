//! `densenet`: DenseNet-BC on the `tape` engine, naive or memory-efficient through the
//! `checkpoint` crate.
//!
//! - [`DenseNetConfig`]: the seed project's parameters and presets; [`Memory`]: how much to
//!   recompute (a run option).
//! - [`DenseNet`]: the model; torchvision parameter names; [`weights`] saves and loads
//!   safetensors.
//! - [`train`]: one training step; [`data`]: CIFAR-10 and synthetic data.

pub mod config;
pub mod data;
pub mod error;
pub mod memory;
pub mod model;
pub mod train;
pub mod weights;

pub use config::DenseNetConfig;
pub use error::{DenseNetError, Result};
pub use memory::Memory;
pub use model::{DenseLayerMode, DenseNet};
