//! [`BatchNorm2d`]: batch normalisation over the channels of `[n, c, h, w]`, alone or fused with
//! the ReLU that follows it.

use super::Init;
use crate::block_storage::BlockStorage;
use crate::error::Result;
use crate::ops::{self, BatchNormOptions, RunningStats};
use crate::param::Parameter;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// 2-D batch normalisation with a scale (initialised to 1), a shift (initialised to 0) and
/// running statistics, PyTorch's `nn.BatchNorm2d(c)`: batch statistics in training (updating
/// the running ones), running statistics in eval.
#[derive(Debug)]
pub struct BatchNorm2d {
    /// Scale `[c]`.
    pub weight: Parameter,
    /// Shift `[c]`.
    pub bias: Parameter,
    /// Running mean and variance.
    pub running: RunningStats,
    /// Epsilon and momentum (PyTorch's defaults).
    pub options: BatchNormOptions,
}
crate::module!(BatchNorm2d { "weight" => weight, "bias" => bias, "" => running });

impl BatchNorm2d {
    /// Batch norm over `c` channels.
    pub fn new(c: usize, init: &mut Init) -> Result<Self> {
        Ok(BatchNorm2d {
            weight: Parameter::new("weight", init.ones(&[c])?),
            bias: Parameter::new("bias", init.zeros(&[c])?),
            running: RunningStats::new(c, init.dtype, init.device)?,
            options: BatchNormOptions::default(),
        })
    }

    /// Applies batch norm.
    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let _scope = self.weight.module_scope();
        ops::batch_norm2d(
            tape,
            x,
            self.weight.tensor(),
            self.bias.tensor(),
            &self.running,
            self.options,
        )
    }

    /// Batch norm then ReLU, as two ops (the textbook composition: the pre-activation is kept
    /// for backward).
    pub fn forward_relu(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let _scope = self.weight.module_scope();
        let h = self.forward(tape, x)?;
        ops::relu(tape, &h)
    }

    /// ReLU of the batch norm of `x`, as one fused op that does not keep the pre-activation.
    pub fn forward_relu_fused(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let _scope = self.weight.module_scope();
        ops::batch_norm_relu(
            tape,
            &[x],
            self.weight.tensor(),
            self.bias.tensor(),
            &self.running,
            self.options,
        )
    }

    /// ReLU of the batch norm of the first `c` channels of `features`, as one fused op that reads
    /// them in place (no copy; its backward adds into the storage's gradient).
    pub fn forward_relu_prefix(
        &self,
        tape: &mut Tape,
        features: &BlockStorage,
        c: usize,
    ) -> Result<Tensor> {
        let _scope = self.weight.module_scope();
        ops::batch_norm_relu_prefix(
            tape,
            features,
            c,
            self.weight.tensor(),
            self.bias.tensor(),
            &self.running,
            self.options,
        )
    }

    /// ReLU of the batch norm of the first `c` channels of `features`, as one fused op on a
    /// packed copy of them that backward keeps (a concatenation), its input gradient added into
    /// the storage's gradient in place ([`ops::batch_norm_relu_gathered`]).
    pub fn forward_relu_gathered(
        &self,
        tape: &mut Tape,
        features: &BlockStorage,
        c: usize,
    ) -> Result<Tensor> {
        let _scope = self.weight.module_scope();
        ops::batch_norm_relu_gathered(
            tape,
            features,
            c,
            self.weight.tensor(),
            self.bias.tensor(),
            &self.running,
            self.options,
        )
    }
}
