//! NCCL across real processes (`--features nccl`): run alone (a world of one) or under
//! `mpirun -np N` on a machine with N GPUs. Collectives through NCCL, then averaged gradients
//! of CUDA parameters against the mean of every rank's local gradients. Without a GPU it prints
//! `SKIPPED (no GPU)` and passes; under `TAPE_EXPECT_GPU=1` a missing GPU fails.

use dist::{join, Ddp, DdpOptions, DistKind, ProcessGroup, ReduceOp};
use tape::{ops, DType, Device, Parameter, Tape, Tensor};

type Check = Result<(), String>;

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

fn collectives(g: &ProcessGroup) -> Check {
    let (r, n) = (g.rank() as f64, g.world_size() as f64);
    let mut v = [r, 1.0];
    g.all_reduce_f64(&mut v, ReduceOp::Sum).map_err(e)?;
    if v != [n * (n - 1.0) / 2.0, n] {
        return Err(format!("sum {v:?}"));
    }
    let mut m = [r];
    g.all_reduce_f64(&mut m, ReduceOp::Mean).map_err(e)?;
    if m != [(n - 1.0) / 2.0] {
        return Err(format!("mean {m:?}"));
    }
    let mut b = [r + 3.0; 4];
    g.broadcast_f64(&mut b, 0).map_err(e)?;
    if b != [3.0; 4] {
        return Err(format!("broadcast {b:?}"));
    }
    Ok(())
}

fn averaged_gradients(g: &ProcessGroup, dev: &Device) -> Check {
    const N: usize = 256;
    let mut ps: Vec<Parameter> = (0..2)
        .map(|i| {
            let t = Tensor::randn(&[N], DType::F64, dev, 5 + i + g.rank() as u64).unwrap();
            Parameter::new(format!("p{i}"), t)
        })
        .collect();
    let ddp = Ddp::new(g.clone(), &mut ps, DdpOptions::uniform(8 * N)).map_err(e)?;
    let loss_of = |tape: &mut Tape, x: &Tensor| -> tape::Result<Tensor> {
        let h = ops::mul(tape, x, ps[0].tensor())?;
        let h = ops::relu(tape, &h)?;
        let h = ops::mul(tape, &h, ps[1].tensor())?;
        ops::sum(tape, &h)
    };
    for step in 0..2u64 {
        let input = |r: usize| Tensor::randn(&[N], DType::F64, dev, 100 * step + r as u64);
        let mut tape = Tape::recording();
        let loss = loss_of(&mut tape, &input(g.rank()).map_err(e)?).map_err(e)?;
        let grads = ddp.backward(tape, &loss).map_err(e)?;
        for p in &ps {
            let mut want = vec![0.0; N];
            for r in 0..g.world_size() {
                let mut tape = Tape::recording();
                let l = loss_of(&mut tape, &input(r).map_err(e)?).map_err(e)?;
                let local = tape.backward(&l).map_err(e)?;
                let gv = local.get(p.tensor()).ok_or("no gradient")?.to_f64_vec();
                want.iter_mut().zip(gv).for_each(|(w, v)| *w += v);
            }
            let got = grads.get(p.tensor()).ok_or("no gradient")?.to_f64_vec();
            for (a, w) in got.iter().zip(&want) {
                let w = w / g.world_size() as f64;
                if (a - w).abs() > 1e-12 * w.abs().max(1e-300) {
                    return Err(format!("step {step} {}: {a} vs {w}", p.name()));
                }
            }
        }
    }
    Ok(())
}

fn main() {
    if tape::testing::gpu().is_none() {
        return;
    }
    let g = match join(DistKind::Nccl) {
        Ok(g) => g,
        Err(err) => {
            eprintln!("cannot join the NCCL world: {err}");
            std::process::exit(1);
        }
    };
    let dev = match Device::cuda(g.local_rank()) {
        Ok(d) => d,
        Err(err) => {
            eprintln!("rank {}: no GPU {}: {err}", g.rank(), g.local_rank());
            g.abort(1);
        }
    };
    for (name, result) in [
        ("collectives", collectives(&g)),
        ("averaged_gradients", averaged_gradients(&g, &dev)),
    ] {
        if let Err(msg) = result {
            eprintln!(
                "rank {} of {}: {name} FAILED: {msg}",
                g.rank(),
                g.world_size()
            );
            g.abort(1);
        }
        if g.is_root() {
            println!("{name} ... ok (NCCL, world size {})", g.world_size());
        }
    }
}
