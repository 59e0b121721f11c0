//! Fused concat -> batch norm -> ReLU over several NCHW tensors (DenseNet's layer input), without
//! materialising the concatenation or the pre-activation. The result equals
//! `relu(batch_norm2d(concat(parts)))`, with the same running-statistic semantics; backward saves
//! only the parts (which a DenseNet keeps anyway), per-channel statistics, the weight and the
//! output (the ReLU mask, which the following convolution keeps anyway).

use super::batch_norm::{
    check_affine, normalization, BatchNormOptions, Normalization, RunningStats,
};
use crate::error::{Error, Result};
use crate::gradients::{GradKey, Gradients};
use crate::tape::{Phase, Tape};
use crate::tensor::Tensor;
use cpu::{InputCoef, Parts};

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

const OP: &str = "batch_norm_relu";

/// What backward keeps.
struct Saved {
    parts: Vec<Tensor>,
    out: Tensor,
    mean: Vec<f64>,
    invstd: Vec<f64>,
    weight: Vec<f64>,
}

/// Shapes of the parts: `(n, channels of each part, h, w)`, checked to agree.
fn check_parts(parts: &[&Tensor]) -> Result<(usize, Vec<usize>, usize, usize)> {
    let first = parts
        .first()
        .ok_or_else(|| Error::invalid(OP, "needs at least one input"))?;
    let [n, _, h, w] = first.dims4(OP)?;
    let mut channels = Vec::with_capacity(parts.len());
    for p in parts {
        first.check_compatible(p, OP)?;
        let [pn, pc, ph, pw] = p.dims4(OP)?;
        if (pn, ph, pw) != (n, h, w) {
            return Err(Error::shape(
                OP,
                format!(
                    "inputs must agree on batch and image size: {:?} vs {:?}",
                    first.shape(),
                    p.shape()
                ),
            ));
        }
        channels.push(pc);
    }
    Ok((n, channels, h, w))
}

/// `relu(batch_norm2d(concat(parts)))` along channels, computed without the concatenation.
/// `weight`, `bias` and `running` cover all channels of all parts.
pub fn batch_norm_relu(
    tape: &mut Tape,
    parts: &[&Tensor],
    weight: &Tensor,
    bias: &Tensor,
    running: &RunningStats,
    opts: BatchNormOptions,
) -> Result<Tensor> {
    let (n, channels, h, w) = check_parts(parts)?;
    opts.validate()?;
    let c: usize = channels.iter().sum();
    let x0 = parts[0];
    check_affine(OP, x0, c, weight, bias, running)?;
    #[cfg(feature = "cuda")]
    if x0.device().is_cuda() {
        return cuda::batch_norm_relu(tape, parts, weight, bias, running, opts);
    }
    let hw = h * w;
    let training = tape.is_training();
    let Normalization {
        mean,
        unbiased,
        invstd,
        scale,
        shift,
    } = normalization(
        OP,
        training,
        n * hw,
        running,
        weight,
        bias,
        opts.eps,
        || {
            Ok(dispatch_float!(x0.dtype(), T => {
                let data = parts.iter().map(|p| p.as_slice::<T>()).collect::<Result<Vec<_>>>()?;
                cpu::channel_stats_parts(&Parts::new(data, channels.clone(), n, hw))
            }))
        },
    )?;
    let out = dispatch_float!(x0.dtype(), T => {
        let data = parts.iter().map(|p| p.as_slice::<T>()).collect::<Result<Vec<_>>>()?;
        let v = cpu::forward(&Parts::new(data, channels.clone(), n, hw), &scale, &shift);
        Tensor::from_vec(v, &[n, c, h, w], x0.device())
    })?;
    if training && tape.phase() == Phase::Forward {
        running.update(&mean, &unbiased, opts.momentum)?;
    }
    let mut inputs: Vec<&Tensor> = parts.to_vec();
    inputs.extend([weight, bias]);
    if !tape.needs_grad(&inputs) {
        return Ok(out);
    }
    let saved = Saved {
        parts: parts.iter().map(|&p| p.clone()).collect(),
        out: out.clone(),
        mean,
        invstd,
        weight: weight.try_to_f64_vec()?,
    };
    let part_keys: Vec<GradKey> = parts.iter().map(|p| GradKey::of(p)).collect();
    let (kw, kb) = (GradKey::of(weight), GradKey::of(bias));
    let dims = (n, channels, hw);
    Ok(tape.record(&inputs, out, move |g, grads| {
        backward(g, grads, &part_keys, &kw, &kb, saved, dims, training)
    }))
}

#[allow(clippy::too_many_arguments)]
fn backward(
    g: &Tensor,
    grads: &mut Gradients,
    part_keys: &[GradKey],
    kw: &GradKey,
    kb: &GradKey,
    saved: Saved,
    (n, channels, hw): (usize, Vec<usize>, usize),
    training: bool,
) -> Result<()> {
    if g.shape() != saved.out.shape() {
        return Err(Error::Backward(format!(
            "{OP}: gradient of shape {:?} for an output of shape {:?}",
            g.shape(),
            saved.out.shape()
        )));
    }
    let c: usize = channels.iter().sum();
    let any_x = part_keys.iter().any(GradKey::requires_grad);
    dispatch_float!(g.dtype(), T => {
        let data = saved.parts.iter().map(|p| p.as_slice::<T>()).collect::<Result<Vec<_>>>()?;
        let parts = Parts::new(data, channels.clone(), n, hw);
        let (gs, ys) = (g.as_slice::<T>()?, saved.out.as_slice::<T>()?);
        let with_x = kw.requires_grad() || (training && any_x);
        let sums = cpu::grad_sums(&parts, gs, ys, &saved.mean, with_x);
        let sum_g: Vec<f64> = sums.iter().map(|s| s.0).collect();
        let sum_gx: Vec<f64> = sums.iter().zip(&saved.invstd).map(|(s, k)| s.1 * k).collect();
        if kw.requires_grad() {
            grads.accumulate(kw, Tensor::from_f64(&sum_gx, &[c], g.dtype(), g.device())?)?;
        }
        if kb.requires_grad() {
            grads.accumulate(kb, Tensor::from_f64(&sum_g, &[c], g.dtype(), g.device())?)?;
        }
        if any_x {
            let m = (n * hw) as f64;
            let coef: Vec<InputCoef> = (0..c)
                .map(|ch| {
                    let a = saved.weight[ch] * saved.invstd[ch];
                    if training {
                        InputCoef {
                            a,
                            b: -a * saved.invstd[ch] * sum_gx[ch] / m,
                            k: -a * sum_g[ch] / m,
                            mean: saved.mean[ch],
                        }
                    } else {
                        InputCoef { a, b: 0.0, k: 0.0, mean: 0.0 }
                    }
                })
                .collect();
            for (p, key) in part_keys.iter().enumerate() {
                if key.requires_grad() {
                    let v = cpu::grad_part(&parts, p, gs, ys, &coef);
                    grads.accumulate(key, Tensor::from_vec(v, key.shape(), g.device())?)?;
                }
            }
        }
    });
    Ok(())
}
