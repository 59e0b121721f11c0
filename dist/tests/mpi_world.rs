//! Checks across real processes: run under `mpirun -np N` (run alone, a world of one). One
//! `main` joins the world once and runs every check in the same order on every rank; any
//! failure prints the rank and aborts the whole job with a non-zero exit.

use checkpoint::checkpoint;
use dist::{join, module_fingerprint, Ddp, DdpOptions, DistKind, ProcessGroup, ReduceOp};
use tape::optim::{Optimizer, Sgd, SgdConfig};
use tape::{nn, ops, DType, Device, Parameter, Tape, Tensor};

type Check = Result<(), String>;

/// A named check run on every rank.
type Named = (&'static str, fn(&ProcessGroup) -> Check);

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Check {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

fn collectives(g: &ProcessGroup) -> Check {
    let (r, n) = (g.rank() as f64, g.world_size() as f64);
    let mut v = [r, 1.0, -r];
    g.all_reduce_f64(&mut v, ReduceOp::Sum).map_err(e)?;
    ensure(v == [n * (n - 1.0) / 2.0, n, -n * (n - 1.0) / 2.0], || {
        format!("sum {v:?}")
    })?;
    let mut m = [r, 2.0];
    g.all_reduce_f64(&mut m, ReduceOp::Mean).map_err(e)?;
    ensure(m == [(n - 1.0) / 2.0, 2.0], || format!("mean {m:?}"))?;
    let mut x = [r, -r];
    g.all_reduce_f64(&mut x, ReduceOp::Max).map_err(e)?;
    ensure(x == [n - 1.0, 0.0], || format!("max {x:?}"))?;
    let mut b = [r + 10.0; 3];
    g.broadcast_f64(&mut b, g.world_size() - 1).map_err(e)?;
    ensure(b == [n + 9.0; 3], || format!("broadcast {b:?}"))?;
    let all = g.all_gather_f64(&[r, r * r]).map_err(e)?;
    let want: Vec<Vec<f64>> = (0..g.world_size())
        .map(|i| vec![i as f64, (i * i) as f64])
        .collect();
    ensure(all == want, || format!("all_gather {all:?}"))?;
    let dev = Device::cpu();
    let t = Tensor::from_f64(&[r; 4], &[2, 2], DType::F32, &dev).map_err(e)?;
    let s = g.all_reduce(&t, ReduceOp::Sum).map_err(e)?;
    ensure(s.to_f64_vec() == vec![n * (n - 1.0) / 2.0; 4], || {
        "tensor sum".into()
    })?;
    ensure(g.any(g.rank() == g.world_size() - 1).map_err(e)?, || {
        "any".into()
    })?;
    ensure(!g.any(false).map_err(e)?, || "any(false)".into())?;
    g.barrier().map_err(e)
}

const N: usize = 300;

fn params(dev: &Device, seed: u64) -> Vec<Parameter> {
    (0..3)
        .map(|i| {
            let t = Tensor::randn(&[N], DType::F64, dev, seed + i).unwrap();
            Parameter::new(format!("p{i}"), t)
        })
        .collect()
}

/// Each parameter multiplies the input in its own checkpointed segment (used p0, p2, p1).
fn loss_of(tape: &mut Tape, ps: &[Parameter], x: &Tensor) -> tape::Result<Tensor> {
    let mut h = x.clone();
    for &i in &[0usize, 2, 1] {
        let p = ps[i].tensor().clone();
        h = checkpoint(tape, &[&h], move |t, inp| {
            let m = ops::mul(t, &inp[0], &p)?;
            ops::relu(t, &m)
        })?;
    }
    ops::sum(tape, &h)
}

/// Every rank starts from rank 0's parameters (each made them from its own seed), averages
/// gradients over rank-specific inputs to the mean of every rank's local gradients, and after
/// three SGD steps (one skipped everywhere because rank 1's loss is NaN) the parameters are the
/// same bits on every rank.
fn data_parallel(g: &ProcessGroup) -> Check {
    let dev = Device::cpu();
    let mut ps = params(&dev, 100 + g.rank() as u64);
    let options = DdpOptions::uniform(8 * N);
    let ddp = Ddp::new(g.clone(), &mut ps, options).map_err(e)?;
    let start = module_fingerprint(&ps).map_err(e)?;
    let prints = g.all_gather_f64(&[start as f64]).map_err(e)?;
    ensure(prints.iter().all(|p| p == &prints[0]), || {
        "broadcast params differ".into()
    })?;
    let mut sgd = Sgd::new(SgdConfig {
        lr: 0.01,
        momentum: 0.9,
        dampening: 0.0,
        nesterov: true,
        weight_decay: 1e-4,
    })
    .map_err(e)?;
    for step in 0..3u64 {
        let input = |rank: usize| Tensor::randn(&[N], DType::F64, &dev, 1000 * step + rank as u64);
        let x = input(g.rank()).map_err(e)?;
        let mut tape = Tape::recording();
        let mut loss = loss_of(&mut tape, &ps, &x).map_err(e)?;
        let poisoned = step == 1 && g.rank() == 1;
        if poisoned {
            loss = Tensor::from_f64(&[f64::NAN], &[1], DType::F64, &dev).map_err(e)?;
        }
        let grads = if poisoned {
            // The loss no longer comes from the tape: reduce real gradients, flag the NaN.
            let mut tape = Tape::recording();
            let l = loss_of(&mut tape, &ps, &x).map_err(e)?;
            ddp.backward(tape, &l).map_err(e)?
        } else {
            ddp.backward(tape, &loss).map_err(e)?
        };
        // The mean of every rank's local gradients, computed here.
        for p in &ps {
            let mut want = vec![0.0; N];
            for r in 0..g.world_size() {
                let mut tape = Tape::recording();
                let l = loss_of(&mut tape, &ps, &input(r).map_err(e)?).map_err(e)?;
                let local = tape.backward(&l).map_err(e)?;
                for (w, v) in want
                    .iter_mut()
                    .zip(local.get(p.tensor()).unwrap().to_f64_vec())
                {
                    *w += v;
                }
            }
            let got = grads.get(p.tensor()).ok_or("no gradient")?.to_f64_vec();
            for (a, b) in got.iter().zip(&want) {
                let b = b / g.world_size() as f64;
                ensure((a - b).abs() <= 1e-12 * b.abs().max(1e-300), || {
                    format!("step {step} {}: averaged {a} vs mean {b}", p.name())
                })?;
            }
        }
        let comm = ddp.last_step();
        ensure(
            step == 0 || comm.launches.iter().all(|l| l.during_backward),
            || format!("step {step}: a bucket waited for the end of backward"),
        )?;
        // The global anomaly check: a NaN on one rank skips the step on every rank.
        let local_bad = !loss.scalar().map_err(e)?.is_finite();
        let skip = g.any(local_bad).map_err(e)?;
        ensure(skip == (step == 1 && g.world_size() > 1), || {
            format!("step {step}: skip {skip}")
        })?;
        if !skip {
            sgd.step(&mut nn::parameters_mut(&mut ps), &grads)
                .map_err(e)?;
        }
        let print = module_fingerprint(&ps).map_err(e)? as f64;
        let prints = g.all_gather_f64(&[print]).map_err(e)?;
        ensure(prints.iter().all(|p| p == &prints[0]), || {
            format!("step {step}: parameters differ across ranks: {prints:?}")
        })?;
    }
    Ok(())
}

fn main() {
    let g = match join(DistKind::Mpi) {
        Ok(g) => g,
        Err(err) => {
            eprintln!("cannot join the MPI world: {err}");
            std::process::exit(1);
        }
    };
    let checks: [Named; 2] = [
        ("collectives", collectives),
        ("data_parallel", data_parallel),
    ];
    for (name, check) in checks {
        if let Err(msg) = check(&g) {
            eprintln!(
                "rank {} of {}: {name} FAILED: {msg}",
                g.rank(),
                g.world_size()
            );
            g.abort(1);
        }
        if g.is_root() {
            println!("{name} ... ok (world size {})", g.world_size());
        }
    }
}
