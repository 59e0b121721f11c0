//! Loading weights checks values, not just names and shapes: NaN or infinite values, values
//! beyond the model's dtype (1e300 into an f32 model), negative running variances, a negative or
//! fractional `num_batches_tracked` and tensors the model does not have are typed errors naming
//! the tensor, and a failed load leaves the model untouched. Extra tensors load only leniently.

use densenet::weights::{self, load_state_with, save_tensors, LoadOptions, Stored};
use densenet::{DenseNet, DenseNetConfig, DenseNetError, Recompute};
use densenet_suite::one_step::{prepare, prepare_with};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tape::nn::StateError;
use tape::{DType, Device, Tensor};

fn config() -> DenseNetConfig {
    DenseNetConfig {
        growth_rate: 2,
        block_config: vec![2, 1],
        num_init_features: 4,
        bn_size: 2,
        num_classes: 3,
        ..DenseNetConfig::default()
    }
}

/// A fresh scratch folder under cargo's per-target temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("weights_validation-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The state of a model of `config()` made from `seed`, by name.
fn state(seed: u64) -> BTreeMap<String, Stored> {
    let model = DenseNet::new(config(), DType::F64, &Device::cpu(), seed).unwrap();
    tape::nn::stored_state_dict(&model).unwrap()
}

/// Writes `s` as an f64 safetensors file (`num_batches_tracked` as int64, like PyTorch).
fn write(path: &Path, s: &BTreeMap<String, Stored>) {
    let dev = Device::cpu();
    let tensors: Vec<(String, Tensor)> = s
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                Tensor::from_f64(&v.values, &v.shape, DType::F64, &dev).unwrap(),
            )
        })
        .collect();
    save_tensors(path, &tensors).unwrap();
}

fn snapshot(model: &DenseNet) -> Vec<(String, Vec<u64>)> {
    weights::state_dict(model)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.to_f64_vec().iter().map(|v| v.to_bits()).collect()))
        .collect()
}

/// Loads `file` into a fresh model of `dtype` with `options`; checks that a failed load leaves
/// the model untouched.
fn load(file: &Path, dtype: DType, options: LoadOptions) -> densenet::Result<DenseNet> {
    let mut model = DenseNet::new(config(), dtype, &Device::cpu(), 99).unwrap();
    let before = snapshot(&model);
    match weights::load_with(&mut model, file, options) {
        Ok(()) => Ok(model),
        Err(e) => {
            assert_eq!(
                snapshot(&model),
                before,
                "a failed load leaves the model untouched ({e})"
            );
            Err(e)
        }
    }
}

/// Asserts a `BadValue` error naming `victim` whose message contains `word`.
fn assert_bad_value(result: densenet::Result<DenseNet>, victim: &str, word: &str) {
    match result {
        Err(DenseNetError::State(StateError::BadValue { name, msg })) => {
            assert_eq!(name, victim);
            assert!(msg.contains(word), "{victim}: '{msg}' lacks '{word}'");
            let text = DenseNetError::State(StateError::BadValue { name, msg }).to_string();
            assert!(text.contains(victim), "{text}");
        }
        Err(e) => panic!("{victim}: expected BadValue, got {e:?}"),
        Ok(_) => panic!("{victim}: expected BadValue, the load succeeded"),
    }
}

/// The state with `value` at element `index` of `victim`, written to a file in `dir`.
fn with_value(dir: &Path, victim: &str, index: usize, value: f64) -> PathBuf {
    let mut s = state(1);
    s.get_mut(victim)
        .unwrap_or_else(|| panic!("no tensor {victim}"))
        .values[index] = value;
    let path = dir.join("bad.safetensors");
    write(&path, &s);
    path
}

