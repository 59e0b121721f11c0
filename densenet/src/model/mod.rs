//! [`DenseNet`]: DenseNet-BC on the tape engine, run under the [`Recompute`] settings
//! `naive`, `bottleneck`, `layer`, `budget:SIZE` and `plan`. Parameter and buffer names are
//! torchvision's, so a torchvision `state_dict` converts.
//!
//! A budget is planned by DenseNet's own exact unit model ([`BudgetModel`]), not by a profile
//! the checkpoint planner measures on a chain ([`checkpoint::planner::profile_chain`]): the
//! planner's chain passes one tensor from each stage to the next, while every dense layer reads
//! all the features of its block from one shared storage that grows in place (the
//! concatenation is never materialised), so a layer's input is not the previous layer's output
//! and what a layer keeps depends on the storage's final width; a measured chain would count the
//! storage once per layer or not at all. The unit model predicts those bytes (the `budget_model`
//! tests hold it against the engine's measured peaks: each unit's backward peak exactly, the
//! whole step within 5% above) and plans per dense layer among three modes (keep, recompute the
//! bottleneck, recompute the layer), which the chain's keep / recompute choice cannot express.

mod budget;
mod dense;
mod measured;

pub use budget::{
    layer_costs, parameter_bytes, plan_layer_modes, predicted_peak, BudgetModel, LayerCost,
};
pub use dense::{DenseLayer, DenseLayerMode, Transition};

use crate::config::DenseNetConfig;
use crate::error::{DenseNetError, Result};
use checkpoint::{checkpoint, PlanCache, Recompute, Selective};
use tape::nn::{self, BatchNorm2d, Conv2d, Init, Linear, Numbered};
use tape::ops::RunningStats;
use tape::BlockStorage;
use tape::{ops, DType, Device, Parameter, Precision, Tape, Tensor};

/// A dense block: its layers in order (`denselayer1`, `denselayer2`, ...).
pub struct DenseBlock {
    /// The block's layers.
    pub layers: Numbered<DenseLayer>,
}
tape::module!(DenseBlock { "" => layers });

/// DenseNet-BC.
pub struct DenseNet {
    config: DenseNetConfig,
    recompute: Recompute,
    precision: Precision,
    dtype: DType,
    device: Device,
    /// Stem convolution (`features.conv0`).
    pub conv0: Conv2d,
    /// Stem batch norm of the ImageNet stem (`features.norm0`).
    pub norm0: Option<BatchNorm2d>,
    /// Dense blocks (`features.denseblockN`).
    pub blocks: Numbered<DenseBlock>,
    /// Transitions between blocks (`features.transitionN`).
    pub transitions: Numbered<Transition>,
    /// Final batch norm (`features.norm5`).
    pub norm_final: BatchNorm2d,
    /// Classifier (`classifier`).
    pub classifier: Linear,
    /// Budget plans by (input shape, budget), made again when the bytes the device holds
    /// change.
    plan_cache: PlanCache<([usize; 4], u64), LayerModes>,
    /// The plan [`Recompute::Plan`] runs ([`DenseNet::with_plan`]).
    plan: Option<LayerModes>,
}

tape::module!(DenseNet {
    "features.conv0" => conv0,
    "features.norm0" => norm0,
    "features" => blocks,
    "features" => transitions,
    "features.norm5" => norm_final,
    "classifier" => classifier,
});

/// The name of a unit of the network in backward-peak notes and the budget model's per-unit
/// predictions: layer `l` of block `b` (0-based), or with `None` the transition after block `b`.
pub fn unit_label(b: usize, l: Option<usize>) -> String {
    match l {
        Some(l) => format!("features.denseblock{}.denselayer{}", b + 1, l + 1),
        None => format!("features.transition{}", b + 1),
    }
}

/// Modes of every dense layer, per block.
type LayerModes = Vec<Vec<DenseLayerMode>>;

/// The settings a DenseNet runs.
const SUPPORTED: [Recompute; 5] = [
    Recompute::Naive,
    Recompute::Selective(Selective::Bottleneck),
    Recompute::Selective(Selective::Layer),
    Recompute::Budget(0),
    Recompute::Plan,
];

