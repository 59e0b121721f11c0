//! Meta kernels of layer norm: the output and the per-row statistics, the gradients, no
//! values.

use super::{LayerNormKernels, LnDims, RowStats};
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl LayerNormKernels for Meta {
    fn layer_norm_forward(
        &self,
        x: &Tensor,
        _weight: Option<&Tensor>,
        _bias: Option<&Tensor>,
        dims: LnDims,
    ) -> Result<(Tensor, RowStats)> {
        let (dtype, dev) = (x.dtype(), x.device());
        let y = Tensor::meta(x.shape(), dtype, dev)?;
        let stats = RowStats {
            mean: Tensor::meta(&[dims.rows], dtype, dev)?,
            invstd: Tensor::meta(&[dims.rows], dtype, dev)?,
        };
        Ok((y, stats))
    }

    fn layer_norm_grad_input(
        &self,
        g: &Tensor,
        _x: &Tensor,
        _stats: &RowStats,
        _weight: Option<&Tensor>,
        _dims: LnDims,
    ) -> Result<Tensor> {
        Tensor::meta(g.shape(), g.dtype(), g.device())
    }

    fn layer_norm_grad_affine(
        &self,
        g: &Tensor,
        x: Option<(&Tensor, &RowStats)>,
        want_bias: bool,
        dims: LnDims,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let vector = || Tensor::meta(&[dims.d], g.dtype(), g.device());
        let gw = x.map(|_| vector()).transpose()?;
        let gb = want_bias.then(vector).transpose()?;
        Ok((gw, gb))
    }
}
