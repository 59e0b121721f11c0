//! [`Gpt`]: embeddings, decoder blocks, final layer norm and language-model head, with the
//! blocks run under the model's [`Recompute`] setting.
//!
//! The blocks run as a chain of [`checkpoint::Stage`]s ([`Gpt::block_layers`]), which the
//! caller makes before the step's tape (the tape's recorded closures may borrow them):
//! [`crate::train::forward_backward`] does it all for a training step.

mod block;

pub use block::{Block, CausalSelfAttention, Mlp};

use crate::config::GptConfig;
use crate::error::{GptError, Result};
use checkpoint::planner::{profile_chain, ChainModel, Plan};
use checkpoint::{checkpoint, checkpoint_selective, run_plan, OpKind, PlanCache, Recompute};
use checkpoint::{Selective, Stage};
use tape::nn::{self, Dropout, Embedding, Init, LayerNorm, Linear};
use tape::{ops, DType, Device, Precision, Tape, Tensor};

/// The settings a GPT runs: every activation recorded (`naive`); each block a checkpointed
/// segment (`per-block`); each block under [`Selective::ComputeBound`] (`selective`: the outputs
/// of its linear layers and attention matmuls kept, layer norms, softmax, GELU, reshapes and
/// copies recomputed) or [`Selective::Linear`] (`selective-linear`: only the linear layers'
/// outputs kept, attention's matmuls recomputed too); the blocks as a chain under the planner's
/// cheapest plan whose predicted peak fits a budget (`budget:SIZE`: the device's bytes held as
/// the chain starts included, the head's bytes taken off the budget, [`Gpt::head_bytes`]); the
/// blocks under a plan given with [`Gpt::with_plan`] (`plan`).
const SUPPORTED: [Recompute; 6] = [
    Recompute::Naive,
    Recompute::PerBlock,
    Recompute::Selective(Selective::ComputeBound),
    Recompute::Selective(Selective::Linear),
    Recompute::Budget(0),
    Recompute::Plan,
];

/// Token ids of a batch, row-major `[batch, seq]`, and the next-token targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBatch {
    /// Input token ids, `batch * seq` of them.
    pub inputs: Vec<usize>,
    /// Target token ids (the next tokens), `batch * seq` of them.
    pub targets: Vec<usize>,
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
}

impl TokenBatch {
    /// A batch of `batch` sequences of `seq` tokens; fails unless both lists hold
    /// `batch * seq > 0` ids.
    pub fn new(inputs: Vec<usize>, targets: Vec<usize>, batch: usize, seq: usize) -> Result<Self> {
        let n = batch * seq;
        if n == 0 || inputs.len() != n || targets.len() != n {
            return Err(GptError::Batch(format!(
                "{batch} x {seq} tokens need {n} > 0 inputs and targets, got {} and {}",
                inputs.len(),
                targets.len()
            )));
        }
        Ok(TokenBatch {
            inputs,
            targets,
            batch,
            seq,
        })
    }
}

/// The embeddings, blocks and final norm (nanoGPT's `transformer` ModuleDict).
#[derive(Debug)]
struct Transformer {
    wte: Embedding,
    wpe: Embedding,
    h: Vec<Block>,
    ln_f: LayerNorm,
}
tape::module!(Transformer { "wte" => wte, "wpe" => wpe, "h" => h, "ln_f" => ln_f });

/// A GPT language model (nanoGPT's `GPT`, head untied), parameters named as its state dict.
#[derive(Debug)]
pub struct Gpt {
    config: GptConfig,
    transformer: Transformer,
    lm_head: Linear,
    drop: Dropout,
    recompute: Recompute,
    precision: Precision,
    /// Plans of [`Recompute::Budget`], by (batch, seq, budget), made again when the bytes the
    /// device holds change (the optimizer's state appears after the first step).
    plans: PlanCache<(usize, usize, u64), Plan>,
    /// The plan [`Recompute::Plan`] runs ([`Gpt::with_plan`]).
    plan: Option<Plan>,
}
tape::module!(Gpt { "transformer" => transformer, "lm_head" => lm_head });

impl Gpt {
    /// A model of `config` (validated) in `dtype` on `device`, initialised as GPT-2 from
    /// `seed`, in [`Recompute::Naive`].
    pub fn new(config: GptConfig, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut init = Init::new(dtype, device, seed);
        let c = config.n_embd;
        let wte = Embedding::new(config.vocab_size, c, 0.02, &mut init)?;
        let wpe = Embedding::new(config.block_size, c, 0.02, &mut init)?;
        let h = (0..config.n_layer)
            .map(|_| Block::new(&config, &mut init))
            .collect::<tape::Result<Vec<_>>>()?;
        let ln_f = LayerNorm::new(c, &mut init)?;
        let lm_head = Linear::normal(c, config.vocab_size, 0.02, false, &mut init)?;
        let mut model = Gpt {
            drop: Dropout::new(config.dropout)?,
            config,
            transformer: Transformer { wte, wpe, h, ln_f },
            lm_head,
            recompute: Recompute::Naive,
            precision: Precision::F32,
            plans: PlanCache::new(),
            plan: None,
        };
        nn::name_parameters(&mut model);
        Ok(model)
    }

