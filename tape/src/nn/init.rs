//! [`Init`]: what a module's constructor needs to make its parameters: their dtype, their device
//! and a stream of seeds, so a whole model is initialised reproducibly from one seed.

use crate::device::Device;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

/// Creation context of modules: parameter dtype, device, and a seed stream (each random tensor
/// takes the next seed, so a model built in the same order from the same seed is the same).
#[derive(Debug)]
pub struct Init<'d> {
    /// Dtype of the parameters.
    pub dtype: DType,
    /// Device of the parameters.
    pub device: &'d Device,
    seed: u64,
}

impl<'d> Init<'d> {
    /// A context for `dtype` parameters on `device`, seeded with `seed`.
    pub fn new(dtype: DType, device: &'d Device, seed: u64) -> Self {
        Init {
            dtype,
            device,
            seed,
        }
    }

    /// The next seed of the stream.
    pub fn next_seed(&mut self) -> u64 {
        self.seed = crate::rng::mix64(self.seed);
        self.seed
    }

    /// Values drawn from N(0, `std`^2), drawn in f64 and rounded once to the dtype.
    pub fn normal(&mut self, shape: &[usize], std: f64) -> Result<Tensor> {
        let seed = self.next_seed();
        let w = Tensor::randn(shape, DType::F64, self.device, seed)?;
        if self.device.is_meta() {
            return w.to_dtype(self.dtype);
        }
        let scaled: Vec<f64> = w.to_f64_vec().iter().map(|v| v * std).collect();
        Tensor::from_f64(&scaled, shape, self.dtype, self.device)
    }

    /// Values drawn uniformly from `[-bound, bound)`.
    pub fn uniform(&mut self, shape: &[usize], bound: f64) -> Result<Tensor> {
        let seed = self.next_seed();
        Tensor::rand_uniform(shape, -bound, bound, self.dtype, self.device, seed)
    }

    /// Zeros.
    pub fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        Tensor::zeros(shape, self.dtype, self.device)
    }

    /// Ones.
    pub fn ones(&self, shape: &[usize]) -> Result<Tensor> {
        Tensor::ones(shape, self.dtype, self.device)
    }
}
