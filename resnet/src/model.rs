//! [`ResNet`]: the model on `tape::nn` modules with torchvision's names, and [`Runner`], which
//! runs it under the model's [`Recompute`] setting (`naive`, `per-block` checkpoints, or the
//! planner's plan for a `budget:SIZE` over the network seen as a chain of
//! [`checkpoint::Stage`]s).

use crate::block::Block;
use crate::config::{ResNetConfig, Stem};
use crate::error::{ResNetError, Result};
use checkpoint::planner::{profile_chain, ChainModel, Plan};
use checkpoint::{run_plan, OpKind, PlanCache, Recompute, Stage};
use tape::nn::{self, BatchNorm2d, Conv2d, Init, Linear, Numbered};
use tape::ops::RunningStats;
use tape::{ops, DType, Device, Parameter, Precision, Tape, Tensor};

/// The settings a ResNet runs.
const SUPPORTED: [Recompute; 4] = [
    Recompute::Naive,
    Recompute::PerBlock,
    Recompute::Budget(0),
    Recompute::Plan,
];

/// A ResNet: stem (`conv1`, `bn1`), four stages of residual blocks (`layer1` .. `layer4`, blocks
/// numbered from 0), global average pool and classifier (`fc`). Names are torchvision's, so a
/// torchvision `state_dict` saved as safetensors loads with [`tape::nn::load`].
pub struct ResNet {
    config: ResNetConfig,
    dtype: DType,
    precision: Precision,
    device: Device,
    /// Stem convolution.
    pub conv1: Conv2d,
    /// Stem batch norm.
    pub bn1: BatchNorm2d,
    /// The four stages (`layer1` .. `layer4`), each a list of blocks.
    pub layers: Numbered<Vec<Block>>,
    /// Classifier.
    pub fc: Linear,
    /// The recompute setting of training steps.
    recompute: Recompute,
    /// The chain's profiles by input shape (planning profiles the chain: a dry run), made again
    /// when the bytes the device holds change.
    profiles: PlanCache<[usize; 4], ChainModel>,
    /// Budget plans by (input shape, budget), made again when the bytes held change.
    plans: PlanCache<([usize; 4], u64), Plan>,
    /// The plan [`Recompute::Plan`] runs ([`ResNet::with_plan`]).
    plan: Option<Plan>,
}

tape::module!(ResNet {
    "conv1" => conv1,
    "bn1" => bn1,
    "" => layers,
    "fc" => fc,
});

