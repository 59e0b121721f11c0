//! The memory report at a step's peak: its entries add up to the device's peak exactly, on the
//! CPU and on meta alike (the same entries on both), in every mode; each mode's peak is made of
//! what the mode should keep (naive: forward activations; layer: block storage and recomputed
//! layers, no activation of a dense layer kept); no diagnostic fires on the model's own runs.

use densenet::train::{seed_sgd_config, train_step};
use densenet::{DenseNet, DenseNetConfig, Recompute, Selective};
use tape::optim::{Optimizer, Sgd};
use tape::{DType, Device, MemoryReport, Role, Tensor};

fn report(dev: &Device, mode: Recompute) -> MemoryReport {
    dev.memory().start_recording();
    let config = DenseNetConfig::densenet_bc_cifar(16, 6).unwrap();
    let mut model = DenseNet::new(config, DType::F32, dev, 3)
        .unwrap()
        .with_recompute(mode)
        .unwrap();
    let mut opt = Sgd::new(seed_sgd_config()).unwrap();
    let x = Tensor::randn(&[4, 3, 12, 12], DType::F32, dev, 5).unwrap();
    let labels = [0, 1, 2, 3];
    train_step(&mut model, &mut opt, &x, &labels, 0).unwrap();
    dev.memory().reset_peak();
    let out = train_step(&mut model, &mut opt, &x, &labels, 1).unwrap();
    let mut r = dev.memory().report().unwrap();
    assert_eq!(r.peak_bytes, dev.memory().peak(), "{mode}");
    let params = model.parameters();
    r.classify(
        params.iter().map(|p| (p.name(), p.tensor())),
        Role::Parameter,
    );
    let grads = params
        .iter()
        .filter_map(|p| Some((p.name(), out.grads.get(p.tensor())?)));
    r.classify(grads, Role::ParameterGradient);
    let state = opt.state_dict(&params);
    r.classify(
        state.iter().map(|(n, t)| (n.as_str(), t)),
        Role::OptimizerState,
    );
    r
}

/// The entries without their buffer ids (which differ between runs).
fn described(r: &MemoryReport) -> Vec<String> {
    let mut v: Vec<String> = r
        .entries
        .iter()
        .map(|e| {
            format!(
                "{:?} {:?} {:?} {:?} {:?} {}",
                e.role, e.op, e.scope, e.shape, e.dtype, e.bytes
            )
        })
        .collect();
    v.sort();
    v
}

fn total(r: &MemoryReport, role: Role) -> usize {
    r.totals().iter().find(|t| t.0 == role).map_or(0, |t| t.1)
}

#[test]
fn the_report_adds_up_to_the_peak_and_meta_reports_what_the_cpu_holds() {
    for mode in [
        Recompute::Naive,
        Recompute::Selective(Selective::Bottleneck),
        Recompute::Selective(Selective::Layer),
    ] {
        let cpu = report(&Device::cpu(), mode);
        let sum: usize = cpu.totals().iter().map(|t| t.1).sum();
        assert_eq!(sum, cpu.peak_bytes, "{mode}");
        let entries: usize = cpu.entries.iter().map(|e| e.bytes).sum();
        assert_eq!(entries, cpu.peak_bytes, "{mode}");
        let meta = report(&Device::meta(), mode);
        assert_eq!(described(&meta), described(&cpu), "{mode}");
        assert_eq!(
            (meta.phase, &meta.phase_scope),
            (cpu.phase, &cpu.phase_scope)
        );
        assert!(total(&cpu, Role::Parameter) > 0 && total(&cpu, Role::OptimizerState) > 0);
        // The model's own runs give no warning (the diagnostics fire on crafted programs:
        // checkpoint/tests/diagnostics.rs).
        assert_eq!(cpu.warnings(), vec![], "{mode}");
    }
}

#[test]
fn each_mode_holds_what_it_should_at_its_peak() {
    let naive = report(&Device::meta(), Recompute::Naive);
    let layer = report(&Device::meta(), Recompute::Selective(Selective::Layer));
    // Naive keeps every layer's activations: the largest part of its peak.
    let largest = naive.totals().into_iter().max_by_key(|t| t.1).unwrap();
    assert_eq!(largest.0, Role::Activation, "{}", naive.render(5));
    assert_eq!(total(&naive, Role::Recomputed), 0);
    // Layer mode keeps the block storage; what a dense layer makes in forward is dropped, all
    // but its batch norms' statistics (`[2, C]`: means and inverse deviations), kept for the
    // recompute to normalise with.
    let layer_activations = layer
        .entries
        .iter()
        .filter(|e| e.role == Role::Activation)
        .filter(|e| e.scope.as_deref().is_some_and(|s| s.contains("denselayer")))
        .filter(|e| !(e.op == Some("batch_norm_relu") && e.shape.len() == 2 && e.shape[0] == 2));
    assert_eq!(layer_activations.count(), 0, "{}", layer.render(20));
    assert!(total(&layer, Role::BlockStorage) > 0);
    assert!(total(&layer, Role::Recomputed) > 0);
    // Every entry of a dense layer names its module.
    for e in naive.entries.iter().filter(|e| e.role == Role::Activation) {
        if e.op == Some("conv2d") {
            assert!(e.scope.is_some(), "{e:?}");
        }
    }
}
