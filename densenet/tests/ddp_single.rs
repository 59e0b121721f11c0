//! A data-parallel run in a world of one process is the plain run, bit for bit: three SGD steps
//! through [`train_step_ddp`] over [`ProcessGroup::single`] against [`train_step_with`], in
//! every recompute setting, f32, comparing every parameter and running statistic's bits.

use densenet::train::{seed_sgd_config, train_step_ddp, train_step_with, StepOptions};
use densenet::{DenseNet, DenseNetConfig, Recompute, Selective};
use dist::{Ddp, DdpOptions, ProcessGroup};
use tape::nn;
use tape::optim::Sgd;
use tape::{DType, Device, Tensor};

fn bits(model: &DenseNet) -> Vec<(String, Vec<u64>)> {
    nn::stored_state_dict(model)
        .unwrap()
        .into_iter()
        .map(|(k, s)| (k, s.values.iter().map(|v| v.to_bits()).collect()))
        .collect()
}

fn run(mode: Recompute, ddp: bool) -> Vec<(String, Vec<u64>)> {
    let dev = Device::cpu();
    let config = DenseNetConfig {
        growth_rate: 3,
        block_config: vec![2, 3],
        bn_size: 2,
        num_init_features: 6,
        num_classes: 4,
        drop_rate: 0.2,
        ..DenseNetConfig::default()
    };
    let mut model = DenseNet::new(config, DType::F32, &dev, 3).unwrap();
    model.set_recompute(mode).unwrap();
    let mut sgd = Sgd::new(seed_sgd_config()).unwrap();
    let reducer = ddp.then(|| {
        // Small buckets: several launched during backward.
        let options = DdpOptions::uniform(2048);
        Ddp::new(ProcessGroup::single(), &mut model, options).unwrap()
    });
    for step in 0..3u64 {
        let x = Tensor::randn(&[6, 3, 8, 8], DType::F32, &dev, 10 + step).unwrap();
        let labels: Vec<usize> = (0..6).map(|i| (i + step as usize) % 4).collect();
        let options = StepOptions::new(step, 100 + step);
        match &reducer {
            Some(r) => train_step_ddp(&mut model, &mut sgd, &x, &labels, options, r).unwrap(),
            None => train_step_with(&mut model, &mut sgd, &x, &labels, options).unwrap(),
        };
    }
    bits(&model)
}

#[test]
fn world_of_one_is_the_plain_run_bit_for_bit() {
    for mode in [
        Recompute::Naive,
        Recompute::Selective(Selective::Bottleneck),
        Recompute::Selective(Selective::Layer),
        Recompute::Budget(1 << 40),
    ] {
        assert_eq!(run(mode, true), run(mode, false), "{mode}");
    }
}
