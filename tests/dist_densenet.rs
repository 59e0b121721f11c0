//! DenseNet data-parallel steps across real processes: run under `mpirun -np N`
//! (scripts/mpi-tests.sh; run alone, a world of one). In every recompute setting, three SGD steps in
//! f64 on a global batch of 64 split by the distributed sampler: after each step every rank's
//! averaged gradients equal the mean of one process's gradients on each rank's shard (1e-10
//! relative, per parameter), the parameters are the same bits on every rank, and the step makes
//! no collective call beyond the buffers' broadcast, the gradient buckets and the anomaly flag
//! (counted: none in forward or in a recompute). Then a NaN loss on rank 1 only: every rank
//! skips the update. Any failure names the rank and aborts the job.

use densenet::data::epoch_order;
use densenet::train::{
    forward_backward, forward_backward_ddp, seed_sgd_config, train_step_ddp, StepOptions,
};
use densenet::{DenseNet, Recompute, Selective};
use dist::{broadcast_buffers, Ddp, DdpOptions, DistributedSampler, ProcessGroup};
use std::hash::{Hash, Hasher};
use tape::nn::{self, LoadOptions};
use tape::optim::Sgd;
use tape::{DType, Device, Tensor};
use trainer::anomaly::{step_if_finite_global, GuardError};

mod dist_common;
use dist_common::{config, e, expect_ok, join_world, rel, shard, Check, GLOBAL, IMAGE, STEPS, TOL};

/// A hash of the parameters' exact bits.
fn param_hash(model: &DenseNet) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in model.parameters() {
        for v in p.tensor().to_f64_vec() {
            v.to_bits().hash(&mut h);
        }
    }
    h.finish()
}

fn data_parallel_steps(g: &ProcessGroup, mode: Recompute) -> Check {
    let dev = Device::cpu();
    let world = g.world_size();
    // Each rank initialises from its own seed: Ddp::new makes them all rank 0's.
    let mut model = DenseNet::new(config(), DType::F64, &dev, 7 + g.rank() as u64).map_err(e)?;
    model.set_recompute(mode).unwrap();
    let mut reference = DenseNet::new(config(), DType::F64, &dev, 0).map_err(e)?;
    reference.set_recompute(mode).unwrap();
    let ddp = Ddp::new(g.clone(), &mut model, DdpOptions::uniform(4096)).map_err(e)?;
    let mut sgd = Sgd::new(seed_sgd_config()).map_err(e)?;
    let shape = [GLOBAL, 3, IMAGE, IMAGE];
    let all = Tensor::randn(&shape, DType::F64, &dev, 8)
        .map_err(e)?
        .to_f64_vec();
    let labels: Vec<usize> = (0..GLOBAL).map(|i| (3 * i + 1) % 4).collect();
    for step in 0..STEPS {
        let order = epoch_order(GLOBAL, 0, step);
        let mine = DistributedSampler::new(GLOBAL, g.rank(), world).indices(&order);
        // One process's gradients on each rank's shard, from the state the step starts from.
        broadcast_buffers(g, &model, 0).map_err(e)?;
        let state = nn::stored_state_dict(&model).map_err(e)?;
        let mut mean: Vec<Vec<f64>> = Vec::new();
        for r in 0..world {
            nn::load_state_dict(&mut reference, &state, LoadOptions::default()).map_err(e)?;
            let idx = DistributedSampler::new(GLOBAL, r, world).indices(&order);
            let (x, y) = shard(&all, &labels, &idx, &dev);
            let out = forward_backward(&reference, &x, &y, step).map_err(e)?;
            for (i, p) in reference.parameters().iter().enumerate() {
                let gv = out.grads.get(p.tensor()).ok_or("no gradient")?.to_f64_vec();
                if r == 0 {
                    mean.push(gv);
                } else {
                    mean[i].iter_mut().zip(gv).for_each(|(m, v)| *m += v);
                }
            }
        }
        let (x, y) = shard(&all, &labels, &mine, &dev);
        let options = StepOptions::new(step, step);
        let calls = g.stats().calls;
        let out = train_step_ddp(&mut model, &mut sgd, &x, &y, options, &ddp).map_err(e)?;
        // The step's collectives: the buffers' broadcast, the buckets, the anomaly flag (and in
        // the first step the bucket order): forward, backward and every recompute call none.
        let made = g.stats().calls - calls;
        let want = 2 + ddp.last_step().buckets as u64 + u64::from(step == 0);
        if made != want {
            return Err(format!(
                "{mode} step {step}: {made} collective calls, {want} expected"
            ));
        }
        for (p, m) in model.parameters().iter().zip(&mean) {
            let want: Vec<f64> = m.iter().map(|v| v / world as f64).collect();
            let got = out.grads.get(p.tensor()).ok_or("no gradient")?.to_f64_vec();
            let d = rel(&got, &want);
            if d > TOL {
                return Err(format!("{mode} step {step} {}: off by {d:e}", p.name()));
            }
        }
        let hashes = g.all_gather_f64(&[param_hash(&model) as f64]).map_err(e)?;
        if hashes.iter().any(|h| h != &hashes[0]) {
            return Err(format!(
                "{mode} step {step}: parameters differ across ranks"
            ));
        }
        let comm = ddp.last_step();
        if step > 0 && comm.launches.iter().any(|l| !l.during_backward) {
            return Err(format!(
                "{mode} step {step}: a bucket waited for the end of backward"
            ));
        }
    }
    Ok(())
}

