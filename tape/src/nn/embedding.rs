//! [`Embedding`]: a lookup table of vectors.

use super::Init;
use crate::error::Result;
use crate::ops;
use crate::param::Parameter;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// A table of `vocab` vectors of width `d`; looking up indices gives their rows.
#[derive(Debug)]
pub struct Embedding {
    /// Weight `[vocab, d]`.
    pub weight: Parameter,
}
crate::module!(Embedding { "weight" => weight });

impl Embedding {
    /// `vocab` vectors of width `d` drawn from N(0, `std`^2) (PyTorch's default is 1, GPT-2's
    /// 0.02).
    pub fn new(vocab: usize, d: usize, std: f64, init: &mut Init) -> Result<Self> {
        Ok(Embedding {
            weight: Parameter::new("weight", init.normal(&[vocab, d], std)?),
        })
    }

    /// The rows at `indices` (one per element of `shape`, row-major), shaped `[shape.., d]`.
    pub fn forward(&self, tape: &mut Tape, indices: &[usize], shape: &[usize]) -> Result<Tensor> {
        let _scope = self.weight.module_scope();
        ops::embedding(tape, self.weight.tensor(), indices, shape)
    }
}
