//! CPU kernels of softmax cross-entropy, row by row in `f64` with the log-sum-exp shift.

use super::CrossEntropyKernels;
use crate::backend::Cpu;
use crate::dtype::Elem;
use crate::error::Result;
use crate::labels::Labels;
use crate::tensor::Tensor;

/// `(max, log(sum(exp(row - max))))` of one row: `max + second` is the row's log-sum-exp.
fn shifted_lse<T: Elem>(row: &[T]) -> (f64, f64) {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f64()));
    let sum: f64 = row.iter().map(|v| (v.f64() - max).exp()).sum();
    (max, sum.ln())
}

/// The sum over rows of `logsumexp(row) - row[label]`.
fn total_loss<T: Elem>(logits: &[T], classes: usize, labels: &[usize]) -> f64 {
    logits
        .chunks(classes)
        .zip(labels)
        .map(|(row, &y)| {
            let (max, lse) = shifted_lse(row);
            max + lse - row[y].f64()
        })
        .sum()
}

/// `factor * (softmax(row) - onehot(label))` for every row.
fn grad<T: Elem>(logits: &[T], classes: usize, labels: &[usize], factor: f64) -> Vec<T> {
    let mut out = Vec::with_capacity(logits.len());
    for (row, &y) in logits.chunks(classes).zip(labels) {
        let (max, lse) = shifted_lse(row);
        out.extend(row.iter().enumerate().map(|(j, v)| {
            let p = (v.f64() - max - lse).exp();
            T::of(factor * (p - if j == y { 1.0 } else { 0.0 }))
        }));
    }
    out
}

impl CrossEntropyKernels for Cpu {
    fn cross_entropy_forward(&self, logits: &Tensor, labels: &Labels) -> Result<Tensor> {
        let labels = labels.values();
        let classes = logits.shape()[1];
        let total = dispatch_float!(logits.dtype(), T => total_loss::<T>(logits.as_slice::<T>()?, classes, labels));
        Tensor::full(
            &[1],
            total / labels.len() as f64,
            logits.dtype(),
            logits.device(),
        )
    }

    fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        labels: &Labels,
        g: &Tensor,
    ) -> Result<Tensor> {
        let labels = labels.values();
        let classes = logits.shape()[1];
        let factor = g.scalar()? / labels.len() as f64;
        dispatch_float!(logits.dtype(), T => Tensor::from_vec(grad::<T>(logits.as_slice::<T>()?, classes, labels, factor), logits.shape(), logits.device()))
    }
}
