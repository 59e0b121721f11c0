//! Presets match PyTorch's parameter counts; invalid configs give typed errors.

use densenet::{DenseNet, DenseNetConfig, DenseNetError, Recompute, Selective};
use tape::{DType, Device, Tape, Tensor};

fn count(config: DenseNetConfig) -> usize {
    DenseNet::new(config, DType::F32, &Device::cpu(), 0)
        .unwrap()
        .num_parameters()
}

#[test]
fn parameter_counts_match_pytorch() {
    // The seed's DenseNet-BC-100 (k=12) and torchvision's densenet121.
    assert_eq!(count(DenseNetConfig::densenet_bc_100_k12()), 769_162);
    assert_eq!(count(DenseNetConfig::densenet121()), 7_978_856);
}

#[test]
fn presets_have_the_published_shapes() {
    let c = DenseNetConfig::densenet_bc_190_k40();
    assert_eq!(
        (c.growth_rate, c.block_config.clone(), c.num_init_features),
        (40, vec![31, 31, 31], 80)
    );
    assert_eq!(c.depth(), 190);
    let c = DenseNetConfig::densenet_bc_250_k24();
    assert_eq!(
        (c.growth_rate, c.block_config.clone()),
        (24, vec![41, 41, 41])
    );
    assert_eq!(c.depth(), 250);
    assert_eq!(DenseNetConfig::densenet_bc_100_k12().depth(), 100);
    assert_eq!(DenseNetConfig::densenet161().growth_rate, 48);
    assert_eq!(
        DenseNetConfig::densenet169().block_config,
        vec![6, 12, 32, 32]
    );
    assert_eq!(
        DenseNetConfig::densenet201().block_config,
        vec![6, 12, 48, 32]
    );
    assert_eq!(
        DenseNetConfig::densenet264().block_config,
        vec![6, 12, 64, 48]
    );
    for name in ["densenet_bc_100_k12", "densenet121", "densenet264"] {
        assert!(DenseNetConfig::preset(name).is_ok());
    }
    assert!(matches!(
        DenseNetConfig::preset("resnet50"),
        Err(DenseNetError::Config(_))
    ));
    assert_eq!(
        DenseNetConfig::default(),
        DenseNetConfig::densenet_bc_100_k12()
    );
}

#[test]
fn invalid_configs_are_rejected_with_a_reason() {
    let base = DenseNetConfig::default();
    let cases = [
        DenseNetConfig {
            growth_rate: 0,
            ..base.clone()
        },
        DenseNetConfig {
            block_config: vec![],
            ..base.clone()
        },
        DenseNetConfig {
            block_config: vec![4, 0],
            ..base.clone()
        },
        DenseNetConfig {
            compression: 0.0,
            ..base.clone()
        },
        DenseNetConfig {
            compression: 1.5,
            ..base.clone()
        },
        DenseNetConfig {
            drop_rate: 1.0,
            ..base.clone()
        },
        DenseNetConfig {
            num_classes: 0,
            ..base.clone()
        },
        DenseNetConfig {
            bn_size: 0,
            ..base.clone()
        },
    ];
    for c in cases {
        let err = DenseNet::new(c.clone(), DType::F32, &Device::cpu(), 0)
            .err()
            .expect("must fail");
        assert!(matches!(err, DenseNetError::Config(_)), "{c:?}: {err}");
    }
    assert!(DenseNetConfig::densenet_bc_cifar(41, 12).is_err());
    assert_eq!(
        DenseNetConfig::densenet_bc_cifar(40, 12)
            .unwrap()
            .block_config,
        vec![6, 6, 6]
    );
}

#[test]
fn image_too_small_for_the_pooling_stack_is_an_error() {
    let config = DenseNetConfig {
        growth_rate: 2,
        block_config: vec![1, 1, 1],
        ..DenseNetConfig::default()
    };
    assert_eq!(config.min_image_size(), 4);
    let dev = Device::cpu();
    let model = DenseNet::new(config, DType::F32, &dev, 0).unwrap();
    let x = Tensor::zeros(&[1, 3, 3, 3], DType::F32, &dev).unwrap();
    let err = model.forward(&mut Tape::no_grad(), &x).unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
    let x = Tensor::zeros(&[1, 2, 8, 8], DType::F32, &dev).unwrap();
    assert!(matches!(
        model.forward(&mut Tape::no_grad(), &x),
        Err(DenseNetError::Config(_))
    ));
    let x = Tensor::zeros(&[3, 8, 8], DType::F32, &dev).unwrap();
    assert!(matches!(
        model.forward(&mut Tape::no_grad(), &x),
        Err(DenseNetError::Engine(_))
    ));
    let imagenet = DenseNetConfig {
        small_inputs: false,
        ..DenseNetConfig::densenet121()
    };
    assert_eq!(imagenet.min_image_size(), 32);
}