impl ResNet {
    /// Builds the network of `config` with parameters of `dtype` on `device`, initialised as
    /// torchvision does (He fan-out normal convolutions, batch norms at weight 1 and bias 0, the
    /// classifier uniform in `+-1/sqrt(fan_in)`), reproducibly from `seed`.
    pub fn new(config: ResNetConfig, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        config.validate()?;
        let (kind, blocks) = config.layout()?;
        let mut init = Init::new(dtype, device, seed);
        let w = config.width;
        let conv1 = match config.stem {
            Stem::Cifar => Conv2d::new(config.in_channels, w, 3, 1, 1, &mut init)?,
            Stem::ImageNet => Conv2d::new(config.in_channels, w, 7, 2, 3, &mut init)?,
        };
        let bn1 = BatchNorm2d::new(w, &mut init)?;
        let mut inplanes = w;
        let mut stages = Vec::with_capacity(4);
        for (s, &n) in blocks.iter().enumerate() {
            let planes = w << s;
            let mut stage = Vec::with_capacity(n);
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                stage.push(Block::new(kind, inplanes, planes, stride, &mut init)?);
                inplanes = planes * kind.expansion();
            }
            stages.push(stage);
        }
        let fc = Linear::new(inplanes, config.num_classes, &mut init)?;
        let mut model = ResNet {
            config,
            dtype,
            device: device.clone(),
            conv1,
            bn1,
            layers: Numbered::new("layer", 1, stages),
            fc,
            recompute: Recompute::Naive,
            profiles: PlanCache::new(),
            plans: PlanCache::new(),
            precision: Precision::F32,
            plan: None,
        };
        nn::name_parameters(&mut model);
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetConfig {
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

    /// Every parameter, in declaration order.
    pub fn parameters(&self) -> Vec<&Parameter> {
        nn::parameters(self)
    }

    /// Every parameter, mutably (optimizers, loading).
    pub fn parameters_mut(&mut self) -> Vec<&mut Parameter> {
        nn::parameters_mut(self)
    }

    /// Number of trainable scalars (PyTorch's `sum(p.numel() for p in model.parameters())`).
    pub fn num_parameters(&self) -> usize {
        nn::num_parameters(self)
    }

    /// Every batch norm's running statistics, by torchvision buffer prefix.
    pub fn running_stats(&self) -> Vec<(String, &RunningStats)> {
        nn::running_stats(self)
    }

    /// Every block in order, with its name (`layer2.0`).
    pub fn blocks(&self) -> Vec<(String, &Block)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(s, stage)| {
                stage
                    .iter()
                    .enumerate()
                    .map(move |(b, block)| (format!("layer{}.{b}", s + 1), block))
            })
            .collect()
    }

    /// The plan the last budget forward ran (or [`Runner::plan`] made), if any.
    pub fn last_plan(&self) -> Option<Plan> {
        self.plans.last()
    }

    /// The recompute setting training steps run under (naive unless set).
    pub fn recompute(&self) -> Recompute {
        self.recompute
    }

    /// The precision policy training steps run under (`f32` unless set): under `bf16`/`f16`
    /// the parameters stay in their dtype and activations are 16-bit (see
    /// [`tape::precision`]).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Sets the precision policy of training steps (the weights stay as they are; budget plans
    /// are made again).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        self.profiles = PlanCache::new();
        self.plans = PlanCache::new();
    }

    /// The model under `precision` ([`Self::set_precision`]).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.set_precision(precision);
        self
    }

    /// Sets the recompute setting: `naive`, `per-block`, `budget:SIZE` or `plan` (with a plan
    /// given by [`ResNet::with_plan`]); any other is a [`ResNetError::Recompute`] naming these.
    pub fn set_recompute(&mut self, recompute: Recompute) -> Result<()> {
        self.recompute = recompute.check("ResNet", &SUPPORTED)?;
        Ok(())
    }

    /// The model under `recompute` ([`ResNet::set_recompute`]).
    pub fn with_recompute(mut self, recompute: Recompute) -> Result<Self> {
        self.set_recompute(recompute)?;
        Ok(self)
    }

    /// The model running `plan` over its chain ([`ResNet::chain`]: stem, every block, head) in
    /// [`Recompute::Plan`] (a plan made elsewhere, or replayed). A plan that does not cover the
    /// chain is an engine error.
    pub fn with_plan(mut self, plan: Plan) -> Result<Self> {
        plan.check_covers(self.chain().len())?;
        self.plan = Some(plan);
        self.recompute = Recompute::Plan;
        Ok(self)
    }

    /// A runner of this model under its recompute setting.
    pub fn runner(&self) -> Runner<'_> {
        Runner::new(self)
    }

    /// Checks an input batch: `[n >= 1, in_channels, h >= 1, w >= 1]` of the model's dtype and
    /// device.
    pub fn check_input(&self, x: &Tensor) -> Result<[usize; 4]> {
        let shape = x.dims4("resnet").map_err(|_| {
            ResNetError::Input(format!("expected [n, c, h, w], got {:?}", x.shape()))
        })?;
        let [n, c, h, w] = shape;
        if c != self.config.in_channels {
            return Err(ResNetError::Input(format!(
                "the input has {c} channels, the model expects {}",
                self.config.in_channels
            )));
        }
        if n == 0 || h == 0 || w == 0 {
            return Err(ResNetError::Input(format!("empty input {:?}", x.shape())));
        }
        if !x.device().same(&self.device) {
            return Err(ResNetError::Input(format!(
                "the input is on {}, the model on {}",
                x.device(),
                self.device
            )));
        }
        if x.dtype() != self.dtype {
            return Err(ResNetError::Input(format!(
                "the input is {:?}, the model's parameters {:?}",
                x.dtype(),
                self.dtype
            )));
        }
        Ok(shape)
    }

    /// conv1 -> bn1 -> ReLU (-> 3x3/2 max pool for the ImageNet stem).
    fn stem(&self, tape: &mut Tape, x: &Tensor) -> tape::Result<Tensor> {
        let h = self.conv1.forward(tape, x)?;
        let h = self.bn1.forward_relu_fused(tape, &h)?;
        match self.config.stem {
            Stem::Cifar => Ok(h),
            Stem::ImageNet => ops::max_pool2d(tape, &h, 3, 2, 1),
        }
    }

    /// Global average pool -> fc.
    fn head(&self, tape: &mut Tape, x: &Tensor) -> tape::Result<Tensor> {
        let h = ops::global_avg_pool(tape, x)?;
        self.fc.forward(tape, &h)
    }

    /// The network as a chain of layers for the checkpoint planner: `stem`, every block
    /// (`layer1.0`, ...), `head` (pool and classifier). Batch norm and ReLU run fused.
    pub fn chain(&self) -> Vec<Stage<'_>> {
        let mut chain = vec![Stage::new("stem", OpKind::Other, move |t, x| {
            self.stem(t, x)
        })];
        for (name, block) in self.blocks() {
            chain.push(Stage::new(name, OpKind::Other, move |t, x| {
                block.run(t, x, true)
            }));
        }
        chain.push(Stage::new("head", OpKind::Linear, move |t, x| {
            self.head(t, x)
        }));
        chain
    }
}

