//! Bucket launches under checkpointing, in one process: they follow the order in which the
//! gradients become final (recompute order), not the parameters' declaration order, and they
//! happen while backward still runs; the averaged gradients of a world of one are the plain
//! backward's, bit for bit.

use checkpoint::checkpoint;
use dist::{Ddp, DdpOptions, ProcessGroup};
use tape::{ops, DType, Device, Parameter, Tape, Tensor};

const N: usize = 1000;

/// Parameters declared p0, p1, p2; each multiplies the input inside its own checkpointed
/// segment, used in the order p0, p2, p1: backward finishes p1 first, then p2, then p0.
fn model(dev: &Device) -> Vec<Parameter> {
    (0..3)
        .map(|i| {
            let t = Tensor::randn(&[N], DType::F64, dev, 10 + i).unwrap();
            Parameter::new(format!("p{i}"), t)
        })
        .collect()
}

fn forward<'a>(tape: &mut Tape<'a>, params: &[Parameter], x: &Tensor) -> Tensor {
    let mut h = x.clone();
    for &i in &[0usize, 2, 1] {
        let p = params[i].tensor().clone();
        h = checkpoint(tape, &[&h], move |t, inp| {
            let m = ops::mul(t, &inp[0], &p)?;
            ops::relu(t, &m)
        })
        .unwrap();
    }
    ops::sum(tape, &h).unwrap()
}

fn input(dev: &Device, seed: u64) -> Tensor {
    Tensor::randn(&[N], DType::F64, dev, seed).unwrap()
}

#[test]
fn buckets_follow_readiness_not_declaration_order() {
    let dev = Device::cpu();
    let mut params = model(&dev);
    // One parameter per bucket (N f64 values = 8000 bytes).
    let options = DdpOptions::uniform(8 * N);
    let group = ProcessGroup::single();
    let ddp = Ddp::new(group.clone(), &mut params, options).unwrap();
    for step in 0..3u64 {
        let x = input(&dev, step);
        let mut tape = Tape::recording();
        let loss = forward(&mut tape, &params, &x);
        let calls = group.stats().calls;
        let grads = ddp.backward(tape, &loss).unwrap();
        let comm = ddp.last_step();
        // Backward (its recomputes included) calls no collective but the buckets' all-reduces
        // (and, in the first step, the broadcast of the bucket order).
        let learned = u64::from(step == 0);
        assert_eq!(group.stats().calls - calls, comm.buckets as u64 + learned);
        assert_eq!(comm.contributions, 3);
        let names: Vec<Vec<String>> = comm.launches.iter().map(|l| l.params.clone()).collect();
        let order = vec![vec!["p1".to_string()], vec!["p2".into()], vec!["p0".into()]];
        // Declaration order (or its reverse, p2 first) would fail here.
        assert_eq!(names, order, "step {step}");
        if step == 0 {
            // The first step counts contributions and reduces after backward.
            assert!(comm.launches.iter().all(|l| !l.during_backward));
            continue;
        }
        let before: Vec<usize> = comm
            .launches
            .iter()
            .map(|l| l.contributions_before)
            .collect();
        assert_eq!(
            before,
            [1, 2, 3],
            "each bucket launched as soon as its gradient was final"
        );
        assert!(comm.launches.iter().all(|l| l.during_backward));
        // A world of one: the plain backward's gradients, bit for bit.
        let mut tape = Tape::recording();
        let loss = forward(&mut tape, &params, &x);
        let plain = tape.backward(&loss).unwrap();
        for p in &params {
            let (a, b) = (
                grads.get(p.tensor()).unwrap(),
                plain.get(p.tensor()).unwrap(),
            );
            let bits = |t: &Tensor| {
                t.to_f64_vec()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(a), bits(b), "{}", p.name());
        }
    }
}

#[test]
fn no_sync_accumulates_then_reduces_the_sum() {
    let dev = Device::cpu();
    let mut params = model(&dev);
    let ddp = Ddp::new(ProcessGroup::single(), &mut params, DdpOptions::default()).unwrap();
    let (x0, x1) = (input(&dev, 5), input(&dev, 6));
    let mut tape = Tape::recording();
    let loss = forward(&mut tape, &params, &x0);
    let acc = ddp
        .backward_no_sync(tape, &loss, Default::default())
        .unwrap();
    let mut tape = Tape::recording();
    let loss = forward(&mut tape, &params, &x1);
    let both = ddp.backward_into(tape, &loss, acc).unwrap();
    for p in &params {
        let mut want = vec![0.0; N];
        for x in [&x0, &x1] {
            let mut tape = Tape::recording();
            let loss = forward(&mut tape, &params, x);
            let g = tape.backward(&loss).unwrap();
            for (w, v) in want.iter_mut().zip(g.get(p.tensor()).unwrap().to_f64_vec()) {
                *w += v;
            }
        }
        assert_eq!(
            both.get(p.tensor()).unwrap().to_f64_vec(),
            want,
            "{}",
            p.name()
        );
    }
    assert_eq!(ddp.last_step().buckets, 1);
}

#[test]
fn single_world_changes_nothing() {
    let g = ProcessGroup::single();
    assert_eq!((g.rank(), g.world_size(), g.local_rank()), (0, 1, 0));
    let t = input(&Device::cpu(), 1);
    let r = g.all_reduce(&t, dist::ReduceOp::Mean).unwrap();
    assert_eq!(r.to_f64_vec(), t.to_f64_vec());
    assert!(g.any(true).unwrap() && !g.any(false).unwrap());
    assert_eq!(g.all_gather_f64(&[1.0, 2.0]).unwrap(), vec![vec![1.0, 2.0]]);
    g.barrier().unwrap();
}
