//! One model shared by several threads: forward in eval mode (`predict`) from four threads at
//! once, each over every input in its own order, gives bit for bit what one thread computes, in
//! every efficiency mode (the budget mode's plan cache is shared by the threads too), frees all
//! it allocates and leaves the running statistics alone.

use densenet::train::{predict, seed_sgd_config, train_step};
use densenet::{DenseNet, DenseNetConfig, Recompute, Selective};
use tape::optim::Sgd;
use tape::{DType, Device, Tensor};

const THREADS: usize = 4;
const INPUTS: usize = 6;
const ROUNDS: usize = 2;

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_f64_vec().iter().map(|v| v.to_bits()).collect()
}

/// Every batch norm's running mean and variance, bit for bit.
fn running(model: &DenseNet) -> Vec<Vec<u64>> {
    model
        .running_stats()
        .iter()
        .flat_map(|(_, rs)| [bits(&rs.mean()), bits(&rs.var())])
        .collect()
}

#[test]
fn threads_sharing_a_model_predict_like_one_thread() {
    let config = DenseNetConfig {
        growth_rate: 4,
        block_config: vec![2, 3],
        bn_size: 2,
        num_init_features: 8,
        num_classes: 5,
        drop_rate: 0.2,
        ..DenseNetConfig::default()
    };
    let shape = [3, 3, 12, 12];
    // A roomy budget: the plan depends on what the device holds, which the other threads'
    // activations change, and a tight budget could then plan differently from call to call.
    let modes = [
        Recompute::Naive,
        Recompute::Selective(Selective::Bottleneck),
        Recompute::Selective(Selective::Layer),
        Recompute::Budget(1 << 40),
    ];
    for dtype in [DType::F32, DType::F64] {
        for mode in modes {
            let dev = Device::cpu();
            let mut model = DenseNet::new(config.clone(), dtype, &dev, 3)
                .unwrap()
                .with_recompute(mode)
                .unwrap();
            // One training step first, so the running statistics are not the initial ones.
            let x = Tensor::randn(&shape, dtype, &dev, 4).unwrap();
            let mut opt = Sgd::new(seed_sgd_config()).unwrap();
            train_step(&mut model, &mut opt, &x, &[0, 1, 2], 0).unwrap();

            let inputs: Vec<Tensor> = (0..INPUTS)
                .map(|i| Tensor::randn(&shape, dtype, &dev, 10 + i as u64).unwrap())
                .collect();
            let single: Vec<Vec<u64>> = inputs
                .iter()
                .map(|x| bits(&predict(&model, x).unwrap()))
                .collect();
            let held = dev.memory().current();
            let stats = running(&model);
            let model = &model;
            let (inputs, single) = (&inputs, &single);
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|t| {
                        s.spawn(move || {
                            let mut checked = 0;
                            for r in 0..ROUNDS * INPUTS {
                                // Each thread walks the inputs from its own starting point.
                                let i = (r * (t + 1) + t) % INPUTS;
                                let got = bits(&predict(model, &inputs[i]).unwrap());
                                assert_eq!(
                                    got, single[i],
                                    "{mode} {dtype:?}: thread {t}, input {i} differs"
                                );
                                checked += 1;
                            }
                            checked
                        })
                    })
                    .collect();
                let checked: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
                assert_eq!(checked, THREADS * ROUNDS * INPUTS);
            });
            assert_eq!(
                dev.memory().current(),
                held,
                "{mode} {dtype:?}: the threads freed everything they allocated"
            );
            assert_eq!(
                running(model),
                stats,
                "{mode} {dtype:?}: eval mode leaves the running statistics alone"
            );
        }
    }
}
