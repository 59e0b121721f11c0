//! A training step's work on its device, counted (launches, allocations, host syncs): no host
//! sync before the optimizer update is queued, one launch for the update, one sync in all (the
//! anomaly flag, read after the update is queued), the loss and the hit count read only when
//! asked, and the same counts in every steady-state step. The queued check of a training loop
//! (`train_step_queued`) makes no host sync at all in a steady-state step, on the CPU and meta.

use densenet::train::{
    check_finite, forward_backward, seed_sgd_config, train_step, train_step_queued,
    train_step_with, StepOptions,
};
use densenet::{DenseNet, DenseNetConfig, Recompute, Selective};
use tape::optim::{Optimizer, Sgd};
use tape::{Counters, DType, Device, Gradients, Parameter, Tensor};
use trainer::anomaly::AnomalyGuard;

fn config() -> DenseNetConfig {
    DenseNetConfig {
        growth_rate: 4,
        block_config: vec![2, 3],
        num_init_features: 8,
        bn_size: 2,
        num_classes: 5,
        drop_rate: 0.1,
        ..DenseNetConfig::default()
    }
}

const MODES: [Recompute; 3] = [
    Recompute::Naive,
    Recompute::Selective(Selective::Bottleneck),
    Recompute::Selective(Selective::Layer),
];

fn batch(dev: &Device) -> (Tensor, Vec<usize>) {
    (
        Tensor::randn(&[4, 3, 8, 8], DType::F32, dev, 5).unwrap(),
        vec![0, 1, 2, 4],
    )
}

/// SGD that notes the device's counters when its conditional update is called and when it
/// returns.
struct Spy {
    inner: Sgd,
    dev: Device,
    entry: Option<Counters>,
    exit: Option<Counters>,
}

impl Spy {
    fn new(dev: &Device) -> Self {
        Spy {
            inner: Sgd::new(seed_sgd_config()).unwrap(),
            dev: dev.clone(),
            entry: None,
            exit: None,
        }
    }
}

impl Optimizer for Spy {
    fn step(&mut self, params: &mut [&mut Parameter], grads: &Gradients) -> tape::Result<()> {
        self.inner.step(params, grads)
    }

    fn step_if_finite(
        &mut self,
        params: &mut [&mut Parameter],
        grads: &Gradients,
        found_inf: &Tensor,
    ) -> tape::Result<bool> {
        self.entry = Some(self.dev.counters());
        let r = self.inner.step_if_finite(params, grads, found_inf);
        self.exit = Some(self.dev.counters());
        r
    }

    fn lr(&self) -> f64 {
        self.inner.lr()
    }

    fn set_lr(&mut self, lr: f64) {
        self.inner.set_lr(lr)
    }

    fn state_dict(&self, params: &[&Parameter]) -> Vec<(String, Tensor)> {
        self.inner.state_dict(params)
    }

    fn load_state_dict(
        &mut self,
        params: &[&Parameter],
        state: &[(String, Tensor)],
    ) -> tape::Result<()> {
        self.inner.load_state_dict(params, state)
    }
}

/// Counts of one step: (before the update is queued, the update, the whole step).
fn one_step(
    model: &mut DenseNet,
    opt: &mut Spy,
    x: &Tensor,
    labels: &[usize],
    step: u64,
) -> (Counters, Counters, Counters, densenet::train::StepOutput) {
    let dev = model.device().clone();
    let start = dev.counters();
    let out = train_step_with(model, opt, x, labels, StepOptions::new(step, step)).unwrap();
    let end = dev.counters();
    let (entry, exit) = (opt.entry.take().unwrap(), opt.exit.take().unwrap());
    (entry - start, exit - entry, end - start, out)
}

#[test]
fn a_step_reads_nothing_back_before_its_update_is_queued() {
    for mode in MODES {
        let dev = Device::cpu();
        let mut model = DenseNet::new(config(), DType::F32, &dev, 1)
            .unwrap()
            .with_recompute(mode)
            .unwrap();
        let (x, labels) = batch(&dev);
        let mut opt = Spy::new(&dev);
        for step in 0..3 {
            let (before, update, whole, out) = one_step(&mut model, &mut opt, &x, &labels, step);
            assert_eq!(
                before.syncs, 0,
                "{mode} step {step}: a host read before the update"
            );
            // The update: one fused launch (the first step also makes the momentum buffers),
            // then the one read of the anomaly flag.
            assert_eq!(update.syncs, 1, "{mode} step {step}");
            if step > 0 {
                assert_eq!(update.launches, 1, "{mode} step {step}");
                assert_eq!(update.allocs, 0, "{mode} step {step}");
            }
            assert_eq!(
                whole.syncs, 1,
                "{mode} step {step}: the flag is the step's only read"
            );
            // The loss and the hit count are read when asked, once each.
            let (values, reads) = dev.count(|| {
                let first = (out.loss().unwrap(), out.correct().unwrap());
                assert_eq!(first, (out.loss().unwrap(), out.correct().unwrap()));
                first
            });
            assert_eq!(
                reads,
                Counters {
                    launches: 0,
                    allocs: 0,
                    syncs: 2
                },
                "{mode}"
            );
            assert!(
                values.0.is_finite() && values.1 <= labels.len(),
                "{mode}: {values:?}"
            );
        }
    }
}

