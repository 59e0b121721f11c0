//! Edge cases of a checkpointed segment's gradient bookkeeping, and of layers: a segment that
//! hands back its input passes the output gradient through to it; a segment whose output no
//! recorded op made (it does not depend on the inputs) leaves no gradient behind, for the output
//! or anything else; a layer reports the name and kind it was made with, and the dry-run profile
//! names each layer so; a stand-in for a segment's output serves a last op whose backward does
//! not read its output and fails, with a typed error, one whose backward does.

use checkpoint::planner::profile_chain;
use checkpoint::{checkpoint, checkpoint_with, CheckpointOptions, KnownOutput, OpKind, Stage};
use tape::{ops, DType, Device, Tape, Tensor};

#[test]
fn a_segment_that_returns_its_input_passes_the_gradient_through() {
    let dev = Device::cpu();
    let x = tape::testing::randn_leaf(&[5], DType::F64, &dev, 1);
    let mut tape = Tape::recording();
    let y = checkpoint(&mut tape, &[&x], |_, xs| Ok(xs[0].clone())).unwrap();
    let z = ops::scale(&mut tape, &y, 3.0).unwrap();
    let grads = tape::testing::grads_of_sum(tape, &z);
    let gx = grads.get(&x).expect("the input's gradient").to_f64_vec();
    assert_eq!(gx, vec![3.0; 5]);
}

#[test]
fn a_segment_whose_output_no_recorded_op_made_leaves_no_gradient_behind() {
    let dev = Device::cpu();
    let x = tape::testing::randn_leaf(&[4], DType::F64, &dev, 1);
    // The segment ignores its input: its output comes from a constant, through an op the
    // recompute does not record.
    let constant = Tensor::randn(&[4], DType::F64, &dev, 2).unwrap();
    let mut tape = Tape::recording();
    let y = checkpoint(&mut tape, &[&x], move |t, _| ops::scale(t, &constant, 2.0)).unwrap();
    let s = ops::add(&mut tape, &y, &x).unwrap();
    let grads = tape::testing::grads_of_sum(tape, &s);
    assert_eq!(grads.get(&x).unwrap().to_f64_vec(), vec![1.0; 4]);
    assert!(grads.get(&y).is_none(), "the segment's output gradient");
    assert_eq!(grads.len(), 1, "only the input has a gradient");
}

#[test]
fn layers_report_their_name_and_kind_and_profiles_name_them() {
    let layers = [
        Stage::new("conv1", OpKind::Conv, |t, x| ops::scale(t, x, 2.0)),
        Stage::new("relu1", OpKind::Relu, ops::relu),
    ];
    assert_eq!(
        (layers[0].name(), layers[0].kind()),
        ("conv1", OpKind::Conv)
    );
    assert_eq!(
        (layers[1].name(), layers[1].kind()),
        ("relu1", OpKind::Relu)
    );
    let x = tape::testing::randn_leaf(&[3], DType::F64, &Device::cpu(), 1);
    let model = profile_chain(&Tape::recording(), &layers, &x, 0).unwrap();
    let names: Vec<&str> = model.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["conv1", "relu1"]);
}

/// The segment `x -> relu -> linear` (`relu_last`: `x -> linear -> relu`), checkpointed with
/// [`KnownOutput::StandIn`] (`stand_in`) or run plainly, then scaled: the gradient of `x`, or the
/// error of its backward.
fn linear_relu_gradient(relu_last: bool, stand_in: bool) -> tape::Result<Vec<f64>> {
    let dev = Device::cpu();
    let x = tape::testing::randn_leaf(&[3, 4], DType::F64, &dev, 1);
    let w = Tensor::randn(&[4, 4], DType::F64, &dev, 2).unwrap();
    let segment = move |t: &mut Tape, xs: &[Tensor]| {
        if relu_last {
            let h = ops::linear(t, &xs[0], &w, None)?;
            ops::relu(t, &h)
        } else {
            let h = ops::relu(t, &xs[0])?;
            ops::linear(t, &h, &w, None)
        }
    };
    let mut tape = Tape::recording();
    let y = if stand_in {
        let options = CheckpointOptions {
            known_output: KnownOutput::StandIn,
            ..CheckpointOptions::default()
        };
        checkpoint_with(&mut tape, &[&x], options, segment)?
    } else {
        segment(&mut tape, std::slice::from_ref(&x))?
    };
    let z = ops::scale(&mut tape, &y, 3.0)?;
    let seed = Tensor::full(z.shape(), 1.0, DType::F64, &dev)?;
    let grads = tape.backward_from(&z, seed)?;
    Ok(grads.get(&x).expect("the input's gradient").to_f64_vec())
}

#[test]
fn a_stand_in_output_serves_an_op_whose_backward_does_not_read_its_output() {
    // linear's backward reads its input and weight, not its output.
    let plain = linear_relu_gradient(false, false).unwrap();
    assert_eq!(linear_relu_gradient(false, true).unwrap(), plain);
}

#[test]
fn a_stand_in_output_fails_an_op_whose_backward_reads_its_output() {
    // ReLU's backward reads its output (the mask): a stand-in has no values to give.
    let err = linear_relu_gradient(true, true).unwrap_err();
    assert!(
        matches!(err, tape::Error::NoValues { .. }),
        "want NoValues, got {err}"
    );
}
#[test]
fn a_stand_in_has_a_shape_but_no_values_and_no_bytes() {
    let dev = Device::cpu();
    let before = (dev.memory().current(), dev.counters());
    let t = Tensor::stand_in(&[2, 3], DType::F32, &dev);
    assert_eq!(
        (t.shape(), t.dtype(), t.has_values()),
        (&[2, 3][..], DType::F32, false)
    );
    assert_eq!(dev.memory().current(), before.0);
    assert_eq!(dev.counters().since(before.1).allocs, 0);
    let err = t.try_to_f64_vec().unwrap_err();
    assert!(matches!(err, tape::Error::NoValues { .. }), "{err}");
}
