//! Residual blocks, torchvision's: [`BasicBlock`] (ResNet-18/34), [`Bottleneck`] (ResNet-50) and
//! the projection shortcut [`Downsample`], each runnable recorded or as one checkpointed segment.

use crate::config::BlockKind;
use checkpoint::checkpoint;
use tape::nn::{BatchNorm2d, Conv2d, Entry, EntryMut, Init, Module};
use tape::{ops, Result, Tape, Tensor};

/// Batch norm then ReLU: two ops (the pre-activation kept for backward), or one fused op
/// (`fused`, what the model runs, recorded or recomputed; the two ops serve the parity tests).
fn bn_relu(bn: &BatchNorm2d, tape: &mut Tape, x: &Tensor, fused: bool) -> Result<Tensor> {
    if fused {
        bn.forward_relu_fused(tape, x)
    } else {
        bn.forward_relu(tape, x)
    }
}

/// The projection shortcut of a block that changes width or resolution: a 1x1 convolution of
/// the block's stride, then batch norm (`downsample.0`, `downsample.1`).
#[derive(Debug)]
pub struct Downsample {
    /// 1x1 convolution, stride of the block (`downsample.0`).
    pub conv: Conv2d,
    /// Batch norm (`downsample.1`).
    pub bn: BatchNorm2d,
}
tape::module!(Downsample { "0" => conv, "1" => bn });

impl Downsample {
    fn new(cin: usize, cout: usize, stride: usize, init: &mut Init) -> Result<Self> {
        Ok(Downsample {
            conv: Conv2d::new(cin, cout, 1, stride, 0, init)?,
            bn: BatchNorm2d::new(cout, init)?,
        })
    }

    /// The shortcut of `x`.
    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let h = self.conv.forward(tape, x)?;
        self.bn.forward(tape, &h)
    }
}

/// The shortcut of `x`: the projection if the block has one, else `x` itself.
fn shortcut(downsample: &Option<Downsample>, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    match downsample {
        Some(d) => d.forward(tape, x),
        None => Ok(x.clone()),
    }
}

/// A projection when the block changes resolution or width, as torchvision decides.
fn downsample_for(
    cin: usize,
    cout: usize,
    stride: usize,
    init: &mut Init,
) -> Result<Option<Downsample>> {
    if stride != 1 || cin != cout {
        Ok(Some(Downsample::new(cin, cout, stride, init)?))
    } else {
        Ok(None)
    }
}

/// conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU.
#[derive(Debug)]
pub struct BasicBlock {
    /// First 3x3 convolution (carries the stride).
    pub conv1: Conv2d,
    /// First batch norm.
    pub bn1: BatchNorm2d,
    /// Second 3x3 convolution.
    pub conv2: Conv2d,
    /// Second batch norm.
    pub bn2: BatchNorm2d,
    /// Projection shortcut, if the block changes width or resolution.
    pub downsample: Option<Downsample>,
}
tape::module!(BasicBlock {
    "conv1" => conv1,
    "bn1" => bn1,
    "conv2" => conv2,
    "bn2" => bn2,
    "downsample" => downsample,
});

impl BasicBlock {
    /// A block from `inplanes` to `planes` channels whose first convolution has `stride`.
    pub fn new(inplanes: usize, planes: usize, stride: usize, init: &mut Init) -> Result<Self> {
        Ok(BasicBlock {
            conv1: Conv2d::new(inplanes, planes, 3, stride, 1, init)?,
            bn1: BatchNorm2d::new(planes, init)?,
            conv2: Conv2d::new(planes, planes, 3, 1, 1, init)?,
            bn2: BatchNorm2d::new(planes, init)?,
            downsample: downsample_for(inplanes, planes, stride, init)?,
        })
    }

    fn run(&self, tape: &mut Tape, x: &Tensor, fused: bool) -> Result<Tensor> {
        let h = self.conv1.forward(tape, x)?;
        let h = bn_relu(&self.bn1, tape, &h, fused)?;
        let h = self.conv2.forward(tape, &h)?;
        let h = self.bn2.forward(tape, &h)?;
        let s = shortcut(&self.downsample, tape, x)?;
        let h = ops::add(tape, &h, &s)?;
        ops::relu(tape, &h)
    }
}

