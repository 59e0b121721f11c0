//! Bad configurations and inputs are typed errors with clear messages, never panics.

use resnet::train::forward_backward;
use resnet::{Recompute, RecomputeError, ResNet, ResNetConfig, ResNetError};
use tape::{DType, Device, Tensor};

fn build(config: ResNetConfig) -> Result<ResNet, ResNetError> {
    ResNet::new(config, DType::F32, &Device::cpu(), 0)
}

fn config_error(config: ResNetConfig, words: &str) {
    match build(config.clone()) {
        Err(ResNetError::Config(msg)) => assert!(msg.contains(words), "{config:?}: {msg}"),
        Err(e) => panic!("{config:?}: wrong error {e}"),
        Ok(_) => panic!("{config:?} was accepted"),
    }
}

#[test]
fn bad_configs_are_config_errors() {
    let small = ResNetConfig::cifar(18, 10).with_width(2);
    config_error(
        ResNetConfig {
            depth: 20,
            ..small.clone()
        },
        "unknown depth 20",
    );
    config_error(
        ResNetConfig {
            depth: 0,
            ..small.clone()
        },
        "unknown depth 0",
    );
    config_error(
        ResNetConfig {
            num_classes: 0,
            ..small.clone()
        },
        "num_classes",
    );
    config_error(
        ResNetConfig {
            in_channels: 0,
            ..small.clone()
        },
        "in_channels",
    );
    config_error(small.clone().with_width(0), "width");
    config_error(small.clone().with_width(usize::MAX), "too large");
    config_error(small.clone().with_width(1 << 40), "too large");
    assert!(build(small).is_ok());
}

#[test]
fn bad_inputs_are_input_errors() {
    let dev = Device::cpu();
    let mut model = ResNet::new(
        ResNetConfig::cifar(18, 4).with_width(2),
        DType::F32,
        &dev,
        0,
    )
    .unwrap();
    let input = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &dev).unwrap();
    let cases: Vec<(Tensor, Vec<usize>, &str)> = vec![
        (input(&[2, 1, 8, 8]), vec![0, 1], "channels"),
        (input(&[2, 3, 8]), vec![0, 1], "[n, c, h, w]"),
        (input(&[0, 3, 8, 8]), vec![], "empty"),
        (input(&[2, 3, 8, 8]), vec![0], "labels for a batch of 2"),
        (input(&[2, 3, 8, 8]), vec![0, 4], "label 4 out of range"),
        (
            Tensor::zeros(&[2, 3, 8, 8], DType::F64, &dev).unwrap(),
            vec![0, 1],
            "F64",
        ),
        (
            Tensor::zeros(&[2, 3, 8, 8], DType::F32, &Device::cpu()).unwrap(),
            vec![0, 1],
            "the input is on",
        ),
    ];
    for (x, labels, words) in cases {
        for memory in [
            Recompute::Naive,
            Recompute::PerBlock,
            Recompute::Budget(1 << 40),
        ] {
            model.set_recompute(memory).unwrap();
            match forward_backward(&model, &x, &labels) {
                Err(ResNetError::Input(msg)) => assert!(msg.contains(words), "{msg}"),
                Err(e) => panic!("{:?}: wrong error {e}", x.shape()),
                Ok(_) => panic!("{:?} with {labels:?} was accepted", x.shape()),
            }
        }
    }
}

#[test]
fn a_budget_no_plan_fits_is_an_engine_error() {
    let dev = Device::cpu();
    let model = ResNet::new(
        ResNetConfig::cifar(18, 4).with_width(2),
        DType::F32,
        &dev,
        0,
    )
    .unwrap()
    .with_recompute(Recompute::Budget(1000))
    .unwrap();
    let x = Tensor::randn(&[2, 3, 8, 8], DType::F32, &dev, 0).unwrap();
    match forward_backward(&model, &x, &[0, 1]) {
        Err(ResNetError::Engine(e)) => assert!(e.to_string().contains("budget"), "{e}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a 1000-byte budget was met"),
    }
}

#[test]
fn memory_settings_parse_and_print() {
    for m in [
        Recompute::Naive,
        Recompute::PerBlock,
        Recompute::Budget(12345),
    ] {
        assert_eq!(m.to_string().parse::<Recompute>().unwrap(), m);
    }
    assert_eq!(
        "budget:480MB".parse::<Recompute>().unwrap(),
        Recompute::Budget(480_000_000)
    );
    for bad in ["", "budget:", "budget:-1", "per_block", "budget:1e6"] {
        assert!(bad.parse::<Recompute>().is_err(), "{bad}");
    }
    // A setting the model does not run is a typed error naming the ones it does.
    let mut model = ResNet::new(
        ResNetConfig::cifar(18, 4).with_width(2),
        DType::F32,
        &Device::cpu(),
        0,
    )
    .unwrap();
    for other in ["selective", "layer", "bottleneck"] {
        let err = model.set_recompute(other.parse().unwrap()).unwrap_err();
        match &err {
            ResNetError::Recompute(RecomputeError::Unsupported { supported, .. }) => {
                assert_eq!(supported, &["naive", "per-block", "budget:SIZE", "plan"])
            }
            e => panic!("wrong error {e}"),
        }
        assert!(err.to_string().contains("per-block"), "{err}");
    }
    assert_eq!(model.recompute(), Recompute::Naive);
}
