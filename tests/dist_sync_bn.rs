//! Synchronised batch norm across real processes: run under `mpirun -np N`
//! (scripts/mpi-tests.sh; run alone, a world of one). In every memory mode, N ranks x batch
//! 64/N with `SyncBatchNorm` against one process on the whole batch of 64: three SGD steps in
//! f64, after which the parameters and the running statistics match the single process's to
//! 1e-10 relative, and each step's collectives are counted: two reductions per batch norm in
//! forward, one in backward, whatever the mode (so a checkpointed segment's recompute makes
//! none). Then a quick ResNet-18 check (narrow, two steps, naive and per-block). Any failure
//! names the rank and aborts the job.

use checkpoint::{Recompute, Selective};
use densenet::data::epoch_order;
use densenet::train::{seed_sgd_config, train_step_ddp, train_step_with, StepOptions};
use densenet::DenseNet;
use dist::{Ddp, DdpOptions, DistributedSampler, ProcessGroup, SyncBatchNorm};
use resnet::{ResNet, ResNetConfig};
use tape::nn::{self, Module};
use tape::optim::Sgd;
use tape::{DType, Device, Tensor};

mod dist_common;
use dist_common::{config, e, expect_ok, join_world, rel, shard, Check, GLOBAL, IMAGE, STEPS, TOL};

/// Every parameter and running statistic of `model` against `reference`'s.
fn compare<M: Module>(model: &M, reference: &M, what: &str) -> Check {
    for (p, q) in nn::parameters(model).iter().zip(nn::parameters(reference)) {
        let d = rel(&p.tensor().to_f64_vec(), &q.tensor().to_f64_vec());
        if d > TOL {
            return Err(format!("{what} {}: off by {d:e}", p.name()));
        }
    }
    let (mine, theirs) = (nn::running_stats(model), nn::running_stats(reference));
    if mine.len() != theirs.len() {
        return Err(format!("{what}: running statistics differ in number"));
    }
    for ((name, a), (_, b)) in mine.iter().zip(&theirs) {
        for (kind, x, y) in [("mean", a.mean(), b.mean()), ("var", a.var(), b.var())] {
            let d = rel(&x.to_f64_vec(), &y.to_f64_vec());
            if d > TOL {
                return Err(format!("{what} {name} running {kind}: off by {d:e}"));
            }
        }
        if a.num_batches_tracked() != b.num_batches_tracked() {
            return Err(format!("{what} {name}: batches tracked differ"));
        }
    }
    Ok(())
}

fn sync_steps(g: &ProcessGroup, mode: Recompute) -> Check {
    let dev = Device::cpu();
    let world = g.world_size();
    let mut model = DenseNet::new(config(), DType::F64, &dev, 7 + g.rank() as u64).map_err(e)?;
    let mut reference = DenseNet::new(config(), DType::F64, &dev, 7).map_err(e)?;
    match mode {
        // A budget for the whole batch, and its share for each rank's.
        Recompute::Budget(bytes) => {
            reference.set_recompute(mode).map_err(e)?;
            model
                .set_recompute(Recompute::Budget(bytes / world as u64))
                .map_err(e)?;
        }
        _ => {
            reference.set_recompute(mode).map_err(e)?;
            model.set_recompute(mode).map_err(e)?;
        }
    }
    let ddp = Ddp::new(g.clone(), &mut model, DdpOptions::uniform(4096)).map_err(e)?;
    let sync = SyncBatchNorm::new(g);
    let layers = sync.convert(&model) as u64;
    if layers == 0 {
        return Err("no batch norm to synchronise".into());
    }
    let (mut sgd, mut ref_sgd) = (
        Sgd::new(seed_sgd_config()).map_err(e)?,
        Sgd::new(seed_sgd_config()).map_err(e)?,
    );
    let shape = [GLOBAL, 3, IMAGE, IMAGE];
    let all = Tensor::randn(&shape, DType::F64, &dev, 8)
        .map_err(e)?
        .to_f64_vec();
    let labels: Vec<usize> = (0..GLOBAL).map(|i| (3 * i + 1) % 4).collect();
    compare(&model, &reference, &format!("{mode} start"))?;
    for step in 0..STEPS {
        let order = epoch_order(GLOBAL, 0, step);
        let options = StepOptions::new(step, step);
        let (x, y) = shard(&all, &labels, &order, &dev);
        train_step_with(&mut reference, &mut ref_sgd, &x, &y, options).map_err(e)?;
        let mine = DistributedSampler::new(GLOBAL, g.rank(), world).indices(&order);
        let (x, y) = shard(&all, &labels, &mine, &dev);
        let (calls, before) = (g.stats().calls, sync.stats());
        train_step_ddp(&mut model, &mut sgd, &x, &y, options, &ddp).map_err(e)?;
        let (made, after) = (g.stats().calls - calls, sync.stats());
        // Two reductions per batch norm in forward, one in backward, in every mode: a
        // recompute that reduced again would add forward calls.
        let (fwd, bwd) = (
            after.forward_calls - before.forward_calls,
            after.backward_calls - before.backward_calls,
        );
        if (fwd, bwd) != (2 * layers, layers) {
            return Err(format!(
                "{mode} step {step}: {fwd} forward and {bwd} backward reductions for {layers} \
                 batch norms (want {} and {layers})",
                2 * layers
            ));
        }
        // Besides them: the buffers' broadcast (none in a world of one), the buckets, the
        // anomaly flag (and in the first step the bucket order).
        let broadcast = u64::from(world > 1);
        let buckets = ddp.last_step().buckets as u64;
        let want = broadcast + buckets + 1 + u64::from(step == 0) + 3 * layers;
        if made != want {
            return Err(format!(
                "{mode} step {step}: {made} collective calls, {want} expected"
            ));
        }
        compare(&model, &reference, &format!("{mode} step {step}"))?;
    }
    Ok(())
}

