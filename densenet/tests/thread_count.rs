//! Training does not depend on the thread count or on the CPU's SIMD level, bit for bit.
//!
//! Thread count: a few SGD steps (Nesterov momentum,
//! weight decay, dropout) of small DenseNets run inside rayon pools of 1 and of 3 threads give
//! the same loss at every step and the same parameters, gradients and batch norm running
//! statistics after every step, in every efficiency mode (Naive, Bottleneck, Layer and a budget
//! under which the planner mixes them), with the CIFAR and the ImageNet stem (max pooling), in
//! `f32` and `f64`.
//!
//! The shapes are large enough for every CPU kernel to take its parallel path: the batch spans
//! several convolution work chunks, the feature maps exceed the element-wise kernels' `PAR_MIN`
//! (32768 elements) and the GEMMs the single-thread limit. A kernel that summed per-thread
//! partials (as the convolution's weight gradient once did) fails here.
//!
//! SIMD level: the same steps at every level this CPU supports ([`tape::simd`]: baseline, AVX2,
//! AVX-512) give the same bits: a wide build that computed an element or a mask differently fails
//! here. (The `f64` sums of the normalisation kernels are compared bit for bit in `tape`'s own
//! unit tests: a last-bit difference there is mostly rounded away in an `f32` network.)

mod support;

use densenet::train::{seed_sgd_config, train_step};
use densenet::{DenseNet, DenseNetConfig, Recompute, Selective};
use std::sync::Mutex;
use tape::optim::Sgd;
use tape::{DType, Device, Tensor};

const STEPS: u64 = 2;

/// Everything one step leaves behind, as bits: the loss, then per tensor the gradients, the
/// parameters after the update and the running statistics.
#[derive(Debug, PartialEq)]
struct Bits {
    loss: u64,
    grads: Vec<Vec<u64>>,
    params: Vec<Vec<u64>>,
    running: Vec<Vec<u64>>,
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_f64_vec().iter().map(|v| v.to_bits()).collect()
}

/// `STEPS` training steps of `config` in `mode` on one batch of `shape`, in the current rayon
/// pool; `None` for a budget mode of a network under which no budget mixes the modes.
fn train(
    config: &DenseNetConfig,
    mode: Recompute,
    dtype: DType,
    shape: [usize; 4],
) -> Option<Vec<Bits>> {
    let dev = Device::cpu();
    let mut model = DenseNet::new(config.clone(), dtype, &dev, 11).unwrap();
    let x = Tensor::randn(&shape, dtype, &dev, 12).unwrap();
    let labels: Vec<usize> = (0..shape[0])
        .map(|i| (5 * i + 2) % config.num_classes)
        .collect();
    let mode = match mode {
        Recompute::Budget(0) => {
            let held = dev.memory().current() as u64 + model.parameter_bytes() as u64;
            Recompute::Budget(support::mixing_plan_held(&model, shape, held)?.0)
        }
        m => m,
    };
    model.set_recompute(mode).unwrap();
    let mut opt = Sgd::new(seed_sgd_config()).unwrap();
    let steps = (0..STEPS)
        .map(|step| {
            let out = train_step(&mut model, &mut opt, &x, &labels, 40 + step).unwrap();
            let params = model.parameters();
            Bits {
                loss: out.loss().unwrap().to_bits(),
                grads: params
                    .iter()
                    .map(|p| bits(out.grads.get(p.tensor()).unwrap()))
                    .collect(),
                params: params.iter().map(|p| bits(p.tensor())).collect(),
                running: model
                    .running_stats()
                    .iter()
                    .flat_map(|(_, rs)| [bits(&rs.mean()), bits(&rs.var())])
                    .collect(),
            }
        })
        .collect();
    Some(steps)
}

