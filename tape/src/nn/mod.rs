//! Modules: layers that own their parameters and buffers and declare them once, by name, through
//! [`Module::visit`] / [`Module::visit_mut`]. Everything that walks a model follows from that one
//! declaration, for any model built of modules: its parameter list ([`parameters`],
//! [`parameters_mut`]), the names its parameters carry ([`name_parameters`], which the optimizers'
//! state is keyed by), its state dict ([`state_dict`]), checked loading ([`load_state_dict`]) and
//! safetensors files ([`save`], [`load`]).
//!
//! Names follow PyTorch's `state_dict`: a struct's fields are joined with dots
//! (`features.denseblock1.denselayer1.norm1.weight`), a `Vec` of modules numbers its items from 0
//! (`nn.ModuleList`), an `Option` adds nothing. A module of named fields declares them with
//! [`module!`](crate::module):
//!
//! ```
//! use tape::nn::{self, BatchNorm2d, Conv2d, Init};
//! use tape::{DType, Device};
//!
//! struct ConvBn {
//!     conv: Conv2d,
//!     bn: BatchNorm2d,
//! }
//! tape::module!(ConvBn { "conv" => conv, "bn" => bn });
//!
//! let dev = Device::cpu();
//! let mut init = Init::new(DType::F32, &dev, 0);
//! let mut m = ConvBn {
//!     conv: Conv2d::new(3, 8, 3, 1, 1, &mut init).unwrap(),
//!     bn: BatchNorm2d::new(8, &mut init).unwrap(),
//! };
//! nn::name_parameters(&mut m);
//! let names: Vec<String> = nn::state_dict(&m).unwrap().into_iter().map(|(n, _)| n).collect();
//! assert_eq!(
//!     names,
//!     [
//!         "conv.weight",
//!         "bn.weight",
//!         "bn.bias",
//!         "bn.running_mean",
//!         "bn.running_var",
//!         "bn.num_batches_tracked",
//!     ]
//! );
//! assert_eq!(nn::parameters(&m)[1].name(), "bn.weight");
//! ```
//!
//! Train and eval mode belong to the [`Tape`](crate::Tape) a forward pass runs on
//! ([`Tape::training`](crate::Tape::training)): batch norm uses batch statistics and dropout
//! drops only in training.

mod batch_norm;
mod conv2d;
mod dropout;
mod embedding;
mod file;
mod init;
mod layer_norm;
mod linear;
mod state;

pub use batch_norm::BatchNorm2d;
pub use conv2d::Conv2d;
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use file::{load, load_tensors, load_with, save, save_tensors, write_atomic};
pub use init::Init;
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use state::{
    load_state_dict, state_dict, stored_state_dict, LoadOptions, StateError, StateResult, Stored,
};

use crate::ops::RunningStats;
use crate::param::Parameter;

/// One piece of a module's state, as [`Module::visit`] shows it.
#[derive(Clone, Copy, Debug)]
pub enum Entry<'a> {
    /// A trainable parameter (named `<path>`).
    Parameter(&'a Parameter),
    /// A batch norm's running statistics (saved as `<path>.running_mean`, `<path>.running_var`
    /// and `<path>.num_batches_tracked`).
    RunningStats(&'a RunningStats),
}

/// One piece of a module's state, as [`Module::visit_mut`] shows it.
#[derive(Debug)]
pub enum EntryMut<'a> {
    /// A trainable parameter.
    Parameter(&'a mut Parameter),
    /// Running statistics (updated through a lock, so a shared reference serves).
    RunningStats(&'a RunningStats),
}

/// A part of a model that owns parameters or buffers, or holds modules that do.
pub trait Module {
    /// Calls `f` with the full name and a reference of every parameter and buffer, in
    /// declaration order; `prefix` names this module (empty at the root).
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Entry<'a>));
    /// Like [`Module::visit`], with parameters mutable (loading, optimizers).
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(String, EntryMut<'a>));
}

/// `prefix.name`, or `name` at the root (an empty `name` leaves `prefix` as it is).
pub fn join(prefix: &str, name: &str) -> String {
    match (prefix.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}.{name}"),
    }
}

impl Module for Parameter {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Entry<'a>)) {
        f(prefix.to_string(), Entry::Parameter(self));
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        f(prefix.to_string(), EntryMut::Parameter(self));
    }
}

impl Module for RunningStats {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Entry<'a>)) {
        f(prefix.to_string(), Entry::RunningStats(self));
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        f(prefix.to_string(), EntryMut::RunningStats(self));
    }
}

/// An optional module: visited under the same name when present.
impl<M: Module> Module for Option<M> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Entry<'a>)) {
        if let Some(m) = self {
            m.visit(prefix, f);
        }
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        if let Some(m) = self {
            m.visit_mut(prefix, f);
        }
    }
}

/// A list of modules, numbered from 0 like PyTorch's `nn.ModuleList` (`prefix.0`, `prefix.1`).
impl<M: Module> Module for Vec<M> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Entry<'a>)) {
        for (i, m) in self.iter().enumerate() {
            m.visit(&join(prefix, &i.to_string()), f);
        }
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        for (i, m) in self.iter_mut().enumerate() {
            m.visit_mut(&join(prefix, &i.to_string()), f);
        }
    }
}

