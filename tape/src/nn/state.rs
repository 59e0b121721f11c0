//! State dicts: every parameter and buffer of a module by name, and loading one back with every
//! value checked before anything changes.

use super::{Entry, EntryMut, Module};
use crate::device::Device;
use crate::dtype::DType;
use crate::tensor::Tensor;
use std::collections::{BTreeMap, BTreeSet};

/// What can go wrong reading or loading a model's state; each error names the tensor or file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file has no tensor of this name.
    #[error("weights file has no tensor named '{0}'")]
    MissingTensor(String),
    /// A tensor's shape differs from the model's.
    #[error("tensor '{name}' has shape {got:?} in the weights file, the model needs {expected:?}")]
    TensorShape {
        /// The tensor.
        name: String,
        /// The model's shape.
        expected: Vec<usize>,
        /// The file's shape.
        got: Vec<usize>,
    },
    /// A value the model cannot hold: NaN or infinite, beyond the dtype's range, a negative
    /// variance, a count that is not a non-negative integer.
    #[error("tensor '{name}' in the weights: {msg}")]
    BadValue {
        /// The tensor.
        name: String,
        /// What is wrong, with the element's index.
        msg: String,
    },
    /// Tensors the model does not have: a strict load refuses them, so a file for another
    /// architecture or with misspelled names is not half-loaded ([`LoadOptions::lenient`]
    /// ignores them).
    #[error(
        "weights file has {} tensor(s) the model does not: {} (a lenient load ignores them)",
        .0.len(),
        name_list(.0)
    )]
    UnexpectedTensors(Vec<String>),
    /// The file is not readable as safetensors, or holds a dtype that is not read.
    #[error("bad weights file {path}: {msg}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The engine failed (making or assigning a tensor).
    #[error(transparent)]
    Engine(#[from] crate::error::Error),
}

/// Up to five quoted names, then how many more.
fn name_list(names: &[String]) -> String {
    let mut s: Vec<String> = names.iter().take(5).map(|n| format!("'{n}'")).collect();
    if names.len() > 5 {
        s.push(format!("and {} more", names.len() - 5));
    }
    s.join(", ")
}

/// The result of state I/O.
pub type StateResult<T> = std::result::Result<T, StateError>;

/// A named array as stored in a file: shape and values (read as f64 whatever the file's dtype).
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values.
    pub values: Vec<f64>,
}

impl Stored {
    /// The shape and values of `t` (read back from its device).
    pub fn of(t: &Tensor) -> crate::Result<Self> {
        Ok(Stored {
            shape: t.shape().to_vec(),
            values: t.try_to_f64_vec()?,
        })
    }

    /// The values as a tensor of `dtype` on `device`.
    pub fn to_tensor(&self, dtype: DType, device: &Device) -> crate::Result<Tensor> {
        Tensor::from_f64(&self.values, &self.shape, dtype, device)
    }
}

/// How [`load_state_dict`] treats the stored tensors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Ignore tensors the model does not have (e.g. a checkpoint that also holds other
    /// buffers). Off by default: an extra tensor is a [`StateError::UnexpectedTensors`] naming
    /// it. The values are checked either way.
    pub lenient: bool,
}

/// The suffixes a batch norm's running statistics are saved under.
const MEAN: &str = "running_mean";
const VAR: &str = "running_var";
const COUNT: &str = "num_batches_tracked";

/// Every tensor of `m`'s state by name, in declaration order: parameters, and for each batch
/// norm its running mean, running variance and `num_batches_tracked` (a `[1]`-shaped f64
/// tensor here; files hold it as a 0-d int64, like PyTorch).
pub fn state_dict<M: Module + ?Sized>(m: &M) -> crate::Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    let mut result = Ok(());
    m.visit("", &mut |name, e| match e {
        Entry::Parameter(p) => out.push((name, p.tensor().clone())),
        Entry::RunningStats(rs) => {
            out.push((super::join(&name, MEAN), rs.mean()));
            out.push((super::join(&name, VAR), rs.var()));
            let n = rs.num_batches_tracked() as f64;
            match Tensor::from_f64(&[n], &[1], DType::F64, rs.device()) {
                Ok(t) => out.push((super::join(&name, COUNT), t)),
                Err(e) => result = Err(e),
            }
        }
    });
    result.map(|()| out)
}

/// [`state_dict`] read back as stored values, by name: what [`load_state_dict`] takes (to copy
/// one model's state into another, on another device say).
pub fn stored_state_dict<M: Module + ?Sized>(m: &M) -> crate::Result<BTreeMap<String, Stored>> {
    state_dict(m)?
        .into_iter()
        .map(|(name, t)| Ok((name, Stored::of(&t)?)))
        .collect()
}

