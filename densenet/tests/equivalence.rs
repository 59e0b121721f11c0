//! Every efficiency mode computes what Naive computes: loss, every parameter gradient and the
//! running statistics after the step, over random DenseNet configs.

mod support;

use densenet::train::forward_backward;
use densenet::{DenseNet, DenseNetConfig, Efficiency, LayerMode};
use proptest::prelude::*;
use tape::{DType, Device, Tensor};

struct Outcome {
    loss: f64,
    grads: Vec<Vec<f64>>,
    running: Vec<Vec<f64>>,
}

fn run(
    config: &DenseNetConfig,
    mode: Efficiency,
    dtype: DType,
    batch: usize,
    image: usize,
    seed: u64,
) -> Option<Outcome> {
    let dev = Device::cpu();
    let mut model = DenseNet::new(config.clone(), dtype, &dev, seed).unwrap();
    let x = Tensor::randn(&[batch, 3, image, image], dtype, &dev, seed + 1).unwrap();
    let labels: Vec<usize> = (0..batch)
        .map(|i| (i + seed as usize) % config.num_classes)
        .collect();
    let shape = [batch, 3, image, image];
    let mixed = match mode {
        Efficiency::Budget(0) => Some(mixed_budget(&model, shape)?),
        _ => None,
    };
    model.set_efficiency(mixed.as_ref().map_or(mode, |m| Efficiency::Budget(m.0)));
    if let Some((budget, modes)) = &mixed {
        assert_eq!(&model.layer_modes(shape).unwrap(), modes, "budget {budget}");
    }
    let out = forward_backward(&model, &x, &labels, seed).unwrap();
    Some(Outcome {
        loss: out.loss,
        grads: model
            .parameters()
            .iter()
            .map(|p| out.grads.get(p.tensor()).unwrap().to_f64_vec())
            .collect(),
        running: model
            .running_stats()
            .iter()
            .flat_map(|(_, rs)| [rs.mean().to_f64_vec(), rs.var().to_f64_vec()])
            .collect(),
    })
}

/// A budget under which the planner mixes modes, and the modes it must pick; `None` where no
/// budget can (checked exhaustively: one dense layer, or layers too small to move the peak),
/// and the case is skipped rather than run with a plan that mixes nothing.
fn mixed_budget(model: &DenseNet, shape: [usize; 4]) -> Option<(u64, Vec<Vec<LayerMode>>)> {
    support::mixing_plan(model, shape)
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Loss and running statistics are compared value by value (relative to each tensor's largest
/// value); gradients relative to the step's largest gradient (the infinity-norm relative error of
/// the whole gradient vector). Some gradients are analytically zero (a batch norm over two values
/// per channel outputs +-1 whatever its input) and are then pure rounding noise, which the modes
/// compute in different orders.
fn assert_same(a: &Outcome, b: &Outcome, tol: f64, what: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        rel(&[a.loss], &[b.loss]) <= tol,
        "{} loss {} vs {}",
        what,
        a.loss,
        b.loss
    );
    let scale = b
        .grads
        .iter()
        .flatten()
        .fold(1e-30f64, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.grads.iter().zip(&b.grads).enumerate() {
        let d = x
            .iter()
            .zip(y)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()))
            / scale;
        prop_assert!(
            d <= tol,
            "{} grad of parameter {}: {:e} of the largest gradient",
            what,
            i,
            d
        );
    }
    for (i, (x, y)) in a.running.iter().zip(&b.running).enumerate() {
        let d = rel(x, y);
        prop_assert!(d <= tol, "{} running stat {}: {:e}", what, i, d);
    }
    Ok(())
}

fn configs() -> impl Strategy<Value = (DenseNetConfig, usize, usize, u64)> {
    (
        1usize..5,
        prop::collection::vec(1usize..4, 1..4),
        1usize..4,
        prop::sample::select(vec![0.5, 0.75, 1.0]),
        any::<bool>(),
        prop::sample::select(vec![0.0, 0.0, 0.3]),
        2usize..4,
        0usize..3,
        0u64..1000,
    )
        .prop_map(
            |(growth, blocks, bn_size, compression, small, drop, batch, extra, seed)| {
                let config = DenseNetConfig {
                    growth_rate: growth,
                    block_config: blocks,
                    bn_size,
                    compression,
                    num_init_features: 2 * growth,
                    drop_rate: drop,
                    num_classes: 3,
                    small_inputs: small,
                    ..DenseNetConfig::default()
                };
                let image = config.min_image_size() + extra;
                (config, batch, image, seed)
            },
        )
}

const MODES: [Efficiency; 4] = [
    Efficiency::Bottleneck,
    Efficiency::Layer,
    Efficiency::Budget(0),
    Efficiency::Budget(1 << 40),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_mode_matches_naive_f64((config, batch, image, seed) in configs()) {
        let naive = run(&config, Efficiency::Naive, DType::F64, batch, image, seed).unwrap();
        for mode in MODES {
            let Some(other) = run(&config, mode, DType::F64, batch, image, seed) else { continue };
            assert_same(&other, &naive, 1e-12, &format!("{mode} f64"))?;
        }
    }

    #[test]
    fn every_mode_matches_naive_f32((config, batch, image, seed) in configs()) {
        let naive = run(&config, Efficiency::Naive, DType::F32, batch, image, seed).unwrap();
        for mode in MODES {
            let Some(other) = run(&config, mode, DType::F32, batch, image, seed) else { continue };
            assert_same(&other, &naive, 1e-5, &format!("{mode} f32"))?;
        }
    }
}
