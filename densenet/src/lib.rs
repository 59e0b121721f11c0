//! `densenet`: DenseNet-BC on the `tape` engine, naive or memory-efficient through the
//! `checkpoint` crate.
//!
//! - [`DenseNetConfig`]: the seed project's parameters and presets; [`Recompute`] (the
//!   `checkpoint` crate's setting, re-exported): how much to recompute (a run option, set on
//!   the model with [`DenseNet::set_recompute`]).
//! - [`DenseNet`]: the model; torchvision parameter names; [`weights`] saves and loads
//!   safetensors.
//! - [`train`]: one training step; [`data`]: CIFAR-10 and synthetic data.

pub mod config;
pub mod data;
pub mod error;
pub mod model;
pub mod train;
pub mod weights;

pub use checkpoint::{Recompute, RecomputeError, Selective};
pub use config::DenseNetConfig;
pub use error::{DenseNetError, Result};
pub use model::{DenseLayerMode, DenseNet};
