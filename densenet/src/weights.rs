//! Weights I/O in safetensors, with torchvision's names (`features.conv0.weight`,
//! `features.denseblock1.denselayer1.norm1.running_mean`, ..., `classifier.bias`), so a torchvision
//! `state_dict` saved with `safetensors.torch.save_file` loads directly. Saving is atomic: the
//! file is written under a temporary name, synced, then renamed over the target.

use crate::error::{io_err, DenseNetError, Result};
use crate::model::DenseNet;
use safetensors::tensor::{Dtype, TensorView, View};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use tape::{DType, Device, Tensor};

/// A named array as stored in a file: shape and values (read as f64 whatever the file's dtype).
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values.
    pub values: Vec<f64>,
}

impl Stored {
    /// The values as a tensor of `dtype` on `device`.
    pub fn to_tensor(&self, dtype: DType, device: &Device) -> tape::Result<Tensor> {
        Tensor::from_f64(&self.values, &self.shape, dtype, device)
    }
}

/// An owned, serialisable blob.
struct Blob {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Blob {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn blob_of(t: &Tensor) -> Blob {
    let (dtype, bytes) = match t.dtype() {
        DType::F32 => (
            Dtype::F32,
            t.to_f64_vec()
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
        ),
        DType::F64 => (
            Dtype::F64,
            t.to_f64_vec()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    };
    Blob {
        dtype,
        shape: t.shape().to_vec(),
        bytes,
    }
}

/// Every tensor of the model's state by torchvision name: parameters, running statistics and
/// `num_batches_tracked` (as a `[1]`-shaped tensor; saved as a 0-d int64 like PyTorch).
pub fn state_dict(model: &DenseNet) -> tape::Result<Vec<(String, Tensor)>> {
    let mut out: Vec<(String, Tensor)> = model
        .parameters()
        .iter()
        .map(|p| (p.name().to_string(), p.tensor().clone()))
        .collect();
    for (name, rs) in model.running_stats() {
        out.push((format!("{name}.running_mean"), rs.mean()));
        out.push((format!("{name}.running_var"), rs.var()));
        let n = rs.num_batches_tracked() as f64;
        out.push((
            format!("{name}.num_batches_tracked"),
            Tensor::from_f64(&[n], &[1], DType::F64, model.device())?,
        ));
    }
    Ok(out)
}

/// Writes named tensors to `path` as safetensors, atomically.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let blobs: BTreeMap<String, Blob> = tensors
        .iter()
        .map(|(name, t)| {
            let blob = if name.ends_with("num_batches_tracked") {
                Blob {
                    dtype: Dtype::I64,
                    shape: vec![],
                    bytes: (t.to_f64_vec().first().copied().unwrap_or(0.0) as i64)
                        .to_le_bytes()
                        .to_vec(),
                }
            } else {
                blob_of(t)
            };
            (name.clone(), blob)
        })
        .collect();
    let bytes =
        safetensors::serialize(blobs.iter().map(|(k, v)| (k.clone(), v)), None).map_err(|e| {
            DenseNetError::Weights {
                path: path.display().to_string(),
                msg: e.to_string(),
            }
        })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn decode(view: &TensorView<'_>, name: &str, path: &Path) -> Result<Stored> {
    let data = view.data();
    let values: Vec<f64> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64)
            .collect(),
        other => {
            return Err(DenseNetError::Weights {
                path: path.display().to_string(),
                msg: format!("tensor '{name}' has dtype {other:?}; only F32, F64 and I64 are read"),
            })
        }
    };
    Ok(Stored {
        shape: view.shape().to_vec(),
        values,
    })
}

/// Reads every tensor of a safetensors file.
pub fn load_tensors(path: &Path) -> Result<BTreeMap<String, Stored>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| DenseNetError::Weights {
        path: path.display().to_string(),
        msg: format!("not a valid safetensors file: {e}"),
    })?;
    st.tensors()
        .iter()
        .map(|(name, view)| Ok((name.clone(), decode(view, name, path)?)))
        .collect()
}

/// Saves the model's state to `path` (atomic).
pub fn save(model: &DenseNet, path: &Path) -> Result<()> {
    save_tensors(path, &state_dict(model)?)
}

/// How [`load_with`] and [`load_state_with`] treat a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Ignore tensors the model does not have (e.g. a checkpoint that also holds other
    /// buffers). Off by default: an extra tensor is a [`DenseNetError::UnexpectedTensors`]
    /// naming it. The values are checked either way.
    pub lenient: bool,
}

/// Looks `name` up, accepting the seed project's `features.norm_final` for `features.norm5`;
/// returns the name it was found under too.
fn find<'s>(stored: &'s BTreeMap<String, Stored>, name: &str) -> Option<(&'s str, &'s Stored)> {
    stored
        .get_key_value(name)
        .or_else(|| stored.get_key_value(&name.replace("features.norm5.", "features.norm_final.")))
        .map(|(k, v)| (k.as_str(), v))
}

fn expect<'s>(
    stored: &'s BTreeMap<String, Stored>,
    name: &str,
    shape: &[usize],
) -> Result<&'s Stored> {
    let (_, s) =
        find(stored, name).ok_or_else(|| DenseNetError::MissingTensor(name.to_string()))?;
    // PyTorch stores 0-d scalars; the model's per-channel tensors must match exactly.
    if s.shape != shape {
        return Err(DenseNetError::TensorShape {
            name: name.to_string(),
            expected: shape.to_vec(),
            got: s.shape.clone(),
        });
    }
    Ok(s)
}

