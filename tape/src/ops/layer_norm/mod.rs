//! Layer normalisation over the last dimension, PyTorch's formula: `y = (x - mean) * invstd *
//! weight + bias` per row, with the biased variance (`invstd = 1 / sqrt(var + eps)`). Row
//! statistics are taken in `f64`. Backward keeps the input and each row's `mean` and `invstd`
//! (not the normalised input) when the input or the weight wants a gradient, the weight when the
//! input does, and nothing else; the weight and bias gradients are sums over rows in row order
//! (deterministic).

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

use super::autocast::to_f32;
use super::checks::{check_grad, check_param};
use super::widen::{narrow, wide, wide_opt};
use crate::backend::{kernel_trait, kernels};
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

const OP: &str = "layer_norm";

/// `rows` rows of `d` elements, normalised with `eps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LnDims {
    pub(crate) rows: usize,
    pub(crate) d: usize,
    pub(crate) eps: f64,
}

/// What the forward pass hands backward: each row's mean and `1 / sqrt(var + eps)`, `[rows]`.
pub(crate) struct RowStats {
    pub(crate) mean: Tensor,
    pub(crate) invstd: Tensor,
}

kernel_trait! {
    /// Device kernels of `layer_norm` (shapes checked by the caller).
    pub(crate) trait LayerNormKernels {
        /// The normalised rows, scaled by `weight` and shifted by `bias` where given, with the rows'
        /// statistics.
        fn layer_norm_forward(
            &self,
            x: &Tensor,
            weight: Option<&Tensor>,
            bias: Option<&Tensor>,
            dims: LnDims,
        ) -> Result<(Tensor, RowStats)>;
        /// The input gradient: `invstd (gh - mean(gh) - xhat mean(gh xhat))` per row, `gh = g weight`
        /// (`g` without a weight), `xhat = (x - mean) invstd`.
        fn layer_norm_grad_input(
            &self,
            g: &Tensor,
            x: &Tensor,
            stats: &RowStats,
            weight: Option<&Tensor>,
            dims: LnDims,
        ) -> Result<Tensor>;
        /// The weight gradient `sum over rows of g xhat` (when `x` and its statistics are given) and
        /// the bias gradient `sum over rows of g` (when `want_bias`), each `[d]`, summed in row order.
        fn layer_norm_grad_affine(
            &self,
            g: &Tensor,
            x: Option<(&Tensor, &RowStats)>,
            want_bias: bool,
            dims: LnDims,
        ) -> Result<(Option<Tensor>, Option<Tensor>)>;
    }
}

/// Normalises `x` (at least one dimension) over its last dimension `d`: each row gets mean 0 and
/// (biased) variance 1, computed as `(x - mean) / sqrt(var + eps)`, then is multiplied by
/// `weight` and shifted by `bias` (each `[d]`, optional). `eps` must be finite and at least 0
/// ([`Error::InvalidArgument`]); shapes that do not fit are [`Error::Shape`], mixed dtypes or
/// devices [`Error::DType`] / [`Error::Device`].
pub fn layer_norm(
    tape: &mut Tape,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let x = &*to_f32(tape, x)?;
    let _profile = tape.profile_op(OP);
    let d = match x.shape().last() {
        Some(&d) => d,
        None => {
            return Err(Error::shape(
                OP,
                "needs at least one dimension, got a 0-d tensor",
            ))
        }
    };
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(
            OP,
            format!("eps must be finite and >= 0, got {eps}"),
        ));
    }
    if let Some(w) = weight {
        check_param(OP, "weight", x, w, d)?;
    }
    if let Some(b) = bias {
        check_param(OP, "bias", x, b, d)?;
    }
    let dims = LnDims {
        rows: x.numel().checked_div(d).unwrap_or(0),
        d,
        eps,
    };
    let k = kernels(x.device())?;
    let (wx, ww, wb) = (wide(x)?, wide_opt(weight)?, wide_opt(bias)?);
    let (out, stats) = k.layer_norm_forward(&wx, ww.as_deref(), wb.as_deref(), dims)?;
    drop((wx, ww, wb));
    let out = narrow(out, x.dtype())?;
    let dtypes = (
        x.dtype(),
        weight.map(Tensor::dtype),
        bias.map(Tensor::dtype),
    );

    let mut inputs = vec![x];
    inputs.extend(weight);
    inputs.extend(bias);
    let record = tape.needs_grad(&inputs);
    let want_x = record && x.requires_grad();
    let want_w = record && weight.is_some_and(Tensor::requires_grad);
    let want_b = record && bias.is_some_and(Tensor::requires_grad);
    let saved_x = (want_x || want_w).then(|| (x.clone(), stats));
    let saved_w = if want_x { weight.cloned() } else { None };
    let (kx, kw, kb) = (
        GradKey::of(x),
        weight.map(GradKey::of),
        bias.map(GradKey::of),
    );
    let out_shape = x.shape().to_vec();
    Ok(tape.record(OP, &inputs, out, move |g, grads| {
        check_grad(OP, g, &out_shape, saved_x.as_ref().map(|(x, _)| x))?;
        let missing = || Error::Backward("layer_norm: input not saved".into());
        if want_x {
            let (x, stats) = saved_x.as_ref().ok_or_else(missing)?;
            let (wg, wx, ww) = (wide(g)?, wide(x)?, wide_opt(saved_w.as_ref())?);
            let gx = k.layer_norm_grad_input(&wg, &wx, stats, ww.as_deref(), dims)?;
            grads.accumulate(&kx, narrow(gx, dtypes.0)?)?;
        }
        if want_w || want_b {
            let xs = match &saved_x {
                Some((x, s)) if want_w => Some((x, s)),
                None if want_w => return Err(missing()),
                _ => None,
            };
            let wg = wide(g)?;
            let wxs = match xs {
                Some((x, s)) => Some((wide(x)?, s)),
                None => None,
            };
            let wxs = wxs.as_ref().map(|(x, s)| (x.as_ref(), *s));
            let (gw, gb) = k.layer_norm_grad_affine(&wg, wxs, want_b, dims)?;
            if let (Some(kw), Some(gw), Some(d)) = (&kw, gw, dtypes.1) {
                grads.accumulate(kw, narrow(gw, d)?)?;
            }
            if let (Some(kb), Some(gb), Some(d)) = (&kb, gb, dtypes.2) {
                grads.accumulate(kb, narrow(gb, d)?)?;
            }
        }
        Ok(())
    }))
}
