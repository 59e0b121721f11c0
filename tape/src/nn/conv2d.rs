//! [`Conv2d`]: a 2-D convolution layer.

use super::Init;
use crate::block_storage::BlockStorage;
use crate::error::Result;
use crate::ops::{self, Conv2dOptions};
use crate::param::Parameter;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// A 2-D convolution of square kernels, without bias unless [`Conv2d::with_bias`] adds one
/// (the convolutions of ResNets and DenseNets, each followed by a batch norm, have none).
#[derive(Debug)]
pub struct Conv2d {
    /// Weight `[out, in, k, k]`.
    pub weight: Parameter,
    /// Bias `[out]`, if any.
    pub bias: Option<Parameter>,
    /// Stride and padding.
    pub options: Conv2dOptions,
}
crate::module!(Conv2d { "weight" => weight, "bias" => bias });

impl Conv2d {
    /// A `k x k` convolution from `cin` to `cout` channels, weights drawn from
    /// N(0, 2 / (k * k * cout)) (He initialisation over the fan-out: torchvision's ResNet and the
    /// DenseNet paper's code), no bias.
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        init: &mut Init,
    ) -> Result<Self> {
        let std = (2.0 / (k * k * cout) as f64).sqrt();
        Ok(Conv2d {
            weight: Parameter::new("weight", init.normal(&[cout, cin, k, k], std)?),
            bias: None,
            options: Conv2dOptions { stride, padding },
        })
    }

    /// Adds a bias, initialised to 0.
    pub fn with_bias(mut self, init: &mut Init) -> Result<Self> {
        let cout = self.out_channels();
        self.bias = Some(Parameter::new("bias", init.zeros(&[cout])?));
        Ok(self)
    }

    /// Number of output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.tensor().shape()[0]
    }

    /// Applies the convolution to `[n, in, h, w]`.
    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let _scope = self.weight.module_scope();
        let bias = self.bias.as_ref().map(Parameter::tensor);
        ops::conv2d(tape, x, self.weight.tensor(), bias, self.options)
    }

    /// Applies the convolution with its output written straight into channels `c0 ..` (the
    /// next ones) of `storage` ([`ops::conv2d_into_storage`]); returns a stand-in for the output.
    pub fn forward_into_storage(
        &self,
        tape: &mut Tape,
        x: &Tensor,
        storage: &BlockStorage,
        c0: usize,
    ) -> Result<Tensor> {
        let _scope = self.weight.module_scope();
        let bias = self.bias.as_ref().map(Parameter::tensor);
        let operands = (x, self.weight.tensor(), bias);
        ops::conv2d_into_storage(tape, operands, self.options, storage, c0)
    }
}
