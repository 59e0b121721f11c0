//! Weights round trip through `tape::nn::save` / `load` (after a training step, so running
//! statistics and step counts are not their initial values), a mismatched model refusing the
//! file, and predictions equal bit for bit after loading.

use resnet::train::{predict, sgd_config, train_step};
use resnet::{Recompute, ResNet, ResNetConfig, ResNetError, Stem};
use std::path::PathBuf;
use tape::nn;
use tape::optim::Sgd;
use tape::{DType, Device, Tensor};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("resnet-weights-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config() -> ResNetConfig {
    ResNetConfig {
        stem: Stem::ImageNet,
        ..ResNetConfig::cifar(18, 5).with_width(3)
    }
}

#[test]
fn save_load_round_trip_is_exact() {
    let dev = Device::cpu();
    let mut model = ResNet::new(config(), DType::F32, &dev, 1).unwrap();
    let mut opt = Sgd::new(sgd_config()).unwrap();
    let x = Tensor::randn(&[3, 3, 12, 12], DType::F32, &dev, 2).unwrap();
    model.set_recompute(Recompute::PerBlock).unwrap();
    let out = train_step(&mut model, &mut opt, &x, &[0, 4, 2], 0).unwrap();
    assert!(out.loss().unwrap().is_finite());

    let dir = scratch("round-trip");
    let path = dir.join("resnet.safetensors");
    nn::save(&model, &path).unwrap();
    let mut loaded = ResNet::new(config(), DType::F32, &dev, 99).unwrap();
    let before = predict(&loaded, &x).unwrap().to_f64_vec();
    nn::load(&mut loaded, &path).unwrap();

    let a = nn::state_dict(&model).unwrap();
    let b = nn::state_dict(&loaded).unwrap();
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(ta.to_f64_vec(), tb.to_f64_vec(), "{na}");
    }
    let want = predict(&model, &x).unwrap().to_f64_vec();
    let got = predict(&loaded, &x).unwrap().to_f64_vec();
    assert_eq!(got, want);
    assert_ne!(before, want, "loading changed the model");
    let tracked = b
        .iter()
        .find(|(n, _)| n == "layer1.0.bn1.num_batches_tracked")
        .unwrap();
    assert_eq!(tracked.1.to_f64_vec(), [1.0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_different_architecture_refuses_the_file() {
    let dev = Device::cpu();
    let model = ResNet::new(config(), DType::F32, &dev, 1).unwrap();
    let dir = scratch("mismatch");
    let path = dir.join("resnet.safetensors");
    nn::save(&model, &path).unwrap();
    for other in [
        config().with_width(4),
        ResNetConfig {
            depth: 34,
            ..config()
        },
        ResNetConfig {
            stem: Stem::Cifar,
            ..config()
        },
    ] {
        let mut m = ResNet::new(other.clone(), DType::F32, &dev, 1).unwrap();
        let err = nn::load(&mut m, &path).unwrap_err();
        let err = ResNetError::from(err);
        assert!(matches!(err, ResNetError::State(_)), "{other:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
