//! DenseNet weights files: the engine's module state I/O ([`tape::nn`]: torchvision's names,
//! safetensors, atomic saves, every value checked on load) plus one DenseNet-specific courtesy:
//! a file from the seed project, which names the last batch norm `features.norm_final` where
//! torchvision says `features.norm5`, loads too.

use crate::error::Result;
use crate::model::DenseNet;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use tape::nn;

pub use tape::nn::{load_tensors, save_tensors, state_dict, write_atomic, LoadOptions, Stored};

/// The seed project's name of `features.norm5`.
const SEED_NORM_FINAL: &str = "features.norm_final.";
const NORM_FINAL: &str = "features.norm5.";

/// `stored` with the seed project's `features.norm_final.*` renamed to `features.norm5.*`
/// (unless the file has both: then both stay, and the strict check names the extra ones). A
/// file with torchvision's names is passed on as it is, not copied.
fn with_torchvision_names(stored: &BTreeMap<String, Stored>) -> Cow<'_, BTreeMap<String, Stored>> {
    let has_seed = stored.keys().any(|k| k.starts_with(SEED_NORM_FINAL));
    let has_norm5 = stored.keys().any(|k| k.starts_with(NORM_FINAL));
    if !has_seed || has_norm5 {
        return Cow::Borrowed(stored);
    }
    Cow::Owned(
        stored
            .iter()
            .map(|(k, v)| match k.strip_prefix(SEED_NORM_FINAL) {
                Some(rest) => (format!("{NORM_FINAL}{rest}"), v.clone()),
                None => (k.clone(), v.clone()),
            })
            .collect(),
    )
}

/// Saves the model's state to `path` (atomic).
pub fn save(model: &DenseNet, path: &Path) -> Result<()> {
    Ok(nn::save(model, path)?)
}

/// Loads every parameter and running statistic of the model from named tensors, strictly (see
/// [`load_state_with`]).
pub fn load_state(model: &mut DenseNet, stored: &BTreeMap<String, Stored>) -> Result<()> {
    load_state_with(model, stored, LoadOptions::default())
}

/// Loads every parameter and running statistic of the model from named tensors
/// ([`nn::load_state_dict`]: everything checked before anything changes, each error naming the
/// tensor), accepting the seed project's `features.norm_final` for `features.norm5`.
pub fn load_state_with(
    model: &mut DenseNet,
    stored: &BTreeMap<String, Stored>,
    options: LoadOptions,
) -> Result<()> {
    Ok(nn::load_state_dict(
        model,
        &with_torchvision_names(stored),
        options,
    )?)
}

/// Loads the model's state from a safetensors file, strictly (see [`load_state_with`]).
pub fn load(model: &mut DenseNet, path: &Path) -> Result<()> {
    load_with(model, path, LoadOptions::default())
}

/// Loads the model's state from a safetensors file with `options`; on any error the model is
/// untouched.
pub fn load_with(model: &mut DenseNet, path: &Path, options: LoadOptions) -> Result<()> {
    load_state_with(model, &load_tensors(path)?, options)
}
