//! Meta kernels of the convolution: the CPU's outputs and workspaces (sized by the same
//! formulas, held over the same stretch of each kernel), no values.

use super::cpu::{backward_workspace_elems, forward_workspace_elems};
use super::{Conv2dGrads, Conv2dKernels, Geometry};
use crate::backend::Meta;
use crate::error::Result;
use crate::tensor::Tensor;

impl Conv2dKernels for Meta {
    fn conv2d_backward_window(
        &self,
        geo: &Geometry,
        g: &Tensor,
        _c0: usize,
        x: Option<&Tensor>,
        w: Option<&Tensor>,
        want_bias: bool,
    ) -> Result<Conv2dGrads> {
        self.conv2d_backward(geo, g, x, w, want_bias)
    }

    fn conv2d_forward(
        &self,
        geo: &Geometry,
        x: &Tensor,
        _weight: &Tensor,
        _bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let elem = x.dtype().size_in_bytes();
        let _workspace = x
            .device()
            .reserve(forward_workspace_elems(geo, elem) * elem)?;
        Tensor::meta(
            &[geo.n, geo.cout, geo.hout, geo.wout],
            x.dtype(),
            x.device(),
        )
    }

    fn conv2d_forward_into(
        &self,
        geo: &Geometry,
        x: &Tensor,
        _weight: &Tensor,
        _bias: Option<&Tensor>,
        dst: &mut Tensor,
        _c0: usize,
    ) -> Result<()> {
        let elem = x.dtype().size_in_bytes();
        let _workspace = x
            .device()
            .reserve(forward_workspace_elems(geo, elem) * elem)?;
        dst.buffer_mut()?;
        Ok(())
    }

    fn conv2d_backward(
        &self,
        geo: &Geometry,
        g: &Tensor,
        x: Option<&Tensor>,
        w: Option<&Tensor>,
        want_bias: bool,
    ) -> Result<Conv2dGrads> {
        let (dtype, dev) = (g.dtype(), g.device());
        let gb = want_bias
            .then(|| Tensor::meta(&[geo.cout], dtype, dev))
            .transpose()?;
        let (want_x, want_w) = (w.is_some(), x.is_some());
        let w_shape = [geo.cout, geo.cin, geo.kh, geo.kw];
        let gw = want_w
            .then(|| Tensor::meta(&w_shape, dtype, dev))
            .transpose()?;
        let elem = dtype.size_in_bytes();
        let (cols, flipped) = backward_workspace_elems(geo, want_x, want_w, elem);
        let _cols = dev.reserve(cols * elem)?;
        let _flipped = dev.reserve(flipped * elem)?;
        let x_shape = [geo.n, geo.cin, geo.h, geo.w];
        let gx = want_x
            .then(|| Tensor::meta(&x_shape, dtype, dev))
            .transpose()?;
        Ok((gx, gw, gb))
    }
}
