//! [`ResNetConfig`]: which ResNet to build (depth preset, stem, width, classes), checked by
//! [`ResNetConfig::validate`].

use crate::error::{ResNetError, Result};

/// The first layers of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stem {
    /// 3x3 convolution, stride 1, padding 1, batch norm, ReLU; no max pool (small images such as
    /// CIFAR's 32x32).
    Cifar,
    /// torchvision's: 7x7 convolution, stride 2, padding 3, batch norm, ReLU, 3x3 max pool of
    /// stride 2 and padding 1.
    ImageNet,
}

/// The residual block a depth uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34), expansion 1.
    Basic,
    /// 1x1, 3x3, 1x1 convolutions (ResNet-50), expansion 4; the stride is on the 3x3 (torchvision's
    /// "ResNet v1.5").
    Bottleneck,
}

impl BlockKind {
    /// Output channels of a block per channel of its stage's width: 1 (basic) or 4 (bottleneck).
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// Depths with a preset: 18, 34 (basic blocks) and 50 (bottlenecks).
pub const DEPTHS: [usize; 3] = [18, 34, 50];

/// A ResNet's architecture. Run settings (how much to recompute) are not part of it: see
/// [`crate::Recompute`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResNetConfig {
    /// 18, 34 or 50.
    pub depth: usize,
    /// Classes of the classifier (`fc`).
    pub num_classes: usize,
    /// Channels of the input images.
    pub in_channels: usize,
    /// The stem.
    pub stem: Stem,
    /// Width of the stem and of the first stage (64 in the paper); stage `k` is
    /// `width * 2^(k-1)` wide (times the expansion at its blocks' outputs).
    pub width: usize,
}

impl Default for ResNetConfig {
    /// ResNet-18 for CIFAR-10.
    fn default() -> Self {
        ResNetConfig {
            depth: 18,
            num_classes: 10,
            in_channels: 3,
            stem: Stem::Cifar,
            width: 64,
        }
    }
}

impl ResNetConfig {
    /// torchvision's `resnet{depth}(num_classes)`: ImageNet stem, width 64, 3 input channels.
    pub fn imagenet(depth: usize, num_classes: usize) -> Self {
        ResNetConfig {
            depth,
            num_classes,
            in_channels: 3,
            stem: Stem::ImageNet,
            width: 64,
        }
    }

    /// ResNet-`depth` for small images (CIFAR stem), width 64, 3 input channels.
    pub fn cifar(depth: usize, num_classes: usize) -> Self {
        ResNetConfig {
            depth,
            num_classes,
            ..ResNetConfig::default()
        }
    }

    /// The same architecture with stem and first-stage width `width`.
    pub fn with_width(mut self, width: usize) -> Self {
        self.width = width;
        self
    }

    /// The block kind and the number of blocks of each of the four stages.
    pub fn layout(&self) -> Result<(BlockKind, [usize; 4])> {
        match self.depth {
            18 => Ok((BlockKind::Basic, [2, 2, 2, 2])),
            34 => Ok((BlockKind::Basic, [3, 4, 6, 3])),
            50 => Ok((BlockKind::Bottleneck, [3, 4, 6, 3])),
            d => Err(ResNetError::Config(format!(
                "unknown depth {d}: the presets are {DEPTHS:?}"
            ))),
        }
    }

    /// Checks the configuration: a preset depth, at least one class, one input channel and a
    /// width of at least 1 (small enough that the widest layer's size fits in memory sizes).
    pub fn validate(&self) -> Result<()> {
        let (kind, _) = self.layout()?;
        if self.num_classes == 0 {
            return Err(ResNetError::Config("num_classes must be at least 1".into()));
        }
        if self.in_channels == 0 {
            return Err(ResNetError::Config("in_channels must be at least 1".into()));
        }
        if self.width == 0 {
            return Err(ResNetError::Config("width must be at least 1".into()));
        }
        // The widest weights (a 3x3 conv of the last stage, the classifier), counted in u128 so
        // the check itself cannot overflow.
        let (w, e, k) = (
            self.width as u128,
            kind.expansion() as u128,
            self.num_classes as u128,
        );
        let conv = (8 * w).checked_mul(8 * w * 9);
        let fc = (8 * w * e).checked_mul(k);
        let widest = conv.zip(fc).map(|(a, b)| a.max(b)).unwrap_or(u128::MAX);
        if widest > (isize::MAX as u128) / 8 {
            return Err(ResNetError::Config(format!(
                "width {} with {} classes is too large to allocate",
                self.width, self.num_classes
            )));
        }
        Ok(())
    }

    /// Channels of the features that reach the classifier: `8 * width * expansion`.
    pub fn feature_channels(&self) -> Result<usize> {
        Ok(self.width.saturating_mul(8 * self.layout()?.0.expansion()))
    }

    /// A short name: `resnet18_cifar`, `resnet50_imagenet`, with `_w<width>` unless 64.
    pub fn name(&self) -> String {
        let stem = match self.stem {
            Stem::Cifar => "cifar",
            Stem::ImageNet => "imagenet",
        };
        let width = if self.width == 64 {
            String::new()
        } else {
            format!("_w{}", self.width)
        };
        format!("resnet{}_{stem}{width}", self.depth)
    }
}
