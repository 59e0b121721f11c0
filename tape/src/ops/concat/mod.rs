//! Concatenation along dim 1 (channels). Backward slices the incoming gradient back into one
//! piece per input; the closure saves only the inputs' keys (no buffers).

use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

const OP: &str = "concat";

/// Concatenates `xs` (at least one, rank >= 2, equal in every dim but dim 1, one dtype and
/// device) along dim 1.
pub fn concat(tape: &mut Tape, xs: &[&Tensor]) -> Result<Tensor> {
    let first = xs
        .first()
        .ok_or_else(|| Error::invalid(OP, "needs at least one tensor"))?;
    if first.rank() < 2 {
        return Err(Error::shape(
            OP,
            format!("tensors need rank >= 2, got shape {:?}", first.shape()),
        ));
    }
    for x in &xs[1..] {
        first.check_compatible(x, OP)?;
        let agree = x.rank() == first.rank()
            && x.shape()[0] == first.shape()[0]
            && x.shape()[2..] == first.shape()[2..];
        if !agree {
            return Err(Error::shape(
                OP,
                format!(
                    "shapes must agree in every dim but 1: {:?} vs {:?}",
                    first.shape(),
                    x.shape()
                ),
            ));
        }
    }
    let outer = first.shape()[0];
    let inner: usize = first.shape()[2..].iter().product();
    let widths: Vec<usize> = xs.iter().map(|x| x.shape()[1] * inner).collect();
    let mut shape = first.shape().to_vec();
    shape[1] = xs.iter().map(|x| x.shape()[1]).sum();
    #[cfg(feature = "cuda")]
    if first.device().is_cuda() {
        let out = cuda::concat(xs, &widths, outer, &shape)?;
        let keys: Vec<GradKey> = xs.iter().map(|x| GradKey::of(x)).collect();
        return Ok(tape.record(xs, out, move |g, grads| {
            if g.shape() != shape {
                return Err(Error::Backward(format!(
                    "concat: gradient of shape {:?} for an output of shape {:?}",
                    g.shape(),
                    shape
                )));
            }
            let shapes: Vec<&[usize]> = keys.iter().map(|k| k.shape()).collect();
            let wanted: Vec<bool> = keys.iter().map(|k| k.requires_grad()).collect();
            let pieces = cuda::split(g, outer, &widths, &shapes, &wanted)?;
            for (key, piece) in keys.iter().zip(pieces) {
                if let Some(gx) = piece {
                    grads.accumulate(key, gx)?;
                }
            }
            Ok(())
        }));
    }
    let out = dispatch_float!(first.dtype(), T => {
        let parts = xs.iter().map(|x| x.as_slice::<T>()).collect::<Result<Vec<_>>>()?;
        Tensor::from_vec(cpu::concat::<T>(&parts, &widths, outer), &shape, first.device())
    })?;
    let keys: Vec<GradKey> = xs.iter().map(|x| GradKey::of(x)).collect();
    Ok(tape.record(xs, out, move |g, grads| {
        if g.shape() != shape {
            return Err(Error::Backward(format!(
                "concat: gradient of shape {:?} for an output of shape {:?}",
                g.shape(),
                shape
            )));
        }
        let total: usize = widths.iter().sum();
        let mut offset = 0;
        for (key, &width) in keys.iter().zip(&widths) {
            if key.requires_grad() {
                let gx = dispatch_float!(g.dtype(), T => Tensor::from_vec(cpu::slice::<T>(g.as_slice::<T>()?, outer, total, offset, width), key.shape(), g.device()))?;
                grads.accumulate(key, gx)?;
            }
            offset += width;
        }
        Ok(())
    }))
}