/// The first tensor that differs between `a` and `b`, with its largest relative difference.
fn first_difference(a: &[Vec<u64>], b: &[Vec<u64>]) -> Option<(usize, f64)> {
    a.iter().zip(b).enumerate().find_map(|(i, (x, y))| {
        (x != y).then(|| {
            let rel = x.iter().zip(y).fold(0.0f64, |m, (&p, &q)| {
                let (p, q) = (f64::from_bits(p), f64::from_bits(q));
                m.max((p - q).abs() / q.abs().max(1e-30))
            });
            (i, rel)
        })
    })
}

fn assert_same(one: &[Bits], many: &[Bits], what: &str) {
    for (step, (a, b)) in many.iter().zip(one).enumerate() {
        let loss = (f64::from_bits(a.loss), f64::from_bits(b.loss));
        assert_eq!(a.loss, b.loss, "{what} step {step}: loss {loss:?}");
        for (name, x, y) in [
            ("gradient", &a.grads, &b.grads),
            ("parameter", &a.params, &b.params),
            ("running statistic", &a.running, &b.running),
        ] {
            assert_eq!(x.len(), y.len());
            if let Some((i, rel)) = first_difference(x, y) {
                panic!("{what} step {step}: {name} {i} differs (up to {rel:e} relative)");
            }
        }
    }
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// The networks, dtypes and input shapes both tests train.
fn cases() -> [(DenseNetConfig, DType, [usize; 4]); 3] {
    let cifar = DenseNetConfig {
        growth_rate: 4,
        block_config: vec![2, 2],
        bn_size: 2,
        num_init_features: 16,
        num_classes: 5,
        drop_rate: 0.2,
        ..DenseNetConfig::default()
    };
    let imagenet = DenseNetConfig {
        block_config: vec![2],
        small_inputs: false,
        ..cifar.clone()
    };
    // First-block maps of 5 or 6 x 16 x 24 x 24 >= 46080 elements, one conv work chunk per
    // 24 x 24 image; the ImageNet stem's 7x7 conv makes 12 chunks of one 24 x 24 output, its
    // block 6 chunks of two 12 x 12 maps.
    [
        (cifar.clone(), DType::F32, [6, 3, 24, 24]),
        (cifar, DType::F64, [5, 3, 24, 24]),
        (imagenet, DType::F32, [12, 3, 48, 48]),
    ]
}

const MODES: [Recompute; 4] = [
    Recompute::Naive,
    Recompute::Selective(Selective::Bottleneck),
    Recompute::Selective(Selective::Layer),
    Recompute::Budget(0),
];

/// Held by each test: the SIMD level is process-wide, and one test's level change must not land
/// in the middle of the other's runs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn training_steps_are_bitwise_the_same_on_1_and_3_threads() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut mixed = 0;
    for (config, dtype, shape) in &cases() {
        let (dtype, shape) = (*dtype, *shape);
        for mode in MODES {
            let what = format!("{mode} {dtype:?} {shape:?} {:?}", config.block_config);
            let Some(one) = in_pool(1, || train(config, mode, dtype, shape)) else {
                continue;
            };
            let many = in_pool(3, || train(config, mode, dtype, shape)).unwrap();
            assert_same(&one, &many, &what);
            mixed += usize::from(mode == Recompute::Budget(0));
        }
    }
    assert!(mixed >= 2, "only {mixed} networks ran a mixed budget plan");
}

#[test]
fn training_steps_are_bitwise_the_same_at_every_simd_level() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut compared = 0;
    for (config, dtype, shape) in &cases() {
        let (dtype, shape) = (*dtype, *shape);
        for mode in MODES {
            let what = format!("{mode} {dtype:?} {shape:?} {:?}", config.block_config);
            let runs = tape::simd::for_each_supported_level(|_| train(config, mode, dtype, shape));
            let (first, want) = &runs[0];
            let Some(want) = want else { continue };
            for (level, got) in &runs[1..] {
                let got = got.as_ref().expect("the same plan at every level");
                assert_same(want, got, &format!("{what}: {level} vs {first}"));
                compared += 1;
            }
        }
    }
    if compared == 0 {
        eprintln!("SKIPPED: this CPU has only the baseline SIMD level; nothing to compare");
    }
}
