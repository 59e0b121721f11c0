//! Shared helpers of the resnet integration tests: one training step's outcome and its
//! comparison.

#![allow(dead_code)]

use resnet::train::forward_backward;
use resnet::{Recompute, ResNet};
use tape::Tensor;

/// What one forward + backward produced, read back.
pub struct Outcome {
    pub loss: f64,
    pub logits: Vec<f64>,
    pub grads: Vec<(String, Vec<f64>)>,
    pub running: Vec<(String, Vec<f64>, Vec<f64>)>,
}

/// One forward + backward of `model` under `memory` (set on the model).
pub fn step(model: &mut ResNet, x: &Tensor, labels: &[usize], memory: Recompute) -> Outcome {
    model.set_recompute(memory).unwrap();
    let model = &*model;
    let out = forward_backward(model, x, labels).unwrap();
    Outcome {
        loss: out.loss().unwrap(),
        logits: out.logits.try_to_f64_vec().unwrap(),
        grads: model
            .parameters()
            .iter()
            .map(|p| {
                let g = out.grads.get(p.tensor()).unwrap_or_else(|| {
                    panic!("{memory}: no gradient for {}", p.name());
                });
                (p.name().to_string(), g.try_to_f64_vec().unwrap())
            })
            .collect(),
        running: model
            .running_stats()
            .iter()
            .map(|(name, rs)| {
                (
                    name.clone(),
                    rs.mean().try_to_f64_vec().unwrap(),
                    rs.var().try_to_f64_vec().unwrap(),
                )
            })
            .collect(),
    }
}

pub use tape::testing::rel_diff;

/// Loss, logits and running statistics compared tensor by tensor (relative to each tensor's
/// largest value); gradients relative to the step's largest gradient (some gradients are
/// analytically zero, a batch norm over two values per channel outputs +-1 whatever its input,
/// and are then rounding noise that the modes compute in different orders).
pub fn compare(a: &Outcome, b: &Outcome, tol: f64, what: &str) -> Result<(), String> {
    let d = rel_diff(&[a.loss], &[b.loss]);
    if d > tol {
        return Err(format!("{what}: loss {} vs {} ({d:e})", a.loss, b.loss));
    }
    let d = rel_diff(&a.logits, &b.logits);
    if d > tol {
        return Err(format!("{what}: logits differ by {d:e}"));
    }
    let largest = b
        .grads
        .iter()
        .flat_map(|(_, g)| g.iter())
        .fold(1e-30f64, |m, v| m.max(v.abs()));
    for ((name, x), (other, y)) in a.grads.iter().zip(&b.grads) {
        assert_eq!(name, other);
        let d = x
            .iter()
            .zip(y)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()))
            / largest;
        if d > tol {
            return Err(format!(
                "{what}: gradient of {name}: {d:e} of the largest gradient"
            ));
        }
    }
    for ((name, m1, v1), (_, m2, v2)) in a.running.iter().zip(&b.running) {
        let d = rel_diff(m1, m2).max(rel_diff(v1, v2));
        if d > tol {
            return Err(format!(
                "{what}: running statistics of {name} differ by {d:e}"
            ));
        }
    }
    Ok(())
}

/// Whether the forward's numbers of `a` and `b` (loss, logits, running statistics) are bitwise
/// equal.
pub fn forward_bitwise_equal(a: &Outcome, b: &Outcome) -> bool {
    let same = |x: &[f64], y: &[f64]| {
        x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
    };
    a.loss.to_bits() == b.loss.to_bits()
        && same(&a.logits, &b.logits)
        && a.running.len() == b.running.len()
        && a.running
            .iter()
            .zip(&b.running)
            .all(|((_, m1, v1), (_, m2, v2))| same(m1, m2) && same(v1, v2))
}
