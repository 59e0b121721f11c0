//! Safetensors files of a module's state, with PyTorch's layout: the names of its `state_dict`,
//! f32/f64 tensors, `num_batches_tracked` as a 0-d int64. A PyTorch model's state saved with
//! `safetensors.torch.save_file` loads directly when the names agree. Saving is atomic: the file
//! is written under a temporary name, synced, then renamed over the target.

use super::state::{load_state_dict, state_dict, LoadOptions, StateError, StateResult, Stored};
use super::Module;
use crate::dtype::{bf16, f16, DType};
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, TensorView, View};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

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

fn blob_of(name: &str, t: &Tensor) -> StateResult<Blob> {
    let values = t.try_to_f64_vec()?;
    if name.ends_with("num_batches_tracked") {
        let n = values.first().copied().unwrap_or(0.0) as i64;
        return Ok(Blob {
            dtype: Dtype::I64,
            shape: vec![],
            bytes: n.to_le_bytes().to_vec(),
        });
    }
    let (dtype, bytes) = match t.dtype() {
        DType::F32 => (
            Dtype::F32,
            values
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
        ),
        DType::F64 => (
            Dtype::F64,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        // The f64 values of a 16-bit tensor are exact: converting back loses nothing.
        DType::BF16 => (
            Dtype::BF16,
            values
                .iter()
                .flat_map(|&v| bf16::from_f64(v).to_le_bytes())
                .collect(),
        ),
        DType::F16 => (
            Dtype::F16,
            values
                .iter()
                .flat_map(|&v| f16::from_f64(v).to_le_bytes())
                .collect(),
        ),
    };
    Ok(Blob {
        dtype,
        shape: t.shape().to_vec(),
        bytes,
    })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes named tensors to `path` as safetensors, atomically (a tensor named
/// `..num_batches_tracked` as a 0-d int64).
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> StateResult<()> {
    let blobs = tensors
        .iter()
        .map(|(name, t)| Ok((name.clone(), blob_of(name, t)?)))
        .collect::<StateResult<BTreeMap<String, Blob>>>()?;
    let bytes =
        safetensors::serialize(blobs.iter().map(|(k, v)| (k.clone(), v)), None).map_err(|e| {
            StateError::File {
                path: path.display().to_string(),
                msg: e.to_string(),
            }
        })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over `path`; on
/// failure nothing is left behind and `path` is as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> StateResult<()> {
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

fn decode(view: &TensorView<'_>, name: &str, path: &Path) -> StateResult<Stored> {
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
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64)
            .collect(),
        other => {
            return Err(StateError::File {
                path: path.display().to_string(),
                msg: format!(
                "tensor '{name}' has dtype {other:?}; only F32, F64, BF16, F16 and I64 are read"
            ),
            })
        }
    };
    Ok(Stored {
        shape: view.shape().to_vec(),
        values,
    })
}

/// Reads every tensor of a safetensors file.
pub fn load_tensors(path: &Path) -> StateResult<BTreeMap<String, Stored>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| StateError::File {
        path: path.display().to_string(),
        msg: format!("not a valid safetensors file: {e}"),
    })?;
    st.tensors()
        .iter()
        .map(|(name, view)| Ok((name.clone(), decode(view, name, path)?)))
        .collect()
}

/// Saves `m`'s state ([`state_dict`]) to `path`, atomically.
pub fn save<M: Module + ?Sized>(m: &M, path: &Path) -> StateResult<()> {
    save_tensors(path, &state_dict(m)?)
}

/// Loads `m`'s state from a safetensors file, strictly (see [`load_state_dict`]); on any error
/// `m` is untouched.
pub fn load<M: Module + ?Sized>(m: &mut M, path: &Path) -> StateResult<()> {
    load_with(m, path, LoadOptions::default())
}

/// Loads `m`'s state from a safetensors file with `options`; on any error `m` is untouched.
pub fn load_with<M: Module + ?Sized>(
    m: &mut M,
    path: &Path,
    options: LoadOptions,
) -> StateResult<()> {
    load_state_dict(m, &load_tensors(path)?, options)
}
