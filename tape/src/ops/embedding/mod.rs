//! Embedding lookup: rows of a `[vocab, d]` weight picked by integer indices. The engine's
//! tensors hold floats only, so the indices come as a host slice `&[usize]` with the shape they
//! stand for (as `cross_entropy` takes its labels); the output is that shape with `d` appended.
//!
//! Backward scatter-adds the output gradient's rows into a `[vocab, d]` weight gradient. The
//! rows are grouped by index first (positions in increasing order within each group), and every
//! weight row sums its group in that order, in `f64`, rounded once: no atomics, the same bits on
//! any thread count and on both backends. Backward keeps the indices only (no tensor).

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod meta;

use super::checks::check_grad;
use super::widen::via_f32;
use crate::backend::{kernel_trait, kernels};
use crate::error::{Error, Result};
use crate::gradients::GradKey;
use crate::tape::Tape;
use crate::tensor::Tensor;

const OP: &str = "embedding";

/// The positions of an index list grouped by index: the positions holding index `v` are
/// `positions[offsets[v]..offsets[v + 1]]`, in increasing order.
pub(crate) struct Groups {
    /// `vocab + 1` group boundaries into `positions`.
    pub(crate) offsets: Vec<usize>,
    /// Every position once, grouped by index.
    pub(crate) positions: Vec<usize>,
}

impl Groups {
    /// Groups the positions of `indices` (each `< vocab`) by index: a counting sort, stable.
    pub(crate) fn of(indices: &[usize], vocab: usize) -> Self {
        let mut offsets = vec![0usize; vocab + 1];
        for &v in indices {
            offsets[v + 1] += 1;
        }
        for v in 0..vocab {
            offsets[v + 1] += offsets[v];
        }
        let mut next = offsets.clone();
        let mut positions = vec![0usize; indices.len()];
        for (p, &v) in indices.iter().enumerate() {
            positions[next[v]] = p;
            next[v] += 1;
        }
        Groups { offsets, positions }
    }
}

kernel_trait! {
    /// Device kernels of `embedding` (indices checked by the caller).
    pub(crate) trait EmbeddingKernels {
        /// `out[p] = weight[indices[p]]` row by row, as a tensor of `out_shape`.
        fn embedding_forward(
            &self,
            weight: &Tensor,
            indices: &[usize],
            out_shape: &[usize],
        ) -> Result<Tensor>;
        /// The weight gradient `[vocab, d]`: row `v` is the sum of the rows of `g` (viewed as
        /// `[positions, d]`) at the positions of group `v`, in order.
        fn embedding_backward(
            &self,
            g: &Tensor,
            groups: &Groups,
            vocab: usize,
            d: usize,
        ) -> Result<Tensor>;
    }
}

/// The rows of `weight` (`[vocab, d]`) at `indices`, shaped `[shape.., d]`: `indices` holds
/// one index per element of `shape` (row-major), each `< vocab`. A weight that is not 2-D or an
/// index count that does not fill `shape` is an [`Error::Shape`], an index out of range an
/// [`Error::InvalidArgument`].
pub fn embedding(
    tape: &mut Tape,
    weight: &Tensor,
    indices: &[usize],
    shape: &[usize],
) -> Result<Tensor> {
    let _profile = tape.profile_op(OP);
    let (vocab, d) = match weight.shape() {
        &[v, d] => (v, d),
        s => {
            return Err(Error::shape(
                OP,
                format!("weight must be [vocab, d], got {s:?}"),
            ))
        }
    };
    if shape.iter().product::<usize>() != indices.len() {
        return Err(Error::shape(
            OP,
            format!("{} indices do not fill shape {shape:?}", indices.len()),
        ));
    }
    if let Some((p, &v)) = indices.iter().enumerate().find(|(_, &v)| v >= vocab) {
        return Err(Error::invalid(
            OP,
            format!("index {v} (position {p}) is out of range for a vocabulary of {vocab}"),
        ));
    }
    let mut out_shape = shape.to_vec();
    out_shape.push(d);
    let k = kernels(weight.device())?;
    let out = match tape.take_known_output(&out_shape, weight) {
        Some(known) => known,
        None => via_f32([weight], weight.dtype(), |[w]| {
            k.embedding_forward(w, indices, &out_shape)
        })?,
    };
    let kw = GradKey::of(weight);
    let saved = tape.needs_grad(&[weight]).then(|| indices.to_vec());
    let (dtype, device) = (weight.dtype(), weight.device().clone());
    Ok(tape.record(OP, &[weight], out, move |g, grads| {
        let indices =
            saved.ok_or_else(|| Error::Backward("embedding: indices not saved".into()))?;
        check_grad(OP, g, &out_shape, None)?;
        if g.dtype() != dtype {
            return Err(Error::DType {
                op: OP,
                expected: dtype,
                got: g.dtype(),
            });
        }
        device.check_same(g.device(), OP)?;
        let groups = Groups::of(&indices, vocab);
        let gw = via_f32([g], dtype, |[g]| k.embedding_backward(g, &groups, vocab, d))?;
        grads.accumulate(&kw, gw)
    }))
}
