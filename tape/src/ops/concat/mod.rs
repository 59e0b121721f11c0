//! Concatenation along dim 1 (channels). Backward slices the incoming gradient back into one
//! piece per input, added in place into the gradient an input already has; the closure saves
//! only the inputs' keys (no buffers).

use super::checks::check_grad;
use super::widen::{narrow, wide};
use crate::backend::{kernel_trait, kernels};
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod meta;

const OP: &str = "concat";

kernel_trait! {
    /// Device kernels of concatenation. Rows: the inputs and the output are `outer` rows each; a
    /// row of input `k` has `widths[k]` elements and a row of the output their sum.
    pub(crate) trait ConcatKernels {
        /// The inputs' rows side by side, as a new tensor of `shape`.
        fn concat(
            &self,
            xs: &[&Tensor],
            widths: &[usize],
            outer: usize,
            shape: &[usize],
        ) -> Result<Tensor>;
        /// The pieces of `g` (the output's gradient) for the inputs marked in `wanted`, shaped
        /// `shapes[k]`; `None` for the others. `into[k]`, when given, is input `k`'s existing
        /// gradient: its piece is added into it in place, and it comes back as that input's piece.
        fn concat_split(
            &self,
            g: &Tensor,
            outer: usize,
            widths: &[usize],
            shapes: &[&[usize]],
            wanted: &[bool],
            into: Vec<Option<Tensor>>,
        ) -> Result<Vec<Option<Tensor>>>;
    }
}

/// Concatenates `xs` (at least one, rank >= 2, equal in every dim but dim 1, one dtype and
/// device) along dim 1.
pub fn concat(tape: &mut Tape, xs: &[&Tensor]) -> Result<Tensor> {
    let _profile = tape.profile_op(OP);
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
    let k = kernels(first.device())?;
    let out = match tape.take_known_output(&shape, first) {
        Some(known) => known,
        None if first.dtype().is_half() => {
            let wides = xs.iter().map(|x| wide(x)).collect::<Result<Vec<_>>>()?;
            let refs: Vec<&Tensor> = wides.iter().map(|w| w.as_ref()).collect();
            narrow(k.concat(&refs, &widths, outer, &shape)?, first.dtype())?
        }
        None => k.concat(xs, &widths, outer, &shape)?,
    };
    let dtype = first.dtype();
    let keys: Vec<GradKey> = xs.iter().map(|x| GradKey::of(x)).collect();
    Ok(tape.record(OP, xs, out, move |g, grads| {
        check_grad(OP, g, &shape, None)?;
        let shapes: Vec<&[usize]> = keys.iter().map(|k| k.shape()).collect();
        let wanted: Vec<bool> = keys.iter().map(|k| k.requires_grad()).collect();
        // Gradients the inputs already have are added into in place.
        // (A 16-bit split is made in f32 and rounded, then added as a new contribution.)
        let into = keys
            .iter()
            .map(|k| match dtype.is_half() {
                true => None,
                false => grads.take_for_accumulation(k),
            })
            .collect();
        let g = wide(g)?;
        let pieces = k.concat_split(&g, outer, &widths, &shapes, &wanted, into)?;
        for (key, piece) in keys.iter().zip(pieces) {
            if let Some(gx) = piece {
                grads.accumulate(key, narrow(gx, dtype)?)?;
            }
        }
        Ok(())
    }))
}
