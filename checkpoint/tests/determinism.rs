//! The debug determinism check names the segment whose recomputation differs from its first
//! pass; a deterministic segment passes it. Checkpoint is a plain call on no-grad tapes and in
//! eval mode.

use checkpoint::{checkpoint, checkpoint_with, CheckpointOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use tape::{ops, DType, Device, Error, Tape};

#[test]
fn a_segment_that_changes_between_passes_is_named_in_the_error() {
    let dev = Device::cpu();
    let x = tape::testing::randn_leaf(&[8], DType::F64, &dev, 1);
    let calls = AtomicU64::new(0);
    let options = CheckpointOptions {
        name: Some("drifting block".into()),
        verify_determinism: true,
        ..CheckpointOptions::default()
    };
    let mut tape = Tape::recording();
    let y = checkpoint_with(&mut tape, &[&x], options, |t, xs| {
        // Scales by a different factor every time it runs: not deterministic.
        let k = calls.fetch_add(1, Ordering::SeqCst) as f64;
        ops::scale(t, &xs[0], 1.0 + k)
    })
    .unwrap();
    let loss = ops::sum(&mut tape, &y).unwrap();
    match tape.backward(&loss) {
        Err(Error::Backward(msg)) => assert!(msg.contains("drifting block"), "{msg}"),
        other => panic!("expected a determinism error, got {other:?}"),
    }
}

#[test]
fn a_deterministic_segment_passes_the_check() {
    let dev = Device::cpu();
    let x = tape::testing::randn_leaf(&[8], DType::F64, &dev, 1);
    let options = CheckpointOptions {
        name: Some("steady".into()),
        verify_determinism: true,
        ..CheckpointOptions::default()
    };
    let mut tape = Tape::recording().with_seed(3);
    let y = checkpoint_with(&mut tape, &[&x], options, |t, xs| {
        let h = ops::dropout(t, &xs[0], 0.5)?;
        ops::relu(t, &h)
    })
    .unwrap();
    let grads = tape::testing::grads_of_sum(tape, &y);
    assert!(grads.get(&x).is_some());
}

#[test]
fn no_grad_and_eval_tapes_make_it_a_plain_call() {
    let dev = Device::cpu();
    let x = tape::testing::randn_leaf(&[8], DType::F64, &dev, 1);
    let mut no_grad = Tape::no_grad();
    let y = checkpoint(&mut no_grad, &[&x], |t, xs| ops::relu(t, &xs[0])).unwrap();
    assert!(no_grad.is_empty() && !y.requires_grad());
    // Eval mode on a recording tape: the ops record as usual, no checkpoint node.
    let mut eval = Tape::recording().training(false);
    let y = checkpoint(&mut eval, &[&x], |t, xs| {
        let h = ops::relu(t, &xs[0])?;
        ops::scale(t, &h, 2.0)
    })
    .unwrap();
    assert_eq!(eval.len(), 2);
    let g = tape::testing::grads_of_sum(eval, &y);
    assert!(g.get(&x).is_some());
}

#[test]
fn a_checkpointed_training_forward_records_one_node_and_keeps_only_inputs() {
    let dev = Device::cpu();
    let x = tape::testing::randn_leaf(&[1000], DType::F32, &dev, 1);
    let mut tape = Tape::recording();
    let before = dev.memory().current();
    let y = checkpoint(&mut tape, &[&x], |t, xs| {
        let mut h = xs[0].clone();
        for _ in 0..5 {
            h = ops::relu(t, &h)?; // each would save its output if recorded
        }
        Ok(h)
    })
    .unwrap();
    assert_eq!(tape.len(), 1);
    // Only the output is new: the five intermediate outputs were not kept.
    assert_eq!(dev.memory().current() - before, y.size_in_bytes());
}

/// The recompute takes the first pass's output for the segment's last op instead of computing
/// it again: backward allocates one output fewer than with the determinism check (which must
/// recompute the output to compare it), and the gradients are the same bits. One image, so that
/// the conv kernels' workspaces (one per thread, at most one per image or work chunk) are the
/// same on any machine and the backward, not the recomputed forward, sets both peaks.
#[test]
fn the_recompute_reuses_the_first_pass_output_of_the_last_op() {
    let run = |verify: bool| -> (usize, Vec<f64>, Vec<f64>) {
        let dev = Device::cpu();
        let x = tape::testing::randn_leaf(&[1, 3, 8, 8], DType::F64, &dev, 1);
        let w = tape::testing::randn_leaf(&[4, 3, 3, 3], DType::F64, &dev, 2);
        let mut tape = Tape::recording();
        let wc = w.clone();
        let options = CheckpointOptions {
            verify_determinism: verify,
            ..CheckpointOptions::default()
        };
        let y = checkpoint_with(&mut tape, &[&x], options, move |t, xs| {
            let h = ops::relu(t, &xs[0])?;
            ops::conv2d(t, &h, &wc, None, ops::Conv2dOptions::default())
        })
        .unwrap();
        let loss = ops::sum(&mut tape, &y).unwrap();
        drop(y);
        dev.memory().reset_peak();
        let before = dev.memory().current();
        let grads = tape.backward(&loss).unwrap();
        let peak = dev.memory().peak() - before;
        (
            peak,
            grads.get(&x).unwrap().to_f64_vec(),
            grads.get(&w).unwrap().to_f64_vec(),
        )
    };
    let (reused, gx, gw) = run(false);
    let (recomputed, gx2, gw2) = run(true);
    let out_bytes = 4 * 6 * 6 * 8;
    assert_eq!(recomputed - reused, out_bytes, "one conv output fewer");
    assert_eq!(gx, gx2);
    assert_eq!(gw, gw2);
}
