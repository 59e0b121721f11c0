//! Dense layers and transitions, each runnable naive or with recompute.

use super::layers::{BatchNorm, Conv, Init};
use checkpoint::checkpoint;
use tape::{ops, Result, Tape, Tensor};

/// How one dense layer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerMode {
    /// Everything recorded.
    Naive,
    /// concat + BN + ReLU + 1x1 conv recomputed in backward.
    Bottleneck,
    /// The whole layer recomputed; only its output is kept.
    Layer,
}

/// concat -> BN -> ReLU -> 1x1 conv -> BN -> ReLU -> 3x3 conv -> dropout.
pub struct DenseLayer {
    /// First batch norm (over all input features).
    pub norm1: BatchNorm,
    /// 1x1 bottleneck conv to `bn_size * growth` channels.
    pub conv1: Conv,
    /// Second batch norm.
    pub norm2: BatchNorm,
    /// 3x3 conv to `growth` channels.
    pub conv2: Conv,
    drop_rate: f64,
}

impl DenseLayer {
    pub(crate) fn new(
        name: &str,
        cin: usize,
        growth: usize,
        bn_size: usize,
        drop_rate: f64,
        init: &mut Init,
    ) -> Result<Self> {
        let mid = bn_size * growth;
        Ok(DenseLayer {
            norm1: BatchNorm::new(&format!("{name}.norm1"), cin, init)?,
            conv1: Conv::new(&format!("{name}.conv1"), cin, mid, 1, 1, 0, init)?,
            norm2: BatchNorm::new(&format!("{name}.norm2"), mid, init)?,
            conv2: Conv::new(&format!("{name}.conv2"), mid, growth, 3, 1, 1, init)?,
            drop_rate,
        })
    }

    fn bottleneck(&self, tape: &mut Tape, features: &[Tensor], fused: bool) -> Result<Tensor> {
        let h = self.norm1.concat_forward_relu(tape, features, fused)?;
        self.conv1.forward(tape, &h)
    }

    fn rest(&self, tape: &mut Tape, bottleneck: &Tensor, fused: bool) -> Result<Tensor> {
        let h = self
            .norm2
            .concat_forward_relu(tape, std::slice::from_ref(bottleneck), fused)?;
        let h = self.conv2.forward(tape, &h)?;
        if self.drop_rate > 0.0 {
            ops::dropout(tape, &h, self.drop_rate)
        } else {
            Ok(h)
        }
    }

    /// The layer's `growth` new channels from all previous features of the block. The naive mode
    /// runs concat, batch norm and ReLU as separate ops; the others use the fused op.
    pub fn forward<'a>(
        &'a self,
        tape: &mut Tape<'a>,
        features: &[Tensor],
        mode: LayerMode,
    ) -> Result<Tensor> {
        let refs: Vec<&Tensor> = features.iter().collect();
        match mode {
            LayerMode::Naive => {
                let b = self.bottleneck(tape, features, false)?;
                self.rest(tape, &b, false)
            }
            LayerMode::Bottleneck => {
                let b = checkpoint(tape, &refs, move |t, xs| self.bottleneck(t, xs, true))?;
                self.rest(tape, &b, true)
            }
            LayerMode::Layer => checkpoint(tape, &refs, move |t, xs| {
                let b = self.bottleneck(t, xs, true)?;
                self.rest(t, &b, true)
            }),
        }
    }
}

/// BN -> ReLU -> 1x1 conv (compression) -> 2x2 average pool, between blocks.
pub struct Transition {
    /// Batch norm over the block's output.
    pub norm: BatchNorm,
    /// 1x1 conv to `floor(c * compression)` channels.
    pub conv: Conv,
}

impl Transition {
    pub(crate) fn new(name: &str, cin: usize, cout: usize, init: &mut Init) -> Result<Self> {
        Ok(Transition {
            norm: BatchNorm::new(&format!("{name}.norm"), cin, init)?,
            conv: Conv::new(&format!("{name}.conv"), cin, cout, 1, 1, 0, init)?,
        })
    }

    fn run(&self, tape: &mut Tape, features: &[Tensor], fused: bool) -> Result<Tensor> {
        let h = self.norm.concat_forward_relu(tape, features, fused)?;
        let h = self.conv.forward(tape, &h)?;
        ops::avg_pool2d(tape, &h, 2, 2, 0)
    }

    /// The next block's input from all features of this block; `recompute` checkpoints it,
    /// `fused` runs concat, batch norm and ReLU as one op.
    pub fn forward<'a>(
        &'a self,
        tape: &mut Tape<'a>,
        features: &[Tensor],
        recompute: bool,
        fused: bool,
    ) -> Result<Tensor> {
        if recompute {
            let refs: Vec<&Tensor> = features.iter().collect();
            checkpoint(tape, &refs, move |t, xs| self.run(t, xs, fused))
        } else {
            self.run(tape, features, fused)
        }
    }
}