#[test]
fn non_finite_values_are_errors_naming_the_tensor() {
    let dir = scratch("non-finite");
    let cases = [
        ("features.conv0.weight", 3, f64::NAN, "NaN"),
        (
            "features.denseblock1.denselayer2.conv2.weight",
            0,
            f64::INFINITY,
            "inf",
        ),
        (
            "features.transition1.norm.bias",
            1,
            f64::NEG_INFINITY,
            "-inf",
        ),
        ("classifier.bias", 2, f64::NAN, "NaN"),
        (
            "features.denseblock2.denselayer1.norm1.running_mean",
            0,
            f64::NAN,
            "NaN",
        ),
        ("features.norm5.running_var", 1, f64::INFINITY, "inf"),
    ];
    for (victim, index, value, word) in cases {
        let path = with_value(&dir, victim, index, value);
        for dtype in [DType::F32, DType::F64] {
            assert_bad_value(load(&path, dtype, LoadOptions::default()), victim, word);
            // Leniency is about extra tensors only.
            assert_bad_value(
                load(&path, dtype, LoadOptions { lenient: true }),
                victim,
                word,
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn values_beyond_the_dtype_are_errors_for_f32_models_only() {
    let dir = scratch("overflow");
    for victim in [
        "classifier.weight",
        "features.denseblock1.denselayer1.norm2.running_mean",
    ] {
        let path = with_value(&dir, victim, 0, 1e300);
        assert_bad_value(
            load(&path, DType::F32, LoadOptions::default()),
            victim,
            "beyond the range",
        );
        // The largest f32 itself fits.
        let path = with_value(&dir, victim, 0, f32::MAX as f64);
        load(&path, DType::F32, LoadOptions::default()).unwrap();
        // An f64 model takes 1e300 as it is.
        let path = with_value(&dir, victim, 0, 1e300);
        let model = load(&path, DType::F64, LoadOptions::default()).unwrap();
        let got = weights::state_dict(&model)
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == victim)
            .unwrap()
            .1
            .to_f64_vec()[0];
        assert_eq!(got, 1e300);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn negative_running_variance_is_an_error() {
    let dir = scratch("variance");
    let victim = "features.denseblock1.denselayer2.norm1.running_var";
    let path = with_value(&dir, victim, 1, -1e-3);
    assert_bad_value(
        load(&path, DType::F32, LoadOptions::default()),
        victim,
        "negative",
    );
    // A zero variance is valid (a constant channel), and so is a negative running mean.
    let path = with_value(&dir, victim, 1, 0.0);
    load(&path, DType::F32, LoadOptions::default()).unwrap();
    let path = with_value(
        &dir,
        "features.denseblock1.denselayer2.norm1.running_mean",
        1,
        -5.0,
    );
    load(&path, DType::F32, LoadOptions::default()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_num_batches_tracked_is_an_error() {
    let dir = scratch("batches");
    let victim = "features.transition1.norm.num_batches_tracked";
    // Written as int64, as PyTorch does.
    let path = with_value(&dir, victim, 0, -3.0);
    assert_bad_value(
        load(&path, DType::F32, LoadOptions::default()),
        victim,
        "non-negative integer",
    );
    // Values a float tensor could hold, through the in-memory entry point.
    for bad in [2.5, f64::NAN, -1.0] {
        let mut s = state(1);
        s.get_mut(victim).unwrap().values[0] = bad;
        let mut model = DenseNet::new(config(), DType::F64, &Device::cpu(), 99).unwrap();
        match load_state_with(&mut model, &s, LoadOptions::default()) {
            Err(DenseNetError::State(StateError::BadValue { name, .. })) => {
                assert_eq!(name, victim)
            }
            other => panic!("{bad}: expected BadValue, got {:?}", other.err()),
        }
    }
    // A good count loads.
    let path = with_value(&dir, victim, 0, 7.0);
    let model = load(&path, DType::F32, LoadOptions::default()).unwrap();
    let (_, rs) = model
        .running_stats()
        .into_iter()
        .find(|(n, _)| *n == "features.transition1.norm")
        .unwrap();
    assert_eq!(rs.num_batches_tracked(), 7);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn extra_tensors_are_errors_unless_lenient() {
    let dir = scratch("extra");
    let mut s = state(1);
    let extras = [
        "features.denseblock1.denselayer3.conv1.weight",
        "optimizer.momentum",
    ];
    for e in extras {
        s.insert(
            e.to_string(),
            Stored {
                shape: vec![2],
                values: vec![1.0, 2.0],
            },
        );
    }
    let path = dir.join("extra.safetensors");
    write(&path, &s);
    match load(&path, DType::F32, LoadOptions::default()) {
        Err(DenseNetError::State(StateError::UnexpectedTensors(names))) => {
            let mut want: Vec<String> = extras.iter().map(|e| e.to_string()).collect();
            want.sort();
            assert_eq!(names, want);
            let text = DenseNetError::State(StateError::UnexpectedTensors(names)).to_string();
            assert!(
                text.contains("optimizer.momentum") && text.contains("lenient"),
                "{text}"
            );
        }
        other => panic!("expected UnexpectedTensors, got {:?}", other.err()),
    }
    // Leniently the extras are ignored and everything else loads.
    let model = load(&path, DType::F64, LoadOptions { lenient: true }).unwrap();
    let reference = DenseNet::new(config(), DType::F64, &Device::cpu(), 1).unwrap();
    assert_eq!(snapshot(&model), snapshot(&reference));

    // The one-step entry point: strict by default, lenient on request.
    let batch = dir.join("batch.safetensors");
    let dev = Device::cpu();
    save_tensors(
        &batch,
        &[
            (
                "input".to_string(),
                Tensor::randn(&[2, 3, 4, 4], DType::F64, &dev, 3).unwrap(),
            ),
            (
                "labels".to_string(),
                Tensor::from_f64(&[0.0, 2.0], &[2], DType::F64, &dev).unwrap(),
            ),
        ],
    )
    .unwrap();
    assert!(matches!(
        prepare(&config(), &path, &batch, Recompute::Naive, DType::F64),
        Err(DenseNetError::State(StateError::UnexpectedTensors(_)))
    ));
    let prepared = prepare_with(
        &config(),
        &path,
        &batch,
        Recompute::Naive,
        DType::F64,
        LoadOptions { lenient: true },
    )
    .unwrap();
    assert!(prepared.run().unwrap().loss.is_finite());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn clean_files_load_strictly() {
    let dir = scratch("clean");
    let s = state(1);
    let path = dir.join("clean.safetensors");
    write(&path, &s);
    let model = load(&path, DType::F64, LoadOptions::default()).unwrap();
    let reference = DenseNet::new(config(), DType::F64, &Device::cpu(), 1).unwrap();
    assert_eq!(snapshot(&model), snapshot(&reference));
    // The seed project's name for the last batch norm is accepted, and is not an extra.
    let renamed: BTreeMap<String, Stored> = s
        .into_iter()
        .map(|(n, v)| (n.replace("features.norm5.", "features.norm_final."), v))
        .collect();
    write(&path, &renamed);
    let model = load(&path, DType::F64, LoadOptions::default()).unwrap();
    assert_eq!(snapshot(&model), snapshot(&reference));
    std::fs::remove_dir_all(&dir).unwrap();
}