#[test]
fn efficiency_modes_parse_and_print() {
    for (s, e) in [
        ("naive", Recompute::Naive),
        ("bottleneck", Recompute::Selective(Selective::Bottleneck)),
        ("layer", Recompute::Selective(Selective::Layer)),
        ("budget:1000", Recompute::Budget(1000)),
    ] {
        assert_eq!(s.parse::<Recompute>().unwrap(), e);
        assert_eq!(e.to_string(), s);
    }
    assert!("fast".parse::<Recompute>().is_err());
    assert_eq!(
        "budget:1.5GB".parse::<Recompute>().unwrap(),
        Recompute::Budget(1_500_000_000)
    );
    assert_eq!(
        "efficient".parse::<Recompute>().unwrap(),
        Recompute::Selective(Selective::Bottleneck)
    );
    // A setting DenseNet does not run is a typed error naming the ones it does.
    let mut model =
        DenseNet::new(DenseNetConfig::default(), DType::F32, &Device::meta(), 0).unwrap();
    for other in ["per-block", "selective", "selective-linear"] {
        match model.set_recompute(other.parse().unwrap()) {
            Err(DenseNetError::Recompute(densenet::RecomputeError::Unsupported {
                supported,
                ..
            })) => assert_eq!(
                supported,
                ["naive", "bottleneck", "layer", "budget:SIZE", "plan"]
            ),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(model.recompute(), Recompute::Naive);
    // The recompute setting is a run option: a saved config does not carry it, and a config saved
    // by an earlier version that did still reads.
    let json = serde_json::to_string(&DenseNetConfig::default()).unwrap();
    assert!(
        !json.contains("efficiency") && !json.contains("memory"),
        "{json}"
    );
    let back: DenseNetConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, DenseNetConfig::default());
    let old: DenseNetConfig =
        serde_json::from_str(r#"{"growth_rate": 4, "efficiency": "layer"}"#).unwrap();
    assert_eq!(old.growth_rate, 4);
    let partial: DenseNetConfig =
        serde_json::from_str(r#"{"growth_rate": 4, "block_config": [2, 3]}"#).unwrap();
    assert_eq!(partial.bn_size, 4);
}

#[test]
fn a_budget_below_the_fixed_bytes_is_an_error() {
    let dev = Device::cpu();
    let config = DenseNetConfig {
        growth_rate: 4,
        block_config: vec![2, 2],
        ..DenseNetConfig::default()
    };
    let model = DenseNet::new(config, DType::F32, &dev, 0)
        .unwrap()
        .with_recompute(Recompute::Budget(10))
        .unwrap();
    let x = Tensor::zeros(&[2, 3, 8, 8], DType::F32, &dev).unwrap();
    let err = model.forward(&mut Tape::recording(), &x).unwrap_err();
    assert!(err.to_string().contains("budget"), "{err}");
}

/// A plan given with `with_plan` runs as given; one that does not match the blocks, or
/// `Recompute::Plan` without a plan, is a typed error.
#[test]
fn a_given_plan_runs_and_a_mismatched_one_is_an_error() {
    use densenet::DenseLayerMode::{Keep, RecomputeBottleneck, RecomputeLayer};
    let dev = Device::cpu();
    let config = DenseNetConfig {
        growth_rate: 4,
        block_config: vec![2, 1],
        ..DenseNetConfig::default()
    };
    let plan = vec![vec![Keep, RecomputeLayer], vec![RecomputeBottleneck]];
    let model = DenseNet::new(config.clone(), DType::F32, &dev, 0)
        .unwrap()
        .with_plan(plan.clone())
        .unwrap();
    assert_eq!(model.recompute(), Recompute::Plan);
    assert_eq!(model.layer_modes([2, 3, 8, 8]).unwrap(), plan);
    let x = Tensor::zeros(&[2, 3, 8, 8], DType::F32, &dev).unwrap();
    assert!(model.forward(&mut Tape::recording(), &x).is_ok());
    let short = DenseNet::new(config.clone(), DType::F32, &dev, 0)
        .unwrap()
        .with_plan(vec![vec![Keep, Keep]]);
    assert!(matches!(short, Err(DenseNetError::Config(_))));
    let unplanned = DenseNet::new(config, DType::F32, &dev, 0)
        .unwrap()
        .with_recompute(Recompute::Plan)
        .unwrap();
    assert!(matches!(
        unplanned.forward(&mut Tape::recording(), &x),
        Err(DenseNetError::Config(_))
    ));
}
