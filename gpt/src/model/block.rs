//! One pre-norm decoder block, nanoGPT's `Block`: `x + attn(ln_1(x))`, then `+ mlp(ln_2(.))`.

use crate::config::GptConfig;
use tape::nn::{Dropout, Init, LayerNorm, Linear};
use tape::ops::{self, MatmulOptions, SoftmaxOptions};
use tape::{Error, Result, Tape, Tensor};

/// GPT-2's initial weight scale.
const STD: f64 = 0.02;

/// Causal multi-head self-attention with a fused q/k/v projection (`c_attn`) and an output
/// projection (`c_proj`), composed from the engine's ops.
#[derive(Debug)]
pub struct CausalSelfAttention {
    /// Fused q/k/v projection `[3 C, C]`.
    pub c_attn: Linear,
    /// Output projection `[C, C]`.
    pub c_proj: Linear,
    n_head: usize,
    attn_dropout: Dropout,
    resid_dropout: Dropout,
}
tape::module!(CausalSelfAttention { "c_attn" => c_attn, "c_proj" => c_proj });

/// The feed-forward part: `c_proj(gelu(c_fc(x)))` with a 4x wider hidden layer and the exact
/// (erf) GELU, PyTorch's `nn.GELU()`.
#[derive(Debug)]
pub struct Mlp {
    /// `[4 C, C]`.
    pub c_fc: Linear,
    /// `[C, 4 C]`.
    pub c_proj: Linear,
    dropout: Dropout,
}
tape::module!(Mlp { "c_fc" => c_fc, "c_proj" => c_proj });

/// A pre-norm decoder block, named as nanoGPT's (`ln_1`, `attn`, `ln_2`, `mlp`).
#[derive(Debug)]
pub struct Block {
    /// Layer norm before attention.
    pub ln_1: LayerNorm,
    /// Causal self-attention.
    pub attn: CausalSelfAttention,
    /// Layer norm before the MLP.
    pub ln_2: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
}
tape::module!(Block { "ln_1" => ln_1, "attn" => attn, "ln_2" => ln_2, "mlp" => mlp });

impl Block {
    /// A block of `config`'s width with GPT-2's initialisation: weights N(0, 0.02), the two
    /// residual projections (`c_proj`) N(0, 0.02 / sqrt(2 n_layer)) as nanoGPT does, zero
    /// biases, unit layer-norm scales. The config must be valid ([`GptConfig::validate`]).
    pub fn new(config: &GptConfig, init: &mut Init) -> Result<Self> {
        let c = config.n_embd;
        let proj_std = STD / (2.0 * config.n_layer as f64).sqrt();
        let dropout = Dropout::new(config.dropout)?;
        Ok(Block {
            ln_1: LayerNorm::new(c, init)?,
            attn: CausalSelfAttention {
                c_attn: Linear::normal(c, 3 * c, STD, true, init)?,
                c_proj: Linear::normal(c, c, proj_std, true, init)?,
                n_head: config.n_head,
                attn_dropout: dropout,
                resid_dropout: dropout,
            },
            ln_2: LayerNorm::new(c, init)?,
            mlp: Mlp {
                c_fc: Linear::normal(c, 4 * c, STD, true, init)?,
                c_proj: Linear::normal(4 * c, c, proj_std, true, init)?,
                dropout,
            },
        })
    }

    /// `[B, T, C] -> [B, T, C]`.
    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let h = self.ln_1.forward(tape, x)?;
        let a = self.attn.forward(tape, &h)?;
        let x = ops::add(tape, x, &a)?;
        let h = self.ln_2.forward(tape, &x)?;
        let m = self.mlp.forward(tape, &h)?;
        ops::add(tape, &x, &m)
    }
}

impl CausalSelfAttention {
    /// `[B, T, C] -> [B, T, C]`: heads attend to their own and earlier positions only.
    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let (b, t, c) = match x.shape() {
            &[b, t, c] => (b, t, c),
            s => {
                return Err(Error::shape(
                    "attention",
                    format!("x must be [B, T, C], got {s:?}"),
                ))
            }
        };
        let nh = self.n_head;
        if nh == 0 || !c.is_multiple_of(nh) {
            return Err(Error::shape(
                "attention",
                format!("width {c} is not a multiple of {nh} heads"),
            ));
        }
        let hs = c / nh;
        let qkv = self.c_attn.forward(tape, x)?; // [B, T, 3C]
        let qkv = ops::split(tape, &qkv, 2, &[c, c, c])?;
        let mut heads = Vec::with_capacity(3);
        for part in &qkv {
            let p = ops::reshape(tape, part, &[b, t, nh, hs])?;
            heads.push(ops::permute(tape, &p, &[0, 2, 1, 3])?); // [B, nh, T, hs]
        }
        drop(qkv);
        let kt = MatmulOptions {
            transpose_a: false,
            transpose_b: true,
        };
        let att = ops::matmul_with(tape, &heads[0], &heads[1], kt)?; // [B, nh, T, T]
        let att = ops::scale(tape, &att, 1.0 / (hs as f64).sqrt())?;
        let att = ops::softmax_with(tape, &att, SoftmaxOptions { causal: true })?;
        let att = self.attn_dropout.forward(tape, &att)?;
        let y = ops::matmul(tape, &att, &heads[2])?; // [B, nh, T, hs]
        let y = ops::transpose(tape, &y, 1, 2)?; // [B, T, nh, hs]
        let y = ops::reshape(tape, &y, &[b, t, c])?;
        let y = self.c_proj.forward(tape, &y)?;
        self.resid_dropout.forward(tape, &y)
    }
}

impl Mlp {
    /// `[.., C] -> [.., C]`.
    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let h = self.c_fc.forward(tape, x)?;
        let h = ops::gelu(tape, &h)?;
        let h = self.c_proj.forward(tape, &h)?;
        self.dropout.forward(tape, &h)
    }
}
