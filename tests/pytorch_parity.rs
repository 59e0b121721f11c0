//! PyTorch parity: one training step (forward + backward, train mode) of small DenseNets against
//! golden files made by `tests/pytorch/make_golden.py` (run by hand with torch; CI only reads the
//! committed files under `tests/data/<case>/`).
//!
//! Every efficiency mode (naive, bottleneck, layer, and a planner budget both roomy and tight
//! enough to mix modes) must reproduce PyTorch's logits, loss, every parameter gradient and the
//! running statistics after the step: norm-relative error `max|a - b| / max|b|` at most 1e-10 in
//! f64 and 1e-4 in f32. Also: weights-file errors (missing tensor, wrong shape, truncated file)
//! and an exact save/load round trip that leaves no temporary file behind.

use densenet::weights::{self, load_tensors, save_tensors, Stored};
use densenet::{DenseLayerMode, DenseNet, DenseNetConfig, DenseNetError, Recompute, Selective};
use densenet_suite::one_step::{load_batch, prepare, Prepared};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tape::nn::StateError;
use tape::testing::rel_diff;
use tape::{DType, Device, Tensor};

const TOL_F64: f64 = 1e-10;
const TOL_F32: f64 = 1e-4;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Every case folder (one holding a `config.json`), sorted.
fn cases() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .expect("tests/data exists (golden files from tests/pytorch/make_golden.py)")
        .map(|e| e.expect("readable tests/data entry").path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no golden case under {}",
        data_dir().display()
    );
    dirs
}

fn case_name(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

fn read_config(dir: &Path) -> DenseNetConfig {
    let text = std::fs::read_to_string(dir.join("config.json")).expect("config.json readable");
    serde_json::from_str(&text).expect("config.json is a DenseNetConfig")
}

/// A fresh scratch folder under cargo's per-target temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pytorch_parity-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn uniform(modes: &[Vec<DenseLayerMode>]) -> Option<DenseLayerMode> {
    let first = modes[0][0];
    modes.iter().flatten().all(|&m| m == first).then_some(first)
}

/// Budget modes for `prepared`'s model and input: one so roomy the planner keeps every layer
/// naive, and one tight enough that it mixes modes, if any does (none does where a part of the
/// network that has no choice, such as the ImageNet stem's convolution, sets the peak whatever
/// the layers' modes: the planner then keeps every layer naive whenever it can).
fn budgets(prepared: &mut Prepared) -> (u64, Option<u64>) {
    let shape: [usize; 4] = prepared.input.shape().try_into().unwrap();
    let mut plan = |bytes: u64| {
        prepared
            .model
            .set_recompute(Recompute::Budget(bytes))
            .unwrap();
        prepared.model.layer_modes(shape).ok()
    };
    let roomy = 1u64 << 40;
    assert_eq!(uniform(&plan(roomy).unwrap()), Some(DenseLayerMode::Keep));
    // Smallest feasible budget, then the smallest all-naive one, by bisection.
    let (mut lo, mut hi) = (0u64, roomy);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if plan(mid).is_some() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let feasible = hi;
    let (mut lo, mut hi) = (feasible, roomy);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if uniform(&plan(mid).unwrap()) == Some(DenseLayerMode::Keep) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let all_naive = hi;
    let steps = 256u64;
    let mixed = (0..=steps)
        .map(|i| feasible + (all_naive - feasible) * i / steps)
        .find(|&b| uniform(&plan(b).unwrap()).is_none());
    prepared.model.set_recompute(Recompute::Naive).unwrap();
    (roomy, mixed)
}

