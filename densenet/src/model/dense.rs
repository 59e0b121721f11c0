//! Dense layers and transitions, each runnable naive or with recompute.

use checkpoint::{checkpoint, checkpoint_with, CheckpointOptions, KnownOutput};
use tape::nn::{BatchNorm2d, Conv2d, Dropout, Init};
use tape::BlockStorage;
use tape::{ops, Result, Tape, Tensor};

/// How one dense layer runs (what [`crate::Recompute`] or the planner chose for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseLayerMode {
    /// Everything recorded and kept for backward.
    Keep,
    /// BN + ReLU + 1x1 conv recomputed in backward.
    RecomputeBottleneck,
    /// The whole layer recomputed; only its output is kept.
    RecomputeLayer,
}

/// BN -> ReLU -> 1x1 conv -> BN -> ReLU -> 3x3 conv -> dropout over every feature before it
/// (a channel prefix of the block's [`BlockStorage`]).
pub struct DenseLayer {
    /// First batch norm (over all input features).
    pub norm1: BatchNorm2d,
    /// 1x1 bottleneck conv to `bn_size * growth` channels.
    pub conv1: Conv2d,
    /// Second batch norm.
    pub norm2: BatchNorm2d,
    /// 3x3 conv to `growth` channels.
    pub conv2: Conv2d,
    /// Dropout after the 3x3 conv (`drop_rate`; none when 0).
    pub dropout: Dropout,
}
tape::module!(DenseLayer {
    "norm1" => norm1,
    "conv1" => conv1,
    "norm2" => norm2,
    "conv2" => conv2,
});

impl DenseLayer {
    pub(crate) fn new(
        cin: usize,
        growth: usize,
        bn_size: usize,
        drop_rate: f64,
        init: &mut Init,
    ) -> Result<Self> {
        let mid = bn_size * growth;
        Ok(DenseLayer {
            norm1: BatchNorm2d::new(cin, init)?,
            conv1: Conv2d::new(cin, mid, 1, 1, 0, init)?,
            norm2: BatchNorm2d::new(mid, init)?,
            conv2: Conv2d::new(mid, growth, 3, 1, 1, init)?,
            dropout: Dropout::new(drop_rate)?,
        })
    }

    fn bottleneck(
        &self,
        tape: &mut Tape,
        features: &BlockStorage,
        c: usize,
        in_place: bool,
    ) -> Result<Tensor> {
        let h = norm_relu_prefix(&self.norm1, tape, features, c, in_place)?;
        self.conv1.forward(tape, &h)
    }

    /// Whether conv2 writes the layer's output straight into the storage (no dropout after it).
    fn writes_into_storage(&self) -> bool {
        self.dropout.p() == 0.0
    }

    /// Batch norm 2 + ReLU, conv2 and dropout: the layer's output, written into channels
    /// `c0 ..` of `features` by conv2 (a stand-in returned) when no dropout follows it.
    fn rest(
        &self,
        tape: &mut Tape,
        bottleneck: &Tensor,
        (features, c0): (&BlockStorage, usize),
    ) -> Result<Tensor> {
        let h = self.norm2.forward_relu_fused(tape, bottleneck)?;
        if self.writes_into_storage() {
            return self.conv2.forward_into_storage(tape, &h, features, c0);
        }
        let h = self.conv2.forward(tape, &h)?;
        self.dropout.forward(tape, &h)
    }

