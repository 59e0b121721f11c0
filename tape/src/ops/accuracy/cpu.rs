//! CPU kernel of the accuracy count.

use super::AccuracyKernels;
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::Result;
use crate::labels::Labels;
use crate::tensor::Tensor;

/// Rows of `x` (`classes` per row) whose last maximum in `total_cmp` order is at their label.
fn hits<T: Elem>(x: &[T], classes: usize, labels: &[usize]) -> usize {
    x.chunks(classes.max(1))
        .zip(labels)
        .filter(|(row, &label)| {
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.f64().total_cmp(&b.1.f64()))
                .map(|(i, _)| i);
            best == Some(label)
        })
        .count()
}

impl AccuracyKernels for Cpu {
    fn correct_count(&self, logits: &Tensor, labels: &Labels) -> Result<Tensor> {
        let classes = logits.shape().get(1).copied().unwrap_or(1);
        let n = dispatch_float!(logits.dtype(), T => hits::<T>(logits.as_slice::<T>()?, classes, labels.values()));
        Tensor::full(&[1], n as f64, logits.dtype(), logits.device())
    }
}