    /// The architecture.
    pub fn config(&self) -> &GptConfig {
        &self.config
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
        self.plans = PlanCache::new();
    }

    /// The model under `precision` ([`Self::set_precision`]).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.set_precision(precision);
        self
    }

    /// Sets the recompute setting: `naive`, `per-block`, `selective`, `selective-linear`,
    /// `budget:SIZE` or `plan` (with a plan given by [`Gpt::with_plan`]); any other is a
    /// [`GptError::Recompute`] naming these.
    pub fn set_recompute(&mut self, recompute: Recompute) -> Result<()> {
        self.recompute = recompute.check("GPT", &SUPPORTED)?;
        Ok(())
    }

    /// The model under `recompute` ([`Gpt::set_recompute`]).
    pub fn with_recompute(mut self, recompute: Recompute) -> Result<Self> {
        self.set_recompute(recompute)?;
        Ok(self)
    }

    /// The model running `plan` over its blocks ([`Gpt::block_layers`]) in [`Recompute::Plan`]
    /// (a plan made elsewhere, or replayed). A plan that does not cover the blocks is an engine
    /// error.
    pub fn with_plan(mut self, plan: Plan) -> Result<Self> {
        plan.check_covers(self.transformer.h.len())?;
        self.plan = Some(plan);
        self.recompute = Recompute::Plan;
        Ok(self)
    }

    /// The decoder blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.transformer.h
    }

    /// The device of the parameters.
    pub fn device(&self) -> &Device {
        self.lm_head.weight.tensor().device()
    }

    /// The dtype of the parameters.
    pub fn dtype(&self) -> DType {
        self.lm_head.weight.tensor().dtype()
    }

    /// The decoder blocks as a chain of layers (`h.0`, `h.1`, ...) for [`Gpt::forward`] and
    /// the planner.
    pub fn block_layers(&self) -> Vec<Stage<'_>> {
        self.transformer
            .h
            .iter()
            .enumerate()
            .map(|(i, b)| Stage::new(format!("h.{i}"), OpKind::Other, move |t, x| b.forward(t, x)))
            .collect()
    }

    /// Checks that `inputs` (`batch * seq` ids) fit: a nonempty batch, `seq` within the
    /// context, every id in the vocabulary.
    pub fn check_tokens(&self, inputs: &[usize], batch: usize, seq: usize) -> Result<()> {
        if batch == 0 || seq == 0 || inputs.len() != batch * seq {
            return Err(GptError::Batch(format!(
                "{batch} x {seq} tokens need {} > 0 ids, got {}",
                batch * seq,
                inputs.len()
            )));
        }
        if seq > self.config.block_size {
            return Err(GptError::Batch(format!(
                "sequence of {seq} tokens is longer than the context ({})",
                self.config.block_size
            )));
        }
        if let Some((i, &id)) = inputs
            .iter()
            .enumerate()
            .find(|(_, &id)| id >= self.config.vocab_size)
        {
            return Err(GptError::Batch(format!(
                "token id {id} at position {i} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        Ok(())
    }

    /// Token plus position embeddings (then dropout): `[batch, seq, C]`.
    pub fn embed(
        &self,
        tape: &mut Tape,
        inputs: &[usize],
        batch: usize,
        seq: usize,
    ) -> Result<Tensor> {
        self.check_tokens(inputs, batch, seq)?;
        let tok = self.transformer.wte.forward(tape, inputs, &[batch, seq])?;
        let positions: Vec<usize> = (0..batch).flat_map(|_| 0..seq).collect();
        let pos = self
            .transformer
            .wpe
            .forward(tape, &positions, &[batch, seq])?;
        let x = ops::add(tape, &tok, &pos)?;
        Ok(self.drop.forward(tape, &x)?)
    }

    /// The final layer norm and the head: `[.., C] -> [.., vocab]` logits.
    pub fn head(&self, tape: &mut Tape, h: &Tensor) -> Result<Tensor> {
        let h = self.transformer.ln_f.forward(tape, h)?;
        Ok(self.lm_head.forward(tape, &h)?)
    }

    /// Logits `[batch, seq, vocab]` of `inputs` (`batch * seq` ids, row-major), the blocks run
    /// as `layers` (this model's [`Gpt::block_layers`]) under the model's recompute setting (which
    /// matters only on a recording tape in training mode).
    pub fn forward<'a>(
        &'a self,
        tape: &mut Tape<'a>,
        layers: &'a [Stage<'a>],
        inputs: &[usize],
        batch: usize,
        seq: usize,
    ) -> Result<Tensor> {
        if layers.len() != self.transformer.h.len() {
            return Err(GptError::Batch(format!(
                "{} layers for a model of {} blocks (pass the model's block_layers())",
                layers.len(),
                self.transformer.h.len()
            )));
        }
        let mut h = self.embed(tape, inputs, batch, seq)?;
        match self.recompute {
            Recompute::Naive => {
                for l in layers {
                    h = l.forward(tape, &h)?;
                }
            }
            Recompute::PerBlock => {
                for l in layers {
                    h = checkpoint(tape, &[&h], move |t, xs| l.forward(t, &xs[0]))?;
                }
            }
            Recompute::Selective(s @ (Selective::ComputeBound | Selective::Linear)) => {
                let policy = s
                    .policy()
                    .ok_or_else(|| Recompute::Selective(s).unsupported("GPT", &SUPPORTED))?;
                for l in layers {
                    h = checkpoint_selective(tape, &[&h], &policy, move |t, xs| {
                        l.forward(t, &xs[0])
                    })?;
                }
            }
            Recompute::Budget(bytes) => {
                let plan = self.budget_plan(tape, layers, &h, bytes)?;
                h = run_plan(tape, layers, &plan, &h)?;
            }
            Recompute::Plan => {
                let plan = self.plan.as_ref().ok_or_else(|| {
                    GptError::Config("Recompute::Plan needs a plan: Gpt::with_plan".into())
                })?;
                h = run_plan(tape, layers, plan, &h)?;
            }
            other => return Err(other.unsupported("GPT", &SUPPORTED).into()),
        }
        self.head(tape, &h)
    }

    /// Logits `[batch, seq, vocab]` in eval mode without recording (no dropout).
    pub fn logits(&self, inputs: &[usize], batch: usize, seq: usize) -> Result<Tensor> {
        let layers = self.block_layers();
        let mut tape = Tape::no_grad();
        self.forward(&mut tape, &layers, inputs, batch, seq)
    }

    /// The plan of [`Recompute::Budget`]`(bytes)` for the chain's input `x`, from the cache or
    /// the planner: the chain profiled on `x` with what the device holds now as its base, under
    /// the budget less [`Gpt::head_bytes`] (what the head and the loss hold on top of the
    /// chain's output when backward starts).
    fn budget_plan<'a>(
        &'a self,
        tape: &Tape<'a>,
        layers: &'a [Stage<'a>],
        x: &Tensor,
        bytes: u64,
    ) -> Result<Plan> {
        let (batch, seq) = (x.shape()[0], x.shape()[1]);
        let base = x.device().memory().current() as u64;
        self.plans.get_or_make((batch, seq, bytes), base, || {
            let model = profile_chain(tape, layers, x, base)?;
            Ok(model.plan(bytes.saturating_sub(self.head_bytes(batch, seq)))?)
        })
    }

    /// Bytes the head and the loss hold beyond the block chain's output at the start of
    /// backward, for batches of `batch x seq` (an upper bound): the final layer norm's output and
    /// statistics, the logits, the loss's saved probabilities and the logits' gradient, and the
    /// head's parameter gradients.
    pub fn head_bytes(&self, batch: usize, seq: usize) -> u64 {
        let (c, v) = (self.config.n_embd as u64, self.config.vocab_size as u64);
        let rows = (batch * seq) as u64;
        let elem = self.dtype().size_in_bytes() as u64;
        // Row statistics of the layer norm are kept in f64 on the CPU: 16 bytes a row at most.
        (rows * (2 * c + 3 * v) + v * c + 2 * c) * elem + 16 * rows
    }

    /// The plan [`Recompute::Budget`] last used for batches of `batch x seq`, if one was made.
    pub fn cached_plan(&self, batch: usize, seq: usize) -> Option<Plan> {
        let Recompute::Budget(bytes) = self.recompute else {
            return None;
        };
        self.plans.get(&(batch, seq, bytes))
    }

    /// The planner's model of the block chain for batches of `batch x seq` (profiled on the
    /// embeddings of token 0 everywhere, with what the device holds as its base): its
    /// predictions, its front of peak against recompute, its plans for budgets.
    pub fn chain_model(&self, batch: usize, seq: usize) -> Result<ChainModel> {
        let layers = self.block_layers();
        let tape = Tape::recording().with_precision(self.precision);
        let x = self.embed(&mut Tape::no_grad(), &vec![0; batch * seq], batch, seq)?;
        let x = x.with_requires_grad(true);
        let base = x.device().memory().current() as u64;
        Ok(profile_chain(&tape, &layers, &x, base)?)
    }

    /// Parameters, in state-dict order.
    pub fn parameters(&self) -> Vec<&tape::Parameter> {
        nn::parameters(self)
    }

    /// Parameters, mutable (optimizers, loading), in state-dict order.
    pub fn parameters_mut(&mut self) -> Vec<&mut tape::Parameter> {
        nn::parameters_mut(self)
    }
}
