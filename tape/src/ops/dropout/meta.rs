//! Meta kernel of dropout: the masked output's shape, no mask.

use super::DropoutKernels;
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl DropoutKernels for Meta {
    fn dropout_mask(&self, x: &Tensor, _seed: u64, _counter: u64, _p: f64) -> Result<Tensor> {
        Tensor::meta(x.shape(), x.dtype(), x.device())
    }
}