/// Compares every expected tensor with the step's; returns the worst relative difference and
/// the tensor it came from.
fn compare(
    case: &str,
    label: &str,
    got: &[(String, Tensor)],
    expected: &BTreeMap<String, Stored>,
    tol: f64,
) -> (f64, String) {
    let got: BTreeMap<&str, &Tensor> = got.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let extra: Vec<&&str> = got.keys().filter(|n| !expected.contains_key(**n)).collect();
    assert!(
        extra.is_empty(),
        "{case} {label}: results not in the golden file: {extra:?}"
    );
    let mut worst = (0.0, String::new());
    let mut failures = Vec::new();
    for (name, want) in expected {
        let t = got
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{case} {label}: no result named '{name}'"));
        let scalar = want.values.len() == 1
            && t.numel() == 1
            && want.shape.len() <= 1
            && t.shape().len() <= 1;
        assert!(
            scalar || t.shape() == want.shape.as_slice(),
            "{case} {label}: '{name}' has shape {:?}, PyTorch {:?}",
            t.shape(),
            want.shape
        );
        let rel = rel_diff(&t.to_f64_vec(), &want.values);
        assert!(rel.is_finite(), "{case} {label}: '{name}' is not finite");
        if rel > tol {
            failures.push(format!("'{name}' rel {rel:.3e}"));
        }
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    assert!(
        failures.is_empty(),
        "{case} {label}: {} tensor(s) differ from PyTorch beyond {tol:e}: {}",
        failures.len(),
        failures.join(", ")
    );
    worst
}

#[test]
fn matches_pytorch_in_every_mode_and_dtype() {
    let mut summary = Vec::new();
    for dir in cases() {
        let case = case_name(&dir);
        let config = read_config(&dir);
        let expected = load_tensors(&dir.join("expected.safetensors")).unwrap();
        let (w, b) = (
            dir.join("weights.safetensors"),
            dir.join("batch.safetensors"),
        );
        for (dtype, tol) in [(DType::F64, TOL_F64), (DType::F32, TOL_F32)] {
            let mut prepared = prepare(&config, &w, &b, Recompute::Naive, dtype).unwrap();
            let (roomy, mixed) = budgets(&mut prepared);
            drop(prepared);
            // Without a budget that mixes, the same mixed run from a plan given in advance.
            let mixed = mixed.map_or(Recompute::Plan, Recompute::Budget);
            let modes = [
                Recompute::Naive,
                Recompute::Selective(Selective::Bottleneck),
                Recompute::Selective(Selective::Layer),
                Recompute::Budget(roomy),
                mixed,
            ];
            for mode in modes {
                let label = format!("{mode} {dtype:?}");
                let mut prepared = prepare(&config, &w, &b, mode, dtype).unwrap();
                if mode == Recompute::Plan {
                    use DenseLayerMode::*;
                    let cycle = [RecomputeLayer, Keep, RecomputeBottleneck];
                    let mut i = 0..;
                    let plan = config
                        .block_config
                        .iter()
                        .map(|&l| i.by_ref().take(l).map(|i| cycle[i % 3]).collect())
                        .collect();
                    prepared.model = prepared.model.with_plan(plan).unwrap();
                }
                let out = prepared.run().unwrap();
                if mode == mixed {
                    assert_eq!(
                        uniform(&out.layer_modes),
                        None,
                        "{case} {label}: expected mixed layer modes"
                    );
                }
                let (rel, worst) = compare(&case, &label, &out.tensors, &expected, tol);
                summary.push(format!(
                    "{case:<22} {:<18} {:<4} max rel {rel:.3e} ({worst}) modes {:?}",
                    mode.to_string(),
                    format!("{dtype:?}"),
                    out.layer_modes
                ));
            }
        }
    }
    println!("{}", summary.join("\n"));
}

/// The first case's config, weights and a model to load them into.
fn first_case() -> (PathBuf, DenseNetConfig, BTreeMap<String, Stored>) {
    let dir = cases().remove(0);
    let config = read_config(&dir);
    let stored = load_tensors(&dir.join("weights.safetensors")).unwrap();
    (dir, config, stored)
}

fn to_tensors(stored: &BTreeMap<String, Stored>) -> Vec<(String, Tensor)> {
    let dev = Device::cpu();
    stored
        .iter()
        .map(|(n, s)| (n.clone(), s.to_tensor(DType::F64, &dev).unwrap()))
        .collect()
}

fn snapshot(model: &DenseNet) -> Vec<(String, Vec<f64>)> {
    weights::state_dict(model)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.to_f64_vec()))
        .collect()
}