/// Implements [`Module`](crate::nn::Module) for a struct from its fields that are modules, each
/// with the name it has in the state dict, in order: `module!(Block { "conv1" => conv1, "bn1" =>
/// bn1 })`. An empty name visits the field under the struct's own name (a wrapper).
#[macro_export]
macro_rules! module {
    ($ty:ty { $($name:literal => $field:ident),* $(,)? }) => {
        impl $crate::nn::Module for $ty {
            fn visit<'a>(
                &'a self,
                prefix: &str,
                f: &mut dyn FnMut(String, $crate::nn::Entry<'a>),
            ) {
                $( $crate::nn::Module::visit(&self.$field, &$crate::nn::join(prefix, $name), f); )*
            }
            fn visit_mut<'a>(
                &'a mut self,
                prefix: &str,
                f: &mut dyn FnMut(String, $crate::nn::EntryMut<'a>),
            ) {
                $( $crate::nn::Module::visit_mut(
                    &mut self.$field,
                    &$crate::nn::join(prefix, $name),
                    f,
                ); )*
            }
        }
    };
}

/// Every parameter of `m`, in declaration order.
pub fn parameters<M: Module + ?Sized>(m: &M) -> Vec<&Parameter> {
    let mut out = Vec::new();
    m.visit("", &mut |_, e| {
        if let Entry::Parameter(p) = e {
            out.push(p);
        }
    });
    out
}

/// Every parameter of `m`, mutably (optimizers, loading), in declaration order.
pub fn parameters_mut<M: Module + ?Sized>(m: &mut M) -> Vec<&mut Parameter> {
    let mut out = Vec::new();
    m.visit_mut("", &mut |_, e| {
        if let EntryMut::Parameter(p) = e {
            out.push(p);
        }
    });
    out
}

/// Every batch norm's running statistics of `m` with its name.
pub fn running_stats<M: Module + ?Sized>(m: &M) -> Vec<(String, &RunningStats)> {
    let mut out = Vec::new();
    m.visit("", &mut |name, e| {
        if let Entry::RunningStats(s) = e {
            out.push((name, s));
        }
    });
    out
}

/// Synchronises every batch norm of `m` over a data-parallel group through `reducer` (PyTorch's
/// `SyncBatchNorm.convert_sync_batchnorm`), or with `None` makes each process normalise its own
/// batch again; returns the number of batch norms changed. See [`RunningStats::set_sync`].
pub fn set_batch_norm_sync<M: Module + ?Sized>(
    m: &M,
    reducer: Option<std::sync::Arc<dyn crate::ops::BatchStatsReducer>>,
) -> usize {
    let layers = running_stats(m);
    for (_, rs) in &layers {
        rs.set_sync(reducer.clone());
    }
    layers.len()
}

/// Gives every parameter of `m` the name it has in `m`'s state dict (what the optimizers key
/// saved state by, and what errors name). Model constructors call it once, at the root.
pub fn name_parameters<M: Module + ?Sized>(m: &mut M) {
    m.visit_mut("", &mut |name, e| {
        if let EntryMut::Parameter(p) = e {
            p.set_name(name);
        }
    });
}

/// Number of trainable scalars (PyTorch's `sum(p.numel() for p in model.parameters())`).
pub fn num_parameters<M: Module + ?Sized>(m: &M) -> usize {
    parameters(m).iter().map(|p| p.tensor().numel()).sum()
}

/// Bytes of all parameters.
pub fn parameter_bytes<M: Module + ?Sized>(m: &M) -> usize {
    parameters(m)
        .iter()
        .map(|p| p.tensor().size_in_bytes())
        .sum()
}

/// A list of modules named `<stem><first + i>` rather than by index: torchvision's
/// `denseblock1`, `denselayer1`, ResNet's `layer1`. It derefs to its `Vec`.
#[derive(Debug)]
pub struct Numbered<M> {
    stem: &'static str,
    first: usize,
    items: Vec<M>,
}

impl<M> Numbered<M> {
    /// `items`, named `<stem><first>`, `<stem><first + 1>`, ...
    pub fn new(stem: &'static str, first: usize, items: Vec<M>) -> Self {
        Numbered { stem, first, items }
    }

    fn name(&self, prefix: &str, i: usize) -> String {
        join(prefix, &format!("{}{}", self.stem, self.first + i))
    }
}

impl<M> std::ops::Deref for Numbered<M> {
    type Target = Vec<M>;
    fn deref(&self) -> &Vec<M> {
        &self.items
    }
}

impl<M> std::ops::DerefMut for Numbered<M> {
    fn deref_mut(&mut self) -> &mut Vec<M> {
        &mut self.items
    }
}

impl<M: Module> Module for Numbered<M> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Entry<'a>)) {
        for (i, m) in self.items.iter().enumerate() {
            m.visit(&self.name(prefix, i), f);
        }
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(String, EntryMut<'a>)) {
        let names: Vec<String> = (0..self.items.len())
            .map(|i| self.name(prefix, i))
            .collect();
        for (m, name) in self.items.iter_mut().zip(names) {
            m.visit_mut(&name, f);
        }
    }
}