fn expect<'s>(
    stored: &'s BTreeMap<String, Stored>,
    name: &str,
    shape: &[usize],
) -> StateResult<&'s Stored> {
    let s = stored
        .get(name)
        .ok_or_else(|| StateError::MissingTensor(name.to_string()))?;
    if s.shape != shape {
        return Err(StateError::TensorShape {
            name: name.to_string(),
            expected: shape.to_vec(),
            got: s.shape.clone(),
        });
    }
    Ok(s)
}

fn bad_value(name: &str, msg: String) -> StateError {
    StateError::BadValue {
        name: name.to_string(),
        msg,
    }
}

/// Checks that every value is finite and representable in `dtype` (an f64 file loaded into an
/// f32 model must not overflow to infinity), and non-negative if `non_negative`.
fn check_values(name: &str, s: &Stored, dtype: DType, non_negative: bool) -> StateResult<()> {
    let max = match dtype {
        DType::F32 => f32::MAX as f64,
        DType::F64 => f64::MAX,
        DType::BF16 => crate::dtype::bf16::MAX.to_f64(),
        DType::F16 => crate::dtype::f16::MAX.to_f64(),
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
fn batches_tracked(name: &str, s: &Stored) -> StateResult<u64> {
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

/// Checks every tensor `m` needs in `stored` and returns the names used.
fn check_all<M: Module + ?Sized>(
    m: &M,
    stored: &BTreeMap<String, Stored>,
) -> StateResult<BTreeSet<String>> {
    let mut used = BTreeSet::new();
    let mut result = Ok(());
    m.visit("", &mut |name, e| {
        if result.is_err() {
            return;
        }
        result = (|| {
            match e {
                Entry::Parameter(p) => {
                    let s = expect(stored, &name, p.tensor().shape())?;
                    check_values(&name, s, p.tensor().dtype(), false)?;
                    used.insert(name);
                }
                Entry::RunningStats(rs) => {
                    let dtype = rs.mean().dtype();
                    for (suffix, non_negative) in [(MEAN, false), (VAR, true)] {
                        let full = super::join(&name, suffix);
                        let s = expect(stored, &full, &[rs.channels()])?;
                        check_values(&full, s, dtype, non_negative)?;
                        used.insert(full);
                    }
                    let full = super::join(&name, COUNT);
                    if let Some(s) = stored.get(&full) {
                        batches_tracked(&full, s)?;
                        used.insert(full);
                    }
                }
            }
            Ok(())
        })();
    });
    result.map(|()| used)
}

/// Loads every parameter and running statistic of `m` from named tensors (values converted to
/// each tensor's dtype). Everything is checked before anything changes, so on any error `m` is
/// untouched; each error names the tensor: a missing or mis-shaped tensor, a value that is NaN,
/// infinite or beyond the dtype, a negative running variance, a `num_batches_tracked` that is
/// not a non-negative integer (it may be absent: the count stays), and (unless
/// `options.lenient`) a tensor `m` does not have.
pub fn load_state_dict<M: Module + ?Sized>(
    m: &mut M,
    stored: &BTreeMap<String, Stored>,
    options: LoadOptions,
) -> StateResult<()> {
    let used = check_all(m, stored)?;
    if !options.lenient {
        let extra: Vec<String> = stored
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect();
        if !extra.is_empty() {
            return Err(StateError::UnexpectedTensors(extra));
        }
    }
    // Everything checked: the assignments below only convert values already validated.
    let mut result = Ok(());
    m.visit_mut("", &mut |name, e| {
        if result.is_err() {
            return;
        }
        result = (|| -> crate::Result<()> {
            match e {
                EntryMut::Parameter(p) => {
                    let t = p.tensor();
                    let values = stored[&name].to_tensor(t.dtype(), t.device())?;
                    p.assign(&values)?;
                }
                EntryMut::RunningStats(rs) => {
                    let (dtype, device) = (rs.mean().dtype(), rs.device().clone());
                    let get =
                        |suffix| stored[&super::join(&name, suffix)].to_tensor(dtype, &device);
                    rs.set(&get(MEAN)?, &get(VAR)?)?;
                    if let Some(s) = stored.get(&super::join(&name, COUNT)) {
                        rs.set_num_batches_tracked(s.values[0] as u64);
                    }
                }
            }
            Ok(())
        })();
    });
    Ok(result?)
}