fn bad_value(name: &str, msg: String) -> DenseNetError {
    DenseNetError::BadValue {
        name: name.to_string(),
        msg,
    }
}

/// Checks that every value is finite and representable in `dtype` (an f64 file loaded into an
/// f32 model must not overflow to infinity), and non-negative if `non_negative`.
fn check_values(name: &str, s: &Stored, dtype: DType, non_negative: bool) -> Result<()> {
    let max = match dtype {
        DType::F32 => f32::MAX as f64,
        DType::F64 => f64::MAX,
    };
    for (i, &v) in s.values.iter().enumerate() {
        if !v.is_finite() {
            return Err(bad_value(
                name,
                format!("element {i} is {v}, not a finite number"),
            ));
        }
        if v.abs() > max {
            return Err(bad_value(
                name,
                format!("element {i} is {v:e}, beyond the range of the model's {dtype:?}"),
            ));
        }
        if non_negative && v < 0.0 {
            return Err(bad_value(
                name,
                format!("element {i} is {v}; a variance cannot be negative"),
            ));
        }
    }
    Ok(())
}

/// The count a `num_batches_tracked` tensor holds: one non-negative integer (PyTorch saves a
/// 0-d int64; `[1]` is accepted too).
fn batches_tracked(name: &str, s: &Stored) -> Result<u64> {
    match s.values[..] {
        [v] if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64 => Ok(v as u64),
        [v] => Err(bad_value(
            name,
            format!("is {v}; a count of batches must be a non-negative integer"),
        )),
        _ => Err(bad_value(
            name,
            format!(
                "holds {} values (shape {:?}); a count of batches is one value",
                s.values.len(),
                s.shape
            ),
        )),
    }
}

/// Loads every parameter and running statistic of the model from named tensors (strictly: see
/// [`load_state_with`]).
pub fn load_state(model: &mut DenseNet, stored: &BTreeMap<String, Stored>) -> Result<()> {
    load_state_with(model, stored, LoadOptions::default())
}

/// Loads every parameter and running statistic of the model from named tensors. Everything is
/// checked before anything changes, so on any error the model is untouched; each error names
/// the tensor: a missing or mis-shaped tensor, a value that is NaN, infinite or beyond the
/// model's dtype, a negative running variance, a `num_batches_tracked` that is not a
/// non-negative integer, and (unless `options.lenient`) a tensor the model does not have.
pub fn load_state_with(
    model: &mut DenseNet,
    stored: &BTreeMap<String, Stored>,
    options: LoadOptions,
) -> Result<()> {
    let (dtype, device) = (model.dtype(), model.device().clone());
    // Check everything first, so a bad file leaves the model untouched.
    let mut used: Vec<&str> = Vec::new();
    for p in model.parameters() {
        let s = expect(stored, p.name(), p.tensor().shape())?;
        check_values(p.name(), s, dtype, false)?;
        used.extend(find(stored, p.name()).map(|(k, _)| k));
    }
    for (name, rs) in model.running_stats() {
        let shape = rs.mean().shape().to_vec();
        for (suffix, non_negative) in [("running_mean", false), ("running_var", true)] {
            let full = format!("{name}.{suffix}");
            let s = expect(stored, &full, &shape)?;
            check_values(&full, s, dtype, non_negative)?;
            used.extend(find(stored, &full).map(|(k, _)| k));
        }
        let full = format!("{name}.num_batches_tracked");
        if let Some((key, s)) = find(stored, &full) {
            batches_tracked(&full, s)?;
            used.push(key);
        }
    }
    if !options.lenient {
        let extra: Vec<String> = stored
            .keys()
            .filter(|k| !used.contains(&k.as_str()))
            .cloned()
            .collect();
        if !extra.is_empty() {
            return Err(DenseNetError::UnexpectedTensors(extra));
        }
    }
    for p in model.parameters_mut() {
        let s = expect(stored, p.name(), p.tensor().shape())?;
        p.assign(&s.to_tensor(dtype, &device)?)?;
    }
    for (name, rs) in model.running_stats() {
        let shape = rs.mean().shape().to_vec();
        let mean =
            expect(stored, &format!("{name}.running_mean"), &shape)?.to_tensor(dtype, &device)?;
        let var =
            expect(stored, &format!("{name}.running_var"), &shape)?.to_tensor(dtype, &device)?;
        rs.set(&mean, &var)?;
        let full = format!("{name}.num_batches_tracked");
        if let Some((_, n)) = find(stored, &full) {
            rs.set_num_batches_tracked(batches_tracked(&full, n)?);
        }
    }
    Ok(())
}

/// Loads the model's state from a safetensors file (strictly: see [`load_state_with`]).
pub fn load(model: &mut DenseNet, path: &Path) -> Result<()> {
    load_with(model, path, LoadOptions::default())
}

/// Loads the model's state from a safetensors file with `options` (see [`load_state_with`] for
/// what is checked); on any error the model is untouched.
pub fn load_with(model: &mut DenseNet, path: &Path, options: LoadOptions) -> Result<()> {
    let stored = load_tensors(path)?;
    load_state_with(model, &stored, options)
}