/// The quick ResNet check: a narrow ResNet-18 on 8x8 images, global batch 16, every block
/// recorded and every block checkpointed, two SGD steps.
fn resnet_sync_steps(g: &ProcessGroup, memory: Recompute) -> Check {
    const BATCH: usize = 16;
    let dev = Device::cpu();
    let world = g.world_size();
    let config = ResNetConfig {
        num_classes: 4,
        width: 4,
        ..ResNetConfig::default()
    };
    let mut model = ResNet::new(config.clone(), DType::F64, &dev, 3 + g.rank() as u64)
        .map_err(e)?
        .with_recompute(memory)
        .map_err(e)?;
    let mut reference = ResNet::new(config, DType::F64, &dev, 3)
        .map_err(e)?
        .with_recompute(memory)
        .map_err(e)?;
    let options = DdpOptions::uniform(4096).with_sync_batch_norm(true);
    let ddp = Ddp::new(g.clone(), &mut model, options).map_err(e)?;
    let (mut sgd, mut ref_sgd) = (
        Sgd::new(resnet::train::sgd_config()).map_err(e)?,
        Sgd::new(resnet::train::sgd_config()).map_err(e)?,
    );
    let shape = [BATCH, 3, IMAGE, IMAGE];
    let all = Tensor::randn(&shape, DType::F64, &dev, 5)
        .map_err(e)?
        .to_f64_vec();
    let labels: Vec<usize> = (0..BATCH).map(|i| i % 4).collect();
    let layers = nn::running_stats(&model).len() as u64;
    for step in 0..2 {
        let order = epoch_order(BATCH, 1, step);
        let (x, y) = shard(&all, &labels, &order, &dev);
        resnet::train::train_step(&mut reference, &mut ref_sgd, &x, &y, step).map_err(e)?;
        let mine = DistributedSampler::new(BATCH, g.rank(), world).indices(&order);
        let (x, y) = shard(&all, &labels, &mine, &dev);
        let before = ddp.sync_batch_norm().ok_or("not synchronised")?;
        resnet::train::train_step_ddp(&mut model, &mut sgd, &x, &y, step, &ddp).map_err(e)?;
        let after = ddp.sync_batch_norm().ok_or("not synchronised")?;
        let fwd = after.forward_calls - before.forward_calls;
        if fwd != 2 * layers {
            return Err(format!(
                "resnet {memory} step {step}: {fwd} forward reductions for {layers} batch norms"
            ));
        }
        compare(&model, &reference, &format!("resnet {memory} step {step}"))?;
    }
    Ok(())
}

fn main() {
    let g = join_world();
    let modes = [
        Recompute::Naive,
        Recompute::Selective(Selective::Bottleneck),
        Recompute::Selective(Selective::Layer),
        Recompute::Budget(2_800_000),
    ];
    for mode in modes {
        expect_ok(&g, sync_steps(&g, mode), || {
            format!(
                "synchronised batch norm, {mode}: parameters and running statistics match one \
                 process on the global batch; no reduction in a recompute ... ok (world size {})",
                g.world_size()
            )
        });
    }
    for memory in [Recompute::Naive, Recompute::PerBlock] {
        expect_ok(&g, resnet_sync_steps(&g, memory), || {
            format!("synchronised batch norm, ResNet-18 {memory} ... ok")
        });
    }
}