impl DenseNet {
    /// Builds a DenseNet from `config`, initialised as the seed project does, reproducibly from
    /// `seed`, with parameters of `dtype` on `device`.
    pub fn new(config: DenseNetConfig, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut init = Init::new(dtype, device, seed);
        let c0 = config.num_init_features;
        let (conv0, norm0) = if config.small_inputs {
            (
                Conv2d::new(config.in_channels, c0, 3, 1, 1, &mut init)?,
                None,
            )
        } else {
            (
                Conv2d::new(config.in_channels, c0, 7, 2, 3, &mut init)?,
                Some(BatchNorm2d::new(c0, &mut init)?),
            )
        };
        let (block_in, c_final) = config.block_channels();
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (b, &n) in config.block_config.iter().enumerate() {
            let layers = (0..n)
                .map(|l| {
                    DenseLayer::new(
                        block_in[b] + l * config.growth_rate,
                        config.growth_rate,
                        config.bn_size,
                        config.drop_rate,
                        &mut init,
                    )
                })
                .collect::<tape::Result<Vec<_>>>()?;
            blocks.push(DenseBlock {
                layers: Numbered::new("denselayer", 1, layers),
            });
            if b + 1 < config.block_config.len() {
                let cout = block_in[b + 1];
                let cin = block_in[b] + n * config.growth_rate;
                transitions.push(Transition::new(cin, cout, &mut init)?);
            }
        }
        let norm_final = BatchNorm2d::new(c_final, &mut init)?;
        let classifier = Linear::new(c_final, config.num_classes, &mut init)?;
        let mut model = DenseNet {
            config,
            recompute: Recompute::Naive,
            precision: Precision::F32,
            dtype,
            device: device.clone(),
            conv0,
            norm0,
            blocks: Numbered::new("denseblock", 1, blocks),
            transitions: Numbered::new("transition", 1, transitions),
            norm_final,
            classifier,
            plan_cache: PlanCache::new(),
            plan: None,
        };
        nn::name_parameters(&mut model);
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &DenseNetConfig {
        &self.config
    }

    /// Parameter dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device holding the parameters.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Switches the recompute setting (the weights stay): `naive`, `bottleneck`, `layer`,
    /// `budget:SIZE` or `plan` (with a plan given by [`DenseNet::with_plan`]); any other is a
    /// [`DenseNetError::Recompute`] naming these.
    pub fn set_recompute(&mut self, recompute: Recompute) -> Result<()> {
        self.recompute = recompute.check("DenseNet", &SUPPORTED)?;
        Ok(())
    }

    /// The model under `recompute` ([`DenseNet::set_recompute`]; a run option: the weights are
    /// the same).
    pub fn with_recompute(mut self, recompute: Recompute) -> Result<Self> {
        self.set_recompute(recompute)?;
        Ok(self)
    }

    /// The model running `plan` (the mode of each dense layer, per block) in [`Recompute::Plan`]:
    /// transitions and head recomputed, as a budget's plan runs. A plan that does not match the
    /// blocks is a [`DenseNetError::Config`].
    pub fn with_plan(mut self, plan: Vec<Vec<DenseLayerMode>>) -> Result<Self> {
        self.set_plan(plan)?;
        Ok(self)
    }

    /// [`DenseNet::with_plan`] in place.
    fn set_plan(&mut self, plan: Vec<Vec<DenseLayerMode>>) -> Result<()> {
        let blocks: Vec<usize> = self.blocks.iter().map(|b| b.layers.len()).collect();
        if plan.iter().map(Vec::len).collect::<Vec<_>>() != blocks {
            return Err(DenseNetError::Config(format!(
                "a plan for blocks of {:?} layers, the model has blocks of {blocks:?}",
                plan.iter().map(Vec::len).collect::<Vec<_>>()
            )));
        }
        self.plan = Some(plan);
        self.recompute = Recompute::Plan;
        Ok(())
    }

    /// The recompute setting (naive unless set).
    pub fn recompute(&self) -> Recompute {
        self.recompute
    }

    /// The precision policy training steps run under (`f32` unless set): under `bf16`/`f16`
    /// the parameters stay in their dtype and activations are 16-bit (see
    /// [`tape::precision`]).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Sets the precision policy of training steps (the weights stay as they are).
    pub fn set_precision(&mut self, precision: Precision) {
        // A budget's plans were made for the old policy's bytes.
        self.plan_cache.clear();
        self.precision = precision;
    }

    /// The model under `precision` ([`Self::set_precision`]).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.set_precision(precision);
        self
    }

    /// Every parameter, in declaration order (the module tree's: [`nn::parameters`]).
    pub fn parameters(&self) -> Vec<&Parameter> {
        nn::parameters(self)
    }

    /// Every parameter, mutably (for optimizers and weight loading).
    pub fn parameters_mut(&mut self) -> Vec<&mut Parameter> {
        nn::parameters_mut(self)
    }

    /// Number of trainable scalars (PyTorch's `sum(p.numel() for p in model.parameters())`).
    pub fn num_parameters(&self) -> usize {
        nn::num_parameters(self)
    }

    /// Bytes of all parameters.
    pub fn parameter_bytes(&self) -> usize {
        nn::parameter_bytes(self)
    }

    /// Every batch norm's running statistics, by torchvision buffer prefix.
    pub fn running_stats(&self) -> Vec<(String, &RunningStats)> {
        nn::running_stats(self)
    }

