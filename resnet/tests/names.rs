//! Parameter and buffer names, shapes and counts are torchvision's: ResNet-18 with the CIFAR
//! stem, ResNet-18 and ResNet-50 with the ImageNet stem (counts from torchvision's
//! `resnet18()` / `resnet50()`: 11,689,512 and 25,557,032 parameters, 122 and 320 state
//! entries).

use resnet::{ResNet, ResNetConfig};
use std::collections::BTreeMap;
use tape::nn;
use tape::{DType, Device};

/// Name -> shape of every state entry, and the entries' order.
fn state(config: ResNetConfig) -> (ResNet, BTreeMap<String, Vec<usize>>, Vec<String>) {
    let model = ResNet::new(config, DType::F32, &Device::cpu(), 0).unwrap();
    let sd = nn::state_dict(&model).unwrap();
    let order = sd.iter().map(|(n, _)| n.clone()).collect();
    let shapes = sd
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    (model, shapes, order)
}

fn assert_shapes(shapes: &BTreeMap<String, Vec<usize>>, expected: &[(&str, &[usize])]) {
    for (name, shape) in expected {
        match shapes.get(*name) {
            Some(s) => assert_eq!(s, shape, "{name}"),
            None => panic!("missing {name}"),
        }
    }
}

#[test]
fn resnet18_cifar_names_are_torchvisions() {
    let (model, shapes, order) = state(ResNetConfig::cifar(18, 10));
    assert_shapes(
        &shapes,
        &[
            ("conv1.weight", &[64, 3, 3, 3]),
            ("bn1.running_mean", &[64]),
            ("layer1.0.conv1.weight", &[64, 64, 3, 3]),
            ("layer1.0.bn1.running_mean", &[64]),
            ("layer1.1.bn2.bias", &[64]),
            ("layer2.0.conv1.weight", &[128, 64, 3, 3]),
            ("layer2.0.downsample.0.weight", &[128, 64, 1, 1]),
            ("layer2.0.downsample.1.running_var", &[128]),
            ("layer3.1.conv2.weight", &[256, 256, 3, 3]),
            ("layer4.0.downsample.1.weight", &[512]),
            ("fc.weight", &[10, 512]),
            ("fc.bias", &[10]),
        ],
    );
    assert!(shapes.contains_key("bn1.num_batches_tracked"));
    assert!(shapes.contains_key("layer4.1.bn2.num_batches_tracked"));
    assert!(!shapes.contains_key("layer1.0.downsample.0.weight"));
    assert!(!shapes.contains_key("layer2.1.downsample.0.weight"));
    assert_eq!(shapes.len(), 122);
    assert_eq!(&order[..3], ["conv1.weight", "bn1.weight", "bn1.bias"]);
    assert_eq!(order.last().unwrap(), "fc.bias");
    // torchvision's resnet18 with a 3x3 stem conv and 10 classes.
    assert_eq!(model.num_parameters(), 11_173_962);
    assert_eq!(model.parameters()[0].name(), "conv1.weight");
}

#[test]
fn resnet18_imagenet_parameter_count_is_torchvisions() {
    let (model, shapes, _) = state(ResNetConfig::imagenet(18, 1000));
    assert_eq!(shapes["conv1.weight"], [64, 3, 7, 7]);
    assert_eq!(shapes.len(), 122);
    assert_eq!(model.num_parameters(), 11_689_512);
}

#[test]
fn resnet50_imagenet_names_are_torchvisions() {
    let (model, shapes, order) = state(ResNetConfig::imagenet(50, 1000));
    assert_shapes(
        &shapes,
        &[
            ("conv1.weight", &[64, 3, 7, 7]),
            ("layer1.0.conv1.weight", &[64, 64, 1, 1]),
            ("layer1.0.conv3.weight", &[256, 64, 1, 1]),
            ("layer1.0.downsample.0.weight", &[256, 64, 1, 1]),
            ("layer1.0.downsample.1.running_mean", &[256]),
            ("layer2.0.conv2.weight", &[128, 128, 3, 3]),
            ("layer2.0.downsample.0.weight", &[512, 256, 1, 1]),
            ("layer3.5.bn3.running_var", &[1024]),
            ("layer4.2.conv3.weight", &[2048, 512, 1, 1]),
            ("fc.weight", &[1000, 2048]),
        ],
    );
    assert!(!shapes.contains_key("layer1.1.downsample.0.weight"));
    assert!(!shapes.contains_key("layer3.6.conv1.weight"));
    assert_eq!(shapes.len(), 320);
    assert_eq!(
        &order[6..9],
        [
            "layer1.0.conv1.weight",
            "layer1.0.bn1.weight",
            "layer1.0.bn1.bias"
        ]
    );
    assert_eq!(model.num_parameters(), 25_557_032);
}