/// The global anomaly check on a real step: rank 1's loss is NaN (its gradients, averaged with
/// the others', are finite), and every rank skips the update and fails naming the step; the
/// parameters stay as they were and equal on every rank.
fn nan_on_one_rank(g: &ProcessGroup) -> Check {
    let dev = Device::cpu();
    let mut model = DenseNet::new(config(), DType::F64, &dev, 7).map_err(e)?;
    let ddp = Ddp::new(g.clone(), &mut model, DdpOptions::default()).map_err(e)?;
    let mut sgd = Sgd::new(seed_sgd_config()).map_err(e)?;
    let x = Tensor::randn(
        &[4, 3, IMAGE, IMAGE],
        DType::F64,
        &dev,
        30 + g.rank() as u64,
    )
    .map_err(e)?;
    let out = forward_backward_ddp(&model, &x, &[0, 1, 2, 3], 0, &ddp).map_err(e)?;
    let nan = Tensor::from_f64(&[f64::NAN], &[1], DType::F64, &dev).map_err(e)?;
    let loss = if g.rank() == 1 {
        &nan
    } else {
        out.loss_tensor()
    };
    let before = param_hash(&model);
    let step = step_if_finite_global(g, &mut model, &mut sgd, loss, &out.grads, 5);
    let Err(GuardError::NonFinite(n)) = step else {
        return Err(format!("rank {}: the step was not skipped", g.rank()));
    };
    let culprit = if g.rank() == 1 {
        "the loss"
    } else {
        "another rank"
    };
    if n.step != 5 || !n.what.contains(culprit) {
        return Err(format!("rank {}: skipped as {n}", g.rank()));
    }
    if param_hash(&model) != before {
        return Err("the skipped step changed the parameters".into());
    }
    let hashes = g.all_gather_f64(&[before as f64]).map_err(e)?;
    if hashes.iter().any(|h| h != &hashes[0]) {
        return Err("parameters differ across ranks".into());
    }
    Ok(())
}

fn main() {
    let g = join_world();
    let modes = [
        Recompute::Naive,
        Recompute::Selective(Selective::Bottleneck),
        Recompute::Selective(Selective::Layer),
        Recompute::Budget(1_400_000),
    ];
    for mode in modes {
        expect_ok(&g, data_parallel_steps(&g, mode), || {
            format!(
                "data-parallel DenseNet steps, {mode} ... ok (world size {})",
                g.world_size()
            )
        });
    }
    if g.world_size() > 1 {
        expect_ok(&g, nan_on_one_rank(&g), || {
            "a NaN loss on rank 1 skips the step on every rank ... ok".into()
        });
    }
}
