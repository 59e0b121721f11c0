//! [`Tape::observe_gradients`] and [`Tape::backward_into`]: the observer sees every
//! contribution to a gradient with the sum so far, the last one equal to what backward returns;
//! backward into earlier gradients adds to them.

use std::sync::{Arc, Mutex};
use tape::{ops, DType, Device, Gradients, Tape, Tensor, TensorId};

/// `x` used twice (`relu(x) + x * w`), `w` once; the loss is the sum.
fn graph(tape: &mut Tape, x: &Tensor, w: &Tensor) -> Tensor {
    let r = ops::relu(tape, x).unwrap();
    let m = ops::mul(tape, x, w).unwrap();
    let a = ops::add(tape, &r, &m).unwrap();
    ops::sum(tape, &a).unwrap()
}

/// What the observer saw: (tensor id, the gradient's values) per contribution.
type Seen = Arc<Mutex<Vec<(TensorId, Vec<f64>)>>>;

fn leaves() -> (Tensor, Tensor) {
    let dev = Device::cpu();
    let x = Tensor::randn(&[3, 4], DType::F64, &dev, 1).unwrap();
    let w = Tensor::randn(&[3, 4], DType::F64, &dev, 2).unwrap();
    (x.with_requires_grad(true), w.with_requires_grad(true))
}

#[test]
fn observer_sees_each_contribution_and_the_final_sum() {
    let (x, w) = leaves();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let mut tape = Tape::recording();
    tape.observe_gradients(Box::new(move |id, g| {
        log.lock().unwrap().push((id, g.to_f64_vec()));
        Ok(())
    }));
    let loss = graph(&mut tape, &x, &w);
    let grads = tape.backward(&loss).unwrap();
    let seen = seen.lock().unwrap();
    let of = |t: &Tensor| -> Vec<Vec<f64>> {
        seen.iter()
            .filter(|(id, _)| *id == t.id())
            .map(|(_, g)| g.clone())
            .collect()
    };
    assert_eq!(of(&x).len(), 2, "x is used twice");
    assert_eq!(of(&w).len(), 1, "w is used once");
    assert_eq!(of(&x).last().unwrap(), &grads.get(&x).unwrap().to_f64_vec());
    assert_eq!(of(&w)[0], grads.get(&w).unwrap().to_f64_vec());
}

#[test]
fn backward_into_adds_to_earlier_gradients() {
    let (x, w) = leaves();
    let mut once = Tape::recording();
    let loss = graph(&mut once, &x, &w);
    let single = once.backward(&loss).unwrap();
    let mut first = Tape::recording();
    let loss = graph(&mut first, &x, &w);
    let earlier = first.backward(&loss).unwrap();
    let mut second = Tape::recording();
    let loss = graph(&mut second, &x, &w);
    let both = second.backward_into(&loss, earlier).unwrap();
    let doubled: Vec<f64> = single
        .get(&w)
        .unwrap()
        .to_f64_vec()
        .iter()
        .map(|v| 2.0 * v)
        .collect();
    assert_eq!(both.get(&w).unwrap().to_f64_vec(), doubled);
    assert!(Gradients::new().is_empty());
}