    /// The mode of every dense layer for an input of this shape (fixed modes, or the planner's
    /// choice under a budget).
    pub fn layer_modes(&self, input_shape: [usize; 4]) -> Result<LayerModes> {
        let uniform = |m| {
            Ok(self
                .blocks
                .iter()
                .map(|b| vec![m; b.layers.len()])
                .collect())
        };
        match self.recompute {
            Recompute::Naive => uniform(DenseLayerMode::Keep),
            Recompute::Selective(Selective::Bottleneck) => {
                uniform(DenseLayerMode::RecomputeBottleneck)
            }
            Recompute::Selective(Selective::Layer) => uniform(DenseLayerMode::RecomputeLayer),
            Recompute::Budget(bytes) => {
                let held = self.device.memory().current() as u64;
                self.plan_cache
                    .get_or_make((input_shape, bytes), held, || match self.precision {
                        Precision::F32 => plan_layer_modes(self, input_shape, bytes, held),
                        _ => measured::plan_measured(self, input_shape, bytes, held),
                    })
            }
            Recompute::Plan => self.plan.clone().ok_or_else(|| {
                DenseNetError::Config("Recompute::Plan needs a plan: DenseNet::with_plan".into())
            }),
            other => Err(other.unsupported("DenseNet", &SUPPORTED).into()),
        }
    }

    /// Logits `[n, num_classes]` for a batch `[n, in_channels, h, w]`.
    pub fn forward<'a>(&'a self, tape: &mut Tape<'a>, x: &Tensor) -> Result<Tensor> {
        let [n, c, h, w] = x.dims4("densenet")?;
        if c != self.config.in_channels {
            return Err(DenseNetError::Config(format!(
                "input has {c} channels, the model expects {}",
                self.config.in_channels
            )));
        }
        if n == 0 {
            return Err(DenseNetError::Config("empty batch".into()));
        }
        self.config.validate_image(h, w)?;
        let modes = self.layer_modes([n, c, h, w])?;
        let recompute_glue = !matches!(
            self.recompute,
            Recompute::Naive | Recompute::Selective(Selective::Bottleneck)
        );
        // The naive mode reads every layer's input from a copy (the concatenation it keeps).
        let in_place = self.recompute != Recompute::Naive;

        // Marks name each unit's stretch of forward and backward for `Tape::watch_unit_peaks`
        // (the budget model predicts each: `BudgetModel::unit_peaks`, `unit_forward_bounds`).
        tape.mark(|| "stem".into());
        let mut feat = self.conv0.forward(tape, x)?;
        if let Some(norm0) = &self.norm0 {
            let h = norm0.forward_relu(tape, &feat)?;
            feat = ops::max_pool2d(tape, &h, 3, 2, 1)?;
        }
        // Each block's features live in one storage of its final width: the block input, then
        // every layer's new channels, appended; the transition's output is appended to the next
        // block's storage.
        // Under a 16-bit precision policy the activations (the stem's output on) are 16-bit.
        let growth = self.config.growth_rate;
        let act_dtype = feat.dtype();
        let storage_for = |input: &Tensor, layers: usize| -> tape::Result<BlockStorage> {
            let [n, c0, h, w] = input.dims4("densenet")?;
            BlockStorage::new([n, c0 + layers * growth, h, w], act_dtype, &self.device)
        };
        let mut features = storage_for(&feat, self.blocks[0].layers.len())?;
        features.append(tape, &feat)?;
        drop(feat);
        let last = self.blocks.len() - 1;
        let mut pooled = None;
        for (b, block) in self.blocks.iter().enumerate() {
            for (l, (layer, &mode)) in block.layers.iter().zip(&modes[b]).enumerate() {
                tape.mark(|| unit_label(b, Some(l)));
                layer.forward(tape, &features, mode)?;
            }
            if b < last {
                tape.mark(|| unit_label(b, None));
                let t = &self.transitions[b];
                let [n, _, h, w] = features.dims();
                let c_next = t.conv.weight.tensor().shape()[0];
                let next_layers = self.blocks[b + 1].layers.len();
                let next = BlockStorage::new(
                    [n, c_next + next_layers * growth, h / 2, w / 2],
                    act_dtype,
                    &self.device,
                )?;
                let out = t.forward(tape, &features, recompute_glue, in_place)?;
                next.append(tape, &out)?;
                features = next;
            } else {
                tape.mark(|| "head".into());
                pooled = Some(self.head_features(tape, &features, recompute_glue, in_place)?);
            }
        }
        let pooled =
            pooled.ok_or_else(|| DenseNetError::Config("the model has no dense block".into()))?;
        Ok(self.classifier.forward(tape, &pooled)?)
    }

    /// norm5 -> ReLU -> global average pool over every feature of the last block.
    fn head_features<'a>(
        &'a self,
        tape: &mut Tape<'a>,
        features: &BlockStorage,
        recompute: bool,
        in_place: bool,
    ) -> tape::Result<Tensor> {
        let features = features.clone();
        let c = features.channels();
        let run = move |t: &mut Tape<'a>, _: &[Tensor]| -> tape::Result<Tensor> {
            let h = dense::norm_relu_prefix(&self.norm_final, t, &features, c, in_place)?;
            ops::global_avg_pool(t, &h)
        };
        if recompute {
            checkpoint(tape, &[], run)
        } else {
            run(tape, &[])
        }
    }
}
