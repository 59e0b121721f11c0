//! [`DenseNetConfig`]: the seed project's constructor parameters (the architecture only: how
//! much to recompute is a run option, [`crate::Recompute`]), validation with clear errors, and the
//! standard presets.

use crate::error::{DenseNetError, Result};
use serde::{Deserialize, Serialize};

/// A DenseNet-BC configuration; field names and defaults are the seed project's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DenseNetConfig {
    /// Channels each dense layer adds (k).
    pub growth_rate: usize,
    /// Dense layers per block.
    pub block_config: Vec<usize>,
    /// Channel reduction of transitions, in (0, 1].
    pub compression: f64,
    /// Channels of the stem convolution.
    pub num_init_features: usize,
    /// Bottleneck width factor: the 1x1 conv outputs `bn_size * growth_rate` channels.
    pub bn_size: usize,
    /// Dropout probability after each dense layer, in [0, 1).
    pub drop_rate: f64,
    /// Output classes.
    pub num_classes: usize,
    /// CIFAR stem (one 3x3 conv) if true; ImageNet stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool).
    pub small_inputs: bool,
    /// Input channels (3 for RGB).
    pub in_channels: usize,
}

impl Default for DenseNetConfig {
    fn default() -> Self {
        DenseNetConfig {
            growth_rate: 12,
            block_config: vec![16, 16, 16],
            compression: 0.5,
            num_init_features: 24,
            bn_size: 4,
            drop_rate: 0.0,
            num_classes: 10,
            small_inputs: true,
            in_channels: 3,
        }
    }
}

fn cifar_bc(depth: usize, growth: usize) -> DenseNetConfig {
    let n = (depth - 4) / 6;
    DenseNetConfig {
        growth_rate: growth,
        block_config: vec![n, n, n],
        num_init_features: 2 * growth,
        ..DenseNetConfig::default()
    }
}

fn imagenet(growth: usize, blocks: [usize; 4], init: usize) -> DenseNetConfig {
    DenseNetConfig {
        growth_rate: growth,
        block_config: blocks.to_vec(),
        num_init_features: init,
        num_classes: 1000,
        small_inputs: false,
        ..DenseNetConfig::default()
    }
}

impl DenseNetConfig {
    /// DenseNet-BC (L=100, k=12) for CIFAR: the seed's default model (769,162 parameters).
    pub fn densenet_bc_100_k12() -> Self {
        cifar_bc(100, 12)
    }
    /// DenseNet-BC (L=190, k=40) for CIFAR.
    pub fn densenet_bc_190_k40() -> Self {
        cifar_bc(190, 40)
    }
    /// DenseNet-BC (L=250, k=24) for CIFAR.
    pub fn densenet_bc_250_k24() -> Self {
        cifar_bc(250, 24)
    }
    /// A CIFAR DenseNet-BC of any depth `6n + 4` with growth `k` (e.g. depth 40 for quick runs).
    pub fn densenet_bc_cifar(depth: usize, growth: usize) -> Result<Self> {
        if depth < 10 || !(depth - 4).is_multiple_of(6) {
            return Err(DenseNetError::Config(format!(
                "a CIFAR DenseNet-BC has depth 6n+4 with n >= 1, got {depth}"
            )));
        }
        Ok(cifar_bc(depth, growth))
    }
    /// DenseNet-121 (ImageNet; 7,978,856 parameters).
    pub fn densenet121() -> Self {
        imagenet(32, [6, 12, 24, 16], 64)
    }
    /// DenseNet-161 (ImageNet).
    pub fn densenet161() -> Self {
        imagenet(48, [6, 12, 36, 24], 96)
    }
    /// DenseNet-169 (ImageNet).
    pub fn densenet169() -> Self {
        imagenet(32, [6, 12, 32, 32], 64)
    }
    /// DenseNet-201 (ImageNet).
    pub fn densenet201() -> Self {
        imagenet(32, [6, 12, 48, 32], 64)
    }
    /// DenseNet-264 (ImageNet).
    pub fn densenet264() -> Self {
        imagenet(32, [6, 12, 64, 48], 64)
    }