/// conv1x1 -> BN -> ReLU -> conv3x3(stride) -> BN -> ReLU -> conv1x1 (x4 channels) -> BN, plus
/// the shortcut, then ReLU.
#[derive(Debug)]
pub struct Bottleneck {
    /// 1x1 reduction to the stage's width.
    pub conv1: Conv2d,
    /// First batch norm.
    pub bn1: BatchNorm2d,
    /// 3x3 convolution (carries the stride).
    pub conv2: Conv2d,
    /// Second batch norm.
    pub bn2: BatchNorm2d,
    /// 1x1 expansion to 4x the stage's width.
    pub conv3: Conv2d,
    /// Third batch norm.
    pub bn3: BatchNorm2d,
    /// Projection shortcut, if the block changes width or resolution.
    pub downsample: Option<Downsample>,
}
tape::module!(Bottleneck {
    "conv1" => conv1,
    "bn1" => bn1,
    "conv2" => conv2,
    "bn2" => bn2,
    "conv3" => conv3,
    "bn3" => bn3,
    "downsample" => downsample,
});

impl Bottleneck {
    /// A block from `inplanes` to `4 * planes` channels whose 3x3 convolution has `stride`.
    pub fn new(inplanes: usize, planes: usize, stride: usize, init: &mut Init) -> Result<Self> {
        let out = planes * BlockKind::Bottleneck.expansion();
        Ok(Bottleneck {
            conv1: Conv2d::new(inplanes, planes, 1, 1, 0, init)?,
            bn1: BatchNorm2d::new(planes, init)?,
            conv2: Conv2d::new(planes, planes, 3, stride, 1, init)?,
            bn2: BatchNorm2d::new(planes, init)?,
            conv3: Conv2d::new(planes, out, 1, 1, 0, init)?,
            bn3: BatchNorm2d::new(out, init)?,
            downsample: downsample_for(inplanes, out, stride, init)?,
        })
    }

    fn run(&self, tape: &mut Tape, x: &Tensor, fused: bool) -> Result<Tensor> {
        let h = self.conv1.forward(tape, x)?;
        let h = bn_relu(&self.bn1, tape, &h, fused)?;
        let h = self.conv2.forward(tape, &h)?;
        let h = bn_relu(&self.bn2, tape, &h, fused)?;
        let h = self.conv3.forward(tape, &h)?;
        let h = self.bn3.forward(tape, &h)?;
        let s = shortcut(&self.downsample, tape, x)?;
        let h = ops::add(tape, &h, &s)?;
        ops::relu(tape, &h)
    }
}

/// One residual block of either kind.
// A model holds at most a few dozen blocks, built once: the unboxed variants' size difference
// (a few hundred bytes of module headers) costs nothing worth an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Block {
    /// ResNet-18/34's.
    Basic(BasicBlock),
    /// ResNet-50's.
    Bottleneck(Bottleneck),
}

impl Module for Block {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Entry<'a>)) {
        match self {
            Block::Basic(b) => b.visit(prefix, f),
            Block::Bottleneck(b) => b.visit(prefix, f),
        }
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        match self {
            Block::Basic(b) => b.visit_mut(prefix, f),
            Block::Bottleneck(b) => b.visit_mut(prefix, f),
        }
    }
}

impl Block {
    /// A block of `kind` from `inplanes` channels at stage width `planes` (output
    /// `planes * kind.expansion()` channels) whose spatial convolution has `stride`.
    pub fn new(
        kind: BlockKind,
        inplanes: usize,
        planes: usize,
        stride: usize,
        init: &mut Init,
    ) -> Result<Self> {
        Ok(match kind {
            BlockKind::Basic => Block::Basic(BasicBlock::new(inplanes, planes, stride, init)?),
            BlockKind::Bottleneck => {
                Block::Bottleneck(Bottleneck::new(inplanes, planes, stride, init)?)
            }
        })
    }

    /// The block's kind.
    pub fn kind(&self) -> BlockKind {
        match self {
            Block::Basic(_) => BlockKind::Basic,
            Block::Bottleneck(_) => BlockKind::Bottleneck,
        }
    }

    /// Runs the block recorded: batch norm and ReLU as two ops (`fused = false`, the textbook
    /// composition) or as one fused op (`fused = true`, which keeps no pre-activation).
    pub fn run(&self, tape: &mut Tape, x: &Tensor, fused: bool) -> Result<Tensor> {
        match self {
            Block::Basic(b) => b.run(tape, x, fused),
            Block::Bottleneck(b) => b.run(tape, x, fused),
        }
    }

    /// Runs the block, recorded (`checkpointed = false`) or as one checkpointed segment (only
    /// its input is kept; it runs again in backward); batch norm and ReLU as one fused op either
    /// way (a pass fewer than the two ops: ResNet-18's naive step 0.97-1.03 -> 0.94-0.97 s).
    pub fn forward<'a>(
        &'a self,
        tape: &mut Tape<'a>,
        x: &Tensor,
        checkpointed: bool,
    ) -> Result<Tensor> {
        if checkpointed {
            checkpoint(tape, &[x], move |t, xs| self.run(t, &xs[0], true))
        } else {
            self.run(tape, x, true)
        }
    }
}
