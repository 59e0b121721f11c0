//! Meta kernel of the batched matrix product: the output's shape, no values.

use super::{MatmulDims, MatmulKernels};
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl MatmulKernels for Meta {
    fn matmul_batched(
        &self,
        a: &Tensor,
        _b: &Tensor,
        _dims: MatmulDims,
        out_shape: &[usize],
    ) -> Result<Tensor> {
        Tensor::meta(out_shape, a.dtype(), a.device())
    }
}
