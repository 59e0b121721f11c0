//! Finite-difference gradient checking in `f64`, for tests of ops and of anything built on them.
//!
//! The function's output is projected onto a fixed random tensor `R` (`L = sum(f(x) * R)`), the
//! tape's gradient of `L` is compared with central differences of `L`. Every evaluation uses the
//! same tape context (same dropout stream), so random ops are checked too.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops;
use crate::tape::{Context, Tape};
use crate::tensor::Tensor;

/// Step of the central differences.
pub const EPS: f64 = 1e-5;

/// The outcome of [`check_gradients`]: the worst relative error over all inputs.
#[derive(Clone, Debug)]
pub struct GradCheckReport {
    /// `max_j |analytic_j - numeric_j| / max(max_j |numeric_j|, 1e-2)`, worst input.
    pub max_rel_error: f64,
    /// Index of the worst input.
    pub worst_input: usize,
}

fn projected_loss(
    ctx: Context,
    f: &dyn Fn(&mut Tape, &[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    proj: &[f64],
) -> Result<f64> {
    let mut tape = Tape::with_context(false, ctx);
    let out = f(&mut tape, inputs)?;
    Ok(out.to_f64_vec().iter().zip(proj).map(|(a, b)| a * b).sum())
}

/// Checks the tape's gradients of `f` with respect to every input against central differences.
/// Inputs must be `f64`; `ctx` is the context every evaluation runs in (training, seed).
pub fn check_gradients(
    inputs: &[Tensor],
    ctx: Context,
    f: impl Fn(&mut Tape, &[Tensor]) -> Result<Tensor>,
) -> Result<GradCheckReport> {
    if let Some(t) = inputs.iter().find(|t| t.dtype() != DType::F64) {
        return Err(Error::DType {
            op: "check_gradients",
            expected: DType::F64,
            got: t.dtype(),
        });
    }
    let inputs: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.clone().with_requires_grad(true))
        .collect();
    let mut tape = Tape::with_context(true, ctx);
    let out = f(&mut tape, &inputs)?;
    let proj_t = Tensor::randn(out.shape(), DType::F64, out.device(), 0x5eed)?;
    let proj = proj_t.to_f64_vec();
    let weighted = ops::mul(&mut tape, &out, &proj_t)?;
    let loss = ops::sum(&mut tape, &weighted)?;
    let grads = tape.backward(&loss)?;

    let mut report = GradCheckReport {
        max_rel_error: 0.0,
        worst_input: 0,
    };
    for (i, x) in inputs.iter().enumerate() {
        let analytic = match grads.get(x) {
            Some(g) => g.to_f64_vec(),
            None => vec![0.0; x.numel()],
        };
        let base = x.to_f64_vec();
        let mut numeric = vec![0.0; base.len()];
        for j in 0..base.len() {
            let eval = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[j] += delta;
                let mut xs = inputs.clone();
                xs[i] = Tensor::from_f64(&v, x.shape(), DType::F64, x.device())?;
                projected_loss(ctx, &f, &xs, &proj)
            };
            numeric[j] = (eval(EPS)? - eval(-EPS)?) / (2.0 * EPS);
        }
        let scale = numeric.iter().fold(1e-2f64, |m, v| m.max(v.abs()));
        let err = analytic
            .iter()
            .zip(&numeric)
            .fold(0.0f64, |m, (a, n)| m.max((a - n).abs()))
            / scale;
        if err > report.max_rel_error || err.is_nan() {
            report = GradCheckReport {
                max_rel_error: err,
                worst_input: i,
            };
        }
    }
    Ok(report)
}
