//! Edge cases of a checkpointed segment's gradient bookkeeping, and of layers: a segment that
//! hands back its input passes the output gradient through to it; a segment whose output no
//! recorded op made (it does not depend on the inputs) leaves no gradient behind, for the output
//! or anything else; a layer reports the name and kind it was made with, and the dry-run profile
//! names each layer so.

use checkpoint::planner::profile_chain;
use checkpoint::{checkpoint, OpKind, Stage};
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
