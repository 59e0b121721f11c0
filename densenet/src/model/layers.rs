//! Named building blocks: convolution, batch norm and linear layers holding their parameters
//! (torchvision names) and, for batch norm, running statistics.

use tape::ops::{self, BatchNormOptions, BlockStorage, Conv2dOptions, RunningStats};
use tape::{DType, Device, Parameter, Result, Tape, Tensor};

/// Creation context: dtype, device and a seed stream for initialisation.
pub(crate) struct Init<'d> {
    pub dtype: DType,
    pub device: &'d Device,
    pub seed: u64,
}

impl Init<'_> {
    fn next_seed(&mut self) -> u64 {
        self.seed = tape::rng::mix64(self.seed);
        self.seed
    }
}

/// A bias-free 2-D convolution.
pub struct Conv {
    /// Weight `[out, in, k, k]`.
    pub weight: Parameter,
    opts: Conv2dOptions,
}

impl Conv {
    /// Weights drawn from N(0, 2 / (k * k * out)) (the seed's initialisation).
    pub(crate) fn new(
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        init: &mut Init,
    ) -> Result<Self> {
        let std = (2.0 / (k * k * cout) as f64).sqrt();
        let w = Tensor::randn(
            &[cout, cin, k, k],
            DType::F64,
            init.device,
            init.next_seed(),
        )?;
        let w = Tensor::from_f64(
            &w.to_f64_vec().iter().map(|v| v * std).collect::<Vec<_>>(),
            w.shape(),
            init.dtype,
            init.device,
        )?;
        Ok(Conv {
            weight: Parameter::new(format!("{name}.weight"), w),
            opts: Conv2dOptions { stride, padding },
        })
    }

    /// Applies the convolution.
    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        ops::conv2d(tape, x, self.weight.tensor(), None, self.opts)
    }
}

/// 2-D batch normalisation with affine parameters and running statistics.
pub struct BatchNorm {
    /// Prefix of the tensor names (`features.norm5`).
    pub name: String,
    /// Scale (initialised to 1).
    pub weight: Parameter,
    /// Shift (initialised to 0).
    pub bias: Parameter,
    /// Running mean and variance.
    pub running: RunningStats,
}

impl BatchNorm {
    pub(crate) fn new(name: &str, c: usize, init: &mut Init) -> Result<Self> {
        Ok(BatchNorm {
            name: name.to_string(),
            weight: Parameter::new(
                format!("{name}.weight"),
                Tensor::ones(&[c], init.dtype, init.device)?,
            ),
            bias: Parameter::new(
                format!("{name}.bias"),
                Tensor::zeros(&[c], init.dtype, init.device)?,
            ),
            running: RunningStats::new(c, init.dtype, init.device)?,
        })
    }

    /// Applies batch norm (batch statistics in training, running statistics in eval).
    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        ops::batch_norm2d(
            tape,
            x,
            self.weight.tensor(),
            self.bias.tensor(),
            &self.running,
            BatchNormOptions::default(),
        )
    }

    /// Batch norm then ReLU, as two ops (the textbook composition: the naive mode's).
    pub fn forward_relu(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let h = self.forward(tape, x)?;
        ops::relu(tape, &h)
    }

    /// ReLU of the batch norm of `x`, as one fused op that does not materialise the
    /// pre-activation.
    pub fn forward_relu_fused(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        ops::batch_norm_relu(
            tape,
            &[x],
            self.weight.tensor(),
            self.bias.tensor(),
            &self.running,
            BatchNormOptions::default(),
        )
    }

    /// batch norm -> ReLU over the first `c` channels of `features`: fused, reading them in
    /// place, or as two ops on a copy of them ([`BlockStorage::gather`], the concatenation).
    pub fn prefix_forward_relu(
        &self,
        tape: &mut Tape,
        features: &BlockStorage,
        c: usize,
        fused: bool,
    ) -> Result<Tensor> {
        if fused {
            ops::batch_norm_relu_prefix(
                tape,
                features,
                c,
                self.weight.tensor(),
                self.bias.tensor(),
                &self.running,
                BatchNormOptions::default(),
            )
        } else {
            let x = features.gather(tape, c)?;
            self.forward_relu(tape, &x)
        }
    }
}

/// A fully connected layer with bias.
pub struct Linear {
    /// Weight `[out, in]`.
    pub weight: Parameter,
    /// Bias `[out]` (initialised to 0).
    pub bias: Parameter,
}

impl Linear {
    /// Weights uniform in +-1/sqrt(in) (PyTorch's default bound), bias 0.
    pub(crate) fn new(name: &str, cin: usize, cout: usize, init: &mut Init) -> Result<Self> {
        let bound = 1.0 / (cin as f64).sqrt();
        let w = Tensor::rand_uniform(
            &[cout, cin],
            -bound,
            bound,
            init.dtype,
            init.device,
            init.next_seed(),
        )?;
        Ok(Linear {
            weight: Parameter::new(format!("{name}.weight"), w),
            bias: Parameter::new(
                format!("{name}.bias"),
                Tensor::zeros(&[cout], init.dtype, init.device)?,
            ),
        })
    }

    /// Applies the layer to `[n, in]`.
    pub fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        ops::linear(tape, x, self.weight.tensor(), Some(self.bias.tensor()))
    }
}
