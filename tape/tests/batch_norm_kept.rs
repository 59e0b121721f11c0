//! Batch statistics kept from a segment's first pass for its recompute: the first pass (forward
//! phase, no recording) keeps them, the recompute (recompute phase) normalises with them, for
//! batch norm and the fused batch norm + ReLU alike. The recompute makes no statistics pass: fed
//! another input, it still normalises with the first pass's statistics. Its output equals the
//! first pass's bit for bit, running statistics untouched.

use tape::ops::{self, BatchNormOptions, RunningStats};
use tape::{Context, DType, Device, Phase, Tape, Tensor};

/// A tape of the given phase and recording, in training, with the step's seed.
fn tape(phase: Phase, recording: bool) -> Tape<'static> {
    let ctx = Context {
        training: true,
        phase,
        seed: 11,
        counter: 0,
        keep_batch_stats: true,
        precision: tape::Precision::F32,
    };
    Tape::with_context(recording, ctx)
}

/// Batch norm (or the fused batch norm + ReLU) of `x` on `tape`.
fn norm(tape: &mut Tape, x: &Tensor, running: &RunningStats, fused: bool) -> Tensor {
    let c = x.shape()[1];
    let dev = x.device();
    let w = Tensor::randn(&[c], DType::F32, dev, 3).unwrap();
    let b = Tensor::randn(&[c], DType::F32, dev, 4).unwrap();
    let opts = BatchNormOptions::default();
    match fused {
        true => ops::batch_norm_relu(tape, &[x], &w, &b, running, opts).unwrap(),
        false => ops::batch_norm2d(tape, x, &w, &b, running, opts).unwrap(),
    }
}

#[test]
fn a_recompute_normalises_with_the_first_pass_statistics_bit_for_bit() {
    let dev = Device::cpu();
    for fused in [false, true] {
        let x = Tensor::randn(&[4, 3, 5, 5], DType::F32, &dev, 1).unwrap();
        let running = RunningStats::new(3, DType::F32, &dev).unwrap();
        let first = norm(&mut tape(Phase::Forward, false), &x, &running, fused);
        let (mean, var) = (
            running.mean().to_vec::<f32>(),
            running.var().to_vec::<f32>(),
        );
        let again = norm(&mut tape(Phase::Recompute, true), &x, &running, fused);
        assert_eq!(
            again.to_vec::<f32>(),
            first.to_vec::<f32>(),
            "fused {fused}"
        );
        assert_eq!(
            running.mean().to_vec::<f32>(),
            mean,
            "running mean untouched"
        );
        assert_eq!(
            running.var().to_vec::<f32>(),
            var,
            "running variance untouched"
        );
        assert_eq!(running.num_batches_tracked(), 1);
    }
}

#[test]
fn a_recompute_makes_no_statistics_pass() {
    // Fed another input, the recompute still normalises with the first pass's mean and
    // invstd: it computed no statistics of its own.
    let dev = Device::cpu();
    for fused in [false, true] {
        let x = Tensor::randn(&[4, 3, 5, 5], DType::F32, &dev, 1).unwrap();
        let shifted = ops::scale(&mut Tape::no_grad(), &x, 2.0).unwrap();
        let running = RunningStats::new(3, DType::F32, &dev).unwrap();
        let first = norm(&mut tape(Phase::Forward, false), &x, &running, fused);
        let again = norm(&mut tape(Phase::Recompute, true), &shifted, &running, fused);
        let fresh = norm(&mut tape(Phase::Recompute, true), &shifted, &running, fused);
        let (f, a, r) = (first.to_f64_vec(), again.to_f64_vec(), fresh.to_f64_vec());
        assert_ne!(a, r, "the kept statistics were used once (fused {fused})");
        // Normalised with x's batch statistics (mean m, biased variance v), the recompute
        // gives w * (2x - m) / sqrt(v + eps) + b (fused: its ReLU), to f32 rounding of a few
        // operations (a bound of 8 ulp of the result's magnitude plus one of 1).
        let xs = x.to_f64_vec();
        let w = Tensor::randn(&[3], DType::F32, &dev, 3)
            .unwrap()
            .to_f64_vec();
        let b = Tensor::randn(&[3], DType::F32, &dev, 4)
            .unwrap()
            .to_f64_vec();
        for ch in 0..3 {
            let at: Vec<usize> = (0..xs.len()).filter(|i| (i / 25) % 3 == ch).collect();
            let m = at.iter().map(|&i| xs[i]).sum::<f64>() / at.len() as f64;
            let v = at.iter().map(|&i| (xs[i] - m).powi(2)).sum::<f64>() / at.len() as f64;
            let eps = BatchNormOptions::default().eps;
            for &i in &at {
                let mut want = w[ch] * (2.0 * xs[i] - m) / (v + eps).sqrt() + b[ch];
                if fused {
                    want = want.max(0.0);
                }
                let tol = 8.0 * f64::from(f32::EPSILON) * (1.0 + want.abs());
                assert!((a[i] - want).abs() <= tol, "{i}: {} vs {want}", a[i]);
            }
        }
        assert_ne!(f, a);
    }
}

#[test]
fn a_nested_first_pass_reads_the_kept_statistics_and_the_recompute_takes_them() {
    let dev = Device::cpu();
    let x = Tensor::randn(&[4, 3, 5, 5], DType::F32, &dev, 1).unwrap();
    let shifted = ops::scale(&mut Tape::no_grad(), &x, 2.0).unwrap();
    let running = RunningStats::new(3, DType::F32, &dev).unwrap();
    let first = norm(&mut tape(Phase::Forward, false), &x, &running, false);
    // An enclosing segment's recompute runs a nested segment's first pass: no recording.
    let nested = norm(&mut tape(Phase::Recompute, false), &x, &running, false);
    let recompute = norm(&mut tape(Phase::Recompute, true), &x, &running, false);
    assert_eq!(nested.to_vec::<f32>(), first.to_vec::<f32>());
    assert_eq!(recompute.to_vec::<f32>(), first.to_vec::<f32>());
    // Taken: a later recompute of the same call computes its statistics again.
    let later = norm(&mut tape(Phase::Recompute, true), &shifted, &running, false);
    let plain = norm(&mut tape(Phase::Forward, true), &shifted, &running, false);
    assert_eq!(later.to_vec::<f32>(), plain.to_vec::<f32>());
}