    /// A preset by name (`densenet_bc_100_k12`, `densenet121`, ...).
    pub fn preset(name: &str) -> Result<Self> {
        Ok(match name {
            "densenet_bc_100_k12" => Self::densenet_bc_100_k12(),
            "densenet_bc_190_k40" => Self::densenet_bc_190_k40(),
            "densenet_bc_250_k24" => Self::densenet_bc_250_k24(),
            "densenet121" => Self::densenet121(),
            "densenet161" => Self::densenet161(),
            "densenet169" => Self::densenet169(),
            "densenet201" => Self::densenet201(),
            "densenet264" => Self::densenet264(),
            _ => {
                return Err(DenseNetError::Config(format!(
                    "unknown preset '{name}' (densenet_bc_100_k12, densenet_bc_190_k40, \
                     densenet_bc_250_k24, densenet121, densenet161, densenet169, densenet201, densenet264)"
                )))
            }
        })
    }

    /// Checks every field; the error says which and why.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DenseNetError::Config(m));
        if self.growth_rate == 0 {
            return bad("growth_rate must be at least 1".into());
        }
        if self.block_config.is_empty() {
            return bad("block_config must name at least one block".into());
        }
        if let Some(i) = self.block_config.iter().position(|&n| n == 0) {
            return bad(format!("block {} has no layers", i + 1));
        }
        if !(self.compression > 0.0 && self.compression <= 1.0) {
            return bad(format!(
                "compression must be in (0, 1], got {}",
                self.compression
            ));
        }
        if self.num_init_features == 0
            || self.bn_size == 0
            || self.num_classes == 0
            || self.in_channels == 0
        {
            return bad(
                "num_init_features, bn_size, num_classes and in_channels must be at least 1".into(),
            );
        }
        if !(0.0..1.0).contains(&self.drop_rate) {
            return bad(format!(
                "drop_rate must be in [0, 1), got {}",
                self.drop_rate
            ));
        }
        let mut c = self.num_init_features;
        for (i, &n) in self.block_config.iter().enumerate() {
            c += n * self.growth_rate;
            if i + 1 < self.block_config.len() {
                c = (c as f64 * self.compression).floor() as usize;
                if c == 0 {
                    return bad(format!("transition {} would have zero channels", i + 1));
                }
            }
        }
        Ok(())
    }

    /// The smallest square input the stem and pooling stack accept.
    pub fn min_image_size(&self) -> usize {
        let transitions = self.block_config.len() - 1;
        let after_stem = 1usize << transitions; // each transition halves with a 2x2 pool
        if self.small_inputs {
            after_stem
        } else {
            // 7x7/2 conv (pad 3) then 3x3/2 max pool (pad 1): size s -> ceil(s/2) -> ceil(s/4).
            4 * after_stem
        }
    }

    /// Checks that an `h` x `w` input survives the stem and every transition's 2x2 pooling.
    pub fn validate_image(&self, h: usize, w: usize) -> Result<()> {
        let min = self.min_image_size();
        if h < min || w < min {
            return Err(DenseNetError::Config(format!(
                "a {h}x{w} image is too small for {} blocks{}: need at least {min}x{min}",
                self.block_config.len(),
                if self.small_inputs {
                    ""
                } else {
                    " and the ImageNet stem"
                }
            )));
        }
        Ok(())
    }

    /// Channels entering each block and leaving the last one.
    pub fn block_channels(&self) -> (Vec<usize>, usize) {
        let mut c = self.num_init_features;
        let mut ins = Vec::new();
        for (i, &n) in self.block_config.iter().enumerate() {
            ins.push(c);
            c += n * self.growth_rate;
            if i + 1 < self.block_config.len() {
                c = (c as f64 * self.compression).floor() as usize;
            }
        }
        (ins, c)
    }

    /// Depth as the papers count it: two convs per dense layer, one per transition, the stem and
    /// the classifier (`6n + 4` for a three-block CIFAR DenseNet-BC).
    pub fn depth(&self) -> usize {
        2 * self.block_config.iter().sum::<usize>() + self.block_config.len() + 1
    }
}
