//! Fused concat -> batch norm -> ReLU over several NCHW tensors (DenseNet's layer input), without
//! materialising the concatenation or the pre-activation. The result equals
//! `relu(batch_norm2d(concat(parts)))`, with the same running-statistic semantics; backward saves
//! only the parts (which a DenseNet keeps anyway), per-channel statistics, the weight and the
//! output (the ReLU mask, which the following convolution keeps anyway).

use super::batch_norm::{BatchNormOptions, RunningStats};
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
    for (name, p) in [("weight", weight), ("bias", bias)] {
        x0.check_compatible(p, OP)?;
        if p.shape() != [c] {
            return Err(Error::shape(
                OP,
                format!("{name} must have shape [{c}], got {:?}", p.shape()),
            ));
        }
    }
    if running.channels() != c {
        return Err(Error::shape(
            OP,
            format!(
                "running statistics have {} channels, inputs have {c}",
                running.channels()
            ),
        ));
    }
    x0.device().check_same(running.device(), OP)?;
    #[cfg(feature = "cuda")]
    if x0.device().is_cuda() {
        return cuda::batch_norm_relu(tape, parts, weight, bias, running, opts);
    }
    let hw = h * w;
    let training = tape.is_training();
    let (mean, var, unbiased) = if training {
        let m = n * hw;
        if m < 2 {
            return Err(Error::invalid(
                OP,
                format!("training needs more than one value per channel, got {n}x{h}x{w}"),
            ));
        }
        let stats = dispatch_float!(x0.dtype(), T => {
            let data = parts.iter().map(|p| p.as_slice::<T>()).collect::<Result<Vec<_>>>()?;
            cpu::channel_stats_parts(&Parts::new(data, channels.clone(), n, hw))
        });
        let (mean, var): (Vec<f64>, Vec<f64>) = stats.into_iter().unzip();
        let corr = m as f64 / (m - 1) as f64;
        let unbiased = var.iter().map(|v| v * corr).collect();
        (mean, var, unbiased)
    } else {
        (
            running.mean().to_f64_vec(),
            running.var().to_f64_vec(),
            Vec::new(),
        )
    };
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + opts.eps).sqrt()).collect();
    let weight_v = weight.to_f64_vec();
    let scale: Vec<f64> = weight_v.iter().zip(&invstd).map(|(w, s)| w * s).collect();
    let shift: Vec<f64> = bias
        .to_f64_vec()
        .iter()
        .zip(scale.iter().zip(&mean))
        .map(|(b, (a, m))| b - m * a)
        .collect();
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
        weight: weight_v,
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