    /// Appends the layer's `growth` new channels, made from every feature before them, to its
    /// block's storage. Batch norm and ReLU run as one fused op (it keeps its input and its
    /// output, as separate ops with an in-place ReLU would). The naive mode runs it on a copy of
    /// the channels that backward keeps (the concatenation); the others read them in place.
    /// Without dropout conv2 writes its output straight into the storage and its backward reads
    /// the output's gradient from the storage's gradient (no output buffer, no copy either way).
    /// A recomputed layer's recompute does not run its last op's forward again, and keeps
    /// no copy of its output: that op's backward reads nothing of it ([`KnownOutput::StandIn`]).
    pub fn forward<'a>(
        &'a self,
        tape: &mut Tape<'a>,
        features: &BlockStorage,
        mode: DenseLayerMode,
    ) -> Result<()> {
        let c = features.channels();
        let storage = features.clone();
        let y = match mode {
            DenseLayerMode::Keep => {
                let b = self.bottleneck(tape, &storage, c, false)?;
                self.rest(tape, &b, (&storage, c))?
            }
            DenseLayerMode::RecomputeBottleneck => {
                let b = checkpoint(tape, &[], move |t, _| self.bottleneck(t, &storage, c, true))?;
                self.rest(tape, &b, (features, c))?
            }
            DenseLayerMode::RecomputeLayer => {
                let options = CheckpointOptions {
                    known_output: KnownOutput::StandIn,
                    ..CheckpointOptions::default()
                };
                checkpoint_with(tape, &[], options, move |t, _| {
                    let b = self.bottleneck(t, &storage, c, true)?;
                    self.rest(t, &b, (&storage, c))
                })?
            }
        };
        match (self.writes_into_storage(), mode) {
            // conv2's backward reads its output's gradient from the storage's gradient; a
            // recomputed layer's segment still needs a (stand-in) gradient to run.
            (true, DenseLayerMode::RecomputeLayer) => features.record_written(tape, &y),
            (true, _) => {}
            (false, _) => {
                features.append(tape, &y)?;
            }
        }
        Ok(())
    }
}

/// BN -> ReLU -> 1x1 conv (compression) -> 2x2 average pool, between blocks.
pub struct Transition {
    /// Batch norm over the block's output.
    pub norm: BatchNorm2d,
    /// 1x1 conv to `floor(c * compression)` channels.
    pub conv: Conv2d,
}
tape::module!(Transition { "norm" => norm, "conv" => conv });

impl Transition {
    pub(crate) fn new(cin: usize, cout: usize, init: &mut Init) -> Result<Self> {
        Ok(Transition {
            norm: BatchNorm2d::new(cin, init)?,
            conv: Conv2d::new(cin, cout, 1, 1, 0, init)?,
        })
    }

    fn run(&self, tape: &mut Tape, features: &BlockStorage, in_place: bool) -> Result<Tensor> {
        let c = features.channels();
        let h = norm_relu_prefix(&self.norm, tape, features, c, in_place)?;
        let h = self.conv.forward(tape, &h)?;
        ops::avg_pool2d(tape, &h, 2, 2, 0)
    }

    /// The next block's input from all features of this block, for the caller to append to the
    /// next block's storage; `recompute` checkpoints it (its recompute runs the cheap average
    /// pool again rather than keep a second copy of its output); `in_place` has batch norm and
    /// ReLU read the features in place rather than from a copy of them.
    pub fn forward<'a>(
        &'a self,
        tape: &mut Tape<'a>,
        features: &BlockStorage,
        recompute: bool,
        in_place: bool,
    ) -> Result<Tensor> {
        if recompute {
            let features = features.clone();
            let options = CheckpointOptions {
                known_output: KnownOutput::Recompute,
                ..CheckpointOptions::default()
            };
            checkpoint_with(tape, &[], options, move |t, _| {
                self.run(t, &features, in_place)
            })
        } else {
            self.run(tape, features, in_place)
        }
    }
}

/// ReLU of `norm` over the first `c` channels of `features`: read in place (the efficient
/// modes), or gathered into a packed copy that backward keeps (naive, as PyTorch's
/// concatenation).
pub(super) fn norm_relu_prefix(
    norm: &BatchNorm2d,
    tape: &mut Tape,
    features: &BlockStorage,
    c: usize,
    in_place: bool,
) -> Result<Tensor> {
    if in_place {
        norm.forward_relu_prefix(tape, features, c)
    } else {
        norm.forward_relu_gathered(tape, features, c)
    }
}