#[test]
fn steady_state_steps_count_the_same() {
    for mode in MODES.into_iter().chain([Recompute::Budget(400_000)]) {
        let dev = Device::cpu();
        let mut model = DenseNet::new(config(), DType::F32, &dev, 1)
            .unwrap()
            .with_recompute(mode)
            .unwrap();
        let (x, labels) = batch(&dev);
        let mut opt = Sgd::new(seed_sgd_config()).unwrap();
        let counts: Vec<Counters> = (0..4)
            .map(|step| {
                dev.count(|| train_step(&mut model, &mut opt, &x, &labels, step).unwrap())
                    .1
            })
            .collect();
        assert_eq!(counts[2], counts[1], "{mode}: {counts:?}");
        assert_eq!(counts[3], counts[1], "{mode}: {counts:?}");
        // The first step also makes the momentum buffers: one zero fill and one buffer each.
        let params = model.parameters().len() as u64;
        assert_eq!(counts[0].launches, counts[1].launches + params, "{mode}");
        assert_eq!(counts[0].allocs, counts[1].allocs + params, "{mode}");
        assert_eq!(counts[1].syncs, 1, "{mode}");
        println!("{mode}: {}", counts[1]);
    }
}

/// The queued check: a steady-state step counts the synchronous step's launches and
/// allocations and no sync, on the CPU and on meta, in every recompute setting; the last step's
/// check at `finish` waits for nothing either.
#[test]
fn queued_steady_state_steps_make_no_host_sync() {
    for dev in [Device::cpu(), Device::meta()] {
        for mode in MODES.into_iter().chain([Recompute::Budget(400_000)]) {
            let make = || {
                DenseNet::new(config(), DType::F32, &dev, 1)
                    .unwrap()
                    .with_recompute(mode)
                    .unwrap()
            };
            let (x, labels) = batch(&dev);
            let (mut model, mut opt) = (make(), Sgd::new(seed_sgd_config()).unwrap());
            let mut guard = AnomalyGuard::new();
            let queued: Vec<Counters> = (0..4)
                .map(|step| {
                    let options = StepOptions::new(step, step);
                    dev.count(|| {
                        train_step_queued(&mut model, &mut opt, &mut guard, &x, &labels, options)
                            .unwrap()
                    })
                    .1
                })
                .collect();
            let (r, c) = dev.count(|| guard.finish(&model));
            r.unwrap();
            assert_eq!(c.syncs, 0, "{dev} {mode}: finish");
            let (mut model, mut opt) = (make(), Sgd::new(seed_sgd_config()).unwrap());
            let sync: Vec<Counters> = (0..2)
                .map(|step| {
                    dev.count(|| train_step(&mut model, &mut opt, &x, &labels, step).unwrap())
                        .1
                })
                .collect();
            for (step, q) in queued.iter().enumerate().skip(1) {
                assert_eq!(q.syncs, 0, "{dev} {mode} step {step}");
                assert_eq!(
                    (q.launches, q.allocs),
                    (sync[1].launches, sync[1].allocs),
                    "{dev} {mode} step {step}"
                );
            }
            assert_eq!(queued[0].syncs, 0, "{dev} {mode}: the first step");
        }
    }
}

#[test]
fn the_anomaly_check_is_one_launch_and_one_read() {
    let dev = Device::cpu();
    let model = DenseNet::new(config(), DType::F32, &dev, 1)
        .unwrap()
        .with_recompute(Recompute::Naive)
        .unwrap();
    let (x, labels) = batch(&dev);
    let (out, c) = dev.count(|| forward_backward(&model, &x, &labels, 0).unwrap());
    assert_eq!(c.syncs, 0, "forward and backward read nothing back");
    let (r, c) = dev.count(|| check_finite(&model, &out, 0));
    r.unwrap();
    assert_eq!(
        c,
        Counters {
            launches: 1,
            allocs: 1,
            syncs: 1
        }
    );
}