/// Runs a [`ResNet`] under its [`Recompute`] setting. It holds the model's chain of layers (what a
/// budget plan runs), so it lives as long as the tapes it records on:
///
/// ```
/// use resnet::{Recompute, ResNet, ResNetConfig};
/// use tape::{ops, DType, Device, Tape, Tensor};
///
/// let dev = Device::cpu();
/// let config = ResNetConfig::cifar(18, 10).with_width(2);
/// let model = ResNet::new(config, DType::F32, &dev, 0)
///     .unwrap()
///     .with_recompute("per-block".parse().unwrap())
///     .unwrap();
/// let x = Tensor::randn(&[2, 3, 8, 8], DType::F32, &dev, 1).unwrap();
/// assert_eq!(model.recompute(), Recompute::PerBlock);
/// let runner = model.runner();
/// let mut tape = Tape::recording();
/// let logits = runner.forward(&mut tape, &x).unwrap();
/// let loss = ops::cross_entropy(&mut tape, &logits, &[1, 7]).unwrap();
/// let grads = tape.backward(&loss).unwrap();
/// assert!(grads.get(model.fc.weight.tensor()).is_some());
/// ```
pub struct Runner<'m> {
    model: &'m ResNet,
    chain: Vec<Stage<'m>>,
}

impl<'m> Runner<'m> {
    /// A runner of `model` under its recompute setting.
    pub fn new(model: &'m ResNet) -> Self {
        Runner {
            model,
            chain: model.chain(),
        }
    }

    /// The recompute setting (the model's).
    pub fn recompute(&self) -> Recompute {
        self.model.recompute
    }

    /// The model's chain of layers ([`ResNet::chain`]).
    pub fn chain(&self) -> &[Stage<'m>] {
        &self.chain
    }

    /// The planner's model of the chain for input `x` in a step starting now: a dry run on `x`
    /// measuring every layer ([`profile_chain`]) with what the device holds now as the base,
    /// cached in the model per input shape and bytes held (so that the plans a budget runner
    /// makes for the same step are the plans of this model).
    pub fn chain_model(&self, x: &Tensor) -> Result<ChainModel> {
        let shape = self.model.check_input(x)?;
        let held = x.device().memory().current() as u64;
        self.model.profiles.get_or_make(shape, held, || {
            let tape = Tape::recording().with_precision(self.model.precision);
            Ok(profile_chain(&tape, &self.chain, x, held)?)
        })
    }

    /// The plan a [`Recompute::Budget`] runner runs for input `x` in a training step starting now:
    /// the cheapest plan of [`Runner::chain_model`] whose predicted peak fits the budget (an
    /// engine error if none does); for [`Recompute::Plan`] the plan given
    /// ([`ResNet::with_plan`]); `None` for the other settings.
    pub fn plan(&self, x: &Tensor) -> Result<Option<Plan>> {
        let budget = match self.model.recompute {
            Recompute::Budget(budget) => budget,
            Recompute::Plan => {
                return match &self.model.plan {
                    Some(plan) => Ok(Some(plan.clone())),
                    None => Err(ResNetError::Config(
                        "Recompute::Plan needs a plan: ResNet::with_plan".into(),
                    )),
                }
            }
            _ => return Ok(None),
        };
        let shape = self.model.check_input(x)?;
        let held = x.device().memory().current() as u64;
        let plan = self.model.plans.get_or_make((shape, budget), held, || {
            Ok::<_, ResNetError>(self.chain_model(x)?.plan(budget)?)
        })?;
        Ok(Some(plan))
    }

    /// Logits `[n, num_classes]` for a batch `[n, in_channels, h, w]`. On a tape that does not
    /// record or is in eval mode every setting runs the same plain forward.
    pub fn forward<'a>(&'a self, tape: &mut Tape<'a>, x: &Tensor) -> Result<Tensor> {
        let m = self.model;
        m.check_input(x)?;
        let recompute = if tape.is_recording() && tape.is_training() {
            m.recompute
        } else {
            Recompute::Naive
        };
        let checkpointed = match recompute {
            Recompute::Naive => false,
            Recompute::PerBlock => true,
            Recompute::Budget(_) | Recompute::Plan => {
                let plan = self
                    .plan(x)?
                    .ok_or_else(|| ResNetError::Config("no plan".into()))?;
                return Ok(run_plan(tape, &self.chain, &plan, x)?);
            }
            other => return Err(other.unsupported("ResNet", &SUPPORTED).into()),
        };
        let mut h = m.stem(tape, x)?;
        for stage in m.layers.iter() {
            for block in stage {
                h = block.forward(tape, &h, checkpointed)?;
            }
        }
        Ok(m.head(tape, &h)?)
    }
}
