//! Meta kernels of the embedding: the gathered rows' shape, a table-shaped gradient.

use super::{EmbeddingKernels, Groups};
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl EmbeddingKernels for Meta {
    fn embedding_forward(
        &self,
        weight: &Tensor,
        _indices: &[usize],
        out_shape: &[usize],
    ) -> Result<Tensor> {
        Tensor::meta(out_shape, weight.dtype(), weight.device())
    }

    fn embedding_backward(
        &self,
        g: &Tensor,
        _groups: &Groups,
        vocab: usize,
        d: usize,
    ) -> Result<Tensor> {
        Tensor::meta(&[vocab, d], g.dtype(), g.device())
    }
}
