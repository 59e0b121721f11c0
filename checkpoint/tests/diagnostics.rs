//! The memory report's diagnostics each fire on a program made to trip them and stay silent on
//! the same program written well: an activation the caller holds past backward, a checkpointed
//! segment that keeps as much as it saves, a selective policy that keeps every output.

use checkpoint::{checkpoint, checkpoint_selective, SelectivePolicy};
use tape::{ops, DType, Device, Tape, Tensor, Warning};

fn input(dev: &Device, shape: &[usize]) -> Tensor {
    tape::testing::randn_leaf(shape, DType::F32, dev, 1)
}

/// The warnings of one step of `program` (its result is held until the report is made).
fn warnings<T>(program: impl FnOnce(&Device) -> T) -> Vec<Warning> {
    let dev = Device::meta();
    dev.memory().start_recording();
    let held = program(&dev);
    let report = dev.memory().report().unwrap();
    drop(held);
    report.warnings()
}

/// relu -> scale -> relu -> sum, backward; hands back the scaled tensor when `hold`.
fn chain(dev: &Device, hold: bool) -> Option<Tensor> {
    let x = input(dev, &[64, 256]);
    let mut tape = Tape::recording();
    let h = ops::relu(&mut tape, &x).unwrap();
    let scaled = ops::scale(&mut tape, &h, 2.0).unwrap();
    drop(h);
    let y = ops::relu(&mut tape, &scaled).unwrap();
    let loss = ops::sum(&mut tape, &y).unwrap();
    drop(y);
    drop(tape.backward(&loss).unwrap());
    hold.then_some(scaled)
}

#[test]
fn an_activation_held_by_the_caller_is_named() {
    let held = warnings(|dev| chain(dev, true));
    assert!(
        matches!(
            held.as_slice(),
            [Warning::HeldByCaller {
                op: Some("scale"),
                ..
            }]
        ),
        "{held:?}"
    );
    assert_eq!(warnings(|dev| chain(dev, false)), vec![]);
}

#[test]
fn a_checkpoint_that_keeps_what_it_saves_is_named() {
    let run = |dev: &Device, layers: usize| {
        let x = input(dev, &[64, 256]);
        let w = input(dev, &[256, 256]);
        let mut tape = Tape::recording();
        let y = checkpoint(&mut tape, &[&x], move |t, xs| {
            let mut h = xs[0].clone();
            for _ in 0..layers {
                h = ops::linear(t, &h, &w, None)?;
                h = ops::gelu(t, &h)?;
            }
            ops::relu(t, &h)
        })
        .unwrap();
        let loss = ops::sum(&mut tape, &y).unwrap();
        drop(y);
        drop(tape.backward(&loss).unwrap());
    };
    let one_op = warnings(|dev| run(dev, 0));
    assert!(
        matches!(one_op.as_slice(), [Warning::CheckpointSavesNothing { .. }]),
        "{one_op:?}"
    );
    assert_eq!(warnings(|dev| run(dev, 3)), vec![]);
}

#[test]
fn a_policy_that_keeps_every_output_is_named() {
    let run = |dev: &Device, policy: SelectivePolicy| {
        let x = input(dev, &[64, 256]);
        let w = input(dev, &[256, 256]);
        let mut tape = Tape::recording();
        let y = checkpoint_selective(&mut tape, &[&x], &policy, move |t, xs| {
            let h = ops::linear(t, &xs[0], &w, None)?;
            let h = ops::gelu(t, &h)?;
            ops::linear(t, &h, &w, None)
        })
        .unwrap();
        let loss = ops::sum(&mut tape, &y).unwrap();
        drop(y);
        drop(tape.backward(&loss).unwrap());
    };
    let all = warnings(|dev| run(dev, SelectivePolicy::keep(&["linear", "gelu"])));
    assert!(
        matches!(
            all.as_slice(),
            [Warning::PolicyKeepsEverything { ops: 3, .. }]
        ),
        "{all:?}"
    );
    assert_eq!(
        warnings(|dev| run(dev, SelectivePolicy::compute_bound())),
        vec![]
    );
}
