//! Meta kernels of the convolution: the CPU's outputs and workspaces (sized by the same
//! formulas, held over the same stretch of each kernel), no values.

use super::cpu::{backward_workspace_elems, forward_workspace_elems};
use super::tiles::{self, on_tiles};
use super::{Conv2dGrads, Conv2dKernels, Geometry};
use crate::backend::Meta;
use crate::dtype::DType;
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
        let bytes = match on_tiles(geo, x.dtype()) {
            true => tiles::forward_workspace_bytes(geo),
            false => forward_workspace_elems(geo, elem) * elem,
        };
        let _workspace = x.device().reserve(bytes)?;
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
        if on_tiles(geo, dtype) {
            return tiles_backward(geo, g, x.is_some(), w.is_some(), want_bias);
        }
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

/// The backward on the tiles (`tiles::backward`): its workspace, an `f32` bias and weight
/// gradient, a bf16 input gradient, in its order.
fn tiles_backward(
    geo: &Geometry,
    g: &Tensor,
    want_w: bool,
    want_x: bool,
    want_bias: bool,
) -> Result<Conv2dGrads> {
    let dev = g.device();
    let _workspace = dev.reserve(tiles::backward_workspace_bytes(geo, want_x, want_w))?;
    let f32_grad = |want: bool, shape: &[usize]| {
        want.then(|| Tensor::meta(shape, DType::F32, dev))
            .transpose()
    };
    let gb = f32_grad(want_bias, &[geo.cout])?;
    let gw = f32_grad(want_w, &[geo.cout, geo.cin, geo.kh, geo.kw])?;
    let gx = want_x
        .then(|| Tensor::meta(&[geo.n, geo.cin, geo.h, geo.w], g.dtype(), dev))
        .transpose()?;
    Ok((gx, gw, gb))
}
