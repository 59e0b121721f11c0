//! Meta kernels of the pooling ops: pooled outputs and input-shaped gradients, no values.

use super::{PoolKernels, PoolMode, Window};
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl PoolKernels for Meta {
    fn pool_forward(&self, mode: PoolMode, x: &Tensor, win: &Window) -> Result<Tensor> {
        let [n, c, _, _] = x.dims4(mode.op())?;
        Tensor::meta(&[n, c, win.hout, win.wout], x.dtype(), x.device())
    }

    fn pool_backward(
        &self,
        _mode: PoolMode,
        _saved: Option<(&Tensor, &Tensor)>,
        g: &Tensor,
        _win: &Window,
        x_shape: &[usize],
    ) -> Result<Tensor> {
        Tensor::meta(x_shape, g.dtype(), g.device())
    }

    fn global_avg_forward(&self, x: &Tensor, _hw: usize) -> Result<Tensor> {
        let [n, c, _, _] = x.dims4("global_avg_pool")?;
        Tensor::meta(&[n, c], x.dtype(), x.device())
    }

    fn global_avg_backward(&self, g: &Tensor, _hw: usize, x_shape: &[usize]) -> Result<Tensor> {
        Tensor::meta(x_shape, g.dtype(), g.device())
    }
}