#[test]
fn the_correct_count_is_the_top1_hit_count_of_the_logits() {
    let dev = Device::cpu();
    let model = DenseNet::new(config(), DType::F64, &dev, 3)
        .unwrap()
        .with_recompute(Recompute::Selective(Selective::Layer))
        .unwrap();
    let x = Tensor::randn(&[8, 3, 8, 8], DType::F64, &dev, 9).unwrap();
    let logits = densenet::train::predict(&model, &x).unwrap().to_f64_vec();
    // Labels that make rows 0, 3 and 5 hits: their arg max; the others some other class.
    let argmax = |r: usize| {
        let row = &logits[r * 5..(r + 1) * 5];
        (0..5).fold(0, |b, j| if row[j] >= row[b] { j } else { b })
    };
    let labels: Vec<usize> = (0..8)
        .map(|r| match r {
            0 | 3 | 5 => argmax(r),
            _ => (argmax(r) + 1) % 5,
        })
        .collect();
    let eval_logits = densenet::train::predict(&model, &x).unwrap();
    assert_eq!(
        densenet::train::count_correct(&eval_logits, &labels).unwrap(),
        3
    );
    let out = forward_backward(&model, &x, &labels, 0).unwrap();
    let train_logits = out.logits.to_f64_vec();
    let hits = (0..8)
        .filter(|&r| {
            let row = &train_logits[r * 5..(r + 1) * 5];
            (0..5).fold(0, |b, j| if row[j] >= row[b] { j } else { b }) == labels[r]
        })
        .count();
    assert_eq!(out.correct().unwrap(), hits);
    assert_eq!(out.correct_tensor().shape(), &[1]);
    assert_eq!(out.loss_tensor().shape(), &[1]);
}

/// Kernel calls and allocations of one training step (forward, backward, anomaly check and
/// update) of a single-block network of `layers` dense layers in `mode`.
fn step_counts(mode: Recompute, layers: usize) -> Counters {
    let dev = Device::cpu();
    let cfg = DenseNetConfig {
        block_config: vec![layers],
        drop_rate: 0.0,
        ..config()
    };
    let model = DenseNet::new(cfg, DType::F32, &dev, 3)
        .unwrap()
        .with_recompute(mode)
        .unwrap();
    let (x, labels) = batch(&dev);
    let before = dev.counters();
    let out = forward_backward(&model, &x, &labels, 0).unwrap();
    drop(out);
    dev.counters() - before
}

/// Shared block storage: a dense layer costs the same number of kernel calls and allocations
/// however many layers came before it (a layer's input is one prefix of the block's storage,
/// read by one call, its gradient added in place), so a step's counts grow by the same amount
/// with every layer added: the second difference over 2, 3, 4, 5 layers is zero, in every mode.
#[test]
fn calls_and_allocations_per_dense_layer_do_not_grow_with_its_inputs() {
    for mode in MODES {
        let c: Vec<Counters> = (2..6).map(|l| step_counts(mode, l)).collect();
        for w in c.windows(3) {
            let (d1, d2) = (w[1] - w[0], w[2] - w[1]);
            assert_eq!(
                d1.launches, d2.launches,
                "{mode}: launches per layer grow: {c:?}"
            );
            assert_eq!(
                d1.allocs, d2.allocs,
                "{mode}: allocations per layer grow: {c:?}"
            );
        }
    }
}

/// DenseNet-BC-100 (k = 12) on 32x32 images, batch 64, one steady-state training step as the
/// benchmark makes it (queued anomaly check), on a meta device (the CPU counts the same): its
/// kernel launches, buffer allocations and host syncs, exactly. What each count left behind
/// (per BC-100 step, before -> now): the naive layer's concatenation gradient added into the
/// block's gradient in place (no packed copy, no add: -51 launches, -51 allocations), the layer
/// mode's output stand-in (no read-back: -48, -48), conv2 writing into the block storage and
/// reading its output's gradient from the block's gradient (-48, -48 each, in every mode), batch
/// norm statistics in one buffer (-99 allocations), the anomaly flag read without waiting
/// (syncs 1 -> 0). The targets: naive <= 570 launches and
/// <= 965 allocations, layer <= 620 and <= 1,010, no sync.
#[test]
fn bc100_steady_state_step_counts() {
    let dev = Device::meta();
    let expected = [
        (Recompute::Naive, (469, 767)),
        (Recompute::Selective(Selective::Bottleneck), (466, 764)),
        (Recompute::Selective(Selective::Layer), (570, 868)),
    ];
    for (mode, (launches, allocs)) in expected {
        let mut model = DenseNet::new(DenseNetConfig::densenet_bc_100_k12(), DType::F32, &dev, 1)
            .unwrap()
            .with_recompute(mode)
            .unwrap();
        let x = Tensor::randn(&[64, 3, 32, 32], DType::F32, &dev, 5).unwrap();
        let labels: Vec<usize> = (0..64).map(|i| i % 10).collect();
        let mut opt = Sgd::new(seed_sgd_config()).unwrap();
        let mut guard = AnomalyGuard::new();
        let counts: Vec<Counters> = (0..3)
            .map(|step| {
                let options = StepOptions::new(step, step);
                dev.count(|| {
                    train_step_queued(&mut model, &mut opt, &mut guard, &x, &labels, options)
                        .unwrap()
                })
                .1
            })
            .collect();
        let c = counts[2];
        assert_eq!(
            (c.launches, c.allocs, c.syncs),
            (launches, allocs, 0),
            "{mode}"
        );
        assert_eq!(
            (counts[1].launches, counts[1].allocs),
            (launches, allocs),
            "{mode}"
        );
    }
}