#[test]
fn missing_tensor_is_reported_by_name() {
    let (_, config, stored) = first_case();
    let dir = scratch("missing");
    for victim in [
        "features.denseblock1.denselayer2.conv1.weight",
        "features.transition1.norm.running_var",
    ] {
        let mut s = stored.clone();
        assert!(s.remove(victim).is_some(), "golden weights hold {victim}");
        let path = dir.join("missing.safetensors");
        save_tensors(&path, &to_tensors(&s)).unwrap();
        let mut model = DenseNet::new(config.clone(), DType::F64, &Device::cpu(), 5).unwrap();
        let before = snapshot(&model);
        match weights::load(&mut model, &path) {
            Err(DenseNetError::State(StateError::MissingTensor(name))) => assert_eq!(name, victim),
            other => panic!("expected MissingTensor({victim}), got {:?}", other.err()),
        }
        assert_eq!(
            snapshot(&model),
            before,
            "a failed load leaves the model untouched"
        );
        // The one-step entry point reports it the same way.
        let batch = cases()[0].join("batch.safetensors");
        assert!(matches!(
            prepare(&config, &path, &batch, Recompute::Naive, DType::F64),
            Err(DenseNetError::State(StateError::MissingTensor(n))) if n == victim
        ));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn misshaped_tensor_is_reported_with_both_shapes() {
    let (_, config, stored) = first_case();
    let dir = scratch("shape");
    let victim = "features.denseblock2.denselayer1.norm2.weight";
    let mut s = stored.clone();
    let good = s[victim].clone();
    let n = good.values.len() + 1;
    s.insert(
        victim.to_string(),
        Stored {
            shape: vec![n],
            values: vec![1.0; n],
        },
    );
    let path = dir.join("shape.safetensors");
    save_tensors(&path, &to_tensors(&s)).unwrap();
    let mut model = DenseNet::new(config, DType::F32, &Device::cpu(), 5).unwrap();
    let before = snapshot(&model);
    match weights::load(&mut model, &path) {
        Err(DenseNetError::State(StateError::TensorShape {
            name,
            expected,
            got,
        })) => {
            assert_eq!(name, victim);
            assert_eq!(expected, good.shape);
            assert_eq!(got, vec![n]);
        }
        other => panic!("expected TensorShape for {victim}, got {:?}", other.err()),
    }
    assert_eq!(
        snapshot(&model),
        before,
        "a failed load leaves the model untouched"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_file_is_a_weights_error() {
    let (dir, config, _) = first_case();
    let bytes = std::fs::read(dir.join("weights.safetensors")).unwrap();
    let tmp = scratch("truncated");
    let mut model = DenseNet::new(config, DType::F64, &Device::cpu(), 5).unwrap();
    for keep in [bytes.len() / 2, bytes.len() - 1, 12, 3] {
        let path = tmp.join("truncated.safetensors");
        std::fs::write(&path, &bytes[..keep]).unwrap();
        match weights::load(&mut model, &path) {
            Err(DenseNetError::State(StateError::File { path: p, msg })) => {
                assert!(p.ends_with("truncated.safetensors"), "{p}");
                assert!(!msg.is_empty());
            }
            other => panic!(
                "{keep} bytes kept: expected Weights error, got {:?}",
                other.err()
            ),
        }
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn bad_batches_are_data_errors() {
    let (dir, config, _) = first_case();
    let batch = load_tensors(&dir.join("batch.safetensors")).unwrap();
    let tmp = scratch("batch");
    let path = tmp.join("batch.safetensors");
    let dev = Device::cpu();
    let mut bad_label = batch.clone();
    bad_label.get_mut("labels").unwrap().values[0] = config.num_classes as f64;
    let mut fractional = batch.clone();
    fractional.get_mut("labels").unwrap().values[1] = 0.5;
    let mut no_labels = batch.clone();
    no_labels.remove("labels");
    let mut flat = batch.clone();
    let input = flat.get_mut("input").unwrap();
    input.shape = vec![input.values.len()];
    for (what, b) in [
        ("label out of range", bad_label),
        ("fractional label", fractional),
        ("no labels", no_labels),
        ("3-d input", flat),
    ] {
        save_tensors(&path, &to_tensors(&b)).unwrap();
        match load_batch(&path, &config, DType::F64, &dev) {
            Err(DenseNetError::Data(msg)) => assert!(msg.contains("batch file"), "{what}: {msg}"),
            other => panic!("{what}: expected a Data error, got {:?}", other.err()),
        }
    }
    // `to_tensors` writes the labels as f64: float labels read like the golden int64 ones.
    save_tensors(&path, &to_tensors(&batch)).unwrap();
    let (_, labels) = load_batch(&path, &config, DType::F64, &dev).unwrap();
    let want: Vec<usize> = batch["labels"].values.iter().map(|&v| v as usize).collect();
    assert_eq!(labels, want);
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn save_load_round_trips_exactly_without_temp_files() {
    for dir in cases() {
        let config = read_config(&dir);
        for dtype in [DType::F32, DType::F64] {
            // Golden weights, then one step so running stats and the batch count move too.
            let mut a = DenseNet::new(config.clone(), dtype, &Device::cpu(), 1).unwrap();
            weights::load(&mut a, &dir.join("weights.safetensors")).unwrap();
            let (x, labels) =
                load_batch(&dir.join("batch.safetensors"), &config, dtype, a.device()).unwrap();
            densenet::train::forward_backward(&a, &x, &labels, 0).unwrap();

            let tmp = scratch(&format!("roundtrip-{}-{dtype:?}", case_name(&dir)));
            let path = tmp.join("model.safetensors");
            weights::save(&a, &path).unwrap();
            // Saving again over an existing file is atomic too.
            weights::save(&a, &path).unwrap();
            let left: Vec<String> = std::fs::read_dir(&tmp)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(
                left,
                vec!["model.safetensors".to_string()],
                "no temporary file is left"
            );

            let mut b = DenseNet::new(config.clone(), dtype, &Device::cpu(), 2).unwrap();
            weights::load(&mut b, &path).unwrap();
            let (sa, sb) = (
                weights::state_dict(&a).unwrap(),
                weights::state_dict(&b).unwrap(),
            );
            assert_eq!(sa.len(), sb.len());
            let stored = load_tensors(&path).unwrap();
            assert_eq!(
                stored.len(),
                sa.len(),
                "the file holds exactly the state dict"
            );
            for ((na, ta), (nb, tb)) in sa.iter().zip(&sb) {
                assert_eq!(na, nb);
                assert_eq!(ta.shape(), tb.shape(), "{na}");
                if na.ends_with("num_batches_tracked") {
                    assert_eq!(
                        ta.to_f64_vec(),
                        vec![8.0],
                        "{na}: 7 in the golden file, +1 step"
                    );
                    assert_eq!(
                        stored[na].shape,
                        Vec::<usize>::new(),
                        "{na} is a 0-d int64 like PyTorch's"
                    );
                } else {
                    assert_eq!(ta.dtype(), dtype, "{na}");
                    assert_eq!(tb.dtype(), dtype, "{na}");
                    assert_eq!(stored[na].shape, ta.shape(), "{na}");
                }
                let bits = |t: &Tensor| {
                    t.to_f64_vec()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>()
                };
                assert_eq!(bits(ta), bits(tb), "{na} round-trips bit for bit");
            }
            std::fs::remove_dir_all(&tmp).unwrap();
        }
    }
}

/// PyTorch's CPU autocast (bf16) against our bf16 policy, one step of every case in every
/// fixed mode (`expected_bf16.safetensors`, made by `make_golden.py` from the committed
/// weights and batch).
///
/// Tolerance, norm-relative (`max|a - b| / max|b|` per tensor): both sides round every
/// activation to bf16 (unit roundoff `u = 2^-8`) but accumulate in different orders (oneDNN's
/// blocked GEMMs against ours), so an element can round to a neighbouring bf16 value: one
/// rounding apart, `2u`, per rounded op it passes. A gradient's path runs through every rounded
/// op of the forward and the backward: at most `L` of them, 4 per dense layer (batch norm +
/// ReLU, 1x1 convolution, batch norm + ReLU, 3x3 convolution) times 2 (forward and backward)
/// plus the stem, transitions and head, rounded up to 10 per layer. First-order propagation
/// of independent per-op errors gives `2u * L` as the bound. Measured: the CIFAR-stem cases
/// agree to 2e-7 and 1e-4 (the same roundings on both sides almost everywhere); the ImageNet
/// stem's batch-norm gradients to 0.23, a sum of 300 products with cancellation after a max
/// pool, where one-ulp differences in the summands grow by the sum's condition number.
#[test]
fn matches_pytorch_autocast_bf16_in_every_fixed_mode() {
    let u = DType::BF16.unit_roundoff();
    for dir in cases() {
        let case = case_name(&dir);
        let config = read_config(&dir);
        let layers: usize = config.block_config.iter().sum();
        let tol = 2.0 * u * (10 * layers + 10) as f64;
        let expected = load_tensors(&dir.join("expected_bf16.safetensors")).unwrap();
        let (w, b) = (
            dir.join("weights.safetensors"),
            dir.join("batch.safetensors"),
        );
        let modes = [
            Recompute::Naive,
            Recompute::Selective(Selective::Bottleneck),
            Recompute::Selective(Selective::Layer),
        ];
        for mode in modes {
            let prepared = prepare(&config, &w, &b, mode, DType::F32)
                .unwrap()
                .with_precision(tape::Precision::Bf16);
            let out = prepared.run().unwrap();
            let label = format!("{mode} bf16");
            compare(&case, &label, &out.tensors, &expected, tol);
        }
    }
}
